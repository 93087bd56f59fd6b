// AVX2 versions of ggml's Q4_K and Q6_K dequantization. Bit-identical to the
// scalar code: the same products in the same order (scale * q - min, and
// (d * scale) * q), no fused multiply-add.
#include "tailor/quant/simd_kquants.h"

#include "tailor/quant/simd_target.h"
#include "tailor/util/fp16.h"

namespace tailor::quant {
namespace {

constexpr int kSuper = 256;

struct BlockQ4K {
  uint16_t d, dmin;    // fp16 super-scales of the sub-block scales and mins
  uint8_t scales[12];  // 8 scales and 8 mins of 6 bits
  uint8_t qs[128];     // 64-value chunks: low nibbles of 32 bytes, then high nibbles
};
static_assert(sizeof(BlockQ4K) == 144, "block_q4_K is 144 bytes in ggml");

struct BlockQ6K {
  uint8_t ql[128];    // low 4 bits
  uint8_t qh[64];     // high 2 bits
  int8_t scales[16];  // one per 16 values
  uint16_t d;
};
static_assert(sizeof(BlockQ6K) == 210, "block_q6_K is 210 bytes in ggml");

// Sub-block j's 6-bit scale and min: j < 4 in the low 6 bits of bytes j and j+4;
// j >= 4 split between a nibble of byte j+4 and the top 2 bits of bytes j-4 / j.
inline void q4k_scale_min(const uint8_t* s, int j, int* scale, int* min) {
  if (j < 4) {
    *scale = s[j] & 63;
    *min = s[j + 4] & 63;
  } else {
    *scale = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
    *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

#if defined(__x86_64__)
// 32 unsigned bytes -> four vectors of 8 floats, each as d * q - m.
TAILOR_AVX2 void store_scaled_u8(__m256i q, __m256 d, __m256 m, float* y) {
  __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int k = 0; k < 4; ++k) {
    __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[k]));
    _mm256_storeu_ps(y + 8 * k, _mm256_sub_ps(_mm256_mul_ps(d, f), m));
  }
}

TAILOR_AVX2 void dequantize_q4_k_avx2(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const BlockQ4K*>(src);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  for (int64_t b = 0; b < n / kSuper; ++b) {
    const float d = fp16_to_fp32(x[b].d), dmin = fp16_to_fp32(x[b].dmin);
    for (int c = 0; c < 4; ++c, y += 64) {
      int sc0, m0, sc1, m1;
      q4k_scale_min(x[b].scales, 2 * c, &sc0, &m0);
      q4k_scale_min(x[b].scales, 2 * c + 1, &sc1, &m1);
      __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs + 32 * c));
      store_scaled_u8(_mm256_and_si256(q, low4), _mm256_set1_ps(d * static_cast<float>(sc0)),
                      _mm256_set1_ps(dmin * static_cast<float>(m0)), y);
      store_scaled_u8(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4),
                      _mm256_set1_ps(d * static_cast<float>(sc1)), _mm256_set1_ps(dmin * static_cast<float>(m1)),
                      y + 32);
    }
  }
}

// 32 signed bytes -> 32 floats; the first 16 scaled by s0, the rest by s1.
TAILOR_AVX2 void store_scaled_i8(__m256i q, float s0, float s1, float* y) {
  __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int k = 0; k < 4; ++k) {
    __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[k]));
    _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_set1_ps(k < 2 ? s0 : s1), f));
  }
}

TAILOR_AVX2 void dequantize_q6_k_avx2(const void* src, float* y, int64_t n) {
  const auto* x = static_cast<const BlockQ6K*>(src);
  const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);
  const __m256i m2hi = _mm256_set1_epi8(0x30), bias = _mm256_set1_epi8(32);
  for (int64_t b = 0; b < n / kSuper; ++b) {
    const float d = fp16_to_fp32(x[b].d);
    // Each half of 128 values: byte l of ql[0..31], ql[32..63] and qh[0..31]
    // gives values l, l+32, l+64 and l+96.
    for (int h = 0; h < 2; ++h, y += 128) {
      const uint8_t* ql = x[b].ql + 64 * h;
      const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i qb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qh + 32 * h));
      __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(qa, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4)),
          _mm256_or_si256(_mm256_and_si256(qb, m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), m4), _mm256_and_si256(qh, m2hi)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                          _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2hi)),
      };
      const int8_t* sc = x[b].scales + 8 * h;
      for (int k = 0; k < 4; ++k)
        store_scaled_i8(_mm256_sub_epi8(q[k], bias), d * static_cast<float>(sc[2 * k]),
                        d * static_cast<float>(sc[2 * k + 1]), y + 32 * k);
    }
  }
}
#endif

}  // namespace

DequantizeFn simd_dequantize_q4_k() {
  return TAILOR_SIMD_PICK(static_cast<DequantizeFn>(nullptr), dequantize_q4_k_avx2, dequantize_q4_k_avx2);
}

DequantizeFn simd_dequantize_q6_k() {
  return TAILOR_SIMD_PICK(static_cast<DequantizeFn>(nullptr), dequantize_q6_k_avx2, dequantize_q6_k_avx2);
}

}  // namespace tailor::quant
