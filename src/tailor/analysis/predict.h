// From cheap local errors to end-to-end KL divergence. For a small change in
// one layer's output the KL divergence of the model's predictions grows with
// the square of that change, so ΔKL ≈ gain · proxy^p with proxy the squared
// relative output error (p ≈ 1). The gain is what a tensor's position in the
// network does to an error: calibrated per tensor from the few types
// measured end to end, it predicts the types that were not.
#pragma once
#include <span>
#include <vector>

#include "tailor/analysis/local_error.h"

namespace tailor::analysis {

// The local error measure the prediction scales: ||ΔW·X||² / ||W·X||² on
// sampled activations, or the importance-weighted relative weight error when
// no activations were sampled. 0 for a type that is not applicable.
double proxy_score(const ErrorStats& s);

struct GainPoint {
  double proxy = 0, kld = 0;
};

struct GainFit {
  double log_gain = 0;  // natural log of the gain
  double exponent = 1;
  int points = 0;       // measured points the gain came from (0: no usable point)
  double predict(double proxy) const;
};

// Least squares in log space with the exponent held fixed: the gain is the
// geometric mean of kld / proxy^p over the points with both positive.
GainFit fit_gain(std::span<const GainPoint> points, double exponent = 1.0);

// The exponent that best explains several tensors' measured curves at once
// (each tensor keeps its own gain): the pooled within-tensor slope of
// log kld on log proxy. `fallback` when no tensor has two usable points.
double fit_exponent(const std::vector<std::vector<GainPoint>>& per_tensor, double fallback = 1.0);

// Spearman's rank correlation (ties share their average rank). 0 when
// either side has fewer than two values or no spread.
double spearman(std::span<const double> a, std::span<const double> b);

}  // namespace tailor::analysis
