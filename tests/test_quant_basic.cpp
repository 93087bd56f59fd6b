// Codecs F32, F16, BF16, Q8_0, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0 against ggml's
// recorded vectors, plus the special values of the float formats and the
// SIMD kernels checked bit for bit against the scalar ones.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "ggml_vectors.h"
#include "tailor/quant/codec.h"
#include "tailor/quant/simd.h"
#include "tailor/util/error.h"

namespace tailor {
namespace {

using quant::SimdLevel;
using test::load_set;
using test::manifest;
using test::read_bytes;
using test::vectors_dir;

// Runs the body with the SIMD level capped, restoring "all enabled" afterwards.
struct SimdCap {
  explicit SimdCap(SimdLevel l) { quant::set_simd_limit(l); }
  ~SimdCap() { quant::set_simd_enabled(true); }
};

// The levels this CPU can run; scalar first (the reference).
std::vector<SimdLevel> levels() {
  std::vector<SimdLevel> out{SimdLevel::scalar};
  if (quant::cpu_simd_level() >= SimdLevel::avx2) out.push_back(SimdLevel::avx2);
  if (quant::cpu_simd_level() >= SimdLevel::avx512) out.push_back(SimdLevel::avx512);
  return out;
}

// ggml's plain-mode .q files must be reproduced byte for byte, on every SIMD level.
void expect_quantize_bytes_equal(GgmlType type) {
  std::string tname(type_name(type));
  const auto& results = manifest()["results"][tname];
  ASSERT_FALSE(results.is_null()) << tname;
  int checked = 0;
  for (auto it = results.begin(); it != results.end(); ++it) {
    test::VectorSet s = load_set(it.key());
    const auto& r = it.value()["plain"];
    auto want = read_bytes(vectors_dir() + "/" + r["q_file"].get<std::string>());
    for (SimdLevel level : levels()) {
      SimdCap cap(level);
      std::vector<uint8_t> got(row_size(type, s.cols) * s.rows);
      quantize_rows(type, s.input.data(), got.data(), s.rows, s.cols, nullptr, 1);
      ASSERT_EQ(got.size(), want.size()) << tname << " " << s.name;
      size_t first = 0;
      while (first < got.size() && got[first] == want[first]) ++first;
      EXPECT_EQ(first, got.size()) << tname << " " << s.name << " level "
                                   << quant::simd_level_name(level) << ": first differing byte "
                                   << first;
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

std::vector<uint32_t> bits_of(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * 4);
  return b;
}

// Random normal data at weight scale, with edge values mixed in.
std::vector<float> edge_data(size_t n, uint32_t seed, bool with_nonfinite) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  const float edges[] = {0.0f, -0.0f, 1e-45f, -1e-45f, 1.1754942e-38f, 5.9604645e-08f,
                         2.9802322e-08f, 6.1035156e-05f, 6.0975552e-05f, 65504.0f, 65519.99f,
                         65520.0f, -65520.0f, 1e30f, -3.4028235e38f, 1.0f + 0x1.0p-11f,
                         1.0f + 0x1.0p-8f, 1.0f + 0x1.8p-8f, 0.5f, -2.5f};
  std::uniform_int_distribution<size_t> pos(0, n - 1);
  for (int k = 0; k < 3; ++k)
    for (float e : edges) v[pos(rng)] = e;
  if (with_nonfinite) {
    const float inf = std::numeric_limits<float>::infinity();
    for (float e : {inf, -inf, std::bit_cast<float>(0x7fc00000u), std::bit_cast<float>(0xff800001u),
                    std::bit_cast<float>(0x7fbfffffu)})
      v[pos(rng)] = e;
  }
  return v;
}

// Quantizes and dequantizes `x` on every level and requires identical bytes and floats.
void expect_simd_matches_scalar(GgmlType type, const std::vector<float>& x,
                                const float* importance = nullptr) {
  int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> ref_q(row_size(type, n));
  std::vector<float> ref_y(n);
  {
    SimdCap cap(SimdLevel::scalar);
    quantize_row(type, x.data(), ref_q.data(), n, importance);
    dequantize_row(type, ref_q.data(), ref_y.data(), n);
  }
  for (SimdLevel level : levels()) {
    if (level == SimdLevel::scalar) continue;
    SimdCap cap(level);
    std::vector<uint8_t> q(ref_q.size());
    std::vector<float> y(n);
    quantize_row(type, x.data(), q.data(), n, importance);
    dequantize_row(type, ref_q.data(), y.data(), n);
    EXPECT_EQ(q, ref_q) << type_name(type) << " quantize, level " << quant::simd_level_name(level);
    EXPECT_EQ(bits_of(y), bits_of(ref_y))
        << type_name(type) << " dequantize, level " << quant::simd_level_name(level);
  }
}

uint16_t to_f16(float f) {
  uint16_t h;
  quantize_row(GgmlType::F16, &f, &h, 1, nullptr);
  return h;
}
uint16_t to_bf16(float f) {
  uint16_t h;
  quantize_row(GgmlType::BF16, &f, &h, 1, nullptr);
  return h;
}
uint32_t from_f16(uint16_t h) {
  float f;
  dequantize_row(GgmlType::F16, &h, &f, 1);
  return std::bit_cast<uint32_t>(f);
}
float bits(uint32_t u) { return std::bit_cast<float>(u); }

TEST(QuantF32, RoundTripKeepsEveryBit) {
  auto x = edge_data(1000, 7, true);
  std::vector<uint8_t> q(row_size(GgmlType::F32, 1000));
  std::vector<float> y(1000);
  quantize_row(GgmlType::F32, x.data(), q.data(), 1000, nullptr);
  dequantize_row(GgmlType::F32, q.data(), y.data(), 1000);
  EXPECT_EQ(0, std::memcmp(q.data(), x.data(), q.size()));
  EXPECT_EQ(bits_of(y), bits_of(x));
}

TEST(QuantF16, MatchesGgmlVectors) {
  test::expect_dequantize_bit_exact(GgmlType::F16);
  test::expect_quantize_error_ok(GgmlType::F16, 0.0, 0.0);
  expect_quantize_bytes_equal(GgmlType::F16);
}

TEST(QuantBF16, MatchesGgmlVectors) {
  test::expect_dequantize_bit_exact(GgmlType::BF16);
  test::expect_quantize_error_ok(GgmlType::BF16, 0.0, 0.0);
  expect_quantize_bytes_equal(GgmlType::BF16);
}

TEST(QuantTQ1_0, MatchesGgmlVectors) {
  test::expect_dequantize_bit_exact(GgmlType::TQ1_0);
  test::expect_quantize_error_ok(GgmlType::TQ1_0, 0.0, 0.0);
  expect_quantize_bytes_equal(GgmlType::TQ1_0);
}

TEST(QuantTQ2_0, MatchesGgmlVectors) {
  test::expect_dequantize_bit_exact(GgmlType::TQ2_0);
  test::expect_quantize_error_ok(GgmlType::TQ2_0, 0.0, 0.0);
  expect_quantize_bytes_equal(GgmlType::TQ2_0);
}

// TQ1_0 and TQ2_0 hold the same ternary values in different packings.
TEST(QuantTernary, BothPackingsDecodeAlike) {
  test::VectorSet s = load_set("real1280");
  std::vector<float> a(s.input.size()), b(s.input.size());
  for (auto [t, out] : {std::pair{GgmlType::TQ1_0, &a}, std::pair{GgmlType::TQ2_0, &b}}) {
    std::vector<uint8_t> q(row_size(t, s.cols) * s.rows);
    quantize_rows(t, s.input.data(), q.data(), s.rows, s.cols, nullptr, 1);
    dequantize_rows(t, q.data(), out->data(), s.rows, s.cols, 1);
  }
  EXPECT_EQ(bits_of(a), bits_of(b));
}

TEST(QuantIQ4_NL, MatchesGgmlVectors) {
  test::expect_dequantize_bit_exact(GgmlType::IQ4_NL);
  test::expect_quantize_error_ok(GgmlType::IQ4_NL, 0.02, 0.05);
}

TEST(QuantIQ4_XS, MatchesGgmlVectors) {
  test::expect_dequantize_bit_exact(GgmlType::IQ4_XS);
  test::expect_quantize_error_ok(GgmlType::IQ4_XS, 0.02, 0.05);
}

// Quantizing with the importance vector must lower the importance-weighted
// error compared with quantizing without it, on every set.
TEST(QuantIQ4, ImportanceVectorLowersWeightedError) {
  for (GgmlType t : {GgmlType::IQ4_NL, GgmlType::IQ4_XS}) {
    for (const char* name : {"real512", "real1280", "synth512"}) {
      test::VectorSet s = load_set(name);
      double err[2];
      for (int with = 0; with < 2; ++with) {
        const float* w = with ? s.imatrix.data() : nullptr;
        std::vector<uint8_t> q(row_size(t, s.cols) * s.rows);
        quantize_rows(t, s.input.data(), q.data(), s.rows, s.cols, w, 1);
        std::vector<float> y(s.input.size());
        dequantize_rows(t, q.data(), y.data(), s.rows, s.cols, 1);
        auto rows = test::row_errors(s, y, s.imatrix.data());
        err[with] = 0;
        for (int64_t r = 0; r < s.rows; ++r) err[with] += rows[r] / (s.row_wsum_sq[r] > 0 ? s.row_wsum_sq[r] : 1.0);
      }
      EXPECT_LT(err[1], 0.8 * err[0]) << type_name(t) << " " << name << ": with " << err[1]
                                      << " without " << err[0];
    }
  }
}

TEST(QuantQ8_0, MatchesGgmlVectors) {
  test::expect_dequantize_bit_exact(GgmlType::Q8_0);
  test::expect_quantize_error_ok(GgmlType::Q8_0, 0.0, 0.0);
  expect_quantize_bytes_equal(GgmlType::Q8_0);
}

// The special values as ggml's converters define them (ggml-impl.h): round to
// nearest even, overflow to inf, fp16 subnormals produced, every NaN -> 0x7e00
// with its sign.
TEST(QuantF16, SpecialValues) {
  for (SimdLevel level : levels()) {
    SimdCap cap(level);
    const float inf = std::numeric_limits<float>::infinity();
    EXPECT_EQ(to_f16(-0.0f), 0x8000);
    EXPECT_EQ(to_f16(inf), 0x7c00);
    EXPECT_EQ(to_f16(-inf), 0xfc00);
    EXPECT_EQ(to_f16(bits(0x7fc00000u)), 0x7e00);
    EXPECT_EQ(to_f16(bits(0xffffffffu)), 0xfe00);
    EXPECT_EQ(to_f16(bits(0x7f800001u)), 0x7e00);
    EXPECT_EQ(to_f16(65504.0f), 0x7bff);
    EXPECT_EQ(to_f16(65519.996f), 0x7bff);  // below the rounding midpoint
    EXPECT_EQ(to_f16(65520.0f), 0x7c00);    // the midpoint rounds to even = inf
    EXPECT_EQ(to_f16(1.0f + 0x1.0p-11f), 0x3c00);  // tie, even stays
    EXPECT_EQ(to_f16(1.0f + 0x1.8p-10f), 0x3c02);  // tie, odd rounds up
    EXPECT_EQ(to_f16(0x1.0p-24f), 0x0001);  // smallest subnormal
    EXPECT_EQ(to_f16(0x1.0p-25f), 0x0000);  // tie to even (zero)
    EXPECT_EQ(to_f16(0x1.8p-24f), 0x0002);  // tie to even (two)
    EXPECT_EQ(to_f16(-0x1.0p-14f), 0x8400);  // smallest normal
    EXPECT_EQ(to_f16(1e-45f), 0x0000);       // f32 subnormal underflows to zero
    EXPECT_EQ(from_f16(0x8000), 0x80000000u);
    EXPECT_EQ(from_f16(0x7c00), 0x7f800000u);
    EXPECT_EQ(from_f16(0x0001), std::bit_cast<uint32_t>(0x1.0p-24f));
    EXPECT_EQ(from_f16(0x83ff), std::bit_cast<uint32_t>(-0x1.ff8p-15f));
    EXPECT_EQ(from_f16(0x7e00), 0x7fc00000u);
    EXPECT_EQ(from_f16(0xfe01), 0xffc02000u);
    EXPECT_EQ(from_f16(0x7c01), 0x7fc02000u);  // signaling NaN comes back quiet
  }
}

TEST(QuantBF16, SpecialValues) {
  for (SimdLevel level : levels()) {
    SimdCap cap(level);
    const float inf = std::numeric_limits<float>::infinity();
    EXPECT_EQ(to_bf16(-0.0f), 0x8000);
    EXPECT_EQ(to_bf16(inf), 0x7f80);
    EXPECT_EQ(to_bf16(-inf), 0xff80);
    EXPECT_EQ(to_bf16(bits(0x7f800001u)), 0x7fc0);  // NaN forced quiet, high payload kept
    EXPECT_EQ(to_bf16(bits(0xff810000u)), 0xffc1);
    EXPECT_EQ(to_bf16(bits(0x3f808000u)), 0x3f80);  // tie, even stays
    EXPECT_EQ(to_bf16(bits(0x3f818000u)), 0x3f82);  // tie, odd rounds up
    EXPECT_EQ(to_bf16(bits(0x3f808001u)), 0x3f81);
    EXPECT_EQ(to_bf16(bits(0x7f7fffffu)), 0x7f80);  // FLT_MAX rounds to inf
    EXPECT_EQ(to_bf16(bits(0x00010000u)), 0x0001);  // subnormals are kept, not flushed
    EXPECT_EQ(to_bf16(bits(0x80008000u)), 0x8000);
    uint16_t h = 0x0001;
    float f;
    dequantize_row(GgmlType::BF16, &h, &f, 1);
    EXPECT_EQ(std::bit_cast<uint32_t>(f), 0x00010000u);
  }
}

// Every half value widens identically on all levels; the narrowing is checked on
// a sweep of float bit patterns that covers every exponent and rounding case.
TEST(QuantSimd, FloatConversionsMatchScalarOnAllBitPatterns) {
  std::vector<uint16_t> halves(65536);
  for (uint32_t i = 0; i < 65536; ++i) halves[i] = static_cast<uint16_t>(i);
  std::vector<float> sweep;
  for (uint64_t u = 0; u < (1ull << 32); u += 65537 * 3) sweep.push_back(bits(static_cast<uint32_t>(u)));
  for (uint32_t u = 0x477fe000u; u < 0x47800100u; ++u) sweep.push_back(bits(u));  // fp16 overflow edge
  for (uint32_t u = 0x33000000u - 300; u < 0x33000000u + 300; ++u) sweep.push_back(bits(u));
  for (GgmlType t : {GgmlType::F16, GgmlType::BF16}) {
    std::vector<float> ref_y(65536);
    std::vector<uint16_t> ref_q(sweep.size());
    {
      SimdCap cap(SimdLevel::scalar);
      dequantize_row(t, halves.data(), ref_y.data(), 65536);
      quantize_row(t, sweep.data(), ref_q.data(), int64_t(sweep.size()), nullptr);
    }
    for (SimdLevel level : levels()) {
      SimdCap cap(level);
      std::vector<float> y(65536);
      std::vector<uint16_t> q(sweep.size());
      dequantize_row(t, halves.data(), y.data(), 65536);
      quantize_row(t, sweep.data(), q.data(), int64_t(sweep.size()), nullptr);
      EXPECT_EQ(bits_of(y), bits_of(ref_y)) << type_name(t) << " " << quant::simd_level_name(level);
      EXPECT_EQ(q, ref_q) << type_name(t) << " " << quant::simd_level_name(level);
    }
  }
}

TEST(QuantSimd, MatchesScalarOnRandomAndEdgeData) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    // Odd lengths leave tails for the scalar remainder loops.
    expect_simd_matches_scalar(GgmlType::F16, edge_data(1037, seed, true));
    expect_simd_matches_scalar(GgmlType::BF16, edge_data(1037, seed, true));
    // Q8_0 is not defined for NaN/inf input (ggml's neither); finite edges only.
    expect_simd_matches_scalar(GgmlType::Q8_0, edge_data(32 * 41, seed, false));
  }
  for (const char* set : {"real512", "real1280", "synth512"}) {
    test::VectorSet s = load_set(set);
    for (GgmlType t : {GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0})
      expect_simd_matches_scalar(t, s.input);
    // The IQ4 scale search runs its candidates in SIMD lanes.
    for (int64_t r = 0; r < s.rows; ++r) {
      std::vector<float> row(s.input.begin() + r * s.cols, s.input.begin() + (r + 1) * s.cols);
      for (GgmlType t : {GgmlType::IQ4_NL, GgmlType::IQ4_XS}) {
        expect_simd_matches_scalar(t, row);
        expect_simd_matches_scalar(t, row, s.imatrix.data());
      }
    }
  }
}

// Rows are independent: the thread count must not change a byte; and the types
// that take no importance vector ignore one (ggml's recorded bytes are the same).
TEST(QuantRows, ThreadsAndIgnoredImportanceDoNotChangeBytes) {
  test::VectorSet s = load_set("real1280");
  for (GgmlType t : {GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::IQ4_NL, GgmlType::IQ4_XS,
                     GgmlType::TQ1_0, GgmlType::TQ2_0}) {
    bool uses = type_info(t).uses_imatrix;
    const float* w = s.imatrix.data();
    size_t bytes = row_size(t, s.cols) * s.rows;
    std::vector<uint8_t> one(bytes), two(bytes), plain(bytes);
    quantize_rows(t, s.input.data(), one.data(), s.rows, s.cols, w, 1);
    quantize_rows(t, s.input.data(), two.data(), s.rows, s.cols, w, 3);
    quantize_rows(t, s.input.data(), plain.data(), s.rows, s.cols, nullptr, 1);
    EXPECT_EQ(one, two) << type_name(t);
    if (uses) EXPECT_NE(one, plain) << type_name(t) << " ignored its importance vector";
    else EXPECT_EQ(one, plain) << type_name(t);
  }
}

// The AVX2 Q4_K / Q6_K dequantizers against ggml's recorded floats.
TEST(QuantSimdKQuants, DequantizeMatchesGgmlVectors) {
  if (quant::cpu_simd_level() < SimdLevel::avx2) GTEST_SKIP() << "no AVX2 on this CPU";
  for (SimdLevel level : levels()) {
    if (level == SimdLevel::scalar) continue;
    SimdCap cap(level);
    test::expect_dequantize_bit_exact(GgmlType::Q4_K);
    test::expect_dequantize_bit_exact(GgmlType::Q6_K);
  }
}

// Random block bytes (every bit pattern is a valid block apart from the fp16
// scales, kept finite here): the AVX2 kernels must equal the scalar ones.
TEST(QuantSimdKQuants, DequantizeMatchesScalarOnRandomBlocks) {
  if (quant::cpu_simd_level() < SimdLevel::avx2) GTEST_SKIP() << "no AVX2 on this CPU";
  std::mt19937 rng(99);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> half(0, 0x7bff);
  for (auto [type, scale_offsets] : {std::pair{GgmlType::Q4_K, std::vector<size_t>{0, 2}},
                                     std::pair{GgmlType::Q6_K, std::vector<size_t>{208}}}) {
    const int64_t n = 256 * 24;
    const size_t bpb = row_size(type, 256);
    std::vector<uint8_t> q(row_size(type, n));
    for (auto& v : q) v = static_cast<uint8_t>(byte(rng));
    for (size_t b = 0; b < size_t(n / 256); ++b)
      for (size_t off : scale_offsets) {
        uint16_t h = static_cast<uint16_t>(half(rng) | (b % 2 ? 0x8000 : 0));
        if (b == 3) h = 0x0001;  // subnormal scale
        std::memcpy(&q[b * bpb + off], &h, 2);
      }
    std::vector<float> ref(n), got(n);
    try {
      SimdCap cap(SimdLevel::scalar);
      dequantize_row(type, q.data(), ref.data(), n);
    } catch (const Error& e) {
      GTEST_SKIP() << "scalar " << type_name(type) << " not available on this branch: " << e.what();
    }
    for (SimdLevel level : levels()) {
      SimdCap cap(level);
      dequantize_row(type, q.data(), got.data(), n);
      EXPECT_EQ(bits_of(got), bits_of(ref)) << type_name(type) << " " << quant::simd_level_name(level);
    }
  }
}

// Values whose product with 1/d is a float tie (k + 0.5) although the exact
// product is just below it: ggml rounds the float product, so they go to k + 1.
// A kernel that fused the multiply into the rounding step (FMA) would give k.
TEST(QuantQ8_0, RoundsTheRoundedProduct) {
  // One block per amax; each block collects up to 31 such values.
  std::vector<float> x;
  std::vector<int> want;  // expected code per value, -999 = not checked
  int found = 0;
  for (int a = 0; a < 64; ++a) {
    const float amax = 0.01f + 0.037f * static_cast<float>(a);
    const float inv = 1.0f / (amax / 127.0f);
    std::vector<float> block(32, 0.0f);
    std::vector<int> codes(32, -999);
    block[0] = amax;
    int n = 1;
    for (int k = 0; k < 126 && n < 32; ++k) {
      const float target = static_cast<float>(k) + 0.5f;
      float v = std::nextafter(target / inv, 0.0f);
      for (int s = 0; s < 4 && n < 32; ++s, v = std::nextafter(v, 1e30f)) {
        if (v * inv == target && double(v) * double(inv) < double(target)) {
          bool neg = n % 2 == 0;
          block[n] = neg ? -v : v;
          codes[n] = neg ? -(k + 1) : k + 1;
          ++n;
          break;
        }
      }
    }
    found += n - 1;
    x.insert(x.end(), block.begin(), block.end());
    want.insert(want.end(), codes.begin(), codes.end());
  }
  ASSERT_GT(found, 50) << "too few float ties found";
  const int64_t n = static_cast<int64_t>(x.size());
  for (SimdLevel level : levels()) {
    SimdCap cap(level);
    std::vector<uint8_t> q(row_size(GgmlType::Q8_0, n));
    quantize_row(GgmlType::Q8_0, x.data(), q.data(), n, nullptr);
    int wrong = 0;
    for (int64_t i = 0; i < n; ++i)
      if (want[i] != -999 && static_cast<int8_t>(q[(i / 32) * 34 + 2 + i % 32]) != want[i]) ++wrong;
    EXPECT_EQ(wrong, 0) << "of " << found << " ties, level " << quant::simd_level_name(level);
  }
}

// With max |x| = 127 the scale is exactly 1, so x.5 values are true ties:
// ggml's roundf sends them away from zero, the SIMD default would go to even.
TEST(QuantQ8_0, TiesRoundAwayFromZeroOnEveryLevel) {
  std::vector<float> x(64);
  for (int j = 0; j < 32; ++j) x[j] = (j % 2 ? -1.0f : 1.0f) * (0.5f + j);
  x[31] = 127.0f;
  for (int j = 32; j < 64; ++j) x[j] = 0.0f;  // an all-zero block gets d = 0
  for (SimdLevel level : levels()) {
    SimdCap cap(level);
    std::vector<uint8_t> q(row_size(GgmlType::Q8_0, 64));
    quantize_row(GgmlType::Q8_0, x.data(), q.data(), 64, nullptr);
    uint16_t d;
    std::memcpy(&d, q.data(), 2);
    EXPECT_EQ(d, 0x3c00) << quant::simd_level_name(level);
    for (int j = 0; j < 31; ++j) {
      int want = static_cast<int>(j + 1) * (j % 2 ? -1 : 1);
      EXPECT_EQ(static_cast<int8_t>(q[2 + j]), want) << "j=" << j << " " << quant::simd_level_name(level);
    }
    for (int j = 34; j < 68; ++j) EXPECT_EQ(q[j], 0) << j;
  }
}

}  // namespace
}  // namespace tailor
