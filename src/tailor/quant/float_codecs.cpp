// F32, F16 and BF16 rows. The scalar conversions are util/fp16.h (bit-exact
// with ggml); the x86 versions below must give the same bits for every input,
// NaN payloads included, so lanes holding a NaN fall back to the scalar code.
#include <cstring>

#include "tailor/quant/kernels.h"
#include "tailor/quant/simd_target.h"
#include "tailor/util/fp16.h"


namespace tailor::quant {
namespace {

void f16_to_f32_scalar(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}
void f32_to_f16_scalar(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}
void bf16_to_f32_scalar(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(src[i]);
}
void f32_to_bf16_scalar(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp32_to_bf16(src[i]);
}

#if defined(__x86_64__)
// A half NaN is widened by hardware with its payload kept and quieted, as ggml's
// float arithmetic does; the scalar code is the reference, so NaN lanes go there.
TAILOR_AVX2 bool has_half_nan8(__m128i h) {
  __m128i mag = _mm_and_si128(h, _mm_set1_epi16(0x7fff));
  return _mm_movemask_epi8(_mm_cmpgt_epi16(mag, _mm_set1_epi16(0x7c00))) != 0;
}

TAILOR_AVX2 void f16_to_f32_avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    if (has_half_nan8(h)) {
      f16_to_f32_scalar(src + i, dst + i, 8);
      continue;
    }
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  f16_to_f32_scalar(src + i, dst + i, n - i);
}

TAILOR_AVX2 void f32_to_f16_avx2(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(src + i);
    if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)) != 0) {
      f32_to_f16_scalar(src + i, dst + i, 8);  // ggml writes every NaN as 0x7e00
      continue;
    }
    __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  f32_to_f16_scalar(src + i, dst + i, n - i);
}

TAILOR_AVX2 void bf16_to_f32_avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), w);
  }
  bf16_to_f32_scalar(src + i, dst + i, n - i);
}

// Round-to-nearest-even on the bit pattern, NaN quieted (bit 6 of the half set).
TAILOR_AVX2 __m256i bf16_round8(__m256i x) {
  const __m256i one = _mm256_set1_epi32(1);
  __m256i mag = _mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff));
  __m256i is_nan = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7f800000));
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), one);
  __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
  __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(64));
  return _mm256_blendv_epi8(rounded, quiet, is_nan);
}

TAILOR_AVX2 void f32_to_bf16_avx2(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i a = bf16_round8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    __m256i b = bf16_round8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 8)));
    // packus interleaves the 128-bit lanes; the permute puts them back in order.
    __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), p);
  }
  f32_to_bf16_scalar(src + i, dst + i, n - i);
}

TAILOR_AVX512 void f16_to_f32_avx512(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    __m256i mag = _mm256_and_si256(h, _mm256_set1_epi16(0x7fff));
    if (_mm256_cmpgt_epi16_mask(mag, _mm256_set1_epi16(0x7c00)) != 0) {
      f16_to_f32_scalar(src + i, dst + i, 16);
      continue;
    }
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
  }
  f16_to_f32_avx2(src + i, dst + i, n - i);
}

TAILOR_AVX512 void f32_to_f16_avx512(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 x = _mm512_loadu_ps(src + i);
    if (_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q) != 0) {
      f32_to_f16_scalar(src + i, dst + i, 16);
      continue;
    }
    __m256i h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), h);
  }
  f32_to_f16_avx2(src + i, dst + i, n - i);
}

TAILOR_AVX512 void bf16_to_f32_avx512(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
    _mm512_storeu_si512(dst + i, w);
  }
  bf16_to_f32_avx2(src + i, dst + i, n - i);
}

TAILOR_AVX512 void f32_to_bf16_avx512(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  const __m512i one = _mm512_set1_epi32(1);
  for (; i + 16 <= n; i += 16) {
    __m512i x = _mm512_loadu_si512(src + i);
    __m512i mag = _mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff));
    __mmask16 is_nan = _mm512_cmpgt_epi32_mask(mag, _mm512_set1_epi32(0x7f800000));
    __m512i hi = _mm512_srli_epi32(x, 16);
    __m512i lsb = _mm512_and_si512(hi, one);
    __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(x, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
    __m512i r = _mm512_mask_or_epi32(rounded, is_nan, hi, _mm512_set1_epi32(64));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(r));
  }
  f32_to_bf16_avx2(src + i, dst + i, n - i);
}
#endif

}  // namespace

void dequantize_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

void quantize_f32(const float* src, void* dst, int64_t n, const float*) {
  std::memcpy(dst, src, n * sizeof(float));
}

void dequantize_f16(const void* src, float* dst, int64_t n) {
  TAILOR_SIMD_PICK(f16_to_f32_scalar, f16_to_f32_avx2, f16_to_f32_avx512)(
      static_cast<const uint16_t*>(src), dst, n);
}

void quantize_f16(const float* src, void* dst, int64_t n, const float*) {
  TAILOR_SIMD_PICK(f32_to_f16_scalar, f32_to_f16_avx2, f32_to_f16_avx512)(
      src, static_cast<uint16_t*>(dst), n);
}

void dequantize_bf16(const void* src, float* dst, int64_t n) {
  TAILOR_SIMD_PICK(bf16_to_f32_scalar, bf16_to_f32_avx2, bf16_to_f32_avx512)(
      static_cast<const uint16_t*>(src), dst, n);
}

void quantize_bf16(const float* src, void* dst, int64_t n, const float*) {
  TAILOR_SIMD_PICK(f32_to_bf16_scalar, f32_to_bf16_avx2, f32_to_bf16_avx512)(
      src, static_cast<uint16_t*>(dst), n);
}

}  // namespace tailor::quant
