#include "tailor/plan/knee.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "tailor/util/error.h"

namespace tailor::plan {

std::vector<size_t> lower_hull(std::span<const TypeOption> options) {
  std::vector<size_t> order(options.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (options[a].bytes != options[b].bytes) return options[a].bytes < options[b].bytes;
    return options[a].cost < options[b].cost;
  });
  // Efficient frontier first: each kept option must cost strictly less than
  // every smaller one, otherwise its extra bytes buy nothing.
  std::vector<size_t> frontier;
  for (size_t i : order) {
    if (!frontier.empty() && options[i].cost >= options[frontier.back()].cost) continue;
    frontier.push_back(i);
  }
  // Then the convex part (monotone chain): drop a middle point lying above
  // the chord between its neighbours. Points on the chord stay: they bend
  // nothing, and the allocator's fill gets finer steps from them.
  std::vector<size_t> hull;
  for (size_t i : frontier) {
    while (hull.size() >= 2) {
      const TypeOption& a = options[hull[hull.size() - 2]];
      const TypeOption& b = options[hull.back()];
      const TypeOption& c = options[i];
      // cross((b-a),(c-a)) < 0 means b lies above the chord a-c.
      double lhs = static_cast<double>(b.bytes - a.bytes) * (c.cost - a.cost);
      double rhs = (b.cost - a.cost) * static_cast<double>(c.bytes - a.bytes);
      // Rounding alone must not decide that a point on the chord is above it.
      if (lhs - rhs >= -1e-12 * (std::fabs(lhs) + std::fabs(rhs))) break;
      hull.pop_back();
    }
    hull.push_back(i);
  }
  return hull;
}

namespace {

struct Bend {
  size_t vertex = 0;           // index into the hull
  double below = 0, above = 0; // log cost gained per bit saved on each side
  double z = 0;
  bool significant = false;
};

}  // namespace

Knee find_knee(const TensorOptions& tensor, const KneeOptions& opt) {
  if (tensor.options.empty()) fail("{}: no candidate types to find a knee among", tensor.name);
  const auto& o = tensor.options;
  std::vector<size_t> hull = lower_hull(o);
  Knee knee;
  knee.type = o[hull.back()].type;  // most bytes on the frontier = lowest cost
  if (hull.size() < 3) {
    knee.reason = "no knee: fewer than three types on the cost curve";
    return knee;
  }
  auto bits = [&](size_t h) {
    const TypeOption& x = o[hull[h]];
    return tensor.n_elements > 0 ? bits_per_weight(x.bytes, tensor.n_elements)
                                 : static_cast<double>(x.bytes);
  };
  // Logs need positive costs: a measured cost of zero or below (noise around
  // an exact type) is raised to half the smallest positive one, which keeps
  // the top of the curve flat instead of infinitely steep.
  double smallest = std::numeric_limits<double>::infinity();
  for (size_t h : hull)
    if (o[h].cost > 0) smallest = std::min(smallest, o[h].cost);
  if (!std::isfinite(smallest)) {
    knee.reason = "no knee: no type has a positive cost";
    return knee;
  }
  auto log_cost = [&](size_t h) { return std::log(std::max(o[hull[h]].cost, smallest / 2)); };
  auto log_error = [&](size_t h) { return o[hull[h]].cost_error / std::max(o[hull[h]].cost, smallest / 2); };

  const Bend* best = nullptr;
  std::vector<Bend> bends;
  bends.reserve(hull.size());
  for (size_t k = 1; k + 1 < hull.size(); ++k) {
    double d1 = bits(k) - bits(k - 1), d2 = bits(k + 1) - bits(k);
    Bend b;
    b.vertex = k;
    b.below = (log_cost(k - 1) - log_cost(k)) / d1;
    b.above = (log_cost(k) - log_cost(k + 1)) / d2;
    // The jump is a linear combination of three log costs; with independent
    // errors (log error ~ relative error) its variance follows directly.
    double jump = b.below - b.above;
    double var = std::pow(log_error(k - 1) / d1, 2) + std::pow(log_error(k) * (1.0 / d1 + 1.0 / d2), 2) +
                 std::pow(log_error(k + 1) / d2, 2);
    b.z = var > 0 ? jump / std::sqrt(var) : std::numeric_limits<double>::infinity();
    b.significant = jump > 0 && b.z >= opt.sigmas;
    bends.push_back(b);
  }
  for (const Bend& b : bends)
    if (b.significant && (best == nullptr || b.below - b.above > best->below - best->above)) best = &b;
  if (best == nullptr) {
    const Bend& largest = *std::max_element(bends.begin(), bends.end(), [](const Bend& a, const Bend& b) {
      return a.below - a.above < b.below - b.above;
    });
    knee.reason = fmt::format("no knee: no significant bend (sharpest {:.3g}x steeper at {}, {:.2g} sigma)",
                              std::exp(largest.below - largest.above), type_name(o[hull[largest.vertex]].type),
                              largest.z);
    return knee;
  }
  GgmlType at = o[hull[best->vertex]].type;
  knee.per_bit_below = std::exp(best->below);
  knee.per_bit_above = std::exp(best->above);
  knee.z = best->z;
  double factor = std::exp(best->below - best->above);
  if (factor < opt.min_factor) {
    knee.reason = fmt::format("no knee: the sharpest bend, at {}, is only {:.3g}x steeper", type_name(at), factor);
    return knee;
  }
  knee.found = true;
  knee.type = at;
  knee.reason = fmt::format(
      "knee at {}: each bit saved below it multiplies the cost by {:.3g}, above it by {:.3g}{}", type_name(at),
      knee.per_bit_below, knee.per_bit_above,
      std::isfinite(best->z) ? fmt::format(" ({:.1f} sigma)", best->z) : "");
  return knee;
}

}  // namespace tailor::plan
