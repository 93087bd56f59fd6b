// Activation rounding of ggml's CPU matrix product (see activations.h). The
// rules are those of the x86 build llama.cpp ships (AVX2 from_float): Q8_0
// and Q8_1 take the inverse scale as 127 / amax and round ties to even; Q8_K
// takes the signed value of largest magnitude, scale -127 / max, ties to even
// and clamps at 127. The integers never leave this file: each block is
// written back as scale * q, which is what the integer dot product weighs.
// The AVX2 kernels give the same floats as the scalar ones.
#include "tailor/quant/activations.h"

#include <algorithm>
#include <cmath>

#include "tailor/quant/simd_target.h"
#include "tailor/util/error.h"
#include "tailor/util/fp16.h"
#include "tailor/util/parallel.h"

namespace tailor {
namespace {

// Nearest integer, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves no
// fraction bits, so the FPU's rounding mode (nearest even) does the work.
// The library is built with -ffp-contract=off, so no FMA folds the product in.
inline float round_even(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}

// 32-element blocks, d = fp16(amax / 127); Q8_0 and Q8_1 alike (Q8_1's block
// sum only enters the min term of Q4_1 / Q5_1, as fp16(d * sum)).
constexpr int kBlock32 = 32;
constexpr int kBlockK = 256;

struct Scale32 {
  float d, inv;
};
inline Scale32 scale32(float amax) {
  return {fp16_to_fp32(fp32_to_fp16(amax / 127.0f)), amax != 0.0f ? 127.0f / amax : 0.0f};
}

// Q8_K: ggml scales by iscale = -127 / max, max the signed value of largest
// magnitude, and stores d = 1 / iscale. d * q does not depend on that sign
// (negation is exact and rounding to even symmetric; the clamp at 127 cannot
// bite, |iscale * x| <= 127 up to one rounding), so 127 / amax gives the same
// floats without searching for the sign.
struct ScaleK {
  float d, inv;
};
inline ScaleK scale_k(float amax) {
  const float iscale = 127.0f / amax;
  return {1.0f / iscale, iscale};
}

void round_q8_32_scalar(const float* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n; b += kBlock32) {
    float amax = 0.0f;
    for (int j = 0; j < kBlock32; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const Scale32 s = scale32(amax);
    for (int j = 0; j < kBlock32; ++j) y[b + j] = s.d * round_even(x[b + j] * s.inv);
  }
}

void round_q8_k_scalar(const float* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n; b += kBlockK) {
    float amax = 0.0f;
    for (int j = 0; j < kBlockK; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    if (amax == 0.0f) {
      std::fill_n(y + b, kBlockK, 0.0f);
      continue;
    }
    const ScaleK s = scale_k(amax);
    for (int j = 0; j < kBlockK; ++j) y[b + j] = s.d * std::min(127.0f, round_even(s.inv * x[b + j]));
  }
}

#if defined(__x86_64__)
TAILOR_AVX2 float block_amax_avx2(const float* x, int n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (int j = 0; j < n; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// d * round_to_even(x * inv), clamped above at `hi`, for n values.
TAILOR_AVX2 void scale_round_avx2(const float* x, float* y, int n, float d, float inv, float hi) {
  const __m256 vd = _mm256_set1_ps(d), vinv = _mm256_set1_ps(inv), vhi = _mm256_set1_ps(hi);
  for (int j = 0; j < n; j += 8) {
    __m256 q = _mm256_mul_ps(_mm256_loadu_ps(x + j), vinv);
    q = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_ps(y + j, _mm256_mul_ps(vd, _mm256_min_ps(q, vhi)));
  }
}

TAILOR_AVX2 void round_q8_32_avx2(const float* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n; b += kBlock32) {
    const Scale32 s = scale32(block_amax_avx2(x + b, kBlock32));
    scale_round_avx2(x + b, y + b, kBlock32, s.d, s.inv, 128.0f);  // |q| <= 127: no clamp
  }
}

TAILOR_AVX2 void round_q8_k_avx2(const float* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n; b += kBlockK) {
    const float amax = block_amax_avx2(x + b, kBlockK);
    if (amax == 0.0f) {
      std::fill_n(y + b, kBlockK, 0.0f);
      continue;
    }
    const ScaleK s = scale_k(amax);
    scale_round_avx2(x + b, y + b, kBlockK, s.d, s.inv, 127.0f);
  }
}

TAILOR_AVX2 void round_f16_avx2(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) y[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
}
#endif

void round_f16_scalar(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
}

using RoundFn = void (*)(const float*, float*, int64_t);
RoundFn pick(RoundFn scalar, [[maybe_unused]] RoundFn avx2) {
  return TAILOR_SIMD_PICK(scalar, avx2, avx2);
}

}  // namespace

GgmlType ggml_vec_dot_type(GgmlType weight) {
  using T = GgmlType;
  switch (weight) {
    case T::F16: return T::F16;
    case T::BF16: return T::BF16;
    case T::Q4_0: case T::Q5_0: case T::Q8_0: case T::IQ4_NL: case T::MXFP4: return T::Q8_0;
    case T::Q4_1: case T::Q5_1: return T::Q8_1;
    case T::Q2_K: case T::Q3_K: case T::Q4_K: case T::Q5_K: case T::Q6_K:
    case T::IQ2_XXS: case T::IQ2_XS: case T::IQ2_S: case T::IQ3_XXS: case T::IQ3_S:
    case T::IQ1_S: case T::IQ1_M: case T::IQ4_XS: case T::TQ1_0: case T::TQ2_0: return T::Q8_K;
    default: return T::F32;
  }
}

void round_activations(GgmlType vec_dot_type, const float* x, float* y, int64_t n) {
  if (n < 0 || !row_fits(vec_dot_type, n))
    fail("activations: a row of {} values does not fit {} blocks", n, type_name(vec_dot_type));
  switch (vec_dot_type) {
    case GgmlType::F32:
      if (x != y) std::copy_n(x, n, y);
      return;
    case GgmlType::F16: pick(round_f16_scalar, round_f16_avx2)(x, y, n); return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
      return;
    case GgmlType::Q8_0:
    case GgmlType::Q8_1: pick(round_q8_32_scalar, round_q8_32_avx2)(x, y, n); return;
    case GgmlType::Q8_K: pick(round_q8_k_scalar, round_q8_k_avx2)(x, y, n); return;
    default:
      fail("activations: {} is not a type ggml converts activations to", type_name(vec_dot_type));
  }
}

void round_activation_rows(GgmlType vec_dot_type, const float* x, float* y, int64_t rows,
                           int64_t cols, int threads) {
  if (rows <= 0) return;
  round_activations(vec_dot_type, x, y, cols);  // checks the type and width once
  // Small batches (one token) are not worth waking threads for.
  if (rows * cols < (int64_t{1} << 15)) threads = 1;
  parallel_for(rows - 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0 + 1; r < r1 + 1; ++r)
      round_activations(vec_dot_type, x + r * cols, y + r * cols, cols);
  }, threads);
}

}  // namespace tailor
