// Planning a model-sized instance: 1,000 tensors x 20 candidate types under a
// size budget, against a simple marginal-gain greedy on the same instance in
// the same run. Reports the time of each, the predicted cost of each answer
// (greedy / planner, >= 1 means the planner is better), and the planner's
// own optimality gap. The goal is under a second for the planner.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <queue>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include "tailor/plan/allocate.h"

namespace {

using namespace tailor;
using namespace tailor::plan;

std::vector<TensorOptions> make_instance(int n_tensors, int n_types) {
  std::vector<GgmlType> types;
  for (const TypeInfo& t : all_types())
    if (t.can_quantize && t.type != GgmlType::F32) types.push_back(t.type);
  types.resize(std::min<size_t>(types.size(), n_types));
  std::mt19937 rng(42);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<TensorOptions> ts;
  const char* parts[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  for (int i = 0; i < n_tensors; ++i) {
    TensorOptions t;
    t.name = "blk." + std::to_string(i / 7) + "." + parts[i % 7] + ".weight";
    int64_t rows = 256 * (1 + static_cast<int64_t>(u(rng) * 16)), cols = 4096;
    t.n_elements = rows * cols;
    t.row_length = cols;
    double sensitivity = std::exp(4 * u(rng));  // tensors differ by ~50x
    for (GgmlType ty : types) {
      double bpw = type_info(ty).bits_per_weight();
      double cost = 1e-3 * sensitivity * std::pow(2.0, -1.6 * bpw) * (0.7 + 0.6 * u(rng));
      t.options.push_back({ty, static_cast<int64_t>(row_size(ty, cols)) * rows, cost, 0.1 * cost, u(rng) < 0.3});
    }
    ts.push_back(std::move(t));
  }
  return ts;
}

// Baseline: everything at its smallest type, then repeatedly the single
// upgrade (of one tensor to any larger type) with the most cost saved per
// byte; an upgrade that does not fit leaves that tensor where it is.
double greedy_cost(const std::vector<TensorOptions>& ts, double budget) {
  std::vector<size_t> at(ts.size());
  double used = 0, cost = 0;
  // The best upgrade of tensor i: (cost saved per byte, option), or none.
  auto best_step = [&](size_t i) {
    const auto& o = ts[i].options;
    std::pair<double, size_t> best{0.0, SIZE_MAX};
    for (size_t k = 0; k < o.size(); ++k) {
      const auto& c = o[at[i]];
      if (o[k].bytes > c.bytes && o[k].cost < c.cost) {
        double r = (c.cost - o[k].cost) / static_cast<double>(o[k].bytes - c.bytes);
        if (r > best.first) best = {r, k};
      }
    }
    return best;
  };
  using Step = std::pair<double, size_t>;  // cost saved per byte, tensor
  std::priority_queue<Step> heap;
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& o = ts[i].options;
    at[i] = static_cast<size_t>(std::min_element(o.begin(), o.end(), [](const auto& x, const auto& y) {
              return x.bytes != y.bytes ? x.bytes < y.bytes : x.cost < y.cost;
            }) - o.begin());
    used += static_cast<double>(o[at[i]].bytes);
    cost += o[at[i]].cost;
    if (auto s = best_step(i); s.second != SIZE_MAX) heap.push({s.first, i});
  }
  while (!heap.empty()) {
    size_t i = heap.top().second;
    heap.pop();
    auto [r, k] = best_step(i);
    const auto& o = ts[i].options;
    double extra = static_cast<double>(o[k].bytes - o[at[i]].bytes);
    if (used + extra > budget) continue;
    used += extra;
    cost += o[k].cost - o[at[i]].cost;
    at[i] = k;
    if (auto s = best_step(i); s.second != SIZE_MAX) heap.push({s.first, i});
  }
  return cost;
}

void BM_Plan1000x20(benchmark::State& state) {
  auto ts = make_instance(1000, 20);
  double lo = 0, hi = 0;
  for (const auto& t : ts) {
    int64_t mn = INT64_MAX, mx = 0;
    for (const auto& o : t.options) mn = std::min(mn, o.bytes), mx = std::max(mx, o.bytes);
    lo += static_cast<double>(mn);
    hi += static_cast<double>(mx);
  }
  // About 4.5 bits per weight on average: the budget binds hard.
  double elements = 0;
  for (const auto& t : ts) elements += static_cast<double>(t.n_elements);
  Budget budget{Budget::Kind::Bytes, std::floor(elements * 4.5 / 8)};
  Allocation a;
  double plan_s = 0, greedy_s = 0, greedy = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    a = allocate(ts, budget);
    auto t1 = std::chrono::steady_clock::now();
    greedy = greedy_cost(ts, budget.value);
    auto t2 = std::chrono::steady_clock::now();
    plan_s = std::chrono::duration<double>(t1 - t0).count();
    greedy_s = std::chrono::duration<double>(t2 - t1).count();
    benchmark::DoNotOptimize(a);
  }
  // The other direction: least size for 1.2x the cost just reached.
  auto t3 = std::chrono::steady_clock::now();
  Allocation c = allocate(ts, {Budget::Kind::Cost, 1.2 * a.total_cost});
  double cost_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t3).count();
  std::printf("cost budget: plan %.1f ms (%lld bytes, rel gap %.3g, %s)\n", cost_s * 1e3,
              static_cast<long long>(c.total_bytes), c.gap / c.objective,
              c.proven_optimal ? "proven optimal" : "not proven");
  state.counters["plan_ms"] = plan_s * 1e3;
  state.counters["greedy_ms"] = greedy_s * 1e3;
  state.counters["time_ratio"] = plan_s / greedy_s;
  state.counters["cost_ratio_greedy_over_plan"] = greedy / a.total_cost;
  state.counters["rel_gap"] = a.gap / a.total_cost;
  state.counters["proven"] = a.proven_optimal;
  std::printf("plan %.1f ms (cost %.6g, bound %.6g, gap %.3g%%, %s), greedy %.2f ms (cost %.6g, %.3f%% worse); "
              "budget %.0f of %.0f..%.0f bytes, used %lld\n",
              plan_s * 1e3, a.total_cost, a.lower_bound, 100 * a.gap / a.total_cost,
              a.proven_optimal ? "proven optimal" : "not proven", greedy_s * 1e3, greedy,
              100 * (greedy / a.total_cost - 1), budget.value, lo, hi, static_cast<long long>(a.total_bytes));
}
BENCHMARK(BM_Plan1000x20)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
