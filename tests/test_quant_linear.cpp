// The linear GGML formats (Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K) against ggml's
// recorded vectors: dequantization bit for bit, quantization by error (and by
// bytes where ggml's plain quantizer is a single deterministic pass).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "ggml_vectors.h"
#include "tailor/quant/codec.h"
#include "tailor/quant/scale_search.h"
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

// Inputs ggml leaves undefined (NaN, infinities, huge and subnormal values)
// must not crash or write outside the row.
TEST(LinearQuant, SurvivesHostileInput) {
  const int64_t cols = 512;
  std::vector<float> x(cols);
  for (int64_t j = 0; j < cols; ++j) x[j] = 0.01f * float(j % 17) - 0.08f;
  x[3] = std::numeric_limits<float>::quiet_NaN();
  x[40] = std::numeric_limits<float>::infinity();
  x[41] = -std::numeric_limits<float>::infinity();
  x[300] = 3e38f;
  x[301] = 1e-40f;
  std::vector<float> w(cols, 1.0f);
  w[5] = 0.0f;
  for (GgmlType t : kLinearTypes)
    for (const float* imp : {static_cast<const float*>(nullptr), static_cast<const float*>(w.data())}) {
      const size_t rb = row_size(t, cols);
      std::vector<uint8_t> q(rb + 64, 0xA5);
      quantize_row(t, x.data(), q.data(), cols, imp);
      for (size_t k = rb; k < q.size(); ++k) ASSERT_EQ(q[k], 0xA5) << type_name(t) << " wrote past the row";
      std::vector<float> y(cols);
      dequantize_row(t, q.data(), y.data(), cols);
    }
}

TEST(ScaleSearch, NearestIntRoundsHalfToEven) {
  using quant::nearest_int;
  EXPECT_EQ(nearest_int(2.5f), 2);
  EXPECT_EQ(nearest_int(3.5f), 4);
  EXPECT_EQ(nearest_int(-2.5f), -2);
  EXPECT_EQ(nearest_int(-0.4f), 0);
  EXPECT_EQ(nearest_int(4194303.0f), 4194303);
  EXPECT_EQ(nearest_int(-7.6f), -8);
}

TEST(ScaleSearch, ZeroGroupsGiveZeroScaleAndLevels) {
  float x[16] = {};
  x[4] = 1e-16f;  // below the all-zero threshold
  int8_t L[16];
  std::fill(std::begin(L), std::end(L), int8_t(7));
  EXPECT_EQ(quant::fit_symmetric(16, 4, x, nullptr, L), 0.0f);
  for (int8_t l : L) EXPECT_EQ(l, 0);
  uint8_t U[16];
  float w[16];
  std::fill(std::begin(w), std::end(w), 1.0f);
  EXPECT_EQ(quant::fit_positive(16, 15, x, w, U), 0.0f);
  for (uint8_t l : U) EXPECT_EQ(l, 0);
  // A constant negative group is exactly its min with zero scale.
  std::fill(std::begin(x), std::end(x), -0.25f);
  float neg_min = 0.0f;
  EXPECT_EQ(quant::fit_affine(16, 15, x, nullptr, U, &neg_min, quant::AffineSearch{-1.0f, 0.1f, 20, false}), 0.0f);
  EXPECT_EQ(neg_min, 0.25f);
}
