// Reading and writing the fp16 fields of GGML blocks. Blocks are declared as
// byte arrays (alignment 1), so rows may start at any address.
#pragma once
#include <cstdint>
#include <cstring>

#include "tailor/util/fp16.h"

namespace tailor::quant {

inline float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_fp32(h);
}

// Stores v as fp16 and returns the stored value as float (what a reader sees).
inline float store_half(uint8_t* p, float v) {
  uint16_t h = fp32_to_fp16(v);
  std::memcpy(p, &h, 2);
  return fp16_to_fp32(h);
}

}  // namespace tailor::quant
