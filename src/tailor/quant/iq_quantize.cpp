// Quantizers of the grid i-quants (IQ3_XXS, IQ3_S, IQ2_S). Each group of D
// magnitudes (D = 4 for IQ3, 8 for IQ2) is snapped to odd levels q = 2l+1 and
// must land on a codebook entry; off-grid level patterns are replaced by the
// best of their nearest codebook entries. Per sub-block a short scan over
// candidate scales keeps the one with the best weighted fit, as ggml does;
// the super-block then stores one f16 scale and 4-bit sub-block multipliers.
#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "tailor/quant/iq_grids.h"
#include "tailor/quant/kernels.h"
#include "tailor/util/fp16.h"

namespace tailor::quant {
namespace {

constexpr int kSuper = 256;

// Round to nearest, ties to even, clamped to [0, hi]; NaN gives 0.
int level_of(float v, int hi) {
  v = std::fmin(std::fmax(v, 0.f), float(hi));
  return int(std::nearbyint(v));
}

// Codebook viewed as level patterns, with a key -> entry map and, for every
// reachable key that is not a codebook entry, the entries at the `nwant`
// smallest squared distances (ties in entry order).
class Lattice {
 public:
  template <typename Entry, typename LevelFn>
  Lattice(const Entry* grid, int size, int dim, int levels, int nwant, LevelFn level_fn)
      : dim_(dim),
        bits_(levels > 4 ? 3 : 2),
        levels_(size * dim),
        map_(size_t(1) << (bits_ * dim), kUnreachable) {
    for (int e = 0; e < size; ++e) {
      unsigned key = 0;
      for (int i = 0; i < dim; ++i) {
        int l = level_fn(grid_byte(grid[e], i));
        levels_[e * dim + i] = static_cast<int8_t>(l);
        key |= unsigned(l) << (bits_ * i);
      }
      map_[key] = e;
    }
    const int max_d2 = dim * (2 * levels) * (2 * levels);
    std::vector<int> d2(size);
    std::vector<int> count(max_d2 + 1);
    std::vector<int8_t> pos(dim);
    for (unsigned key = 0; key < map_.size(); ++key) {
      if (map_[key] >= 0) continue;
      bool reachable = true;
      for (int i = 0; i < dim; ++i) {
        pos[i] = static_cast<int8_t>((key >> (bits_ * i)) & ((1u << bits_) - 1));
        reachable &= pos[i] < levels;
      }
      if (!reachable) continue;
      std::fill(count.begin(), count.end(), 0);
      for (int e = 0; e < size; ++e) {
        int s = 0;
        for (int i = 0; i < dim; ++i) {
          int diff = 2 * (levels_[e * dim + i] - pos[i]);
          s += diff * diff;
        }
        d2[e] = s;
        ++count[s];
      }
      // The nwant smallest distinct distances, then their entries in order.
      map_[key] = -int(neighbours_.size()) - 1;
      size_t head = neighbours_.size();
      neighbours_.push_back(0);
      int taken = 0;
      for (int s = 0; s <= max_d2 && taken < nwant; ++s) {
        if (count[s] == 0) continue;
        ++taken;
        for (int e = 0; e < size; ++e)
          if (d2[e] == s) neighbours_.push_back(static_cast<uint16_t>(e));
      }
      neighbours_[head] = static_cast<uint16_t>(neighbours_.size() - head - 1);
    }
  }

  int dim() const { return dim_; }
  const int8_t* levels(int entry) const { return &levels_[entry * dim_]; }

  // Codebook entry for the level pattern L (each in [0, levels)); on grid or
  // the neighbour with the least weighted error at `scale`. Writes the
  // chosen entry's levels back to L. Returns the entry and whether L was on grid.
  int snap(int8_t* L, const float* xval, const float* waux, float scale, bool* on_grid) const {
    unsigned key = 0;
    for (int i = 0; i < dim_; ++i) key |= unsigned(L[i]) << (bits_ * i);
    int m = map_[key];
    *on_grid = m >= 0;
    if (m >= 0) return m;
    const uint16_t* nb = &neighbours_[size_t(-m - 1)];
    float best = FLT_MAX;
    int pick = nb[1];
    for (int j = 1; j <= nb[0]; ++j) {
      const int8_t* lv = levels(nb[j]);
      float err = 0;
      for (int i = 0; i < dim_; ++i) {
        float diff = scale * float(2 * lv[i] + 1) - xval[i];
        err += waux[i] * diff * diff;
      }
      if (err < best) {
        best = err;
        pick = nb[j];
      }
    }
    std::memcpy(L, levels(pick), size_t(dim_));
    return pick;
  }

 private:
  static constexpr int kUnreachable = -0x7fffffff;
  int dim_, bits_;
  std::vector<int8_t> levels_;
  std::vector<int> map_;              // entry >= 0, or -(offset + 1) into neighbours_
  std::vector<uint16_t> neighbours_;  // per off-grid key: count, then entries
};

const Lattice& iq3xxs_lattice() {
  static const Lattice lat(kIq3xxsGrid, kIq3xxsGridSize, 4, 8, 2, [](uint8_t v) { return v / 8; });
  return lat;
}
const Lattice& iq3s_lattice() {
  static const Lattice lat(kIq3sGrid, kIq3sGridSize, 4, 8, 3,
                           [](uint8_t v) { return (v - 1) / 2; });
  return lat;
}
const Lattice& iq2s_lattice() {
  static const Lattice lat(kIq2sGrid, kIq2sGridSize, 8, 3, 1, [](uint8_t v) { return v / 17; });
  return lat;
}

struct Search {
  int levels;  // levels per coordinate (q = 1, 3, .., 2*levels-1)
  int steps;   // scale candidates (2*levels-1 + is*step)/max for is in [-steps, steps]
  float step;
  bool refine_all;  // after the scan, re-snap every group (not only off-grid ones)
  float eps;        // groups whose largest magnitude is below this get scale 0
};

// Fits one sub-block of n magnitudes (xval >= 0 except a parity-flipped one):
// writes codebook entries to `entry` (n / dim of them) and returns the scale.
float fit_sub_block(const Lattice& lat, const Search& p, int n, const float* xval,
                    const float* weight, const float* waux, int* entry) {
  const int dim = lat.dim();
  const int groups = n / dim;
  float max = xval[0];
  for (int i = 1; i < n; ++i) max = std::max(max, xval[i]);
  int8_t L[32] = {}, Laux[32];
  bool on[8], on_aux[8];
  if (!(max >= p.eps) || max == 0.f) {
    for (int k = 0; k < groups; ++k)
      entry[k] = lat.snap(L + dim * k, xval + dim * k, waux + dim * k, 0.f, &on[k]);
    return 0.f;
  }
  const int top = 2 * p.levels - 1;
  float best = 0, scale = max / float(top);
  for (int k = 0; k < groups; ++k) on[k] = !p.refine_all;
  auto fit = [&](const int8_t* lv, float* sumqx, float* sumq2) {
    *sumqx = *sumq2 = 0;
    for (int i = 0; i < n; ++i) {
      float q = float(2 * lv[i] + 1);
      *sumqx += weight[i] * xval[i] * q;
      *sumq2 += weight[i] * q * q;
    }
  };
  for (int is = -p.steps; is <= p.steps; ++is) {
    const float id = (float(top) + float(is) * p.step) / max;
    const float this_scale = 1 / id;
    for (int k = 0; k < groups; ++k) {
      int8_t* l = Laux + dim * k;
      for (int i = 0; i < dim; ++i)
        l[i] = static_cast<int8_t>(level_of(0.5f * (id * xval[dim * k + i] - 1), p.levels - 1));
      lat.snap(l, xval + dim * k, waux + dim * k, this_scale, &on_aux[k]);
    }
    float sumqx, sumq2;
    fit(Laux, &sumqx, &sumq2);
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      scale = sumqx / sumq2;
      best = scale * sumqx;
      std::memcpy(L, Laux, size_t(n));
      std::copy(on_aux, on_aux + groups, on);
    }
  }
  bool any_off = false;
  for (int k = 0; k < groups; ++k) any_off |= !on[k];
  if (any_off && scale > 0) {
    const float id = 1 / scale;
    for (int k = 0; k < groups; ++k) {
      if (on[k] && !p.refine_all) continue;
      int8_t* l = L + dim * k;
      for (int i = 0; i < dim; ++i)
        l[i] = static_cast<int8_t>(level_of(0.5f * (id * xval[dim * k + i] - 1), p.levels - 1));
      bool dummy;
      lat.snap(l, xval + dim * k, waux + dim * k, scale, &dummy);
    }
    float sumqx, sumq2;
    fit(L, &sumqx, &sumq2);
    if (sumq2 > 0) scale = sumqx / sumq2;
  }
  for (int k = 0; k < groups; ++k) {
    bool dummy;
    entry[k] = lat.snap(L + dim * k, xval + dim * k, waux + dim * k, 0.f,
                        &dummy);  // on grid by now: a lookup
  }
  return scale;
}

// Per-element weights: importance scaled by the element's size relative to
// the super-block spread, or a plain magnitude-based weight.
void make_weights(const float* xb, const float* importance, int n, float sigma2, float plain_bias,
                  float* weight, float* waux) {
  for (int i = 0; i < n; ++i) {
    weight[i] = importance ? importance[i] * std::sqrt(sigma2 + xb[i] * xb[i])
                           : plain_bias * sigma2 + xb[i] * xb[i];
    waux[i] = std::sqrt(weight[i]);
  }
}

float spread(const float* x) {
  float s = 0;
  for (int i = 0; i < kSuper; ++i) s += x[i] * x[i];
  return 2 * s / kSuper;
}

// Splits the signs off 8 values: magnitudes to xval, bit i set for negative x[i].
uint8_t split_signs(const float* x, float* xval) {
  uint8_t s = 0;
  for (int i = 0; i < 8; ++i) {
    xval[i] = x[i] >= 0 ? x[i] : -x[i];
    if (x[i] < 0) s |= uint8_t(1u << i);
  }
  return s;
}

// 4-bit odd multiplier m (scale ~ d * (2m + 1)) of a sub-block scale.
unsigned scale_nibble(float scale, float inv_d) {
  return unsigned(level_of(0.5f * (inv_d * scale - 1), 15));
}

// Stores the super-block scale d = max_scale/31 (times a format's fudge
// factor) as f16 at out[0..1] and returns 1/d for the sub-block multipliers.
float store_super_scale(uint8_t* out, float max_scale, float fudge) {
  const float d = max_scale / 31;
  const uint16_t dh = fp32_to_fp16(d * fudge);
  out[0] = uint8_t(dh);
  out[1] = uint8_t(dh >> 8);
  return 1 / d;
}

// Sub-block multipliers two per byte, even sub-block in the low nibble.
void store_nibble_pairs(uint8_t* dst, const float* scales, int count, float inv_d) {
  for (int sub = 0; sub < count; sub += 2)
    dst[sub / 2] =
        uint8_t(scale_nibble(scales[sub], inv_d) | (scale_nibble(scales[sub + 1], inv_d) << 4));
}

// Calls fn(x, importance, out, sigma2) for each 256-value super-block of a
// row, with its output bytes zeroed first.
template <typename Fn>
void for_each_super_block(const float* src, void* dst, int64_t n, const float* importance,
                          size_t bytes, Fn fn) {
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t blk = 0; blk < n / kSuper; ++blk, out += bytes) {
    const float* x = src + blk * kSuper;
    std::memset(out, 0, bytes);
    fn(x, importance ? importance + blk * kSuper : nullptr, out, spread(x));
  }
}

}  // namespace

void quantize_iq3_xxs(const float* src, void* dst, int64_t n, const float* importance) {
  const Lattice& lat = iq3xxs_lattice();
  const Search search{8, 15, 0.2f, false, 1e-8f};
  for_each_super_block(
      src, dst, n, importance, 98,
      [&](const float* x, const float* imp, uint8_t* out, float sigma2) {
        uint8_t* grid = out + 2;
        uint8_t* meta = grid + 64;
        float scales[8];
        uint32_t words[8] = {};
        float max_scale = 0;
        for (int sub = 0; sub < 8; ++sub) {
          const float* xb = x + 32 * sub;
          float weight[32], waux[32], xval[32];
          make_weights(xb, imp ? imp + 32 * sub : nullptr, 32, sigma2, 0.f, weight, waux);
          uint8_t signs[4];
          for (int k = 0; k < 4; ++k) {
            uint8_t s = split_signs(xb + 8 * k, xval + 8 * k);
            // Only 7 sign bits are stored; the 8th follows from even parity. With an
            // odd count, the least important value takes the wrong sign.
            if (std::popcount(unsigned(s)) % 2) {
              int imin = 0;
              float least = weight[8 * k] * xb[8 * k] * xb[8 * k];
              for (int i = 1; i < 8; ++i) {
                float v = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                if (v < least) least = v, imin = i;
              }
              xval[8 * k + imin] = -xval[8 * k + imin];
              s ^= uint8_t(1u << imin);
            }
            signs[k] = s & 127u;
          }
          int entry[8];
          float scale = fit_sub_block(lat, search, 32, xval, weight, waux, entry);
          if (scale < 0) {  // cannot happen with non-negative weights; keep the format valid anyway
            scale = -scale;
            for (auto& s : signs) s = ~s & 127u;
          }
          for (int k = 0; k < 8; ++k) grid[8 * sub + k] = static_cast<uint8_t>(entry[k]);
          words[sub] = signs[0] | (uint32_t(signs[1]) << 7) | (uint32_t(signs[2]) << 14) |
                       (uint32_t(signs[3]) << 21);
          scales[sub] = scale;
          max_scale = std::max(max_scale, scale);
        }
        if (max_scale == 0) {
          std::memset(out, 0, 98);
          return;
        }
        const float inv_d = store_super_scale(out, max_scale, 1.0125f);
        for (int sub = 0; sub < 8; ++sub) {
          const uint32_t w = words[sub] | (scale_nibble(scales[sub], inv_d) << 28);
          for (int b = 0; b < 4; ++b) meta[4 * sub + b] = uint8_t(w >> (8 * b));
        }
      });
}

void quantize_iq3_s(const float* src, void* dst, int64_t n, const float* importance) {
  const Lattice& lat = iq3s_lattice();
  const Search search{8, 9, 0.2f, true, 0.f};
  for_each_super_block(
      src, dst, n, importance, 110,
      [&](const float* x, const float* imp, uint8_t* out, float sigma2) {
        uint8_t* low = out + 2;
        uint8_t* high = low + 64;
        uint8_t* signs = high + 8;
        uint8_t* scale_bytes = signs + 32;
        float scales[8];
        float max_scale = 0;
        for (int sub = 0; sub < 8; ++sub) {
          const float* xb = x + 32 * sub;
          float weight[32], waux[32], xval[32];
          make_weights(xb, imp ? imp + 32 * sub : nullptr, 32, sigma2, 0.f, weight, waux);
          uint8_t s[4];
          for (int k = 0; k < 4; ++k) s[k] = split_signs(xb + 8 * k, xval + 8 * k);
          int entry[8];
          float scale = fit_sub_block(lat, search, 32, xval, weight, waux, entry);
          if (scale < 0) {
            scale = -scale;
            for (auto& v : s) v = uint8_t(~v);
          }
          for (int k = 0; k < 8; ++k) {
            low[8 * sub + k] = uint8_t(entry[k]);
            high[sub] |= uint8_t((entry[k] >> 8) << k);
          }
          std::memcpy(signs + 4 * sub, s, 4);
          scales[sub] = scale;
          max_scale = std::max(max_scale, scale);
        }
        if (max_scale == 0) return;  // a zero d: the stored fields are then don't-care
        store_nibble_pairs(scale_bytes, scales, 8, store_super_scale(out, max_scale, 1.033f));
      });
}

void quantize_iq2_s(const float* src, void* dst, int64_t n, const float* importance) {
  const Lattice& lat = iq2s_lattice();
  const Search search{3, 9, 0.1f, false, 1e-8f};
  for_each_super_block(
      src, dst, n, importance, 82,
      [&](const float* x, const float* imp, uint8_t* out, float sigma2) {
        uint8_t* low = out + 2;
        uint8_t* signs = low + 32;
        uint8_t* high = signs + 32;
        uint8_t* scale_bytes = high + 8;
        float scales[16];
        float max_scale = 0;
        for (int sub = 0; sub < 16; ++sub) {  // sub-blocks of 16: two groups of 8
          const float* xb = x + 16 * sub;
          float weight[16], waux[16], xval[16];
          make_weights(xb, imp ? imp + 16 * sub : nullptr, 16, sigma2, 0.25f, weight, waux);
          uint8_t s[2] = {split_signs(xb, xval), split_signs(xb + 8, xval + 8)};
          int entry[2];
          float scale = fit_sub_block(lat, search, 16, xval, weight, waux, entry);
          if (scale < 0) {
            scale = -scale;
            for (auto& v : s) v = uint8_t(~v);
          }
          for (int k = 0; k < 2; ++k) {
            const int g = 2 * sub + k;
            low[g] = uint8_t(entry[k]);
            high[g / 4] |= uint8_t((entry[k] >> 8) << (2 * (g % 4)));
            signs[g] = s[k];
          }
          scales[sub] = scale;
          max_scale = std::max(max_scale, scale);
        }
        if (max_scale == 0) return;
        store_nibble_pairs(scale_bytes, scales, 16, store_super_scale(out, max_scale, 0.9875f));
      });
}

}  // namespace tailor::quant
