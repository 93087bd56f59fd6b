#include "tailor/quant/scale_search.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tailor::quant {
namespace {

// Groups whose largest magnitude is below this are stored as zero.
constexpr float kZeroGroup = 1e-15f;

// The signed value of largest magnitude (the first one on ties) and that magnitude.
struct SignedMax {
  float value = 0.0f;
  float magnitude = 0.0f;
};

SignedMax signed_max(int n, const float* x) {
  SignedMax m;
  for (int i = 0; i < n; ++i) {
    float a = std::fabs(x[i]);
    if (a > m.magnitude) {
      m.magnitude = a;
      m.value = x[i];
    }
  }
  return m;
}

inline float weight_or_square(const float* w, const float* x, int i) { return w ? w[i] : x[i] * x[i]; }

// Weighted sums for the symmetric fit at one inverse scale; writes the levels
// (offset by nmax) to L when it is not null.
struct SymmetricSums {
  float lx = 0.0f;  // sum w * x * l
  float l2 = 0.0f;  // sum w * l * l
};

SymmetricSums symmetric_sums(int n, int nmax, const float* x, const float* w, float iscale,
                             int8_t* L) {
  SymmetricSums s;
  for (int i = 0; i < n; ++i) {
    int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    if (L) L[i] = static_cast<int8_t>(l + nmax);
    float wi = weight_or_square(w, x, i);
    s.lx += wi * x[i] * l;
    s.l2 += wi * l * l;
  }
  return s;
}

}  // namespace

float fit_symmetric(int n, int nmax, const float* x, const float* w, int8_t* L) {
  SignedMax m = signed_max(n, x);
  if (m.magnitude < kZeroGroup) {
    std::memset(L, 0, n);
    return 0.0f;
  }
  SymmetricSums s = symmetric_sums(n, nmax, x, w, -nmax / m.value, L);
  float scale = s.l2 != 0.0f ? s.lx / s.l2 : 0.0f;
  float best = scale * s.lx;  // the error reduction achieved: sum w x^2 - error
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    float iscale = -(nmax + 0.1f * step) / m.value;
    SymmetricSums t = symmetric_sums(n, nmax, x, w, iscale, nullptr);
    if (t.l2 > 0 && t.lx * t.lx > best * t.l2) {
      symmetric_sums(n, nmax, x, w, iscale, L);
      scale = t.lx / t.l2;
      best = scale * t.lx;
    }
  }
  return scale;
}

float fit_symmetric_refined(int n, int nmax, const float* x, int8_t* L) {
  SignedMax m = signed_max(n, x);
  if (m.magnitude < kZeroGroup) {
    std::memset(L, 0, n);
    return 0.0f;
  }
  float iscale = -nmax / m.value;
  float sumlx = 0.0f, suml2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l);  // signed while refining, offset at the end
    float wi = x[i] * x[i];
    sumlx += wi * x[i] * l;
    suml2 += wi * l * l;
  }
  // Coordinate descent: re-round one level against the scale fitted to the
  // others, keep it when the fit (sumlx^2 / suml2) grows.
  for (int sweep = 0; sweep < 5; ++sweep) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      float wi = x[i] * x[i];
      float slx = sumlx - wi * x[i] * L[i];
      if (slx > 0) {
        float sl2 = suml2 - wi * L[i] * L[i];
        int l = std::clamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (l != L[i]) {
          slx += wi * x[i] * l;
          sl2 += wi * l * l;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(l);
            sumlx = slx;
            suml2 = sl2;
            ++changed;
          }
        }
      }
    }
    if (changed == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

float fit_affine(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min,
                 const AffineSearch& search) {
  float min = x[0];
  float max = x[0];
  float sum_w = weight_or_square(w, x, 0);
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    float wi = weight_or_square(w, x, i);
    sum_w += wi;
    sum_x += wi * x[i];
  }
  if (min > 0) min = 0;
  if (max <= min) {
    std::memset(L, 0, n);
    *neg_min = -min;
    return 0.0f;
  }
  auto error_of = [&](float scale, float offset, const uint8_t* levels) {
    float e = 0.0f;
    for (int i = 0; i < n; ++i) {
      float diff = scale * levels[i] + offset - x[i];
      diff = search.absolute_error ? std::fabs(diff) : diff * diff;
      e += weight_or_square(w, x, i) * diff;
    }
    return e;
  };

  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  for (int i = 0; i < n; ++i)
    L[i] = static_cast<uint8_t>(std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
  float best_error = error_of(scale, min, L);
  if (search.nstep < 1) {
    *neg_min = -min;
    return scale;
  }
  uint8_t trial[kMaxSearchGroup];
  for (int step = 0; step <= search.nstep; ++step) {
    iscale = (search.rmin + search.rdelta * step + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      trial[i] = static_cast<uint8_t>(l);
      float wi = weight_or_square(w, x, i);
      sum_l += wi * l;
      sum_l2 += wi * l * l;
      sum_xl += wi * l * x[i];
    }
    // Weighted least squares for (scale, offset) given the levels.
    float det = sum_w * sum_l2 - sum_l * sum_l;
    if (!(det > 0)) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_min > 0) {
      this_min = 0;
      this_scale = sum_xl / sum_l2;
    }
    float e = error_of(this_scale, this_min, trial);
    if (e < best_error) {
      std::memcpy(L, trial, n);
      best_error = e;
      scale = this_scale;
      min = this_min;
    }
  }
  *neg_min = -min;
  return scale;
}

float fit_positive(int n, int nmax, const float* x, const float* w, uint8_t* L) {
  float max = 0;
  for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];
  if (max < kZeroGroup) {
    std::memset(L, 0, n);
    return 0.0f;
  }
  // Pick the best of 9 inverse scales around nmax / max by weighted error.
  float iscale = nmax / max;
  for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(nearest_int(iscale * x[i]));
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    float diff = x[i] - scale * L[i];
    best_error += w[i] * diff * diff;
  }
  for (int step = -4; step <= 4; ++step) {
    if (step == 0) continue;
    float iscale_step = (0.1f * step + nmax) / max;
    float scale_step = 1 / iscale_step;
    float e = 0;
    for (int i = 0; i < n; ++i) {
      int l = std::min(nmax, nearest_int(iscale_step * x[i]));
      float diff = x[i] - scale_step * l;
      e += w[i] * diff * diff;
    }
    if (e < best_error) {
      best_error = e;
      iscale = iscale_step;
    }
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = std::min(nmax, nearest_int(iscale * x[i]));
    L[i] = static_cast<uint8_t>(l);
    sumlx += w[i] * x[i] * l;
    suml2 += w[i] * l * l;
  }
  // Then the same single-level refinement as fit_symmetric_refined.
  for (int sweep = 0; sweep < 5; ++sweep) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      float slx = sumlx - w[i] * x[i] * L[i];
      float sl2 = suml2 - w[i] * L[i] * L[i];
      if (slx > 0 && sl2 > 0) {
        int l = std::min(nmax, nearest_int(x[i] * sl2 / slx));
        if (l != L[i]) {
          slx += w[i] * x[i] * l;
          sl2 += w[i] * l * l;
          if (slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<uint8_t>(l);
            sumlx = slx;
            suml2 = sl2;
            ++changed;
          }
        }
      }
    }
    if (changed == 0) break;
  }
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

}  // namespace tailor::quant
