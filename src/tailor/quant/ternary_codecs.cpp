// TQ1_0 and TQ2_0: ternary weights {-1, 0, +1} times one fp16 scale (max |x|)
// per 256 values. They differ only in packing: TQ2_0 stores 2 bits per value,
// TQ1_0 stores 5 trits per byte as a fixed-point fraction of 3^5, so that a
// trit is read back with a multiply and a shift instead of a division.
#include <cmath>

#include "tailor/quant/kernels.h"
#include "tailor/util/fp16.h"

namespace tailor::quant {
namespace {

constexpr int kBlock = 256;

struct BlockTQ1_0 {
  uint8_t qs[48];  // 240 values, 5 per byte: bytes 0-31 then bytes 32-47
  uint8_t qh[4];   // the last 16 values, 4 per byte
  uint16_t d;
};
static_assert(sizeof(BlockTQ1_0) == 54, "block_tq1_0 is 54 bytes in ggml");

struct BlockTQ2_0 {
  uint8_t qs[64];  // 2 bits per value
  uint16_t d;
};
static_assert(sizeof(BlockTQ2_0) == 66, "block_tq2_0 is 66 bytes in ggml");

// The block's scale is its largest magnitude; returns 1/scale (0 for an all-zero block).
float ternary_scale(const float* x, uint16_t* d) {
  float amax = 0.0f;
  for (int j = 0; j < kBlock; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  *d = fp32_to_fp16(amax);
  return amax != 0.0f ? 1.0f / amax : 0.0f;
}

// -1, 0, +1 stored as 0, 1, 2 (rounding ties away from zero, as ggml's lroundf).
inline int trit(float x, float inv) { return static_cast<int>(std::lround(x * inv)) + 1; }

// Packs `count` trits (first = most significant) read at x[0], x[stride], ...
// into a byte holding ceil(value * 256 / 243). Four-trit groups get a zero fifth trit.
uint8_t pack_trits(const float* x, int stride, int count, float inv) {
  unsigned v = 0;
  for (int k = 0; k < count; ++k) v = v * 3 + trit(x[k * stride], inv);
  for (int k = count; k < 5; ++k) v *= 3;
  return static_cast<uint8_t>((v * 256 + 242) / 243);
}

// The k-th trit (0 = most significant) of a packed byte, as -1, 0 or +1.
inline int unpack_trit(uint8_t b, int k) {
  static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  uint8_t shifted = static_cast<uint8_t>(b * kPow3[k]);  // drops the leading trits (mod 256)
  return ((shifted * 3) >> 8) - 1;
}

}  // namespace

void quantize_tq1_0(const float* src, void* dst, int64_t n, const float*) {
  auto* y = static_cast<BlockTQ1_0*>(dst);
  for (int64_t b = 0; b < n / kBlock; ++b, src += kBlock) {
    float inv = ternary_scale(src, &y[b].d);
    for (int m = 0; m < 32; ++m) y[b].qs[m] = pack_trits(src + m, 32, 5, inv);
    for (int m = 0; m < 16; ++m) y[b].qs[32 + m] = pack_trits(src + 160 + m, 16, 5, inv);
    for (int m = 0; m < 4; ++m) y[b].qh[m] = pack_trits(src + 240 + m, 4, 4, inv);
  }
}

void dequantize_tq1_0(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const BlockTQ1_0*>(src);
  for (int64_t b = 0; b < n / kBlock; ++b, dst += kBlock) {
    float d = fp16_to_fp32(x[b].d);
    for (int k = 0; k < 5; ++k)
      for (int m = 0; m < 32; ++m) dst[k * 32 + m] = static_cast<float>(unpack_trit(x[b].qs[m], k)) * d;
    for (int k = 0; k < 5; ++k)
      for (int m = 0; m < 16; ++m)
        dst[160 + k * 16 + m] = static_cast<float>(unpack_trit(x[b].qs[32 + m], k)) * d;
    for (int k = 0; k < 4; ++k)
      for (int m = 0; m < 4; ++m) dst[240 + k * 4 + m] = static_cast<float>(unpack_trit(x[b].qh[m], k)) * d;
  }
}

void quantize_tq2_0(const float* src, void* dst, int64_t n, const float*) {
  auto* y = static_cast<BlockTQ2_0*>(dst);
  for (int64_t b = 0; b < n / kBlock; ++b, src += kBlock) {
    float inv = ternary_scale(src, &y[b].d);
    // Byte 32*h + m holds values 128*h + m + 32*k at bits 2k (k = 0..3).
    for (int h = 0; h < 2; ++h)
      for (int m = 0; m < 32; ++m) {
        unsigned v = 0;
        for (int k = 0; k < 4; ++k) v |= static_cast<unsigned>(trit(src[128 * h + m + 32 * k], inv)) << (2 * k);
        y[b].qs[32 * h + m] = static_cast<uint8_t>(v);
      }
  }
}

void dequantize_tq2_0(const void* src, float* dst, int64_t n) {
  const auto* x = static_cast<const BlockTQ2_0*>(src);
  for (int64_t b = 0; b < n / kBlock; ++b, dst += kBlock) {
    float d = fp16_to_fp32(x[b].d);
    for (int h = 0; h < 2; ++h)
      for (int k = 0; k < 4; ++k)
        for (int m = 0; m < 32; ++m) {
          int q = (x[b].qs[32 * h + m] >> (2 * k)) & 3;
          dst[128 * h + 32 * k + m] = static_cast<float>(q - 1) * d;
        }
  }
}

}  // namespace tailor::quant
