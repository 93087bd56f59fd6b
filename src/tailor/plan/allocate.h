// Budget-optimal choice of one type per tensor: a multiple-choice knapsack.
// Either the least total predicted cost within a size budget, or the least
// size within a cost budget. Solved by Lagrangian relaxation over each
// tensor's lower convex hull, then an exact search over the few tensors whose
// choice the Lagrangian bound cannot settle; the result carries that bound so
// callers can say how far from optimal it can possibly be.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tailor/plan/options.h"

namespace tailor::plan {

// A user constraint on the types of the tensors its pattern matches.
// Text forms: "output.weight=Q8_0" (pin exactly), "attn_v=Q6_K+" (that type or
// any with at least as many bits per weight), "attn_(q|k)>=Q4_K" or
// "attn_q>=4.5" (a floor: no type with fewer bits per weight).
// The pattern is an ECMAScript regex that must match one or more whole
// dot-separated parts of the name: "attn_v" matches "blk.3.attn_v.weight",
// "output.weight" matches "output.weight" but not "blk.0.attn_output.weight",
// "attn_q" does not match "attn_qkv".
struct Rule {
  enum class Kind { Pin, AtLeast, Floor };
  Kind kind = Kind::Pin;
  std::string pattern;
  GgmlType type = GgmlType::F16;  // Pin and AtLeast
  double min_bpw = 0;             // AtLeast (the type's) and Floor
  std::string text;               // as written, recorded in strategies and messages
  bool matches(std::string_view tensor_name) const;
};

// Throws Error naming the rule text when it is malformed (unknown type,
// invalid regex, missing '=').
Rule parse_rule(std::string_view text);

struct Budget {
  enum class Kind { Bytes, Cost };
  Kind kind = Kind::Bytes;
  double value = 0;  // total bytes, or total predicted cost (ΔKL)
};

struct AllocateOptions {
  std::vector<Rule> rules;
  std::vector<GgmlType> allowed;  // empty: every type offered in the options
  // Bounds on the exact search (dynamic programming over the unsettled
  // tensors); past them the result is still feasible, only maybe not optimal.
  size_t max_search_tensors = 256;
  size_t max_search_states = 1 << 14;   // per search stage
  size_t max_search_work = 8'000'000;   // states generated in all, about 0.5 s
};

struct Choice {
  size_t option = 0;  // index into the tensor's options
  GgmlType type = GgmlType::F16;
  int64_t bytes = 0;
  double cost = 0, cost_error = 0;
  bool pinned = false;  // fixed by a Pin rule
  std::string reason;   // why this type, one line
};

struct Allocation {
  std::vector<Choice> choices;  // one per tensor, in input order
  int64_t total_bytes = 0;
  double total_cost = 0;
  double total_cost_error = 0;  // errors added in quadrature
  // The objective is total cost under a Bytes budget, total bytes under a
  // Cost budget. No assignment meeting the budget and rules can do better
  // than lower_bound; gap = objective - lower_bound. proven_optimal: the exact
  // search settled every tensor the bound left open (the gap is then only
  // the bound's slack, not a shortfall of the answer).
  double objective = 0;
  double lower_bound = 0;
  double gap = 0;
  bool proven_optimal = false;
  double lambda = 0;  // the Lagrange multiplier: objective saved per unit of budget at the margin
  // Texts of rules that matched no tensor (most likely a misspelt pattern);
  // the caller should say so.
  std::vector<std::string> unmatched_rules;
};

// Throws Error when the rules leave a tensor no usable type, when rules
// conflict, or when the budget is infeasible (the message says the minimum
// achievable).
Allocation allocate(std::span<const TensorOptions> tensors, const Budget& budget,
                    const AllocateOptions& opt = {});

// The options of `t` the rules, the allowed list and the row length leave
// usable (indices into t.options), and whether a Pin rule fixed it. Throws
// Error on conflicting pins or when nothing is left. Exposed for check tools.
struct Usable {
  std::vector<size_t> options;
  bool pinned = false;
  std::string why;  // the rules that narrowed the choice, for reasons
};
Usable usable_options(const TensorOptions& t, const AllocateOptions& opt);

}  // namespace tailor::plan
