// Loss-curve fitting for adaptive training: from the losses of a short run
// on a small sample, predict what a longer run would reach, so the gradual
// search can skip training that cannot get under a block's budget.
//
// Model: L(t) = a + b * t^(-c) with a >= 0, b >= 0, c in (0, 3]. For each c
// on a grid (then refined) a and b are a non-negative least-squares fit;
// a few Huber reweightings keep loss spikes from pulling the fit.
#pragma once
#include <span>
#include <vector>

namespace tailor::gradual {

struct CurveFit {
  double a = 0, b = 0, c = 1;
  double rmse = 0;  // of the fit over the points used
  int points = 0;   // valid points used (finite, step > 0)
  // false when there are fewer than 3 valid points: then a is the last valid
  // loss (NaN when none), b = 0, and lower_bound() is 0.
  bool ok = false;

  // Fits whose residuals are not much worse than the best one's (exponents
  // the data cannot rule out), each with the covariance of its (a, b).
  struct Plausible {
    double a, b, c;
    double var_a, cov_ab, var_b;
  };
  std::vector<Plausible> plausible;

  // The fitted loss after t steps (t > 0; NaN otherwise).
  double predict(double t) const;
  // A conservative (low) estimate of the loss after t steps: the lowest of
  // the plausible fits' predictions less two standard errors, in [0, predict(t)].
  double lower_bound(double t) const;
};

// `steps` and `losses` are parallel (an Error otherwise); points with a
// non-finite value or a step <= 0 are ignored.
CurveFit fit_loss_curve(std::span<const double> steps, std::span<const double> losses);

}  // namespace tailor::gradual
