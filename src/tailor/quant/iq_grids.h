// Internal: codebooks and sign tables shared by the grid i-quants (IQ2_*, IQ3_*,
// IQ1_*). Dequantizers and quantizers must index these with values masked to
// the sizes below, since the indices come straight from (untrusted) file bytes.
#pragma once
#include <array>
#include <bit>
#include <cstdint>

namespace tailor::quant {

inline constexpr int kIq2xxsGridSize = 256;
inline constexpr int kIq2xsGridSize = 512;
inline constexpr int kIq2sGridSize = 1024;
inline constexpr int kIq3xxsGridSize = 256;
inline constexpr int kIq3sGridSize = 512;
inline constexpr int kIq1sGridSize = 2048;

// 8 unsigned magnitudes per entry, each one of 8, 25, 43.
extern const uint64_t kIq2xxsGrid[kIq2xxsGridSize];
extern const uint64_t kIq2xsGrid[kIq2xsGridSize];
extern const uint64_t kIq2sGrid[kIq2sGridSize];
// 4 unsigned magnitudes per entry: IQ3_XXS 4, 12, .., 52, 62; IQ3_S odd 1 .. 15.
extern const uint32_t kIq3xxsGrid[kIq3xxsGridSize];
extern const uint32_t kIq3sGrid[kIq3sGridSize];
// 8 signed values in {-1, 0, +1} per entry, stored as int8 bytes.
extern const uint64_t kIq1sGrid[kIq1sGridSize];

// Element j (0-based, least significant byte first) of a packed grid entry.
constexpr uint8_t grid_byte(uint64_t entry, int j) {
  return static_cast<uint8_t>(entry >> (8 * j));
}

// IQ2/IQ3 store 7 sign bits per 8 values; the 8th is implied by even parity
// (an even number of negatives in each group of 8). The table maps the 7
// stored bits to the full 8-bit sign mask.
inline constexpr std::array<uint8_t, 128> kSignsWithParity = [] {
  std::array<uint8_t, 128> t{};
  for (unsigned i = 0; i < 128; ++i)
    t[i] = static_cast<uint8_t>(i | ((std::popcount(i) & 1u) << 7));
  return t;
}();

// Shift applied to every IQ1 value before scaling; its sign is a stored bit.
inline constexpr float kIq1sDelta = 0.125f;
inline constexpr float kIq1mDelta = 0.125f;

}  // namespace tailor::quant
