// Quantizers of the IQ2 and IQ3 grid i-quants. Each group of D
// magnitudes (D = 4 for IQ3, 8 for IQ2) is snapped to odd levels q = 2l+1 and
// must land on a codebook entry; off-grid level patterns are replaced by the
// best of their nearest codebook entries. Per sub-block a short scan over
// candidate scales keeps the one with the best weighted fit, as ggml does;
// the super-block then stores one f16 scale and 4-bit sub-block multipliers.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "tailor/quant/iq_lattice.h"
#include "tailor/quant/kernels.h"
#include "tailor/util/error.h"
#include "tailor/util/fp16.h"

namespace tailor::quant {
namespace {

constexpr int kSuper = 256;

enum class Start {
  FromMax,       // scan scales around max / (2*levels - 1)
  FromLevelFit,  // scan around a free (off-grid) least-squares fit of the levels
};
enum class Refine {
  OffGrid,      // after the scan, re-snap the groups that were off grid
  AllIfAnyOff,  // re-snap every group if any was off grid
  Always,       // always re-snap every group
};

struct Search {
  int levels;  // levels per coordinate (q = 1, 3, .., 2*levels-1)
  int steps;   // candidates (2*levels-1 + is*step)/reference for is in [-steps, steps]
  float step;
  Start start;
  Refine refine;
  float eps;  // sub-blocks whose largest magnitude is below this are stored empty
};

// Snaps to the codebook on the odd lattice: level l has value 2l+1.
bool snap(const Lattice& lat, int8_t* L, const float* xval, const float* waux, float scale) {
  return lat.snap(L, xval, waux, scale, [](int l) { return float(2 * l + 1); });
}

// Unconstrained weighted fit of levels 0..nmax to x (x >= 0 apart from a
// parity-flipped value): a scan of 9 inverse scales, then up to 5 rounds of
// moving single levels while that improves the fit. Returns the scale. The
// levels are kept in bytes like ggml's, which matters only for its scale when
// a flipped value rounds below zero.
float free_level_fit(int n, int nmax, const float* x, const float* w) {
  float max = 0;
  for (int i = 0; i < n; ++i) max = std::max(max, x[i]);
  if (!(max >= 1e-15f)) return 0.f;
  // Clamped so that stray huge ratios stay defined; real levels are tiny.
  auto round_int = [](float v) {
    return int(std::nearbyint(std::fmin(std::fmax(v, -4e6f), 4e6f)));
  };
  float iscale = float(nmax) / max;
  float best_mse = 0;
  for (int i = 0; i < n; ++i) {
    float diff = x[i] - (1 / iscale) * float(uint8_t(round_int(iscale * x[i])));
    best_mse += w[i] * diff * diff;
  }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    const float iscale_is = (0.1f * float(is) + float(nmax)) / max;
    const float scale_is = 1 / iscale_is;
    float mse = 0;
    for (int i = 0; i < n; ++i) {
      float diff = x[i] - scale_is * float(std::min(nmax, round_int(iscale_is * x[i])));
      mse += w[i] * diff * diff;
    }
    if (mse < best_mse) best_mse = mse, iscale = iscale_is;
  }
  uint8_t L[32];
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = std::min(nmax, round_int(iscale * x[i]));
    L[i] = uint8_t(l);
    sumlx += w[i] * x[i] * float(l);
    suml2 += w[i] * float(l) * float(l);
  }
  for (int round = 0; round < 5; ++round) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      float slx = sumlx - w[i] * x[i] * float(L[i]);
      float sl2 = suml2 - w[i] * float(L[i]) * float(L[i]);
      if (!(slx > 0 && sl2 > 0)) continue;
      int l = std::min(nmax, round_int(x[i] * sl2 / slx));
      if (l == L[i]) continue;
      slx += w[i] * x[i] * float(l);
      sl2 += w[i] * float(l) * float(l);
      if (slx * slx * suml2 > sumlx * sumlx * sl2) {
        L[i] = uint8_t(l), sumlx = slx, suml2 = sl2;
        ++changed;
      }
    }
    if (!changed) break;
  }
  return suml2 > 0 ? sumlx / suml2 : 0.f;
}

struct SubBlockFit {
  float scale = 0;
  bool empty = true;  // nothing to store: codes and signs are left zero
};

// Fits one sub-block of n magnitudes: codebook entries to `entry` (n / dim of
// them) and the scale, by scanning candidate scales and keeping the best
// weighted fit, then re-snapping groups at the chosen scale.
SubBlockFit fit_sub_block(const Lattice& lat, const Search& p, int n, const float* xval,
                          const float* weight, const float* waux, int* entry) {
  const int dim = lat.dim();
  const int groups = n / dim;
  std::fill(entry, entry + groups, 0);
  float max = xval[0];
  for (int i = 1; i < n; ++i) max = std::max(max, xval[i]);
  if (!(max >= p.eps) || max == 0.f) return {};
  const int top = 2 * p.levels - 1;
  float scale = max / float(top), reference = max;
  if (p.start == Start::FromLevelFit) {
    scale = free_level_fit(n, p.levels + 1, xval, weight);
    reference = scale * float(p.levels);
    if (!(reference > 0)) return {};
  }
  auto round_levels = [&](float id, int k, int8_t* l) {
    for (int i = 0; i < dim; ++i)
      l[i] = static_cast<int8_t>(level_of(0.5f * (id * xval[dim * k + i] - 1), p.levels - 1));
  };
  auto fit = [&](const int8_t* lv, float* sumqx, float* sumq2) {
    *sumqx = *sumq2 = 0;
    for (int i = 0; i < n; ++i) {
      float q = float(2 * lv[i] + 1);
      *sumqx += weight[i] * xval[i] * q;
      *sumq2 += weight[i] * q * q;
    }
  };
  int8_t L[32] = {}, Laux[32];
  bool on[8], on_aux[8];
  std::fill(on, on + groups, p.refine == Refine::OffGrid);
  float best = 0;
  for (int is = -p.steps; is <= p.steps; ++is) {
    const float id = (float(top) + float(is) * p.step) / reference;
    for (int k = 0; k < groups; ++k) {
      round_levels(id, k, Laux + dim * k);
      on_aux[k] = snap(lat, Laux + dim * k, xval + dim * k, waux + dim * k, 1 / id);
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
  bool any_off = p.refine == Refine::Always;
  for (int k = 0; k < groups; ++k) any_off |= !on[k];
  if (any_off && scale > 0) {
    const float id = 1 / scale;
    for (int k = 0; k < groups; ++k) {
      if (on[k] && p.refine == Refine::OffGrid) continue;
      round_levels(id, k, L + dim * k);
      snap(lat, L + dim * k, xval + dim * k, waux + dim * k, scale);
    }
    float sumqx, sumq2;
    fit(L, &sumqx, &sumq2);
    if (sumq2 > 0) scale = sumqx / sumq2;
  }
  for (int k = 0; k < groups; ++k) {
    // L is on grid unless no candidate was ever accepted; snap makes it so.
    snap(lat, L + dim * k, xval + dim * k, waux + dim * k, scale);
    entry[k] = lat.find(L + dim * k);
  }
  return {scale, false};
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

// Mean square of a super-block times `factor`.
float spread(const float* x, float factor) {
  float s = 0;
  for (int i = 0; i < kSuper; ++i) s += x[i] * x[i];
  return factor * s / kSuper;
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

// Like split_signs for formats that store 7 sign bits and imply the 8th by
// even parity: with an odd count, the least important value keeps the wrong
// sign (its magnitude goes in negated). Returns the 7 stored bits.
uint8_t split_signs_even(const float* x, const float* weight, float* xval) {
  uint8_t s = split_signs(x, xval);
  if (std::popcount(unsigned(s)) % 2) {
    int imin = 0;
    float least = weight[0] * x[0] * x[0];
    for (int i = 1; i < 8; ++i) {
      float v = weight[i] * x[i] * x[i];
      if (v < least) least = v, imin = i;
    }
    xval[imin] = -xval[imin];
    s ^= uint8_t(1u << imin);
  }
  return s & 127u;
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

void put_u32(uint8_t* p, uint32_t v) {
  for (int b = 0; b < 4; ++b) p[b] = uint8_t(v >> (8 * b));
}

// Calls fn(x, importance, out) for each 256-value super-block of a row, with
// its output bytes zeroed first.
template <typename Fn>
void for_each_super_block(const float* src, void* dst, int64_t n, const float* importance,
                          size_t bytes, Fn fn) {
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t blk = 0; blk < n / kSuper; ++blk, out += bytes) {
    std::memset(out, 0, bytes);
    fn(src + blk * kSuper, importance ? importance + blk * kSuper : nullptr, out);
  }
}

void require_importance(const float* importance, const char* type) {
  if (importance == nullptr)
    fail("{}: quantizing needs an importance matrix (imatrix); none was given", type);
}

}  // namespace

void quantize_iq2_xxs(const float* src, void* dst, int64_t n, const float* importance) {
  require_importance(importance, "IQ2_XXS");
  const Lattice& lat = iq2xxs_lattice();
  const Search search{3, 6, 0.1f, Start::FromLevelFit, Refine::Always, 1e-15f};
  for_each_super_block(
      src, dst, n, importance, 66, [&](const float* x, const float* imp, uint8_t* out) {
        const float sigma2 = spread(x, 1.f);
        float scales[8], max_scale = 0;
        uint32_t words[16] = {};  // per sub-block: 4 entry bytes, then 4 x 7 sign bits + scale
        for (int sub = 0; sub < 8; ++sub) {
          const float* xb = x + 32 * sub;
          float weight[32], waux[32], xval[32];
          make_weights(xb, imp + 32 * sub, 32, sigma2, 0.f, weight, waux);
          uint32_t signs = 0;
          for (int k = 0; k < 4; ++k)
            signs |= uint32_t(split_signs_even(xb + 8 * k, weight + 8 * k, xval + 8 * k))
                     << (7 * k);
          int entry[4];
          SubBlockFit fit = fit_sub_block(lat, search, 32, xval, weight, waux, entry);
          scales[sub] = 0;
          if (fit.empty) continue;
          if (fit.scale < 0)
            fit.scale = -fit.scale, signs ^= 0x0fffffffu;  // only with negative importance
          for (int k = 0; k < 4; ++k) words[2 * sub] |= uint32_t(entry[k]) << (8 * k);
          words[2 * sub + 1] = signs;
          scales[sub] = fit.scale;
          max_scale = std::max(max_scale, fit.scale);
        }
        if (max_scale == 0) return;
        const float inv_d = store_super_scale(out, max_scale, 1.f);
        for (int sub = 0; sub < 8; ++sub) {
          put_u32(out + 2 + 8 * sub, words[2 * sub]);
          put_u32(out + 6 + 8 * sub, words[2 * sub + 1] | (scale_nibble(scales[sub], inv_d) << 28));
        }
      });
}

void quantize_iq2_xs(const float* src, void* dst, int64_t n, const float* importance) {
  require_importance(importance, "IQ2_XS");
  const Lattice& lat = iq2xs_lattice();
  const Search search{3, 9, 0.1f, Start::FromMax, Refine::OffGrid, 1e-15f};
  for_each_super_block(
      src, dst, n, importance, 74, [&](const float* x, const float* imp, uint8_t* out) {
        const float sigma2 = spread(x, 1.f);
        float scales[16], max_scale = 0;
        uint16_t codes[32] = {};              // 9-bit entry | 7 sign bits << 9
        for (int sub = 0; sub < 16; ++sub) {  // sub-blocks of 16: two groups of 8
          const float* xb = x + 16 * sub;
          float weight[16], waux[16], xval[16];
          make_weights(xb, imp + 16 * sub, 16, sigma2, 0.f, weight, waux);
          unsigned signs[2];
          for (int k = 0; k < 2; ++k)
            signs[k] = split_signs_even(xb + 8 * k, weight + 8 * k, xval + 8 * k);
          int entry[2];
          SubBlockFit fit = fit_sub_block(lat, search, 16, xval, weight, waux, entry);
          scales[sub] = 0;
          if (fit.empty) continue;
          if (fit.scale < 0) {
            fit.scale = -fit.scale;
            for (auto& s : signs) s = ~s & 127u;
          }
          for (int k = 0; k < 2; ++k) codes[2 * sub + k] = uint16_t(entry[k] | (signs[k] << 9));
          scales[sub] = fit.scale;
          max_scale = std::max(max_scale, fit.scale);
        }
        if (max_scale == 0) return;
        const float inv_d = store_super_scale(out, max_scale, 1.f);
        for (int g = 0; g < 32; ++g)
          out[2 + 2 * g] = uint8_t(codes[g]), out[3 + 2 * g] = uint8_t(codes[g] >> 8);
        store_nibble_pairs(out + 66, scales, 16, inv_d);
      });
}

void quantize_iq2_s(const float* src, void* dst, int64_t n, const float* importance) {
  const Lattice& lat = iq2s_lattice();
  const Search search{3, 9, 0.1f, Start::FromMax, Refine::OffGrid, 1e-8f};
  for_each_super_block(
      src, dst, n, importance, 82, [&](const float* x, const float* imp, uint8_t* out) {
        uint8_t* low = out + 2;
        uint8_t* signs = low + 32;
        uint8_t* high = signs + 32;
        const float sigma2 = spread(x, 2.f);
        float scales[16], max_scale = 0;
        for (int sub = 0; sub < 16; ++sub) {  // sub-blocks of 16: two groups of 8
          const float* xb = x + 16 * sub;
          float weight[16], waux[16], xval[16];
          make_weights(xb, imp ? imp + 16 * sub : nullptr, 16, sigma2, 0.25f, weight, waux);
          uint8_t s[2] = {split_signs(xb, xval), split_signs(xb + 8, xval + 8)};
          int entry[2];
          SubBlockFit fit = fit_sub_block(lat, search, 16, xval, weight, waux, entry);
          scales[sub] = 0;
          if (fit.empty) continue;
          if (fit.scale < 0) fit.scale = -fit.scale, s[0] = uint8_t(~s[0]), s[1] = uint8_t(~s[1]);
          for (int k = 0; k < 2; ++k) {
            const int g = 2 * sub + k;
            low[g] = uint8_t(entry[k]);
            high[g / 4] |= uint8_t((entry[k] >> 8) << (2 * (g % 4)));
            signs[g] = s[k];
          }
          scales[sub] = fit.scale;
          max_scale = std::max(max_scale, fit.scale);
        }
        if (max_scale == 0) return;
        store_nibble_pairs(high + 8, scales, 16, store_super_scale(out, max_scale, 0.9875f));
      });
}

void quantize_iq3_xxs(const float* src, void* dst, int64_t n, const float* importance) {
  const Lattice& lat = iq3xxs_lattice();
  const Search search{8, 15, 0.2f, Start::FromMax, Refine::OffGrid, 1e-8f};
  for_each_super_block(
      src, dst, n, importance, 98, [&](const float* x, const float* imp, uint8_t* out) {
        const float sigma2 = spread(x, 2.f);
        float scales[8], max_scale = 0;
        uint32_t words[8] = {};  // 4 x 7 sign bits, scale added at the end
        for (int sub = 0; sub < 8; ++sub) {
          const float* xb = x + 32 * sub;
          float weight[32], waux[32], xval[32];
          make_weights(xb, imp ? imp + 32 * sub : nullptr, 32, sigma2, 0.f, weight, waux);
          uint32_t signs = 0;
          for (int k = 0; k < 4; ++k)
            signs |= uint32_t(split_signs_even(xb + 8 * k, weight + 8 * k, xval + 8 * k))
                     << (7 * k);
          int entry[8];
          SubBlockFit fit = fit_sub_block(lat, search, 32, xval, weight, waux, entry);
          scales[sub] = 0;
          if (fit.empty) continue;
          if (fit.scale < 0) fit.scale = -fit.scale, signs ^= 0x0fffffffu;
          for (int k = 0; k < 8; ++k) out[2 + 8 * sub + k] = uint8_t(entry[k]);
          words[sub] = signs;
          scales[sub] = fit.scale;
          max_scale = std::max(max_scale, fit.scale);
        }
        if (max_scale == 0) {
          std::memset(out, 0, 98);
          return;
        }
        const float inv_d = store_super_scale(out, max_scale, 1.0125f);
        for (int sub = 0; sub < 8; ++sub)
          put_u32(out + 66 + 4 * sub, words[sub] | (scale_nibble(scales[sub], inv_d) << 28));
      });
}

void quantize_iq3_s(const float* src, void* dst, int64_t n, const float* importance) {
  const Lattice& lat = iq3s_lattice();
  const Search search{8, 9, 0.2f, Start::FromMax, Refine::AllIfAnyOff, 0.f};
  for_each_super_block(
      src, dst, n, importance, 110, [&](const float* x, const float* imp, uint8_t* out) {
        uint8_t* low = out + 2;
        uint8_t* high = low + 64;
        uint8_t* signs = high + 8;
        const float sigma2 = spread(x, 2.f);
        float scales[8], max_scale = 0;
        for (int sub = 0; sub < 8; ++sub) {
          const float* xb = x + 32 * sub;
          float weight[32], waux[32], xval[32];
          make_weights(xb, imp ? imp + 32 * sub : nullptr, 32, sigma2, 0.f, weight, waux);
          uint8_t s[4];
          for (int k = 0; k < 4; ++k) s[k] = split_signs(xb + 8 * k, xval + 8 * k);
          int entry[8];
          SubBlockFit fit = fit_sub_block(lat, search, 32, xval, weight, waux, entry);
          scales[sub] = 0;
          if (fit.empty) continue;
          if (fit.scale < 0) {
            fit.scale = -fit.scale;
            for (auto& v : s) v = uint8_t(~v);
          }
          for (int k = 0; k < 8; ++k) {
            low[8 * sub + k] = uint8_t(entry[k]);
            high[sub] |= uint8_t((entry[k] >> 8) << k);
          }
          std::memcpy(signs + 4 * sub, s, 4);
          scales[sub] = fit.scale;
          max_scale = std::max(max_scale, fit.scale);
        }
        if (max_scale == 0) return;
        store_nibble_pairs(signs + 32, scales, 8, store_super_scale(out, max_scale, 1.033f));
      });
}

}  // namespace tailor::quant
