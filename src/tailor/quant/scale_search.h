// Scale searches shared by the linear block formats (Q4_0..Q5_1, Q2_K..Q6_K).
// Each fits one group of values with integer levels and a scale (and a min),
// minimising a weighted squared (or absolute) error. They reproduce ggml's
// searches step for step, float operation order included, so that Tailor's
// bytes match ggml's: keep that in mind before "simplifying" an expression.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace tailor::quant {

// Groups larger than this are not used by any format (the largest is 32).
inline constexpr int kMaxSearchGroup = 256;

// Round to nearest, ties to even, for |v| < 2^22: adding 1.5 * 2^23 pushes the
// integer part into the low mantissa bits. Out-of-range input gives a wrong
// but bounded value (callers clamp), never a trap.
inline int nearest_int(float v) {
  float shifted = v + 12582912.0f;
  return static_cast<int>(std::bit_cast<uint32_t>(shifted) & 0x007fffffu) - 0x00400000;
}

// Sum of x^2 in index order (the "sigma2" of the importance weighting).
inline float sum_squares(const float* x, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return s;
}

// ggml's weighting when an importance vector is given: the importance of a
// column times sqrt(sigma2 + x^2), so large values matter more within a group.
inline void importance_weights(const float* x, const float* importance, float sigma2, int n,
                               float* w) {
  for (int i = 0; i < n; ++i) w[i] = importance[i] * std::sqrt(sigma2 + x[i] * x[i]);
}

// Symmetric levels l in [-nmax, nmax-1] (stored as l + nmax in L), anchored on
// the value of largest magnitude; 19 candidate scales around nmax/|max| are
// tried and the least-squares scale of the best is returned. Weights: w, or
// x^2 when w is null. Returns 0 (all L = 0) for an all-zero group.
float fit_symmetric(int n, int nmax, const float* x, const float* w, int8_t* L);

// Like fit_symmetric with x^2 weights, but then moves single levels while that
// improves the fit (up to 5 sweeps). Used by plain Q3_K.
float fit_symmetric_refined(int n, int nmax, const float* x, int8_t* L);

// Parameters of the affine search: candidate inverse scales
// (nmax + rmin + rdelta*k) / (max - min) for k = 0..nstep.
struct AffineSearch {
  float rmin;
  float rdelta;
  int nstep;
  bool absolute_error;  // minimise weighted |error| instead of squared error
};

// Affine levels L in [0, nmax] with x ~ scale * L - neg_min, neg_min >= 0 (the
// min is never positive). Weights: w, or x^2 when w is null. Returns scale.
float fit_affine(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min,
                 const AffineSearch& search);

// Non-negative values onto levels L in [0, nmax] with a single scale, used to
// quantize the sub-block scales and mins of a K-quant super-block. w must not be null.
float fit_positive(int n, int nmax, const float* x, const float* w, uint8_t* L);

}  // namespace tailor::quant
