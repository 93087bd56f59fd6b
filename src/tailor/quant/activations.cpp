// Activation rounding of ggml's CPU matrix product (see activations.h). The
// rules are those of the x86 build llama.cpp ships (AVX2 from_float): Q8_0
// and Q8_1 take the inverse scale as 127 / amax and round ties to even; Q8_K
// takes the signed value of largest magnitude, scale -127 / max, ties to even
// and clamps at 127. The integers never leave this file: each block is
// written back as scale * q, which is what the integer dot product weighs.
#include "tailor/quant/activations.h"

#include <algorithm>
#include <cmath>

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
void round_q8_32(const float* x, float* y, int64_t n) {
  constexpr int kBlock = 32;
  for (int64_t b = 0; b < n; b += kBlock) {
    float amax = 0.0f;
    for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const float d = fp16_to_fp32(fp32_to_fp16(amax / 127.0f));
    const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    for (int j = 0; j < kBlock; ++j) y[b + j] = d * round_even(x[b + j] * inv);
  }
}

// 256-element blocks with a float scale 1 / iscale.
void round_q8_k(const float* x, float* y, int64_t n) {
  constexpr int kBlock = 256;
  for (int64_t b = 0; b < n; b += kBlock) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kBlock; ++j) {
      const float a = std::fabs(x[b + j]);
      if (a > amax) {  // strictly: the first of tied magnitudes keeps its sign
        amax = a;
        max = x[b + j];
      }
    }
    if (amax == 0.0f) {
      std::fill_n(y + b, kBlock, 0.0f);
      continue;
    }
    const float iscale = -127.0f / max;
    const float d = 1.0f / iscale;
    for (int j = 0; j < kBlock; ++j) y[b + j] = d * std::min(127.0f, round_even(iscale * x[b + j]));
  }
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
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
      return;
    case GgmlType::Q8_0:
    case GgmlType::Q8_1: round_q8_32(x, y, n); return;
    case GgmlType::Q8_K: round_q8_k(x, y, n); return;
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
