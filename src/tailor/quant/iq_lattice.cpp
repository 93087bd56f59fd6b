#include "tailor/quant/iq_lattice.h"

#include <algorithm>
#include <cmath>

#include "tailor/quant/iq_grids.h"

namespace tailor::quant {

int level_of(float v, int hi) {
  v = std::fmin(std::fmax(v, 0.f), float(hi));
  return int(std::nearbyint(v));
}

Lattice::Lattice(std::vector<int8_t> levels, int dim, int nlevels, int nwant)
    : dim_(dim), bits_(nlevels > 4 ? 3 : 2), levels_(std::move(levels)) {
  constexpr int kUnreachable = -0x7fffffff;  // patterns with a level >= nlevels: never looked up
  map_.assign(size_t(1) << (bits_ * dim), kUnreachable);
  const int n = size();
  for (int e = 0; e < n; ++e) map_[key(this->levels(e))] = e;
  const int max_d2 = dim * (2 * nlevels) * (2 * nlevels);
  std::vector<int> d2(n), count(max_d2 + 1);
  std::vector<int8_t> pos(dim);
  for (unsigned k = 0; k < map_.size(); ++k) {
    if (map_[k] >= 0) continue;
    bool reachable = true;
    for (int i = 0; i < dim; ++i) {
      pos[i] = static_cast<int8_t>((k >> (bits_ * i)) & ((1u << bits_) - 1));
      reachable &= pos[i] < nlevels;
    }
    if (!reachable) continue;
    std::fill(count.begin(), count.end(), 0);
    for (int e = 0; e < n; ++e) {
      const int8_t* lv = this->levels(e);
      int s = 0;
      for (int i = 0; i < dim; ++i) s += 4 * (lv[i] - pos[i]) * (lv[i] - pos[i]);
      d2[e] = s;
      ++count[s];
    }
    // Entries at the nwant smallest distinct distances, nearest first.
    map_[k] = -int(neighbours_.size()) - 1;
    const size_t head = neighbours_.size();
    neighbours_.push_back(0);
    int taken = 0;
    for (int s = 0; s <= max_d2 && taken < nwant; ++s) {
      if (count[s] == 0) continue;
      ++taken;
      for (int e = 0; e < n; ++e)
        if (d2[e] == s) neighbours_.push_back(static_cast<uint16_t>(e));
    }
    neighbours_[head] = static_cast<uint16_t>(neighbours_.size() - head - 1);
  }
}

unsigned Lattice::key(const int8_t* L) const {
  unsigned k = 0;
  for (int i = 0; i < dim_; ++i) k |= unsigned(L[i]) << (bits_ * i);
  return k;
}

int Lattice::find(const int8_t* L) const {
  int m = map_[key(L)];
  return m >= 0 ? m : -1;
}

std::span<const uint16_t> Lattice::neighbours(const int8_t* L) const {
  int m = map_[key(L)];
  if (m >= 0) return {};
  const uint16_t* p = &neighbours_[size_t(-m - 1)];
  return {p + 1, p[0]};
}

namespace {

template <typename Entry, typename LevelFn>
std::vector<int8_t> levels_of(const Entry* grid, int size, int dim, LevelFn level) {
  std::vector<int8_t> out(size_t(size) * dim);
  for (int e = 0; e < size; ++e)
    for (int i = 0; i < dim; ++i)
      out[size_t(e) * dim + i] = static_cast<int8_t>(level(grid_byte(grid[e], i)));
  return out;
}

// IQ2 magnitudes 8, 25, 43 are levels 0, 1, 2.
int iq2_level(uint8_t v) { return v / 17; }

}  // namespace

const Lattice& iq2xxs_lattice() {
  static const Lattice lat(levels_of(kIq2xxsGrid, kIq2xxsGridSize, 8, iq2_level), 8, 3, 2);
  return lat;
}
const Lattice& iq2xs_lattice() {
  static const Lattice lat(levels_of(kIq2xsGrid, kIq2xsGridSize, 8, iq2_level), 8, 3, 2);
  return lat;
}
const Lattice& iq2s_lattice() {
  static const Lattice lat(levels_of(kIq2sGrid, kIq2sGridSize, 8, iq2_level), 8, 3, 1);
  return lat;
}
const Lattice& iq3xxs_lattice() {
  // IQ3_XXS magnitudes 4, 12, .., 52, 62 are levels 0 .. 7.
  static const Lattice lat(
      levels_of(kIq3xxsGrid, kIq3xxsGridSize, 4, [](uint8_t v) { return v / 8; }), 4, 8, 2);
  return lat;
}
const Lattice& iq3s_lattice() {
  // IQ3_S magnitudes 1, 3, .., 15 are levels 0 .. 7.
  static const Lattice lat(
      levels_of(kIq3sGrid, kIq3sGridSize, 4, [](uint8_t v) { return (v - 1) / 2; }), 4, 8, 3);
  return lat;
}
const Lattice& iq1s_lattice() {
  static const Lattice lat(
      levels_of(kIq1sGrid, kIq1sGridSize, 8, [](uint8_t v) { return static_cast<int8_t>(v) + 1; }),
      8, 3, 3);
  return lat;
}

}  // namespace tailor::quant
