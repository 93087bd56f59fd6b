#include "tailor/gradual/trading.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "tailor/util/error.h"

namespace tailor::gradual {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Up to this many options over all layers the greedy search tries every pair
// trade (about this number squared per step).
constexpr size_t kAllPairsOptions = 400;
// At most this many upgrades and as many coarsenings are paired per step.
constexpr size_t kPairPool = 96;

void validate(const std::vector<TradeLayer>& layers, const TradeLimits& limits) {
  if (std::isnan(limits.quality_budget)) fail("type trading: the quality budget is NaN");
  if (limits.memory_target && *limits.memory_target < 0)
    fail("type trading: the memory target is negative ({} bytes)", *limits.memory_target);
  for (size_t l = 0; l < layers.size(); ++l) {
    const TradeLayer& t = layers[l];
    const std::string who = t.name.empty() ? fmt::format("layer {}", l) : t.name;
    if (t.options.empty()) fail("type trading: {} has no allowed types", who);
    if (t.current >= t.options.size())
      fail("type trading: {} has current option {} of only {}", who, t.current, t.options.size());
    for (const TypeOption& o : t.options) {
      if (o.bytes < 0) fail("type trading: {} option {} has negative size {}", who, type_name(o.type), o.bytes);
      if (!std::isfinite(o.cost)) fail("type trading: {} option {} has a non-finite cost", who, type_name(o.type));
    }
  }
}

// Option indices of a layer by size, then cost: the ladder that "finer",
// "coarser" and "neighbouring" refer to.
std::vector<size_t> size_order(const TradeLayer& t) {
  std::vector<size_t> ord(t.options.size());
  std::iota(ord.begin(), ord.end(), size_t{0});
  const auto& o = t.options;
  std::stable_sort(ord.begin(), ord.end(), [&](size_t a, size_t b) {
    return o[a].bytes != o[b].bytes ? o[a].bytes < o[b].bytes : o[a].cost < o[b].cost;
  });
  return ord;
}

// Slack for sums of costs compared with the budget: the same choice summed in
// another order must not flip between feasible and not.
bool within_budget(double cost, double budget) {
  return cost <= budget + 1e-12 * std::max(1.0, std::abs(budget));
}

bool within_target(int64_t bytes, const TradeLimits& lim) {
  return !lim.memory_target || bytes <= *lim.memory_target;
}

// How far a choice misses the limits, relative to them (0 when feasible).
double violation(int64_t bytes, double cost, const TradeLimits& lim) {
  double v = 0;
  if (lim.memory_target && bytes > *lim.memory_target)
    v += double(bytes - *lim.memory_target) / std::max<double>(1.0, double(*lim.memory_target));
  if (!within_budget(cost, lim.quality_budget))
    v += (cost - lim.quality_budget) / std::max(1e-12, std::abs(lim.quality_budget));
  return v;
}

void totals(const std::vector<TradeLayer>& layers, const std::vector<size_t>& choice, const TradeLimits& lim,
            TradeResult& r) {
  r.bytes = 0;
  r.cost = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    r.bytes += layers[l].options[choice[l]].bytes;
    r.cost += layers[l].options[choice[l]].cost;
  }
  r.feasible = within_target(r.bytes, lim) && within_budget(r.cost, lim.quality_budget);
}

// The one-line reason a final choice is not feasible.
std::string explain(const std::vector<TradeLayer>& layers, const TradeResult& r, const TradeLimits& lim) {
  if (r.feasible) return {};
  int64_t least_bytes = 0;
  double least_cost = 0;
  for (const TradeLayer& t : layers) {
    int64_t b = t.options[0].bytes;
    double c = t.options[0].cost;
    for (const TypeOption& o : t.options) b = std::min(b, o.bytes), c = std::min(c, o.cost);
    least_bytes += b;
    least_cost += c;
  }
  if (lim.memory_target && least_bytes > *lim.memory_target)
    return fmt::format("type trading: the memory target of {} bytes is below the smallest choice ({} bytes)",
                       *lim.memory_target, least_bytes);
  if (!within_budget(least_cost, lim.quality_budget))
    return fmt::format("type trading: the quality budget {:.6g} is below the least possible cost {:.6g}",
                       lim.quality_budget, least_cost);
  if (!within_target(r.bytes, lim))
    return fmt::format("type trading: found no choice within {} bytes and cost {:.6g}; the best has {} bytes "
                       "at cost {:.6g}", *lim.memory_target, lim.quality_budget, r.bytes, r.cost);
  return fmt::format("type trading: found no choice within cost {:.6g}; the best has cost {:.6g} at {} bytes",
                     lim.quality_budget, r.cost, r.bytes);
}

enum class Phase {
  ShrinkBytes,  // lower bytes (or equal bytes and lower cost), least cost added per byte saved
  CutCost,      // lower cost, most cost removed per byte added
};

// Scores a step for a phase; false when the phase does not take it.
// `byte_cap`: total bytes the result may not exceed (CutCost).
// `cost_cap`: total cost the result may not exceed (ShrinkBytes).
bool score(Phase phase, int64_t bytes, double cost, int64_t db, double dc, int64_t byte_cap, double cost_cap,
           double& key, double& tie) {
  if (phase == Phase::ShrinkBytes) {
    if (!(db < 0 || (db == 0 && dc < 0))) return false;
    if (!within_budget(cost + dc, cost_cap)) return false;
    key = db == 0 ? -kInf : dc / double(-db);
    tie = db == 0 ? dc : double(db);
    return true;
  }
  if (!(dc < 0) || bytes + db > byte_cap) return false;
  key = db <= 0 ? -kInf : dc / double(db);  // more negative: more cost removed per byte
  tie = db <= 0 ? dc : double(db);
  return true;
}

class Greedy {
 public:
  Greedy(const std::vector<TradeLayer>& layers, const TradeLimits& lim) : layers_(layers), lim_(lim) {
    for (const TradeLayer& t : layers) {
      order_.push_back(size_order(t));
      total_options_ += t.options.size();
    }
    res_.choice.resize(layers.size());
    for (size_t l = 0; l < layers.size(); ++l) res_.choice[l] = layers[l].current;
    totals(layers_, res_.choice, lim_, res_);
  }

  TradeResult run() {
    const int64_t no_cap = std::numeric_limits<int64_t>::max();
    if (lim_.memory_target) {
      // Down to the target without breaking the budget (or, when over it
      // already, without going further over), then spend the slack on quality.
      const double cap = std::max(lim_.quality_budget, res_.cost);
      while (res_.bytes > *lim_.memory_target && step(Phase::ShrinkBytes, no_cap, cap)) {
      }
      if (res_.bytes <= *lim_.memory_target)
        while (step(Phase::CutCost, *lim_.memory_target, kInf)) {
        }
    } else {
      while (!within_budget(res_.cost, lim_.quality_budget) && step(Phase::CutCost, no_cap, kInf)) {
      }
      if (within_budget(res_.cost, lim_.quality_budget))
        while (step(Phase::ShrinkBytes, no_cap, lim_.quality_budget)) {
        }
    }
    res_.problem = explain(layers_, res_, lim_);
    return std::move(res_);
  }

 private:
  // Takes the best step of the phase; false when there is none.
  bool step(Phase phase, int64_t byte_cap, double cost_cap) {
    // The best step so far: one move, or two when `second` is set.
    Move first, second;
    bool pair = false, found = false;
    double best_key = kInf, best_tie = kInf;
    auto offer = [&](const Move& a, const Move* b) {
      const int64_t db = a.db + (b ? b->db : 0);
      const double dc = a.dc + (b ? b->dc : 0);
      double key, tie;
      if (!score(phase, res_.bytes, res_.cost, db, dc, byte_cap, cost_cap, key, tie)) return;
      if (found && (key > best_key || (key == best_key && tie >= best_tie))) return;
      found = true;
      best_key = key;
      best_tie = tie;
      first = a;
      pair = b != nullptr;
      if (b) second = *b;
    };
    const size_t n = layers_.size();
    // Single moves to any allowed option.
    for (size_t l = 0; l < n; ++l) {
      const auto& opts = layers_[l].options;
      const TypeOption& cur = opts[res_.choice[l]];
      for (size_t o = 0; o < opts.size(); ++o)
        if (o != res_.choice[l]) offer(Move{l, o, opts[o].bytes - cur.bytes, opts[o].cost - cur.cost}, nullptr);
    }
    // Pair trades: one layer finer, another coarser. Every pair of options on
    // small instances; on large ones only the next option in size order, so
    // a step stays quadratic in layers rather than in options. An upgrade
    // that does not lower the cost, or a coarsening that saves no bytes, is
    // never worth pairing.
    const bool all_pairs = total_options_ <= kAllPairsOptions;
    ups_.clear();
    downs_.clear();
    for (size_t l = 0; l < n; ++l) {
      moves(l, +1, all_pairs, ups_);
      moves(l, -1, all_pairs, downs_);
    }
    std::erase_if(ups_, [](const Move& m) { return !(m.dc < 0); });
    std::erase_if(downs_, [](const Move& m) { return !(m.db < 0); });
    // Many layers: pair only the upgrades that buy the most quality per byte
    // with the coarsenings that lose the least per byte saved.
    auto keep = [](std::vector<Move>& v, auto better) {
      if (v.size() <= kPairPool) return;
      std::partial_sort(v.begin(), v.begin() + kPairPool, v.end(), better);
      v.resize(kPairPool);
    };
    keep(ups_, [](const Move& a, const Move& b) { return -a.dc * double(b.db) > -b.dc * double(a.db); });
    keep(downs_, [](const Move& a, const Move& b) { return a.dc * double(-b.db) < b.dc * double(-a.db); });
    for (const Move& u : ups_)
      for (const Move& d : downs_)
        if (u.layer != d.layer) offer(u, &d);
    if (!found) return false;
    Trade t;
    t.moves.push_back({first.layer, res_.choice[first.layer], first.to});
    if (pair) t.moves.push_back({second.layer, res_.choice[second.layer], second.to});
    for (const LayerMove& m : t.moves) res_.choice[m.layer] = m.to;
    // Totals from scratch, so rounding does not drift over many steps.
    const int64_t before_b = res_.bytes;
    const double before_c = res_.cost;
    totals(layers_, res_.choice, lim_, res_);
    t.bytes_delta = res_.bytes - before_b;
    t.cost_delta = res_.cost - before_c;
    res_.trades.push_back(std::move(t));
    return true;
  }

  // One layer to another option, and what that changes.
  struct Move {
    size_t layer = 0, to = 0;
    int64_t db = 0;
    double dc = 0;
  };

  // Appends the moves of layer l to bigger (dir +1) or smaller (dir -1)
  // options: all of them, or only the next one in size order.
  void moves(size_t l, int dir, bool all, std::vector<Move>& out) const {
    const auto& ord = order_[l];
    const auto& opts = layers_[l].options;
    const TypeOption& cur = opts[res_.choice[l]];
    const size_t at = size_t(std::find(ord.begin(), ord.end(), res_.choice[l]) - ord.begin());
    auto add = [&](size_t o) { out.push_back(Move{l, o, opts[o].bytes - cur.bytes, opts[o].cost - cur.cost}); };
    if (dir > 0) {
      for (size_t i = at + 1; i < ord.size(); ++i) {
        add(ord[i]);
        if (!all) break;
      }
    } else {
      for (size_t i = at; i-- > 0;) {
        add(ord[i]);
        if (!all) break;
      }
    }
  }

  const std::vector<TradeLayer>& layers_;
  const TradeLimits& lim_;
  std::vector<std::vector<size_t>> order_;  // option indices by size, then cost
  size_t total_options_ = 0;
  std::vector<Move> ups_, downs_;  // reused by every step
  TradeResult res_;
};

}  // namespace

TradeResult evaluate_choice(const std::vector<TradeLayer>& layers, const std::vector<size_t>& choice,
                            const TradeLimits& limits) {
  validate(layers, limits);
  if (choice.size() != layers.size())
    fail("type trading: a choice for {} layers given for {} layers", choice.size(), layers.size());
  for (size_t l = 0; l < layers.size(); ++l)
    if (choice[l] >= layers[l].options.size())
      fail("type trading: layer {} has option {} chosen of only {}", l, choice[l], layers[l].options.size());
  TradeResult r;
  r.choice = choice;
  totals(layers, choice, limits, r);
  r.problem = explain(layers, r, limits);
  return r;
}

bool better_choice(const TradeResult& a, const TradeResult& b, const TradeLimits& limits) {
  if (a.feasible != b.feasible) return a.feasible;
  if (!a.feasible) {
    const double va = violation(a.bytes, a.cost, limits), vb = violation(b.bytes, b.cost, limits);
    if (va != vb) return va < vb;
  }
  if (limits.memory_target) return a.cost != b.cost ? a.cost < b.cost : a.bytes < b.bytes;
  return a.bytes != b.bytes ? a.bytes < b.bytes : a.cost < b.cost;
}

TradeResult greedy_trade(const std::vector<TradeLayer>& layers, const TradeLimits& limits) {
  validate(layers, limits);
  return Greedy(layers, limits).run();
}

TradeResult genetic_trade(const std::vector<TradeLayer>& layers, const TradeLimits& limits, const TradeResult& seed,
                          const GeneticOptions& opt) {
  TradeResult best = evaluate_choice(layers, seed.choice, limits);
  best.trades = seed.trades;
  if (layers.empty() || opt.population < 2 || opt.generations == 0) return best;
  const size_t n = layers.size();
  // Options of each layer in size order, and each option's rank in it.
  std::vector<std::vector<size_t>> order(n), rank(n);
  for (size_t l = 0; l < n; ++l) {
    order[l] = size_order(layers[l]);
    rank[l].resize(order[l].size());
    for (size_t i = 0; i < order[l].size(); ++i) rank[l][order[l][i]] = i;
  }
  std::mt19937_64 rng(opt.seed);
  auto uniform = [&]() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng); };
  auto pick = [&](size_t k) { return std::uniform_int_distribution<size_t>(0, k - 1)(rng); };
  const double rate = opt.mutation_rate > 0 ? opt.mutation_rate : 1.0 / double(n);
  auto mutate = [&](std::vector<size_t>& c, double p) {
    for (size_t l = 0; l < n; ++l) {
      const size_t k = order[l].size();
      if (k < 2 || uniform() >= p) continue;
      size_t r = rank[l][c[l]];
      r = r == 0 ? 1 : r + 1 == k ? r - 1 : (uniform() < 0.5 ? r - 1 : r + 1);
      c[l] = order[l][r];
    }
  };
  auto make = [&](std::vector<size_t> c) {
    TradeResult r;
    r.choice = std::move(c);
    totals(layers, r.choice, limits, r);
    return r;
  };

  std::vector<TradeResult> pop;
  pop.push_back(make(best.choice));
  std::vector<size_t> start(n);
  for (size_t l = 0; l < n; ++l) start[l] = layers[l].current;
  pop.push_back(make(start));
  while (pop.size() < opt.population) {
    std::vector<size_t> c;
    if (pop.size() % 4 == 0) {  // some fully random, for diversity
      c.resize(n);
      for (size_t l = 0; l < n; ++l) c[l] = pick(layers[l].options.size());
    } else {
      c = best.choice;
      mutate(c, std::min(1.0, 3 * rate));
    }
    pop.push_back(make(std::move(c)));
  }
  auto tournament = [&]() -> const TradeResult& {
    size_t w = pick(pop.size());
    for (size_t t = 1; t < std::max<size_t>(1, opt.tournament); ++t) {
      const size_t x = pick(pop.size());
      if (better_choice(pop[x], pop[w], limits)) w = x;
    }
    return pop[w];
  };
  auto keep_best = [&]() {
    for (const TradeResult& r : pop)
      if (better_choice(r, best, limits)) best = r;
  };
  keep_best();
  for (size_t g = 0; g < opt.generations; ++g) {
    std::vector<TradeResult> next;
    next.push_back(best);  // elitism: never lose the best so far
    while (next.size() < opt.population) {
      const TradeResult& a = tournament();
      const TradeResult& b = tournament();
      std::vector<size_t> c = a.choice;
      if (uniform() < opt.crossover_rate)
        for (size_t l = 0; l < n; ++l)
          if (uniform() < 0.5) c[l] = b.choice[l];
      mutate(c, rate);
      next.push_back(make(std::move(c)));
    }
    pop = std::move(next);
    keep_best();
  }
  best.problem = explain(layers, best, limits);
  return best;
}

}  // namespace tailor::gradual
