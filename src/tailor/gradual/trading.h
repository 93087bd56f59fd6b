// Type trading under a memory target: after every block has a type per layer,
// move layers between their allowed types so the model fits a memory target
// (or is as small as the quality budget allows) at the least predicted damage.
//
// Two searches over the same objective: a deterministic greedy one (single
// coarsenings, single upgrades, and pair trades of one layer finer against
// another coarser) and an optional genetic one seeded with the greedy result.
//
// The objective, used by both and by the tests' brute force:
//   - feasible: total cost <= quality_budget and, with a target, total bytes <= target;
//   - with a memory target: least total cost among feasible choices (ties: fewer bytes);
//   - without one: fewest total bytes among feasible choices (ties: less cost).
// Costs are predicted end-to-end KLD contributions, additive across layers.
#pragma once
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "tailor/quant/types.h"

namespace tailor::gradual {

struct TypeOption {
  GgmlType type = GgmlType::F16;
  int64_t bytes = 0;
  double cost = 0;
};

// One layer (a tensor or block) and the types it may take, in any order;
// a type not listed is not allowed.
struct TradeLayer {
  std::string name;
  std::vector<TypeOption> options;
  size_t current = 0;  // index into options
};

struct TradeLimits {
  std::optional<int64_t> memory_target;  // total bytes over all layers
  double quality_budget = std::numeric_limits<double>::infinity();  // max total cost
};

// One layer moving from one option to another (indices into its options).
struct LayerMove {
  size_t layer = 0, from = 0, to = 0;
};

// A step of the greedy search: one move (coarser or finer alone) or a pair
// (one layer finer, another coarser).
struct Trade {
  std::vector<LayerMove> moves;
  int64_t bytes_delta = 0;
  double cost_delta = 0;
};

struct TradeResult {
  std::vector<size_t> choice;  // option index per layer
  int64_t bytes = 0;
  double cost = 0;
  bool feasible = false;
  std::string problem;  // why not feasible (one line), empty when feasible
  std::vector<Trade> trades;  // greedy steps in order (empty for the genetic search)
};

struct GeneticOptions {
  size_t population = 50;
  size_t generations = 20;
  size_t tournament = 3;
  double crossover_rate = 0.9;
  double mutation_rate = 0;  // per layer; 0 = 1 / layers
  uint64_t seed = 1;
};

// Totals and feasibility of an arbitrary choice (validates the indices).
TradeResult evaluate_choice(const std::vector<TradeLayer>& layers, const std::vector<size_t>& choice,
                            const TradeLimits& limits);

// Whether `a` is better than `b` under the objective above (infeasible
// choices rank below feasible ones, and among themselves by how far they
// miss the limits, relative to the limits).
bool better_choice(const TradeResult& a, const TradeResult& b, const TradeLimits& limits);

// Starts from each layer's `current` option. Throws Error for malformed input
// (no options, bad index, negative bytes, non-finite cost, NaN budget).
TradeResult greedy_trade(const std::vector<TradeLayer>& layers, const TradeLimits& limits);

// Genetic search seeded with `seed` (normally greedy_trade's result; it is
// kept by elitism, so the result is never worse than it).
TradeResult genetic_trade(const std::vector<TradeLayer>& layers, const TradeLimits& limits,
                          const TradeResult& seed, const GeneticOptions& options = {});

}  // namespace tailor::gradual
