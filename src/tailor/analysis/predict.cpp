#include "tailor/analysis/predict.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace tailor::analysis {

double proxy_score(const ErrorStats& s) {
  if (s.rel_output >= 0) return s.rel_output * s.rel_output;
  return s.rel_weighted;
}

double GainFit::predict(double proxy) const {
  if (points == 0 || !(proxy > 0)) return 0;
  return std::exp(log_gain + exponent * std::log(proxy));
}

namespace {
bool usable(const GainPoint& p) { return p.proxy > 0 && p.kld > 0 && std::isfinite(p.proxy) && std::isfinite(p.kld); }
}  // namespace

GainFit fit_gain(std::span<const GainPoint> points, double exponent) {
  GainFit f;
  f.exponent = exponent;
  double sum = 0;
  for (const GainPoint& p : points) {
    if (!usable(p)) continue;
    sum += std::log(p.kld) - exponent * std::log(p.proxy);
    ++f.points;
  }
  if (f.points > 0) f.log_gain = sum / f.points;
  return f;
}

double fit_exponent(const std::vector<std::vector<GainPoint>>& per_tensor, double fallback) {
  double sxy = 0, sxx = 0;
  for (const auto& pts : per_tensor) {
    std::vector<std::pair<double, double>> xy;
    for (const GainPoint& p : pts)
      if (usable(p)) xy.emplace_back(std::log(p.proxy), std::log(p.kld));
    if (xy.size() < 2) continue;
    double mx = 0, my = 0;
    for (auto [x, y] : xy) mx += x, my += y;
    mx /= double(xy.size()), my /= double(xy.size());
    for (auto [x, y] : xy) sxy += (x - mx) * (y - my), sxx += (x - mx) * (x - mx);
  }
  return sxx > 0 ? sxy / sxx : fallback;
}

namespace {
std::vector<double> ranks(std::span<const double> v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    const double avg = (double(i) + double(j)) / 2 + 1;
    for (size_t k = i; k <= j; ++k) r[order[k]] = avg;
    i = j + 1;
  }
  return r;
}
}  // namespace

double spearman(std::span<const double> a, std::span<const double> b) {
  const size_t n = std::min(a.size(), b.size());
  if (n < 2) return 0;
  const std::vector<double> ra = ranks(a.first(n)), rb = ranks(b.first(n));
  const double mean = (double(n) + 1) / 2;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = ra[i] - mean, y = rb[i] - mean;
    sab += x * y, saa += x * x, sbb += y * y;
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : 0;
}

}  // namespace tailor::analysis
