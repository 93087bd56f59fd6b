// Internal: the quantizer's view of a grid i-quant codebook. Each entry is a
// pattern of `dim` levels l in [0, nlevels) (value 2l+1 on the quantizer's odd
// lattice). Patterns that are not entries map to the entries nearest to them,
// so a search can always snap to a storable code. Built once per codebook on
// first use, from the dequantization grids in iq_grids.h.
#pragma once
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace tailor::quant {

class Lattice {
 public:
  // levels: size * dim level values, entry by entry. nwant: how many distinct
  // nearest distances an off-grid pattern keeps candidates for.
  Lattice(std::vector<int8_t> levels, int dim, int nlevels, int nwant);

  int dim() const { return dim_; }
  int size() const { return int(levels_.size()) / dim_; }
  const int8_t* levels(int entry) const { return &levels_[size_t(entry) * dim_]; }
  // Entry whose pattern is L (each level in [0, nlevels)), or -1 when off grid.
  int find(const int8_t* L) const;
  // For an off-grid L: its nearest entries, ordered by distance then index.
  std::span<const uint16_t> neighbours(const int8_t* L) const;

  // Keeps L if it is a pattern (returns true); otherwise replaces it by the
  // neighbour whose values scale * value(level) fit x with the least
  // w-weighted squared error (returns false).
  template <typename Value>
  bool snap(int8_t* L, const float* x, const float* w, float scale, Value value) const {
    if (find(L) >= 0) return true;
    auto candidates = neighbours(L);
    float best = FLT_MAX;
    int pick = candidates[0];
    for (uint16_t e : candidates) {
      const int8_t* lv = levels(e);
      float err = 0;
      for (int i = 0; i < dim_; ++i) {
        float diff = scale * value(lv[i]) - x[i];
        err += w[i] * diff * diff;
      }
      if (err < best) best = err, pick = e;
    }
    std::memcpy(L, levels(pick), size_t(dim_));
    return false;
  }

 private:
  unsigned key(const int8_t* L) const;
  int dim_, bits_;
  std::vector<int8_t> levels_;
  std::vector<int> map_;              // entry >= 0, or -(offset + 1) into neighbours_
  std::vector<uint16_t> neighbours_;  // per off-grid pattern: count, then entries
};

const Lattice& iq2xxs_lattice();
const Lattice& iq2xs_lattice();
const Lattice& iq2s_lattice();
const Lattice& iq3xxs_lattice();
const Lattice& iq3s_lattice();
const Lattice& iq1s_lattice();  // IQ1_S and IQ1_M: levels 0, 1, 2 stand for -1, 0, +1

// Round to nearest (ties to even) clamped to [0, hi]; NaN gives 0.
int level_of(float v, int hi);

}  // namespace tailor::quant
