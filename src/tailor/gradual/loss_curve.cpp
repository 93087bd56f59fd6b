#include "tailor/gradual/loss_curve.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "tailor/util/error.h"

namespace tailor::gradual {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kMaxC = 3.0;
constexpr int kGrid = 300;  // c = 0.01, 0.02, ..., 3.00

struct Point {
  double t, y;
};

// The weighted non-negative least-squares fit of y = a + b x for one c.
struct LinearFit {
  double a = 0, b = 0, sse = std::numeric_limits<double>::infinity();
  double var_a = 0, cov_ab = 0, var_b = 0;  // (X'WX)^-1, to be scaled by sigma^2
};

LinearFit fit_for(const std::vector<Point>& pts, const std::vector<double>& w, double c) {
  double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < pts.size(); ++i) {
    const double x = std::pow(pts[i].t, -c);
    sw += w[i];
    sx += w[i] * x;
    sy += w[i] * pts[i].y;
    sxx += w[i] * x * x;
    sxy += w[i] * x * pts[i].y;
  }
  auto sse = [&](double a, double b) {
    double s = 0;
    for (size_t i = 0; i < pts.size(); ++i) {
      const double r = pts[i].y - a - b * std::pow(pts[i].t, -c);
      s += w[i] * r * r;
    }
    return s;
  };
  LinearFit best;
  auto consider = [&](double a, double b) {
    if (!(a >= 0 && b >= 0)) return;
    const double s = sse(a, b);
    if (s < best.sse) best.a = a, best.b = b, best.sse = s;
  };
  const double det = sw * sxx - sx * sx;
  // A column of x nearly parallel to the constant one (all t alike, or c
  // tiny) leaves b undetermined; the fit then is a constant.
  const bool solvable = det > 1e-12 * sw * sxx;
  if (solvable) {
    const double b = (sw * sxy - sx * sy) / det;
    consider((sy - b * sx) / sw, b);
    best.var_a = sxx / det;
    best.cov_ab = -sx / det;
    best.var_b = sw / det;
  } else if (sw > 0) {
    best.var_a = 1 / sw;
  }
  if (sxx > 0) consider(0, std::max(0.0, sxy / sxx));
  if (sw > 0) consider(std::max(0.0, sy / sw), 0);
  return best;
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + long(v.size() / 2), v.end());
  return v[v.size() / 2];
}

}  // namespace

double CurveFit::predict(double t) const {
  if (!(t > 0)) return kNaN;
  return a + b * std::pow(t, -c);
}

double CurveFit::lower_bound(double t) const {
  const double p = predict(t);
  if (!ok || !std::isfinite(p)) return ok ? kNaN : 0.0;
  double low = p;
  for (const Plausible& q : plausible) {
    const double x = std::pow(t, -q.c);
    const double var = q.var_a + 2 * x * q.cov_ab + x * x * q.var_b;
    low = std::min(low, q.a + q.b * x - 2 * std::sqrt(std::max(0.0, var)));
  }
  return std::clamp(low, 0.0, p);
}

CurveFit fit_loss_curve(std::span<const double> steps, std::span<const double> losses) {
  if (steps.size() != losses.size())
    fail("loss curve: {} steps but {} losses; expected one loss per step", steps.size(), losses.size());
  std::vector<Point> pts;
  for (size_t i = 0; i < steps.size(); ++i)
    if (std::isfinite(steps[i]) && steps[i] > 0 && std::isfinite(losses[i])) pts.push_back({steps[i], losses[i]});
  CurveFit fit;
  fit.points = int(pts.size());
  if (pts.size() < 3) {
    fit.a = pts.empty() ? kNaN : pts.back().y;
    fit.b = 0;
    return fit;
  }
  std::vector<double> w(pts.size(), 1.0);
  auto best_c = [&](std::vector<LinearFit>* grid) {
    double c_best = 1, sse_best = std::numeric_limits<double>::infinity();
    for (int k = 1; k <= kGrid; ++k) {
      const double c = kMaxC * k / kGrid;
      LinearFit f = fit_for(pts, w, c);
      if (f.sse < sse_best) sse_best = f.sse, c_best = c;
      if (grid) grid->push_back(f);
    }
    // Golden-section refinement within one grid step either side.
    double lo = std::max(1e-6, c_best - kMaxC / kGrid), hi = std::min(kMaxC, c_best + kMaxC / kGrid);
    const double g = (std::sqrt(5.0) - 1) / 2;
    for (int it = 0; it < 40; ++it) {
      const double m1 = hi - g * (hi - lo), m2 = lo + g * (hi - lo);
      if (fit_for(pts, w, m1).sse <= fit_for(pts, w, m2).sse) hi = m2;
      else lo = m1;
    }
    const double c_ref = (lo + hi) / 2;
    return fit_for(pts, w, c_ref).sse <= sse_best ? c_ref : c_best;
  };
  // Huber reweighting: residuals beyond 1.345 robust sigmas count linearly.
  double c = best_c(nullptr);
  for (int round = 0; round < 4; ++round) {
    const LinearFit cur = fit_for(pts, w, c);
    std::vector<double> r(pts.size());
    for (size_t i = 0; i < pts.size(); ++i) r[i] = std::abs(pts[i].y - cur.a - cur.b * std::pow(pts[i].t, -c));
    const double s = 1.4826 * median(r);
    if (!(s > 0)) break;
    for (size_t i = 0; i < pts.size(); ++i) w[i] = r[i] <= 1.345 * s ? 1.0 : 1.345 * s / r[i];
    c = best_c(nullptr);
  }
  std::vector<LinearFit> grid;
  c = best_c(&grid);
  const LinearFit f = fit_for(pts, w, c);
  fit.a = f.a;
  fit.b = f.b;
  fit.c = c;
  fit.ok = true;
  double sq = 0;
  for (const Point& p : pts) sq += std::pow(p.y - fit.predict(p.t), 2);
  fit.rmse = std::sqrt(sq / double(pts.size()));
  // Exponents whose weighted residuals are within the 95% chi-square(1)
  // margin of the best fit's (profile likelihood over c).
  double wsum = 0;
  for (double x : w) wsum += x;
  const double dof = std::max(1.0, wsum - 3);
  const double sigma2 = f.sse / dof;
  auto add = [&](const LinearFit& q, double qc) {
    fit.plausible.push_back({q.a, q.b, qc, sigma2 * q.var_a, sigma2 * q.cov_ab, sigma2 * q.var_b});
  };
  add(f, c);
  for (int k = 1; k <= kGrid; ++k)
    if (grid[size_t(k - 1)].sse <= f.sse + 3.84 * sigma2) add(grid[size_t(k - 1)], kMaxC * k / kGrid);
  return fit;
}

}  // namespace tailor::gradual
