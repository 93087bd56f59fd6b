// Test helper: reads ../shared/testdata/ggml-vectors (manifest, inputs,
// quantized bytes and ggml's dequantized floats) and computes the manifest's
// error measures, so each codec test compares against ggml's recorded numbers.
#pragma once
#include <cstdint>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tailor/quant/codec.h"

namespace tailor::test {

inline std::string vectors_dir() { return std::string(TAILOR_SHARED_DIR) + "/testdata/ggml-vectors"; }

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) ADD_FAILURE() << "cannot open " << path;
  return {std::istreambuf_iterator<char>(f), {}};
}

inline std::vector<float> read_floats(const std::string& path) {
  auto b = read_bytes(path);
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

inline const nlohmann::json& manifest() {
  static nlohmann::json m = [] {
    std::ifstream f(vectors_dir() + "/manifest.json");
    return nlohmann::json::parse(f);
  }();
  return m;
}

struct VectorSet {
  std::string name;
  int64_t rows = 0, cols = 0;
  std::vector<float> input, imatrix;
  std::vector<double> row_sum_sq, row_wsum_sq;
};

inline VectorSet load_set(const std::string& name) {
  for (const auto& s : manifest()["sets"]) {
    if (s["name"] != name) continue;
    VectorSet v;
    v.name = name;
    v.rows = s["rows"];
    v.cols = s["cols"];
    v.input = read_floats(vectors_dir() + "/" + s["file"].get<std::string>());
    v.imatrix = read_floats(vectors_dir() + "/" + s["imatrix_file"].get<std::string>());
    v.row_sum_sq = s["row_sum_sq"].get<std::vector<double>>();
    v.row_wsum_sq = s["row_wsum_sq"].get<std::vector<double>>();
    return v;
  }
  ADD_FAILURE() << "no set " << name;
  return {};
}

// Per-row sse (w == nullptr) or wsse, in double, column order: as the manifest defines them.
inline std::vector<double> row_errors(const VectorSet& s, const std::vector<float>& y, const float* w) {
  std::vector<double> out(s.rows, 0.0);
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t j = 0; j < s.cols; ++j) {
      double d = double(s.input[r * s.cols + j]) - double(y[r * s.cols + j]);
      out[r] += (w ? double(w[j]) : 1.0) * d * d;
    }
  return out;
}

// Dequantizes every .q file recorded for `type` and compares bit patterns with ggml's.
inline void expect_dequantize_bit_exact(GgmlType type) {
  std::string tname(type_name(type));
  const auto& results = manifest()["results"][tname];
  ASSERT_FALSE(results.is_null()) << "no vectors for " << tname;
  int checked = 0;
  for (auto it = results.begin(); it != results.end(); ++it) {
    VectorSet s = load_set(it.key());
    for (const char* mode : {"plain", "imatrix"}) {
      if (!it.value().contains(mode)) continue;
      const auto& r = it.value()[mode];
      auto q = read_bytes(vectors_dir() + "/" + r["q_file"].get<std::string>());
      auto ref = read_floats(vectors_dir() + "/" + r["deq_file"].get<std::string>());
      size_t rb = row_size(type, s.cols);
      ASSERT_EQ(q.size(), rb * s.rows) << tname << " " << s.name << " " << mode;
      std::vector<float> out(s.rows * s.cols);
      for (int64_t row = 0; row < s.rows; ++row)
        dequantize_row(type, q.data() + row * rb, out.data() + row * s.cols, s.cols);
      int64_t mismatches = 0, first = -1;
      for (size_t k = 0; k < out.size(); ++k) {
        uint32_t a, b;
        std::memcpy(&a, &out[k], 4);
        std::memcpy(&b, &ref[k], 4);
        if (a != b && mismatches++ == 0) first = int64_t(k);
      }
      EXPECT_EQ(mismatches, 0) << tname << " " << s.name << " " << mode << ": first mismatch at "
                               << first << " got " << (first >= 0 ? out[first] : 0.f) << " want "
                               << (first >= 0 ? ref[first] : 0.f);
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

// Quantizes each set with Tailor and checks the error against ggml's recorded
// one: real sets within (1 + tol_real), synth512 normalised within (1 + tol_synth).
// imatrix mode compares wsse, plain mode compares sse.
inline void expect_quantize_error_ok(GgmlType type, double tol_real = 0.02, double tol_synth = 0.05) {
  std::string tname(type_name(type));
  const auto& results = manifest()["results"][tname];
  ASSERT_FALSE(results.is_null()) << "no vectors for " << tname;
  for (auto it = results.begin(); it != results.end(); ++it) {
    VectorSet s = load_set(it.key());
    for (const char* mode : {"plain", "imatrix"}) {
      if (!it.value().contains(mode)) continue;
      const auto& r = it.value()[mode];
      bool weighted = std::string(mode) == "imatrix";
      const float* w = weighted ? s.imatrix.data() : nullptr;
      size_t rb = row_size(type, s.cols);
      std::vector<uint8_t> q(rb * s.rows);
      quantize_rows(type, s.input.data(), q.data(), s.rows, s.cols, w, 1);
      std::vector<float> y(s.rows * s.cols);
      dequantize_rows(type, q.data(), y.data(), s.rows, s.cols, 1);
      for (float v : y) ASSERT_TRUE(std::isfinite(v)) << tname << " " << s.name << " " << mode;
      auto ours = row_errors(s, y, w);
      auto ref = r[weighted ? "wsse" : "sse"].get<std::vector<double>>();
      double a = 0, b = 0;
      bool synth = s.name.rfind("synth", 0) == 0;
      const auto& norm = weighted ? s.row_wsum_sq : s.row_sum_sq;
      for (int64_t row = 0; row < s.rows; ++row) {
        double n = synth ? (norm[row] > 0 ? norm[row] : 1.0) : 1.0;
        a += ours[row] / n;
        b += ref[row] / n;
      }
      double tol = synth ? tol_synth : tol_real;
      EXPECT_LE(a, b * (1 + tol) + 1e-30)
          << tname << " " << s.name << " " << mode << ": ours " << a << " ggml " << b
          << " ratio " << (b > 0 ? a / b : 0);
      ::testing::Test::RecordProperty(tname + "_" + s.name + "_" + mode + "_ratio", std::to_string(b > 0 ? a / b : 0));
    }
  }
}

}  // namespace tailor::test
