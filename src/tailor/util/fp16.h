// IEEE half and bfloat16 conversions, matching ggml bit for bit: round to
// nearest even, fp16 subnormals produced, bf16 subnormals kept, NaN quieted.
#pragma once
#include <bit>
#include <cstdint>

namespace tailor {

inline float fp16_to_fp32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    // inf / nan; ggml widens through a float multiply, which quiets a signaling NaN.
    bits = sign | 0x7f800000u | (man << 13) | (man != 0 ? 0x400000u : 0u);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {
    // Subnormal half: value = man * 2^-24, exactly representable in f32.
    float v = static_cast<float>(man) * 0x1.0p-24f;
    bits = sign | std::bit_cast<uint32_t>(v);
  }
  return std::bit_cast<float>(bits);
}

inline uint16_t fp32_to_fp16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;          // NaN -> quiet NaN
  if (ax >= 0x477ff000u) return sign | 0x7c00u;         // rounds to >= 65520 -> inf
  if (ax < 0x38800000u) {
    // Result is subnormal or zero: scale so that the half ulp (2^-24) becomes
    // 1.0 and let the FPU's round-to-nearest-even do the work.
    float v = std::bit_cast<float>(ax) * 0x1.0p+24f;    // exact (power of two)
    // v < 1024; adding 2^23 forces rounding to an integer, ties to even.
    float r = (v + 8388608.0f) - 8388608.0f;
    return sign | static_cast<uint16_t>(r);
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits, ties to even.
  uint32_t m = ax + 0xfffu + ((ax >> 13) & 1u);
  return sign | static_cast<uint16_t>((m - (112u << 23)) >> 13);
}

inline float bf16_to_fp32(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

inline uint16_t fp32_to_bf16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 64u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace tailor
