// Q8_0: blocks of 32 int8 values with one fp16 scale, d = max|x| / 127.
// ggml rounds with roundf (ties away from zero); the SIMD versions reproduce
// that exactly instead of using the hardware's ties-to-even.
#include <cmath>
#include <cstring>

#include "tailor/quant/kernels.h"
#include "tailor/quant/simd_target.h"
#include "tailor/util/fp16.h"

namespace tailor::quant {
namespace {

constexpr int kBlock = 32;

struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kBlock];
};
static_assert(sizeof(BlockQ8_0) == 34, "block_q8_0 is 34 bytes in ggml");

// The scale and its inverse as ggml computes them (a true division, then 1/d).
struct Scale {
  float d, inv;
};
inline Scale scale_for(float amax) {
  float d = amax / 127.0f;
  return {d, d != 0.0f ? 1.0f / d : 0.0f};
}

void quantize_scalar(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += kBlock) {
    float amax = 0.0f;
    for (int j = 0; j < kBlock; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    Scale s = scale_for(amax);
    y[b].d = fp32_to_fp16(s.d);
    for (int j = 0; j < kBlock; ++j) y[b].qs[j] = static_cast<int8_t>(std::roundf(x[j] * s.inv));
  }
}

void dequantize_scalar(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, y += kBlock) {
    float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < kBlock; ++j) y[j] = x[b].qs[j] * d;
  }
}

#if defined(__x86_64__)
// roundf for |v| < 2^23: truncate, then step away from zero when the dropped
// fraction (exact) is at least one half.
TAILOR_AVX2 __m256 round_away8(__m256 v) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
  __m256 step = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0f));
  __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
  return _mm256_add_ps(t, _mm256_and_ps(up, step));
}

TAILOR_AVX2 void quantize_avx2(const float* x, BlockQ8_0* y, int64_t nb) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < nb; ++b, x += kBlock) {
    __m256 v[4];
    for (int k = 0; k < 4; ++k) v[k] = _mm256_loadu_ps(x + 8 * k);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    Scale s = scale_for(_mm_cvtss_f32(m4));
    y[b].d = fp32_to_fp16(s.d);
    const __m256 inv = _mm256_set1_ps(s.inv);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) q[k] = _mm256_cvttps_epi32(round_away8(_mm256_mul_ps(v[k], inv)));
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), _mm256_permutevar8x32_epi32(p, order));
  }
}

TAILOR_AVX2 void dequantize_avx2(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, y += kBlock) {
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(x[b].d));
    for (int k = 0; k < 4; ++k) {
      __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x[b].qs + 8 * k));
      _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
    }
  }
}

TAILOR_AVX512 __m512 round_away16(__m512 v) {
  __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
  __m512 step = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));
  return _mm512_mask_add_ps(t, up, t, step);
}

TAILOR_AVX512 void quantize_avx512(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += kBlock) {
    __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    Scale s = scale_for(amax);
    y[b].d = fp32_to_fp16(s.d);
    const __m512 inv = _mm512_set1_ps(s.inv);
    __m128i q0 = _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(round_away16(_mm512_mul_ps(v0, inv))));
    __m128i q1 = _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(round_away16(_mm512_mul_ps(v1, inv))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs), q0);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + 16), q1);
  }
}

TAILOR_AVX512 void dequantize_avx512(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, y += kBlock) {
    const __m512 d = _mm512_set1_ps(fp16_to_fp32(x[b].d));
    for (int k = 0; k < 2; ++k) {
      __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].qs + 16 * k));
      _mm512_storeu_ps(y + 16 * k, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d));
    }
  }
}
#endif

}  // namespace

void quantize_q8_0(const float* src, void* dst, int64_t n, const float*) {
  TAILOR_SIMD_PICK(quantize_scalar, quantize_avx2, quantize_avx512)(
      src, static_cast<BlockQ8_0*>(dst), n / kBlock);
}

void dequantize_q8_0(const void* src, float* dst, int64_t n) {
  TAILOR_SIMD_PICK(dequantize_scalar, dequantize_avx2, dequantize_avx512)(
      static_cast<const BlockQ8_0*>(src), dst, n / kBlock);
}

}  // namespace tailor::quant
