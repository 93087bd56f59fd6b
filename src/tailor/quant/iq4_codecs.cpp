// IQ4_NL and IQ4_XS: 4-bit indices into a fixed non-linear codebook (denser
// near zero, like the weights). IQ4_NL: one fp16 scale per 32 values.
// IQ4_XS: 256-value super-blocks, an fp16 super-scale and a 6-bit signed scale
// per 32 values. Scales come from a weighted least-squares search over a few
// candidate grid stretchings, as ggml does, so the error matches ggml's.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "tailor/quant/kernels.h"
#include "tailor/quant/simd_target.h"
#include "tailor/util/fp16.h"

namespace tailor::quant {
namespace {

constexpr int kSub = 32;     // values per scale
constexpr int kSuper = 256;  // IQ4_XS super-block

// ggml's kvalues_iq4nl. Asymmetric: -127 is the only entry past +-113.
constexpr int8_t kCodebook[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                  1,    13,   25,  38,  53,  69,  89,  113};

struct BlockIQ4NL {
  uint16_t d;
  uint8_t qs[kSub / 2];  // value j in the low nibble of byte j, value j+16 in its high nibble
};
static_assert(sizeof(BlockIQ4NL) == 18, "block_iq4_nl is 18 bytes in ggml");

struct BlockIQ4XS {
  uint16_t d;
  uint16_t scales_h;  // bits 2i..2i+1: high 2 bits of sub-block i's 6-bit scale
  uint8_t scales_l[kSuper / 64];  // low 4 bits, two sub-blocks per byte (even one low)
  uint8_t qs[kSuper / 2];         // 16 bytes per sub-block, packed as in IQ4_NL
};
static_assert(sizeof(BlockIQ4XS) == 136, "block_iq4_xs is 136 bytes in ggml");

// Index of the codebook entry nearest to v; at an exact midpoint the larger entry.
// All midpoints are multiples of 1/2, so the answer is constant on each interval
// [h/2, (h+1)/2) and a table over h replaces a branchy search (the hot spot).
constexpr int kHalfLo = 2 * -127, kHalfHi = 2 * 113;
constexpr auto kNearestByHalf = [] {
  std::array<int32_t, kHalfHi - kHalfLo> t{};  // int32 so that SIMD gathers can read it
  for (int h = kHalfLo; h < kHalfHi; ++h) {
    int idx = 0;  // number of midpoints at or below h/2, doubled to stay in integers
    for (int k = 0; k < 15; ++k) idx += kCodebook[k] + kCodebook[k + 1] <= h;
    t[h - kHalfLo] = idx;
  }
  return t;
}();

inline int nearest_code(float v) {
  if (!(v > kCodebook[0])) return 0;  // NaN lands here too
  if (v >= kCodebook[15]) return 15;
  // 2v + 256 > 0, so truncation is floor; a value within rounding of an integer
  // boundary may take the neighbouring interval, i.e. decide a near-tie differently.
  int h = static_cast<int>(2.0f * v + 256.0f) - 256;
  return kNearestByHalf[std::clamp(h, kHalfLo, kHalfHi - 1) - kHalfLo];
}

// Per-value weights of the squared error the search minimises. Without an
// importance vector, x^2 favours the large values; with one, the importance is
// tempered by the value's size relative to the super-block's spread (sigma2).
void error_weights(const float* x, const float* importance, float sigma2, float* w) {
  for (int j = 0; j < kSub; ++j)
    w[j] = importance ? importance[j] * std::sqrt(sigma2 + x[j] * x[j]) : x[j] * x[j];
}

float spread(const float* x, int n) {
  float s = 0.0f;
  for (int j = 0; j < n; ++j) s += x[j] * x[j];
  return s * 2.0f / static_cast<float>(n);
}

// Sums for the least-squares scale of one sub-block when v -> nearest code of v*inv:
// the best scale is sqx/sq2 and it removes sqx^2/sq2 from the weighted error.
// The search tries kCandidates stretchings; the SIMD versions run them in
// parallel lanes, each lane summing in the same order as the scalar loop, so
// all levels produce the same bits.
constexpr int kCandidates = 16;
using FitFn = void (*)(const float* x, const float* w, const float* inv, float* sqx, float* sq2);

void fit_scalar(const float* x, const float* w, const float* inv, float* sqx, float* sq2) {
  for (int c = 0; c < kCandidates; ++c) {
    sqx[c] = sq2[c] = 0.0f;
    for (int j = 0; j < kSub; ++j) {
      float q = kCodebook[nearest_code(inv[c] * x[j])];
      sqx[c] += w[j] * q * x[j];
      sq2[c] += w[j] * q * q;
    }
  }
}

#if defined(__x86_64__)
// nearest_code on 8 lanes, then the code's value.
TAILOR_AVX2 __m256 nearest_value8(__m256 v, __m256 cb_lo, __m256 cb_hi) {
  __m256i h = _mm256_sub_epi32(
      _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(2.0f)), _mm256_set1_ps(256.0f))),
      _mm256_set1_epi32(256));
  h = _mm256_min_epi32(_mm256_max_epi32(h, _mm256_set1_epi32(kHalfLo)), _mm256_set1_epi32(kHalfHi - 1));
  __m256i idx = _mm256_i32gather_epi32(kNearestByHalf.data(), _mm256_sub_epi32(h, _mm256_set1_epi32(kHalfLo)), 4);
  __m256 low = _mm256_cmp_ps(v, _mm256_set1_ps(kCodebook[0]), _CMP_NGT_UQ);  // NaN too
  __m256 high = _mm256_cmp_ps(v, _mm256_set1_ps(kCodebook[15]), _CMP_GE_OQ);
  idx = _mm256_andnot_si256(_mm256_castps_si256(low), idx);
  idx = _mm256_blendv_epi8(idx, _mm256_set1_epi32(15), _mm256_castps_si256(high));
  __m256 upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7)));
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(cb_lo, idx), _mm256_permutevar8x32_ps(cb_hi, idx), upper);
}

TAILOR_AVX2 void fit_avx2(const float* x, const float* w, const float* inv, float* sqx, float* sq2) {
  float cb[16];
  for (int k = 0; k < 16; ++k) cb[k] = kCodebook[k];
  const __m256 cb_lo = _mm256_loadu_ps(cb), cb_hi = _mm256_loadu_ps(cb + 8);
  for (int half = 0; half < kCandidates / 8; ++half) {
    const __m256 vinv = _mm256_loadu_ps(inv + 8 * half);
    __m256 ax = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();
    for (int j = 0; j < kSub; ++j) {
      const __m256 xj = _mm256_set1_ps(x[j]);
      __m256 q = nearest_value8(_mm256_mul_ps(vinv, xj), cb_lo, cb_hi);
      __m256 wq = _mm256_mul_ps(_mm256_set1_ps(w[j]), q);
      ax = _mm256_add_ps(ax, _mm256_mul_ps(wq, xj));
      a2 = _mm256_add_ps(a2, _mm256_mul_ps(wq, q));
    }
    _mm256_storeu_ps(sqx + 8 * half, ax);
    _mm256_storeu_ps(sq2 + 8 * half, a2);
  }
}

TAILOR_AVX512 void fit_avx512(const float* x, const float* w, const float* inv, float* sqx, float* sq2) {
  float cb[16];
  for (int k = 0; k < 16; ++k) cb[k] = kCodebook[k];
  const __m512 codebook = _mm512_loadu_ps(cb);
  const __m512 vinv = _mm512_loadu_ps(inv);
  __m512 ax = _mm512_setzero_ps(), a2 = _mm512_setzero_ps();
  for (int j = 0; j < kSub; ++j) {
    const __m512 xj = _mm512_set1_ps(x[j]);
    const __m512 v = _mm512_mul_ps(vinv, xj);
    __m512i h = _mm512_sub_epi32(
        _mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(2.0f)), _mm512_set1_ps(256.0f))),
        _mm512_set1_epi32(256));
    h = _mm512_min_epi32(_mm512_max_epi32(h, _mm512_set1_epi32(kHalfLo)), _mm512_set1_epi32(kHalfHi - 1));
    __m512i idx = _mm512_i32gather_epi32(_mm512_sub_epi32(h, _mm512_set1_epi32(kHalfLo)), kNearestByHalf.data(), 4);
    __mmask16 low = _mm512_cmp_ps_mask(v, _mm512_set1_ps(kCodebook[0]), _CMP_NGT_UQ);
    __mmask16 high = _mm512_cmp_ps_mask(v, _mm512_set1_ps(kCodebook[15]), _CMP_GE_OQ);
    idx = _mm512_mask_mov_epi32(idx, low, _mm512_setzero_si512());
    idx = _mm512_mask_mov_epi32(idx, high, _mm512_set1_epi32(15));
    const __m512 q = _mm512_permutexvar_ps(idx, codebook);
    const __m512 wq = _mm512_mul_ps(_mm512_set1_ps(w[j]), q);
    ax = _mm512_add_ps(ax, _mm512_mul_ps(wq, xj));
    a2 = _mm512_add_ps(a2, _mm512_mul_ps(wq, q));
  }
  _mm512_storeu_ps(sqx, ax);
  _mm512_storeu_ps(sq2, a2);
}
#endif

// The (signed) scale of one sub-block. Candidates: the codebook stretched so that
// the largest |x| lands near +113 (clamped there), and on -127 shifted by -7..+7 steps.
float search_scale(const float* x, const float* w, FitFn fit) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < kSub; ++j)
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  if (amax < 1e-15f) return 0.0f;
  float inv[kCandidates], sqx[kCandidates], sq2[kCandidates];
  inv[0] = 1.0f / (max / 127.0f);
  for (int c = 1; c < kCandidates; ++c) inv[c] = static_cast<float>(c - 8 + kCodebook[0]) / max;
  fit(x, w, inv, sqx, sq2);
  float best_d = sq2[0] > 0.0f ? sqx[0] / sq2[0] : 0.0f;
  float best_gain = best_d * sqx[0];
  for (int c = 1; c < kCandidates; ++c)
    if (sq2[c] > 0.0f && sqx[c] * sqx[c] > best_gain * sq2[c]) {
      best_d = sqx[c] / sq2[c];
      best_gain = best_d * sqx[c];
    }
  return best_d;
}

// Codes for the scale actually stored, packed two per byte.
void encode(const float* x, float d, uint8_t* qs) {
  float inv = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kSub / 2; ++j)
    qs[j] = static_cast<uint8_t>(nearest_code(inv * x[j]) | (nearest_code(inv * x[j + 16]) << 4));
}

inline void decode(const uint8_t* qs, float d, float* y) {
  for (int j = 0; j < kSub / 2; ++j) {
    y[j] = d * kCodebook[qs[j] & 0xf];
    y[j + 16] = d * kCodebook[qs[j] >> 4];
  }
}

}  // namespace

void quantize_iq4_nl(const float* src, void* dst, int64_t n, const float* importance) {
  auto* y = static_cast<BlockIQ4NL*>(dst);
  const FitFn fit = TAILOR_SIMD_PICK(fit_scalar, fit_avx2, fit_avx512);
  float w[kSub];
  for (int64_t b = 0; b < n / kSub; ++b, src += kSub) {
    error_weights(src, importance ? importance + b * kSub : nullptr, spread(src, kSub), w);
    y[b].d = fp32_to_fp16(search_scale(src, w, fit));
    encode(src, fp16_to_fp32(y[b].d), y[b].qs);
  }
}

void dequantize_iq4_nl(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const BlockIQ4NL*>(src);
  for (int64_t b = 0; b < n / kSub; ++b) decode(x[b].qs, fp16_to_fp32(x[b].d), dst + b * kSub);
}

void quantize_iq4_xs(const float* src, void* dst, int64_t n, const float* importance) {
  auto* y = static_cast<BlockIQ4XS*>(dst);
  const FitFn fit = TAILOR_SIMD_PICK(fit_scalar, fit_avx2, fit_avx512);
  constexpr int kSubs = kSuper / kSub;
  float w[kSub], scales[kSubs];
  for (int64_t b = 0; b < n / kSuper; ++b, src += kSuper) {
    const float* imp = importance ? importance + b * kSuper : nullptr;
    float sigma2 = spread(src, kSuper);
    // The sub-block scale of largest magnitude sets the super-scale so that it
    // maps to -32, the end of the 6-bit range with the most room.
    float max_scale = 0.0f;
    for (int i = 0; i < kSubs; ++i) {
      error_weights(src + i * kSub, imp ? imp + i * kSub : nullptr, sigma2, w);
      scales[i] = search_scale(src + i * kSub, w, fit);
      if (std::fabs(scales[i]) > std::fabs(max_scale)) max_scale = scales[i];
    }
    y[b].d = fp32_to_fp16(-max_scale / 32.0f);
    float d = fp16_to_fp32(y[b].d);
    float inv = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].scales_h = 0;
    std::memset(y[b].scales_l, 0, sizeof(y[b].scales_l));
    for (int i = 0; i < kSubs; ++i) {
      int l = std::clamp(static_cast<int>(std::nearbyint(inv * scales[i])), -32, 31);
      encode(src + i * kSub, d * static_cast<float>(l), y[b].qs + i * (kSub / 2));
      unsigned stored = static_cast<unsigned>(l + 32);
      y[b].scales_l[i / 2] |= static_cast<uint8_t>((stored & 0xf) << (4 * (i % 2)));
      y[b].scales_h |= static_cast<uint16_t>((stored >> 4) << (2 * i));
    }
  }
}

void dequantize_iq4_xs(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const BlockIQ4XS*>(src);
  for (int64_t b = 0; b < n / kSuper; ++b) {
    float d = fp16_to_fp32(x[b].d);
    for (int i = 0; i < kSuper / kSub; ++i) {
      int stored = ((x[b].scales_l[i / 2] >> (4 * (i % 2))) & 0xf) | (((x[b].scales_h >> (2 * i)) & 3) << 4);
      decode(x[b].qs + i * (kSub / 2), d * static_cast<float>(stored - 32), dst + b * kSuper + i * kSub);
    }
  }
}

}  // namespace tailor::quant
