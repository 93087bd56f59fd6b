// Loss-curve fits: synthetic curves recovered with and without noise and
// spikes, predictions at later steps, conservative lower bounds, and
// degenerate input (flat, rising, too few points, NaN, bad steps).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tailor/gradual/loss_curve.h"
#include "tailor/util/error.h"

using namespace tailor;
using namespace tailor::gradual;

namespace {

struct Curve {
  double a, b, c;
  double at(double t) const { return a + b * std::pow(t, -c); }
};

struct Samples {
  std::vector<double> steps, losses;
};

// Losses at steps first, first + every, ... up to last, with Gaussian noise of
// `noise` times the curve's drop over the run.
Samples sample(const Curve& k, int first, int last, int every, double noise, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0.0, 1.0);
  const double drop = k.at(first) - k.at(last);
  Samples s;
  for (int t = first; t <= last; t += every) {
    s.steps.push_back(t);
    s.losses.push_back(k.at(t) + noise * drop * n(rng));
  }
  return s;
}

}  // namespace

TEST(GradualLossCurve, RecoversExactCurves) {
  for (const Curve k : {Curve{0.5, 2.0, 0.7}, Curve{0.02, 0.3, 1.5}, Curve{0.0, 1.0, 0.3}, Curve{0.1, 5.0, 3.0},
                        Curve{1.2, 0.8, 0.05}}) {
    const Samples s = sample(k, 1, 200, 3, 0.0, 1);
    const CurveFit f = fit_loss_curve(s.steps, s.losses);
    ASSERT_TRUE(f.ok);
    EXPECT_EQ(f.points, int(s.steps.size()));
    EXPECT_NEAR(f.c, k.c, 1e-3 * std::max(1.0, k.c)) << k.a << " " << k.b << " " << k.c;
    EXPECT_NEAR(f.a, k.a, 1e-3 * std::max(0.1, k.a));
    EXPECT_NEAR(f.b, k.b, 1e-3 * k.b);
    EXPECT_LT(f.rmse, 1e-6);
    for (double t : {500.0, 2000.0, 10000.0}) EXPECT_NEAR(f.predict(t), k.at(t), 1e-3 * k.at(t)) << t;
    EXPECT_LE(f.lower_bound(2000), f.predict(2000));
    EXPECT_GE(f.lower_bound(2000), 0.0);
  }
}

// Noisy short runs predict a 10x longer run well, and the lower bound stays
// below the truth in nearly every case without being vacuous.
TEST(GradualLossCurve, NoisyCurvesPredictAndBoundFromBelow) {
  const Curve k{0.05, 0.6, 0.8};
  const double truth = k.at(3000);
  int below = 0, cases = 40;
  double worst_err = 0, worst_slack = 0;
  for (int seed = 0; seed < cases; ++seed) {
    const Samples s = sample(k, 1, 300, 2, 0.01, 100 + seed);
    const CurveFit f = fit_loss_curve(s.steps, s.losses);
    ASSERT_TRUE(f.ok);
    worst_err = std::max(worst_err, std::abs(f.predict(3000) - truth));
    const double lb = f.lower_bound(3000);
    EXPECT_LE(lb, f.predict(3000));
    below += lb <= truth;
    worst_slack = std::max(worst_slack, truth - lb);
  }
  std::printf("truth %.5f: worst |prediction error| %.5f, lower bound below truth %d/%d, at most %.5f below\n", truth,
              worst_err, below, cases, worst_slack);
  // The curve drops 0.6 over the run; noise sigma 0.006.
  EXPECT_LT(worst_err, 0.01);
  EXPECT_GE(below, cases * 9 / 10);
  EXPECT_LT(worst_slack, 0.02);
}

// Loss spikes (a bad batch) do not drag the fit.
TEST(GradualLossCurve, SpikesAreDownweighted) {
  const Curve k{0.2, 1.0, 0.6};
  Samples s = sample(k, 1, 400, 4, 0.005, 7);
  for (size_t i = 10; i < s.losses.size(); i += 17) s.losses[i] += 0.5;
  const CurveFit f = fit_loss_curve(s.steps, s.losses);
  ASSERT_TRUE(f.ok);
  EXPECT_NEAR(f.predict(4000), k.at(4000), 0.02);
  EXPECT_NEAR(f.c, k.c, 0.1);
}

TEST(GradualLossCurve, DegenerateInputs) {
  // Flat: no decay to find; the prediction is the level.
  std::vector<double> t{1, 2, 3, 4, 5, 6}, flat(6, 0.25);
  CurveFit f = fit_loss_curve(t, flat);
  ASSERT_TRUE(f.ok);
  EXPECT_NEAR(f.predict(1000), 0.25, 1e-12);
  EXPECT_NEAR(f.lower_bound(1000), 0.25, 1e-12);
  // Rising losses (diverging training): b >= 0 allows no rise, the fit is a constant.
  std::vector<double> rising{0.1, 0.2, 0.3, 0.4, 0.5, 0.6};
  f = fit_loss_curve(t, rising);
  ASSERT_TRUE(f.ok);
  EXPECT_EQ(f.b, 0.0);
  EXPECT_NEAR(f.predict(100), 0.35, 1e-12);
  // Too few points.
  f = fit_loss_curve(std::vector<double>{1, 2}, std::vector<double>{0.9, 0.5});
  EXPECT_FALSE(f.ok);
  EXPECT_EQ(f.predict(100), 0.5);
  EXPECT_EQ(f.lower_bound(100), 0.0);
  f = fit_loss_curve(std::vector<double>{}, std::vector<double>{});
  EXPECT_FALSE(f.ok);
  EXPECT_TRUE(std::isnan(f.predict(100)));
  // NaN, infinite losses and non-positive or NaN steps are skipped.
  const double nan = std::nan(""), inf = INFINITY;
  std::vector<double> ts{0, -1, nan, 1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<double> ls{9, 9, 9, nan, inf, 0, 0, 0, 0, 0, 0};
  const Curve k{0.1, 1.0, 1.0};
  for (size_t i = 5; i < ts.size(); ++i) ls[i] = k.at(ts[i]);
  f = fit_loss_curve(ts, ls);
  ASSERT_TRUE(f.ok);
  EXPECT_EQ(f.points, 6);
  EXPECT_NEAR(f.predict(100), k.at(100), 1e-4);
  EXPECT_TRUE(std::isnan(f.predict(0)));
  // All steps identical: the decay is undetermined, the level is the mean.
  f = fit_loss_curve(std::vector<double>{5, 5, 5, 5}, std::vector<double>{1, 2, 1, 2});
  ASSERT_TRUE(f.ok);
  EXPECT_NEAR(f.predict(5), 1.5, 1e-9);
  EXPECT_TRUE(std::isfinite(f.lower_bound(50)));
  EXPECT_THROW(fit_loss_curve(std::vector<double>{1, 2, 3}, std::vector<double>{1, 2}), Error);
}
