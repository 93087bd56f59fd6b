// Quantizers of IQ1_S and IQ1_M: values in {-1, 0, +1} shifted by a small
// delta whose sign is stored per sub-block (IQ1_S) or per group of 8 (IQ1_M).
// With three levels the best weighted split of a sub-block can be found
// exactly: sort the values, then try every pair of boundaries (lower third ->
// -1, middle -> 0, upper -> +1) using prefix sums. Groups of 8 that are not
// codebook patterns are moved to their best nearest entry, as ggml does.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <numeric>

#include "tailor/quant/iq_grids.h"
#include "tailor/quant/iq_lattice.h"
#include "tailor/quant/kernels.h"
#include "tailor/util/error.h"
#include "tailor/util/fp16.h"

namespace tailor::quant {
namespace {

constexpr int kSuper = 256;

// The three values of a level (0, 1, 2 = -1, 0, +1) under each delta sign.
struct Shifted {
  float v[3];
};
constexpr Shifted kPlusS{{-1 + kIq1sDelta, kIq1sDelta, 1 + kIq1sDelta}};
constexpr Shifted kMinusS{{-1 - kIq1sDelta, -kIq1sDelta, 1 - kIq1sDelta}};
constexpr Shifted kPlusM{{-1 + kIq1mDelta, kIq1mDelta, 1 + kIq1mDelta}};
constexpr Shifted kMinusM{{-1 - kIq1mDelta, -kIq1mDelta, 1 - kIq1mDelta}};

// Positions of x in ascending value order, equal values kept in place order.
// NaN sorts as 0 so that the order is always well defined.
void order_by_value(const float* x, int n, int* order) {
  float key[32];
  for (int i = 0; i < n; ++i) key[i] = std::isnan(x[i]) ? 0.f : x[i];
  std::iota(order, order + n, 0);
  std::stable_sort(order, order + n, [&](int a, int b) { return key[a] < key[b]; });
}

// Codebook entry for the 8 levels L, moving L to the best nearest entry when
// it is not a pattern; values are the shifted -1, 0, +1 of xx.
int snap(const Lattice& lat, int8_t* L, const float* x, const float* w, float scale,
         const Shifted& xx, bool* on_grid) {
  *on_grid = lat.snap(L, x, w, scale, [&](int l) { return xx.v[l]; });
  return lat.find(L);
}

// Least-squares scale of x against the chosen entries' values (groups of 8,
// values from xx_of(group)); keeps `scale` unless the fit is positive.
template <typename XxOf>
float refit(const Lattice& lat, const int* entry, int groups, const float* x, const float* w,
            XxOf xx_of, float scale) {
  float sumqx = 0, sumq2 = 0;
  for (int k = 0; k < groups; ++k) {
    const int8_t* lv = lat.levels(entry[k]);
    const Shifted& xx = xx_of(k);
    for (int j = 0; j < 8; ++j) {
      float q = xx.v[lv[j]];
      sumqx += w[8 * k + j] * q * x[8 * k + j];
      sumq2 += w[8 * k + j] * q * q;
    }
  }
  return sumqx > 0 && sumq2 > 0 ? sumqx / sumq2 : scale;
}

float max_abs(const float* x, int n) {
  float m = std::fabs(x[0]);
  for (int i = 1; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

float mean_square_times2(const float* x) {
  float s = 0;
  for (int i = 0; i < kSuper; ++i) s += x[i] * x[i];
  return 2 * s / kSuper;
}

// Levels from the split: sorted positions [0, i1) -> 0, [i1, i2) -> 1, rest -> 2.
void assign_levels(const int* order, int n, int i1, int i2, int8_t* L) {
  for (int j = 0; j < n; ++j) L[order[j]] = static_cast<int8_t>(j < i1 ? 0 : j < i2 ? 1 : 2);
}

}  // namespace

void quantize_iq1_s(const float* src, void* dst, int64_t n, const float* importance) {
  if (importance == nullptr)
    fail("IQ1_S: quantizing needs an importance matrix (imatrix); none was given");
  const Lattice& lat = iq1s_lattice();
  constexpr int kSub = 32;
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t blk = 0; blk < n / kSuper; ++blk, out += 50) {
    const float* x = src + blk * kSuper;
    const float* imp = importance + blk * kSuper;
    std::memset(out, 0, 50);
    uint8_t* low = out + 2;
    uint16_t qh[8] = {};
    const float sigma2 = mean_square_times2(x);
    float scales[8], max_scale = 0;
    int shifts[8];
    for (int sub = 0; sub < 8; ++sub) {
      const float* xb = x + kSub * sub;
      float w[kSub];
      for (int i = 0; i < kSub; ++i) w[i] = imp[kSub * sub + i] * std::sqrt(sigma2 + xb[i] * xb[i]);
      scales[sub] = 0, shifts[sub] = 1;
      const float max = max_abs(xb, kSub);
      if (!(max >= 1e-12f)) continue;
      int order[kSub];
      order_by_value(xb, kSub, order);
      float sumx[kSub + 1], sumw[kSub + 1];
      sumx[0] = sumw[0] = 0;
      for (int j = 0; j < kSub; ++j) {
        sumx[j + 1] = sumx[j] + w[order[j]] * xb[order[j]];
        sumw[j + 1] = sumw[j] + w[order[j]];
      }
      float best = -FLT_MAX, scale = max;
      int best1 = -1, best2 = -1, shift = 0;
      for (int i1 = 0; i1 <= kSub; ++i1) {
        for (int i2 = i1; i2 <= kSub; ++i2) {
          for (int sign : {1, -1}) {
            const float* v = (sign > 0 ? kPlusS : kMinusS).v;
            float sumqx = (sumx[i1] - sumx[0]) * v[0] + (sumx[i2] - sumx[i1]) * v[1] +
                          (sumx[kSub] - sumx[i2]) * v[2];
            float sumq2 = (sumw[i1] - sumw[0]) * v[0] * v[0] + (sumw[i2] - sumw[i1]) * v[1] * v[1] +
                          (sumw[kSub] - sumw[i2]) * v[2] * v[2];
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
              scale = sumqx / sumq2;
              best = scale * sumqx;
              best1 = i1, best2 = i2, shift = sign;
            }
          }
        }
      }
      if (best1 < 0 || shift == 0) continue;
      int8_t L[kSub];
      assign_levels(order, kSub, best1, best2, L);
      if (scale < 0) {  // mirror: levels and delta sign flip together
        for (auto& l : L) l = static_cast<int8_t>(2 - l);
        scale = -scale, shift = -shift;
      }
      const Shifted& xx = shift > 0 ? kPlusS : kMinusS;
      int entry[4];
      bool all_on = true;
      for (int k = 0; k < 4; ++k) {
        bool on;
        entry[k] = snap(lat, L + 8 * k, xb + 8 * k, w + 8 * k, scale, xx, &on);
        all_on &= on;
      }
      if (!all_on)
        scale = refit(
            lat, entry, 4, xb, w, [&](int) -> const Shifted& { return xx; }, scale);
      for (int k = 0; k < 4; ++k) {
        low[4 * sub + k] = uint8_t(entry[k]);
        qh[sub] |= uint16_t((entry[k] >> 8) << (3 * k));
      }
      scales[sub] = scale, shifts[sub] = shift;
      max_scale = std::max(max_scale, scale);
    }
    if (max_scale > 0) {
      const float d = max_scale / 15;
      const uint16_t dh = fp32_to_fp16(d * 1.125f);
      out[0] = uint8_t(dh), out[1] = uint8_t(dh >> 8);
      const float inv_d = 1 / d;
      for (int sub = 0; sub < 8; ++sub) {
        unsigned l = unsigned(level_of(0.5f * (inv_d * scales[sub] - 1), 7));
        if (shifts[sub] < 0) l |= 8u;
        qh[sub] |= uint16_t(l << 12);
      }
    }
    for (int sub = 0; sub < 8; ++sub)
      out[34 + 2 * sub] = uint8_t(qh[sub]), out[35 + 2 * sub] = uint8_t(qh[sub] >> 8);
  }
}

void quantize_iq1_m(const float* src, void* dst, int64_t n, const float* importance) {
  const Lattice& lat = iq1s_lattice();
  constexpr int kSub = 16;
  // Delta signs per sub-block: bit 0 second group negative, bit 1 first group negative.
  auto shift_of = [](int combo, int group) -> const Shifted& {
    bool minus = group == 0 ? combo >= 2 : combo % 2 == 1;
    return minus ? kMinusM : kPlusM;
  };
  constexpr uint8_t kDeltaBits[4] = {0x00, 0x80, 0x08, 0x88};
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t blk = 0; blk < n / kSuper; ++blk, out += 56) {
    const float* x = src + blk * kSuper;
    const float* imp = importance ? importance + blk * kSuper : nullptr;
    std::memset(out, 0, 56);
    uint8_t* low = out;
    uint8_t* high = out + 32;
    const float sigma2 = mean_square_times2(x);
    float weight[kSuper];
    for (int i = 0; i < kSuper; ++i)
      weight[i] = imp ? imp[i] * std::sqrt(sigma2 + x[i] * x[i]) : x[i] * x[i];
    float scales[16], max_scale = 0;
    int combos[16];
    for (int sub = 0; sub < 16; ++sub) {
      const float* xb = x + kSub * sub;
      const float* w = weight + kSub * sub;
      scales[sub] = 0, combos[sub] = 0;
      const float max = max_abs(xb, kSub);
      if (!(max >= 1e-7f)) continue;
      int order[kSub];
      order_by_value(xb, kSub, order);
      // Prefix sums per half (group of 8), since each half has its own delta sign.
      float px[2][kSub + 1], pw[2][kSub + 1];
      px[0][0] = px[1][0] = pw[0][0] = pw[1][0] = 0;
      for (int j = 0; j < kSub; ++j) {
        const int i = order[j];
        const int h = i < kSub / 2 ? 0 : 1;
        px[h][j + 1] = px[h][j] + w[i] * xb[i];
        px[1 - h][j + 1] = px[1 - h][j];
        pw[h][j + 1] = pw[h][j] + w[i];
        pw[1 - h][j + 1] = pw[1 - h][j];
      }
      // With steps of 1 between the three values, a split's sums reduce to
      // totals times the top value minus the prefix sums at both boundaries.
      const float tx[2] = {px[0][kSub], px[1][kSub]}, tw[2] = {pw[0][kSub], pw[1][kSub]};
      const float* vp = kPlusM.v;
      const float* vm = kMinusM.v;
      const float cp1 = vp[0] * vp[0] - vp[1] * vp[1], cp2 = vp[1] * vp[1] - vp[2] * vp[2];
      const float cm1 = vm[0] * vm[0] - vm[1] * vm[1], cm2 = vm[1] * vm[1] - vm[2] * vm[2];
      float best = -FLT_MAX, scale = max;
      int best1 = -1, best2 = -1, best_combo = -1;
      for (int i1 = 0; i1 <= kSub; ++i1) {
        for (int i2 = i1; i2 <= kSub; ++i2) {
          float qxp[2], qxm[2], q2p[2], q2m[2];
          for (int h = 0; h < 2; ++h) {
            const float sx = px[h][i1] + px[h][i2];
            qxp[h] = tx[h] * vp[2] - sx;
            qxm[h] = tx[h] * vm[2] - sx;
            q2p[h] = tw[h] * vp[2] * vp[2] + pw[h][i1] * cp1 + pw[h][i2] * cp2;
            q2m[h] = tw[h] * vm[2] * vm[2] + pw[h][i1] * cm1 + pw[h][i2] * cm2;
          }
          const float sumqx[4] = {qxp[0] + qxp[1], qxp[0] + qxm[1], qxm[0] + qxp[1],
                                  qxm[0] + qxm[1]};
          const float sumq2[4] = {q2p[0] + q2p[1], q2p[0] + q2m[1], q2m[0] + q2p[1],
                                  q2m[0] + q2m[1]};
          for (int c = 0; c < 4; ++c) {
            if (sumq2[c] > 0 && sumqx[c] * sumqx[c] > best * sumq2[c]) {
              scale = sumqx[c] / sumq2[c];
              best = scale * sumqx[c];
              best1 = i1, best2 = i2, best_combo = c;
            }
          }
        }
      }
      if (best1 < 0 || best_combo < 0) continue;
      int8_t L[kSub];
      assign_levels(order, kSub, best1, best2, L);
      if (scale < 0) {  // mirror: levels and both delta signs flip
        for (auto& l : L) l = static_cast<int8_t>(2 - l);
        scale = -scale, best_combo = 3 - best_combo;
      }
      int entry[2];
      bool all_on = true;
      for (int k = 0; k < 2; ++k) {
        bool on;
        entry[k] = snap(lat, L + 8 * k, xb + 8 * k, w + 8 * k, scale, shift_of(best_combo, k), &on);
        all_on &= on;
      }
      if (!all_on)
        scale = refit(
            lat, entry, 2, xb, w, [&](int k) -> const Shifted& { return shift_of(best_combo, k); },
            scale);
      low[2 * sub] = uint8_t(entry[0]);
      low[2 * sub + 1] = uint8_t(entry[1]);
      high[sub] = uint8_t((entry[0] >> 8) | ((entry[1] >> 8) << 4));
      scales[sub] = scale, combos[sub] = best_combo;
      max_scale = std::max(max_scale, scale);
    }
    if (max_scale == 0) continue;
    // 3-bit multipliers first, then a final least-squares super-block scale
    // over everything as stored.
    uint16_t sc[4] = {};
    float d = max_scale / 15;
    const float inv_d = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int sub = 0; sub < 16; ++sub) {
      const int l = level_of(0.5f * (inv_d * scales[sub] - 1), 7);
      sc[sub / 4] |= uint16_t(l << (3 * (sub % 4)));
      high[sub] |= kDeltaBits[combos[sub]];
      for (int k = 0; k < 2; ++k) {
        const int e = low[2 * sub + k] | ((high[sub] >> (4 * k)) & 7) << 8;
        const int8_t* lv = lat.levels(e);
        const Shifted& xx = shift_of(combos[sub], k);
        for (int j = 0; j < 8; ++j) {
          const int i = kSub * sub + 8 * k + j;
          float q = xx.v[lv[j]] * float(2 * l + 1);
          sumqx += weight[i] * q * x[i];
          sumq2 += weight[i] * q * q;
        }
      }
    }
    if (sumq2 > 0) d = sumqx / sumq2;
    // The f16 scale is spread over the top nibbles of the four scale words.
    const uint16_t dh = fp32_to_fp16(d * 1.1125f);
    for (int k = 0; k < 4; ++k) {
      sc[k] |= uint16_t(((dh >> (4 * k)) & 0xfu) << 12);
      out[48 + 2 * k] = uint8_t(sc[k]);
      out[49 + 2 * k] = uint8_t(sc[k] >> 8);
    }
  }
}

}  // namespace tailor::quant
