// Q2_K..Q6_K: super-blocks of 256 values split into sub-blocks of 16 or 32,
// each with a small integer scale (and min) that is itself quantized against
// one fp16 super-block scale (and min scale).
//
// Without importance the quantizers are ggml's reference ones (each sub-block
// fitted on its own, then the sub-block scales spread linearly over their
// range); with importance the sub-block fits are weighted and the sub-block
// scales themselves are searched (ggml's *_impl paths). Either way the levels
// are recomputed from the final, rounded scales before packing.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "tailor/quant/block_io.h"
#include "tailor/quant/kernels.h"
#include "tailor/quant/scale_search.h"

namespace tailor::quant {
namespace {

constexpr int kSuper = 256;

struct BlockQ2K {
  uint8_t scales[16];  // low nibble: scale, high nibble: min, per 16 values
  uint8_t qs[64];      // 2-bit levels
  uint8_t d[2];
  uint8_t dmin[2];
};
struct BlockQ3K {
  uint8_t hmask[32];   // third bit of each level
  uint8_t qs[64];      // low 2 bits
  uint8_t scales[12];  // 16 six-bit scales, offset by 32
  uint8_t d[2];
};
struct BlockQ4K {
  uint8_t d[2];
  uint8_t dmin[2];
  uint8_t scales[12];  // 8 six-bit scales and 8 six-bit mins
  uint8_t qs[128];
};
struct BlockQ5K {
  uint8_t d[2];
  uint8_t dmin[2];
  uint8_t scales[12];
  uint8_t qh[32];      // fifth bit of each level
  uint8_t qs[128];
};
struct BlockQ6K {
  uint8_t ql[128];     // low 4 bits
  uint8_t qh[64];      // high 2 bits
  int8_t scales[16];
  uint8_t d[2];
};
static_assert(sizeof(BlockQ2K) == 84 && sizeof(BlockQ3K) == 110 && sizeof(BlockQ4K) == 144);
static_assert(sizeof(BlockQ5K) == 176 && sizeof(BlockQ6K) == 210);

// ---- bit layouts shared by several types --------------------------------

// Q2_K and Q3_K low bits: byte 32*h + l (h = e / 128) holds, at shift 2*k,
// element 128*h + 32*k + l.
void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const uint8_t* e = L + 128 * h + l;
      qs[32 * h + l] = static_cast<uint8_t>(e[0] | (e[32] << 2) | (e[64] << 4) | (e[96] << 6));
    }
}

inline int low_2bit(const uint8_t* qs, int e) {
  return (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
}

// Q3_K's sixteen 6-bit scales: low nibbles in bytes 0-7 (scale j and j + 8
// share byte j % 8), high 2 bits in bytes 8-11 (byte 8 + j % 4, shift 2*(j/4)).
void pack_q3_scales(const int* v, uint8_t* out) {
  std::memset(out, 0, 12);
  for (int j = 0; j < 16; ++j) {
    out[j % 8] |= static_cast<uint8_t>((v[j] & 0xF) << (j < 8 ? 0 : 4));
    out[8 + j % 4] |= static_cast<uint8_t>(((v[j] >> 4) & 3) << (2 * (j / 4)));
  }
}

inline int q3_scale(const uint8_t* s, int j) {
  int low = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
  int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | high << 4) - 32;
}

// Q4_K/Q5_K: eight 6-bit scales and mins in 12 bytes. Sub-blocks 0-3 keep
// theirs in the low 6 bits of bytes j (scale) and j + 4 (min); sub-blocks 4-7
// keep the low 4 bits in byte j + 4 and the top 2 bits in the spare top bits
// of bytes j - 4 (scale) and j (min).
void pack_k4_scales(const uint8_t* ls, const uint8_t* lm, uint8_t* out) {
  for (int j = 0; j < 4; ++j) {
    out[j] = ls[j];
    out[j + 4] = lm[j];
  }
  for (int j = 4; j < 8; ++j) {
    out[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
    out[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
    out[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
  }
}

inline void k4_scale_min(const uint8_t* s, int j, int* scale, int* min) {
  if (j < 4) {
    *scale = s[j] & 63;
    *min = s[j + 4] & 63;
  } else {
    *scale = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// ---- the final pass: levels from the rounded scales ----------------------

// Affine sub-block: x ~ d * L - m. Sub-blocks whose scale rounded to zero keep
// the levels of their search.
void requantize_affine(const float* x, int n, float d, float m, int nmax, uint8_t* L) {
  if (d == 0.0f) return;
  for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(std::clamp(nearest_int((x[i] + m) / d), 0, nmax));
}

// Symmetric sub-block: x ~ d * (L - half), L in [0, 2*half).
void requantize_symmetric(const float* x, int n, float d, int half, int8_t* L) {
  if (d == 0.0f) return;
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(std::clamp(nearest_int(x[i] / d), -half, half - 1) + half);
}

// Weights from an importance vector for the sub-blocks of one super-block,
// with their per-sub-block sums.
void weigh_sub_block(const float* x, const float* importance, float sigma2, int n, float* w, float* sum) {
  importance_weights(x, importance, sigma2, n, w);
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s += w[i];
  *sum = s;
}

// ---- Q2_K ------------------------------------------------------------------

void quantize_q2k_block(const float* x, const float* importance, BlockQ2K& blk) {
  uint8_t L[kSuper];
  float scales[16], mins[16];
  if (importance == nullptr) {
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 16; ++j) {
      float w[16];
      for (int i = 0; i < 16; ++i) w[i] = std::fabs(x[16 * j + i]);
      scales[j] = fit_affine(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], AffineSearch{-0.5f, 0.1f, 15, true});
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    // Sub-block scales and mins spread linearly over 0..15.
    std::memset(blk.scales, 0, 16);
    if (max_scale > 0) {
      float iscale = 15.0f / max_scale;
      for (int j = 0; j < 16; ++j) blk.scales[j] = static_cast<uint8_t>(nearest_int(iscale * scales[j]));
    }
    store_half(blk.d, max_scale > 0 ? max_scale / 15.0f : 0.0f);
    if (max_min > 0) {
      float iscale = 15.0f / max_min;
      for (int j = 0; j < 16; ++j) blk.scales[j] |= static_cast<uint8_t>(nearest_int(iscale * mins[j]) << 4);
    }
    store_half(blk.dmin, max_min > 0 ? max_min / 15.0f : 0.0f);
  } else {
    const float sigma2 = sum_squares(x, kSuper) / kSuper;
    float sw[16];
    for (int j = 0; j < 16; ++j) {
      float w[16];
      weigh_sub_block(x + 16 * j, importance + 16 * j, sigma2, 16, w, &sw[j]);
      scales[j] = fit_affine(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], AffineSearch{-0.9f, 0.05f, 36, false});
    }
    uint8_t ls[16], lm[16];
    store_half(blk.d, fit_positive(16, 15, scales, sw, ls));
    store_half(blk.dmin, fit_positive(16, 15, mins, sw, lm));
    for (int j = 0; j < 16; ++j) blk.scales[j] = static_cast<uint8_t>(ls[j] | (lm[j] << 4));
  }
  const float d = load_half(blk.d), dmin = load_half(blk.dmin);
  for (int j = 0; j < 16; ++j)
    requantize_affine(x + 16 * j, 16, d * (blk.scales[j] & 0xF), dmin * (blk.scales[j] >> 4), 3, L + 16 * j);
  pack_2bit(L, blk.qs);
}

// ---- Q3_K ------------------------------------------------------------------

void quantize_q3k_block(const float* x, const float* importance, BlockQ3K& blk) {
  int8_t L[kSuper];
  float scales[16];
  int levels[16] = {};
  if (importance == nullptr) {
    float max_scale = 0.0f, amax = 0.0f;
    for (int j = 0; j < 16; ++j) {
      scales[j] = fit_symmetric_refined(16, 4, x + 16 * j, L + 16 * j);
      if (std::fabs(scales[j]) > amax) {
        amax = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    // The signed largest scale maps to -32; the others spread linearly.
    float d = 0.0f;
    if (max_scale != 0.0f) {
      float iscale = -32.0f / max_scale;
      for (int j = 0; j < 16; ++j) {
        int8_t l = static_cast<int8_t>(nearest_int(iscale * scales[j]));
        levels[j] = std::clamp<int>(l, -32, 31) + 32;
      }
      d = 1 / iscale;
    }
    store_half(blk.d, d);
  } else {
    const float sigma2 = 2 * sum_squares(x, kSuper) / kSuper;
    float sw[16];
    for (int j = 0; j < 16; ++j) {
      float w[16];
      weigh_sub_block(x + 16 * j, importance + 16 * j, sigma2, 16, w, &sw[j]);
      scales[j] = fit_symmetric(16, 4, x + 16 * j, w, L + 16 * j);
    }
    int8_t ls[16];
    store_half(blk.d, fit_symmetric(16, 32, scales, sw, ls));
    for (int j = 0; j < 16; ++j) levels[j] = ls[j];
  }
  pack_q3_scales(levels, blk.scales);
  const float d = load_half(blk.d);
  for (int j = 0; j < 16; ++j) requantize_symmetric(x + 16 * j, 16, d * q3_scale(blk.scales, j), 4, L + 16 * j);

  // Levels 0..7: bit 2 to hmask (byte e % 32, bit e / 32), bits 0-1 to qs.
  uint8_t low[kSuper];
  std::memset(blk.hmask, 0, 32);
  for (int e = 0; e < kSuper; ++e) {
    if (L[e] > 3) blk.hmask[e % 32] |= static_cast<uint8_t>(1u << (e / 32));
    low[e] = static_cast<uint8_t>(L[e] & 3);
  }
  pack_2bit(low, blk.qs);
}

// ---- Q4_K and Q5_K ---------------------------------------------------------

// Fits the eight 32-value sub-blocks of a Q4_K/Q5_K super-block: levels in L
// (0..nmax), the packed 6-bit scales and mins, and the two fp16 scales.
void fit_k4_super_block(const float* x, const float* importance, int nmax, const AffineSearch& plain,
                        uint8_t* L, uint8_t* scales12, uint8_t* d_out, uint8_t* dmin_out) {
  float scales[8], mins[8];
  uint8_t ls[8], lm[8];
  float w[32];
  if (importance == nullptr) {
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 8; ++j) {
      const float* xs = x + 32 * j;
      const float av_x = std::sqrt(sum_squares(xs, 32) / 32);
      for (int i = 0; i < 32; ++i) w[i] = av_x + std::fabs(xs[i]);
      scales[j] = fit_affine(32, nmax, xs, w, L + 32 * j, &mins[j], plain);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < 8; ++j) {
      // Truncation to a byte before the cap, as ggml does.
      ls[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_scale * scales[j])));
      lm[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_min * mins[j])));
    }
    store_half(d_out, max_scale / 63.0f);
    store_half(dmin_out, max_min / 63.0f);
  } else {
    const float sigma2 = 2 * sum_squares(x, kSuper) / kSuper;
    float sw[8];
    for (int j = 0; j < 8; ++j) {
      weigh_sub_block(x + 32 * j, importance + 32 * j, sigma2, 32, w, &sw[j]);
      scales[j] = fit_affine(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], AffineSearch{-0.9f, 0.05f, 36, false});
    }
    store_half(d_out, fit_positive(8, 63, scales, sw, ls));
    store_half(dmin_out, fit_positive(8, 63, mins, sw, lm));
  }
  pack_k4_scales(ls, lm, scales12);
  const float d = load_half(d_out), dmin = load_half(dmin_out);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    k4_scale_min(scales12, j, &sc, &m);
    requantize_affine(x + 32 * j, 32, d * sc, dmin * m, nmax, L + 32 * j);
  }
}

// Q4_K/Q5_K value e from its level: 64-value chunks, sub-block e / 32.
inline float k4_value(const uint8_t* scales12, float d, float dmin, int e, int level) {
  int sc, m;
  k4_scale_min(scales12, e / 32, &sc, &m);
  return d * sc * level - dmin * m;
}

// Low 4 bits of Q4_K/Q5_K element e: byte 32 * (e / 64) + e % 32, high nibble
// for the second half of each 64-value chunk.
inline int k4_nibble(const uint8_t* qs, int e) {
  uint8_t b = qs[32 * (e / 64) + e % 32];
  return (e % 64) < 32 ? (b & 0xF) : (b >> 4);
}

void pack_k4_nibbles(const uint8_t* L, uint8_t* qs) {
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      qs[32 * c + l] = static_cast<uint8_t>((L[64 * c + l] & 0xF) | ((L[64 * c + 32 + l] & 0xF) << 4));
}

// ---- Q6_K ------------------------------------------------------------------

void quantize_q6k_block(const float* x, const float* importance, BlockQ6K& blk) {
  int8_t L[kSuper];
  float scales[16];
  float max_scale = 0.0f, max_abs = 0.0f;
  for (int j = 0; j < 16; ++j) {
    scales[j] = fit_symmetric(16, 32, x + 16 * j, importance ? importance + 16 * j : nullptr, L + 16 * j);
    if (std::fabs(scales[j]) > max_abs) {
      max_abs = std::fabs(scales[j]);
      max_scale = scales[j];
    }
  }
  if (max_abs < 1e-15f) {
    std::memset(&blk, 0, sizeof blk);
    return;
  }
  const float iscale = -128.0f / max_scale;
  store_half(blk.d, 1 / iscale);
  for (int j = 0; j < 16; ++j) blk.scales[j] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[j])));
  const float d = load_half(blk.d);
  for (int j = 0; j < 16; ++j) requantize_symmetric(x + 16 * j, 16, d * blk.scales[j], 32, L + 16 * j);

  // Element e = 128*h + 32*k + l: low nibble in ql[64*h + 32*(k & 1) + l]
  // (high nibble when k >= 2), top 2 bits in qh[32*h + l] at shift 2*k.
  std::memset(blk.ql, 0, sizeof blk.ql);
  std::memset(blk.qh, 0, sizeof blk.qh);
  for (int e = 0; e < kSuper; ++e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    const uint8_t v = static_cast<uint8_t>(L[e]);
    blk.ql[64 * h + 32 * (k & 1) + l] |= static_cast<uint8_t>((v & 0xF) << (k < 2 ? 0 : 4));
    blk.qh[32 * h + l] |= static_cast<uint8_t>((v >> 4) << (2 * k));
  }
}

template <typename Block, typename Fn>
void for_each_super_block(const float* src, void* dst, int64_t n, const float* importance, Fn fn) {
  auto* blocks = static_cast<Block*>(dst);
  for (int64_t b = 0; b < n / kSuper; ++b)
    fn(src + b * kSuper, importance ? importance + b * kSuper : nullptr, blocks[b]);
}

}  // namespace

void dequantize_q2_k(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ2K*>(src);
  for (int64_t b = 0; b < n / kSuper; ++b) {
    const BlockQ2K& blk = blocks[b];
    const float d = load_half(blk.d), dmin = load_half(blk.dmin);
    for (int e = 0; e < kSuper; ++e) {
      const uint8_t sc = blk.scales[e / 16];
      const float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
      dst[b * kSuper + e] = dl * low_2bit(blk.qs, e) - ml;
    }
  }
}

void quantize_q2_k(const float* src, void* dst, int64_t n, const float* importance) {
  for_each_super_block<BlockQ2K>(src, dst, n, importance, quantize_q2k_block);
}

void dequantize_q3_k(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ3K*>(src);
  for (int64_t b = 0; b < n / kSuper; ++b) {
    const BlockQ3K& blk = blocks[b];
    const float d = load_half(blk.d);
    for (int e = 0; e < kSuper; ++e) {
      const float dl = d * q3_scale(blk.scales, e / 16);
      const bool high = (blk.hmask[e % 32] >> (e / 32)) & 1;
      dst[b * kSuper + e] = dl * (low_2bit(blk.qs, e) - (high ? 0 : 4));
    }
  }
}

void quantize_q3_k(const float* src, void* dst, int64_t n, const float* importance) {
  for_each_super_block<BlockQ3K>(src, dst, n, importance, quantize_q3k_block);
}

void dequantize_q4_k(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ4K*>(src);
  for (int64_t b = 0; b < n / kSuper; ++b) {
    const BlockQ4K& blk = blocks[b];
    const float d = load_half(blk.d), dmin = load_half(blk.dmin);
    for (int e = 0; e < kSuper; ++e) dst[b * kSuper + e] = k4_value(blk.scales, d, dmin, e, k4_nibble(blk.qs, e));
  }
}

void quantize_q4_k(const float* src, void* dst, int64_t n, const float* importance) {
  for_each_super_block<BlockQ4K>(src, dst, n, importance, [](const float* x, const float* imp, BlockQ4K& blk) {
    uint8_t L[kSuper];
    fit_k4_super_block(x, imp, 15, AffineSearch{-1.0f, 0.1f, 20, false}, L, blk.scales, blk.d, blk.dmin);
    pack_k4_nibbles(L, blk.qs);
  });
}

void dequantize_q5_k(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ5K*>(src);
  for (int64_t b = 0; b < n / kSuper; ++b) {
    const BlockQ5K& blk = blocks[b];
    const float d = load_half(blk.d), dmin = load_half(blk.dmin);
    for (int e = 0; e < kSuper; ++e) {
      const int fifth = (blk.qh[e % 32] >> (e / 32)) & 1;
      dst[b * kSuper + e] = k4_value(blk.scales, d, dmin, e, k4_nibble(blk.qs, e) + 16 * fifth);
    }
  }
}

void quantize_q5_k(const float* src, void* dst, int64_t n, const float* importance) {
  for_each_super_block<BlockQ5K>(src, dst, n, importance, [](const float* x, const float* imp, BlockQ5K& blk) {
    uint8_t L[kSuper];
    fit_k4_super_block(x, imp, 31, AffineSearch{-0.5f, 0.1f, 15, false}, L, blk.scales, blk.d, blk.dmin);
    // Fifth bit of element e: qh[e % 32], bit e / 32.
    std::memset(blk.qh, 0, 32);
    for (int e = 0; e < kSuper; ++e) blk.qh[e % 32] |= static_cast<uint8_t>((L[e] >> 4) << (e / 32));
    pack_k4_nibbles(L, blk.qs);
  });
}

void dequantize_q6_k(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ6K*>(src);
  for (int64_t b = 0; b < n / kSuper; ++b) {
    const BlockQ6K& blk = blocks[b];
    const float d = load_half(blk.d);
    for (int e = 0; e < kSuper; ++e) {
      const int h = e / 128, k = (e % 128) / 32, l = e % 32;
      const uint8_t lo = blk.ql[64 * h + 32 * (k & 1) + l];
      const int low = k < 2 ? (lo & 0xF) : (lo >> 4);
      const int high = (blk.qh[32 * h + l] >> (2 * k)) & 3;
      dst[b * kSuper + e] = d * blk.scales[e / 16] * ((low | high << 4) - 32);
    }
  }
}

void quantize_q6_k(const float* src, void* dst, int64_t n, const float* importance) {
  for_each_super_block<BlockQ6K>(src, dst, n, importance, quantize_q6k_block);
}

}  // namespace tailor::quant
