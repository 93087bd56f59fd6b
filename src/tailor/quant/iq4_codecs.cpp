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
  std::array<uint8_t, kHalfHi - kHalfLo> t{};
  for (int h = kHalfLo; h < kHalfHi; ++h) {
    int idx = 0;  // number of midpoints at or below h/2, doubled to stay in integers
    for (int k = 0; k < 15; ++k) idx += kCodebook[k] + kCodebook[k + 1] <= h;
    t[h - kHalfLo] = static_cast<uint8_t>(idx);
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
struct Fit {
  float sqx = 0.0f, sq2 = 0.0f;
};
Fit fit_codes(const float* x, const float* w, float inv) {
  Fit f;
  for (int j = 0; j < kSub; ++j) {
    float q = kCodebook[nearest_code(inv * x[j])];
    f.sqx += w[j] * q * x[j];
    f.sq2 += w[j] * q * q;
  }
  return f;
}

// The (signed) scale of one sub-block. Candidates: the codebook stretched so that
// the largest |x| lands on +113 region, and on -127 shifted by -7..+7 steps.
float search_scale(const float* x, const float* w) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < kSub; ++j)
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  if (amax < 1e-15f) return 0.0f;
  Fit f = fit_codes(x, w, 1.0f / (max / 127.0f));
  float best_d = f.sq2 > 0.0f ? f.sqx / f.sq2 : 0.0f;
  float best_gain = best_d * f.sqx;
  for (int step = -7; step <= 7; ++step) {
    f = fit_codes(x, w, static_cast<float>(step + kCodebook[0]) / max);
    if (f.sq2 > 0.0f && f.sqx * f.sqx > best_gain * f.sq2) {
      best_d = f.sqx / f.sq2;
      best_gain = best_d * f.sqx;
    }
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
  float w[kSub];
  for (int64_t b = 0; b < n / kSub; ++b, src += kSub) {
    error_weights(src, importance ? importance + b * kSub : nullptr, spread(src, kSub), w);
    y[b].d = fp32_to_fp16(search_scale(src, w));
    encode(src, fp16_to_fp32(y[b].d), y[b].qs);
  }
}

void dequantize_iq4_nl(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const BlockIQ4NL*>(src);
  for (int64_t b = 0; b < n / kSub; ++b) decode(x[b].qs, fp16_to_fp32(x[b].d), dst + b * kSub);
}

void quantize_iq4_xs(const float* src, void* dst, int64_t n, const float* importance) {
  auto* y = static_cast<BlockIQ4XS*>(dst);
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
      scales[i] = search_scale(src + i * kSub, w);
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
