// Dequantizers of the grid/lattice i-quants. Every 256-value super-block is
// cut into 32-value sub-blocks; each group of 8 (IQ2, IQ1) or 4 (IQ3) values is
// one codebook entry, scaled by a sub-block scale and sign-flipped by stored
// bits. Arithmetic follows ggml's reference order exactly so results match bit
// for bit (including -0.0). All codebook indices are built from bit fields
// whose widths equal the table sizes, and are masked again where they are
// formed, so arbitrary bytes can never index out of range.
#include <cstddef>

#include "tailor/quant/iq_grids.h"
#include "tailor/quant/kernels.h"
#include "tailor/util/fp16.h"

namespace tailor::quant {
namespace {

constexpr int kSuper = 256;

uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t load_u32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

// Writes `count` magnitudes from a packed grid entry, times `scale`, negating
// the ones whose bit is set in `signs` (bit k of signs goes with element k).
template <int Count>
void put_signed(float* y, float scale, uint64_t entry, unsigned signs) {
  for (int j = 0; j < Count; ++j) {
    float v = scale * float(grid_byte(entry, j));
    y[j] = v * (1.f - 2.f * float((signs >> j) & 1u));  // exactly -1 or +1, no branch
  }
}

// Eight ternary values {-1,0,1} + delta, times scale (IQ1 family).
void put_iq1(float* y, float scale, uint64_t entry, float delta) {
  for (int j = 0; j < 8; ++j) {
    int g = static_cast<int8_t>(grid_byte(entry, j));
    y[j] = scale * (float(g) + delta);
  }
}

// Sub-block scale of the IQ2 formats from a 4-bit field.
float iq2_scale(float d, unsigned s4) { return d * (0.5f + float(s4)) * 0.25f; }

// Layouts (bytes): see the comment above each function.

// IQ2_XXS, 66 bytes: f16 d | 8 x (4 grid bytes, u32 with 4 x 7 sign bits + 4-bit scale).
constexpr size_t kIq2xxsBytes = 66;

// IQ2_XS, 74 bytes: f16 d | 32 x u16 (9-bit grid index, 7 sign bits) | 8 scale bytes (2 nibbles).
constexpr size_t kIq2xsBytes = 74;

// IQ2_S, 82 bytes: f16 d | 32 low index bytes | 32 sign bytes | 8 high-bit bytes | 8 scale bytes.
constexpr size_t kIq2sBytes = 82;

// IQ3_XXS, 98 bytes: f16 d | 64 grid bytes | 8 x u32 (4 x 7 sign bits + 4-bit scale).
constexpr size_t kIq3xxsBytes = 98;

// IQ3_S, 110 bytes: f16 d | 64 low index bytes | 8 high-bit bytes | 32 sign bytes | 4 scale bytes.
constexpr size_t kIq3sBytes = 110;

// IQ1_S, 50 bytes: f16 d | 32 low index bytes | 8 x u16 (4 x 3 high index bits, 3-bit scale, delta
// sign).
constexpr size_t kIq1sBytes = 50;

// IQ1_M, 56 bytes: 32 low index bytes | 16 bytes (2 x (3 high bits, delta sign)) | 4 x u16 scales,
// whose top nibbles together hold the f16 super-block scale.
constexpr size_t kIq1mBytes = 56;

}  // namespace

void dequantize_iq2_xxs(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  for (int64_t blk = 0; blk < n / kSuper; ++blk, b += kIq2xxsBytes) {
    const float d = fp16_to_fp32(load_u16(b));
    const uint8_t* q = b + 2;
    for (int sub = 0; sub < 8; ++sub, q += 8) {
      const uint32_t meta = load_u32(q + 4);
      const float db = iq2_scale(d, meta >> 28);
      for (int g = 0; g < 4; ++g, y += 8)
        put_signed<8>(y, db, kIq2xxsGrid[q[g]], kSignsWithParity[(meta >> (7 * g)) & 127u]);
    }
  }
}

void dequantize_iq2_xs(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  for (int64_t blk = 0; blk < n / kSuper; ++blk, b += kIq2xsBytes) {
    const float d = fp16_to_fp32(load_u16(b));
    const uint8_t* scales = b + 2 + 64;
    for (int sub = 0; sub < 8; ++sub) {
      const float db[2] = {iq2_scale(d, scales[sub] & 15u), iq2_scale(d, scales[sub] >> 4)};
      for (int g = 0; g < 4; ++g, y += 8) {
        const uint16_t v = load_u16(b + 2 + 2 * (4 * sub + g));
        put_signed<8>(y, db[g / 2], kIq2xsGrid[v & 511u], kSignsWithParity[(v >> 9) & 127u]);
      }
    }
  }
}

void dequantize_iq2_s(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  for (int64_t blk = 0; blk < n / kSuper; ++blk, b += kIq2sBytes) {
    const float d = fp16_to_fp32(load_u16(b));
    const uint8_t* low = b + 2;
    const uint8_t* signs = low + 32;
    const uint8_t* high = signs + 32;
    const uint8_t* scales = high + 8;
    for (int sub = 0; sub < 8; ++sub) {
      const float db[2] = {iq2_scale(d, scales[sub] & 15u), iq2_scale(d, scales[sub] >> 4)};
      for (int g = 0; g < 4; ++g, y += 8) {
        const unsigned idx = low[4 * sub + g] | (((high[sub] >> (2 * g)) & 3u) << 8);
        put_signed<8>(y, db[g / 2], kIq2sGrid[idx & 1023u], signs[4 * sub + g]);
      }
    }
  }
}

void dequantize_iq3_xxs(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  for (int64_t blk = 0; blk < n / kSuper; ++blk, b += kIq3xxsBytes) {
    const float d = fp16_to_fp32(load_u16(b));
    const uint8_t* grid = b + 2;
    const uint8_t* meta_bytes = grid + 64;
    for (int sub = 0; sub < 8; ++sub) {
      const uint32_t meta = load_u32(meta_bytes + 4 * sub);
      const float db = d * (0.5f + float(meta >> 28)) * 0.5f;
      for (int g = 0; g < 4; ++g, y += 8) {
        const unsigned signs = kSignsWithParity[(meta >> (7 * g)) & 127u];
        const uint8_t* q = grid + 8 * sub + 2 * g;
        put_signed<4>(y, db, kIq3xxsGrid[q[0]], signs);
        put_signed<4>(y + 4, db, kIq3xxsGrid[q[1]], signs >> 4);
      }
    }
  }
}

void dequantize_iq3_s(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  for (int64_t blk = 0; blk < n / kSuper; ++blk, b += kIq3sBytes) {
    const float d = fp16_to_fp32(load_u16(b));
    const uint8_t* low = b + 2;
    const uint8_t* high = low + 64;
    const uint8_t* signs = high + 8;
    const uint8_t* scales = signs + 32;
    for (int sub = 0; sub < 8; ++sub) {
      // One scale nibble per sub-block, two sub-blocks per byte.
      const unsigned s4 = (scales[sub / 2] >> (4 * (sub % 2))) & 15u;
      const float db = d * float(1 + 2 * int(s4));
      for (int g = 0; g < 4; ++g, y += 8) {
        const uint8_t* q = low + 8 * sub + 2 * g;
        const unsigned i0 = q[0] | (((high[sub] >> (2 * g)) & 1u) << 8);
        const unsigned i1 = q[1] | (((high[sub] >> (2 * g + 1)) & 1u) << 8);
        const unsigned s = signs[4 * sub + g];
        put_signed<4>(y, db, kIq3sGrid[i0 & 511u], s);
        put_signed<4>(y + 4, db, kIq3sGrid[i1 & 511u], s >> 4);
      }
    }
  }
}

void dequantize_iq1_s(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  for (int64_t blk = 0; blk < n / kSuper; ++blk, b += kIq1sBytes) {
    const float d = fp16_to_fp32(load_u16(b));
    const uint8_t* low = b + 2;
    const uint8_t* meta_bytes = low + 32;
    for (int sub = 0; sub < 8; ++sub) {
      const uint16_t meta = load_u16(meta_bytes + 2 * sub);
      const float dl = d * float(2 * int((meta >> 12) & 7u) + 1);
      const float delta = (meta & 0x8000u) ? -kIq1sDelta : kIq1sDelta;
      for (int g = 0; g < 4; ++g, y += 8) {
        const unsigned idx = low[4 * sub + g] | (((meta >> (3 * g)) & 7u) << 8);
        put_iq1(y, dl, kIq1sGrid[idx & 2047u], delta);
      }
    }
  }
}

void dequantize_iq1_m(const void* src, float* y, int64_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  for (int64_t blk = 0; blk < n / kSuper; ++blk, b += kIq1mBytes) {
    const uint8_t* low = b;
    const uint8_t* high = b + 32;
    const uint8_t* scale_bytes = b + 48;
    uint16_t sc[4];
    for (int k = 0; k < 4; ++k) sc[k] = load_u16(scale_bytes + 2 * k);
    // The f16 super-block scale is spread over the top nibbles of the 4 words.
    const uint16_t dbits = static_cast<uint16_t>((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0u) |
                                                 ((sc[2] >> 4) & 0x0f00u) | (sc[3] & 0xf000u));
    const float d = fp16_to_fp32(dbits);
    for (int sub = 0; sub < 8; ++sub) {
      const unsigned word = sc[sub / 2] >> (6 * (sub % 2));
      const float dl[2] = {d * float(2 * int(word & 7u) + 1),
                           d * float(2 * int((word >> 3) & 7u) + 1)};
      for (int g = 0; g < 4; ++g, y += 8) {
        // Each high byte serves two groups: low nibble the first, high nibble the second.
        const unsigned nib = (high[2 * sub + g / 2] >> (4 * (g % 2))) & 15u;
        const unsigned idx = low[4 * sub + g] | ((nib & 7u) << 8);
        const float delta = (nib & 8u) ? -kIq1mDelta : kIq1mDelta;
        put_iq1(y, dl[g / 2], kIq1sGrid[idx & 2047u], delta);
      }
    }
  }
}

}  // namespace tailor::quant
