// The linear GGML formats (Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K) against ggml's
// recorded vectors: dequantization bit for bit, quantization by error (and by
// bytes where ggml's plain quantizer is a single deterministic pass).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "ggml_vectors.h"
#include "tailor/quant/codec.h"
#include "tailor/quant/types.h"
#include "tailor/util/error.h"

using namespace tailor;

namespace {

const GgmlType kLinearTypes[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,
                                 GgmlType::Q5_1, GgmlType::Q2_K, GgmlType::Q3_K,
                                 GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

bool is_legacy(GgmlType t) {
  return t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q5_0 || t == GgmlType::Q5_1;
}

std::vector<uint8_t> quantize_set(GgmlType t, const test::VectorSet& s, const float* importance) {
  std::vector<uint8_t> q(row_size(t, s.cols) * s.rows);
  quantize_rows(t, s.input.data(), q.data(), s.rows, s.cols, importance, 1);
  return q;
}

double total_error(GgmlType t, const test::VectorSet& s, const std::vector<uint8_t>& q, const float* w) {
  std::vector<float> y(s.rows * s.cols);
  dequantize_rows(t, q.data(), y.data(), s.rows, s.cols, 1);
  double sum = 0;
  for (double e : test::row_errors(s, y, w)) sum += e;
  return sum;
}

class LinearQuant : public ::testing::TestWithParam<GgmlType> {};

std::string type_param_name(const ::testing::TestParamInfo<GgmlType>& info) {
  return std::string(type_name(info.param));
}

}  // namespace

TEST_P(LinearQuant, DequantizeBitExact) { test::expect_dequantize_bit_exact(GetParam()); }

TEST_P(LinearQuant, QuantizeErrorWithinGgml) { test::expect_quantize_error_ok(GetParam(), 0.02, 0.05); }

// Counts the rows whose bytes equal ggml's. Plain legacy quantizers are one
// deterministic pass, so there every row must match; elsewhere it is reported.
TEST_P(LinearQuant, BytesAgainstGgml) {
  const GgmlType t = GetParam();
  const std::string tname(type_name(t));
  const auto& results = test::manifest()["results"][tname];
  for (auto it = results.begin(); it != results.end(); ++it) {
    test::VectorSet s = test::load_set(it.key());
    for (const char* mode : {"plain", "imatrix"}) {
      if (!it.value().contains(mode)) continue;
      const bool weighted = std::string(mode) == "imatrix";
      auto ours = quantize_set(t, s, weighted ? s.imatrix.data() : nullptr);
      auto ref = test::read_bytes(test::vectors_dir() + "/" + it.value()[mode]["q_file"].get<std::string>());
      ASSERT_EQ(ours.size(), ref.size()) << tname << " " << s.name << " " << mode;
      const size_t rb = row_size(t, s.cols);
      int same = 0;
      for (int64_t r = 0; r < s.rows; ++r)
        same += std::equal(ours.begin() + r * rb, ours.begin() + (r + 1) * rb, ref.begin() + r * rb);
      std::printf("[bytes] %s %s %s: %d/%lld rows identical to ggml\n", tname.c_str(), s.name.c_str(), mode,
                  same, static_cast<long long>(s.rows));
      RecordProperty(tname + "_" + s.name + "_" + mode + "_identical_rows", same);
      if (is_legacy(t) && !weighted) {
        EXPECT_EQ(same, s.rows) << tname << " " << s.name << " plain";
      }
    }
  }
}

// The importance vector must steer the result: the weighted error of the
// importance-aware quantization is below that of the plain one.
TEST_P(LinearQuant, ImportanceLowersWeightedError) {
  const GgmlType t = GetParam();
  test::VectorSet s = test::load_set("real512");
  const float* w = s.imatrix.data();
  const double with = total_error(t, s, quantize_set(t, s, w), w);
  const double without = total_error(t, s, quantize_set(t, s, nullptr), w);
  EXPECT_LT(with, without) << type_name(t);
  EXPECT_GT(with, 0.0) << type_name(t);
}

INSTANTIATE_TEST_SUITE_P(Types, LinearQuant, ::testing::ValuesIn(kLinearTypes), type_param_name);

TEST(LinearQuant, RejectsRowsThatDoNotFit) {
  std::vector<float> x(100, 0.0f);
  std::vector<uint8_t> q(1024);
  EXPECT_THROW(quantize_row(GgmlType::Q4_K, x.data(), q.data(), 100, nullptr), Error);
  EXPECT_THROW(dequantize_row(GgmlType::Q4_0, q.data(), x.data(), 100), Error);
}
