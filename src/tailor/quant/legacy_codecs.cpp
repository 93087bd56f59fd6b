// Q4_0, Q4_1, Q5_0, Q5_1: blocks of 32 values with one fp16 scale (and, for
// the _1 types, an fp16 min). Element j of a block sits in the low nibble of
// byte j (j < 16) or the high nibble of byte j - 16; the 5-bit types keep the
// fifth bits in a 32-bit mask, bit j for element j.
//
// Without importance the quantizers are ggml's simple reference ones (one
// pass, scale from the extreme values), which is what ggml writes for these
// types then; with importance they search the scale (and min).
#include <cmath>
#include <cfloat>
#include <cstring>

#include "tailor/quant/block_io.h"
#include "tailor/quant/kernels.h"
#include "tailor/quant/scale_search.h"

namespace tailor::quant {
namespace {

constexpr int kBlock = 32;

struct BlockQ4_0 {
  uint8_t d[2];
  uint8_t qs[16];
};
struct BlockQ4_1 {
  uint8_t d[2];
  uint8_t m[2];
  uint8_t qs[16];
};
struct BlockQ5_0 {
  uint8_t d[2];
  uint8_t qh[4];
  uint8_t qs[16];
};
struct BlockQ5_1 {
  uint8_t d[2];
  uint8_t m[2];
  uint8_t qh[4];
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24);

// Levels of one block, 0..31, in element order.
using Levels = uint8_t[kBlock];

// Truncation toward zero of v >= 0 into [0, hi], as ggml's (int8_t)/(uint8_t)
// casts do for in-range values; NaN and negatives give 0.
inline int truncate_level(float v, int hi) {
  if (!(v >= 0.0f)) return 0;
  if (v >= static_cast<float>(hi)) return hi;
  return static_cast<int>(v);
}

void pack_nibbles(const Levels L, uint8_t* qs) {
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>((L[j] & 0x0F) | ((L[j + 16] & 0x0F) << 4));
}

void pack_fifth_bits(const Levels L, uint8_t* qh) {
  uint32_t bits = 0;
  for (int j = 0; j < kBlock; ++j) bits |= uint32_t((L[j] >> 4) & 1u) << j;
  std::memcpy(qh, &bits, 4);
}

// Level of element j from the nibbles and (for 5-bit types) the fifth-bit mask.
inline int level_at(const uint8_t* qs, uint32_t high_bits, int j) {
  int low = j < 16 ? (qs[j] & 0x0F) : (qs[j - 16] >> 4);
  return low | int((high_bits >> j) & 1u) << 4;
}

inline uint32_t load_bits(const uint8_t* qh) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  return bits;
}

// Plain symmetric: d = max / -half where max is the signed value of largest
// magnitude, so that value maps exactly to level 0; levels are x/d + half
// rounded half up (truncation of +0.5), capped at 2*half - 1.
float quantize_symmetric_plain(const float* x, int half, Levels L) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < kBlock; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / static_cast<float>(-half);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kBlock; ++j)
    L[j] = static_cast<uint8_t>(truncate_level(x[j] * id + (static_cast<float>(half) + 0.5f), 2 * half - 1));
  return d;
}

// Plain affine: min and max of the block, d = (max - min) / nmax.
float quantize_affine_plain(const float* x, int nmax, Levels L, float* min_out) {
  float min = FLT_MAX, max = -FLT_MAX;
  for (int j = 0; j < kBlock; ++j) {
    if (x[j] < min) min = x[j];
    if (x[j] > max) max = x[j];
  }
  const float d = (max - min) / static_cast<float>(nmax);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kBlock; ++j) L[j] = static_cast<uint8_t>(truncate_level((x[j] - min) * id + 0.5f, nmax));
  *min_out = min;
  return d;
}

// The importance path: weights from the row's mean square, then a scale search.
struct RowWeighting {
  const float* importance;
  float sigma2;
  RowWeighting(const float* x, int64_t n, const float* imp)
      : importance(imp), sigma2(sum_squares(x, n) / static_cast<float>(n)) {}
  void block_weights(const float* xb, int64_t block, float* w) const {
    importance_weights(xb, importance + block * kBlock, sigma2, kBlock, w);
  }
};

float quantize_symmetric_weighted(const float* xb, const float* w, int half, Levels L) {
  int8_t levels[kBlock];
  float d = fit_symmetric(kBlock, half, xb, w, levels);
  for (int j = 0; j < kBlock; ++j) L[j] = static_cast<uint8_t>(levels[j]);
  return d;
}

// Affine search as ggml uses it for the _1 types; returns d, sets the min (<= 0).
float quantize_affine_weighted(const float* xb, const float* w, int nmax, Levels L, float* min_out) {
  float neg_min = 0.0f;
  float d = fit_affine(kBlock, nmax, xb, w, L, &neg_min, AffineSearch{-0.9f, 0.05f, 36, false});
  *min_out = -neg_min;
  return d;
}

// Quantizes a row block by block: `fit(xb, w_or_null, L, &min)` returns d;
// `store(block, d, min, L)` writes it.
template <typename Block, typename Fit, typename Store>
void quantize_blocks(const float* src, void* dst, int64_t n, const float* importance, Fit fit,
                     Store store) {
  auto* blocks = static_cast<Block*>(dst);
  const int64_t nb = n / kBlock;
  if (importance == nullptr) {
    for (int64_t b = 0; b < nb; ++b) {
      Levels L;
      float min = 0.0f;
      float d = fit(src + b * kBlock, nullptr, L, &min);
      store(blocks[b], d, min, L);
    }
    return;
  }
  RowWeighting weighting(src, n, importance);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = src + b * kBlock;
    float w[kBlock];
    weighting.block_weights(xb, b, w);
    Levels L;
    float min = 0.0f;
    float d = fit(xb, w, L, &min);
    store(blocks[b], d, min, L);
  }
}

auto symmetric_fit(int half) {
  return [half](const float* xb, const float* w, Levels L, float*) {
    return w ? quantize_symmetric_weighted(xb, w, half, L) : quantize_symmetric_plain(xb, half, L);
  };
}

auto affine_fit(int nmax) {
  return [nmax](const float* xb, const float* w, Levels L, float* min) {
    return w ? quantize_affine_weighted(xb, w, nmax, L, min) : quantize_affine_plain(xb, nmax, L, min);
  };
}

}  // namespace

void dequantize_q4_0(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ4_0*>(src);
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float d = load_half(blocks[b].d);
    for (int j = 0; j < kBlock; ++j) dst[b * kBlock + j] = (level_at(blocks[b].qs, 0, j) - 8) * d;
  }
}

void quantize_q4_0(const float* src, void* dst, int64_t n, const float* importance) {
  quantize_blocks<BlockQ4_0>(src, dst, n, importance, symmetric_fit(8),
                             [](BlockQ4_0& blk, float d, float, const Levels L) {
                               store_half(blk.d, d);
                               pack_nibbles(L, blk.qs);
                             });
}

void dequantize_q4_1(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ4_1*>(src);
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float d = load_half(blocks[b].d);
    const float m = load_half(blocks[b].m);
    for (int j = 0; j < kBlock; ++j) dst[b * kBlock + j] = level_at(blocks[b].qs, 0, j) * d + m;
  }
}

void quantize_q4_1(const float* src, void* dst, int64_t n, const float* importance) {
  quantize_blocks<BlockQ4_1>(src, dst, n, importance, affine_fit(15),
                             [](BlockQ4_1& blk, float d, float min, const Levels L) {
                               store_half(blk.d, d);
                               store_half(blk.m, min);
                               pack_nibbles(L, blk.qs);
                             });
}

void dequantize_q5_0(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ5_0*>(src);
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float d = load_half(blocks[b].d);
    const uint32_t high = load_bits(blocks[b].qh);
    for (int j = 0; j < kBlock; ++j) dst[b * kBlock + j] = (level_at(blocks[b].qs, high, j) - 16) * d;
  }
}

void quantize_q5_0(const float* src, void* dst, int64_t n, const float* importance) {
  quantize_blocks<BlockQ5_0>(src, dst, n, importance, symmetric_fit(16),
                             [](BlockQ5_0& blk, float d, float, const Levels L) {
                               store_half(blk.d, d);
                               pack_fifth_bits(L, blk.qh);
                               pack_nibbles(L, blk.qs);
                             });
}

void dequantize_q5_1(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ5_1*>(src);
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float d = load_half(blocks[b].d);
    const float m = load_half(blocks[b].m);
    const uint32_t high = load_bits(blocks[b].qh);
    for (int j = 0; j < kBlock; ++j) dst[b * kBlock + j] = level_at(blocks[b].qs, high, j) * d + m;
  }
}

void quantize_q5_1(const float* src, void* dst, int64_t n, const float* importance) {
  quantize_blocks<BlockQ5_1>(src, dst, n, importance, affine_fit(31),
                             [](BlockQ5_1& blk, float d, float min, const Levels L) {
                               store_half(blk.d, d);
                               store_half(blk.m, min);
                               pack_fifth_bits(L, blk.qh);
                               pack_nibbles(L, blk.qs);
                             });
}

}  // namespace tailor::quant
