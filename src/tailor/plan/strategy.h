// Strategy files: the plan for one model written out for people to read,
// edit and hand to `tailor quantize`. YAML and JSON carry the same schema
// (docs/strategy.md). Types are kept as the text written so a typo survives
// reading and check_strategy can say what was meant.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tailor/plan/allocate.h"
#include "tailor/plan/knee.h"

namespace tailor::plan {

inline constexpr int kStrategyVersion = 1;

struct ModelIdentity {
  std::string source;        // local path or hub repo id
  std::string revision;      // hub revision / commit, empty for local files
  std::string content_hash;  // e.g. the job store's model hash
  std::string arch;          // GGUF architecture name
};

struct StrategyBudget {
  std::string kind = "bytes";  // "bytes" (total size) or "cost" (total predicted ΔKL)
  double value = 0;
  std::string spec;            // as the user gave it ("4.5bpw", "3GB"); informational
};

struct StrategyTensor {
  std::string name;
  std::string type;  // a type name as written
  int64_t bytes = 0;
  double bpw = 0;
  double cost = 0, cost_error = 0;
  std::string knee;  // empty when unknown
  bool pinned = false;
  std::string reason;
};

struct StrategyTotals {
  int64_t bytes = 0;
  int64_t n_elements = 0;
  double bpw = 0;
  double cost = 0, cost_error = 0;
};

// How good the allocation was known to be when it was planned.
struct StrategySolver {
  double objective = 0, lower_bound = 0, gap = 0;
  bool proven_optimal = false;
};

struct Strategy {
  int version = kStrategyVersion;
  ModelIdentity model;
  StrategyBudget budget;
  std::vector<std::string> rules;  // rule texts in the order given
  StrategyTotals totals;
  StrategySolver solver;
  std::vector<StrategyTensor> tensors;
};

// The strategy for an allocation of `tensors` (knees computed here).
Strategy make_strategy(std::span<const TensorOptions> tensors, const Allocation& allocation, const Budget& budget,
                       const ModelIdentity& model, std::span<const Rule> rules, std::string budget_spec = {},
                       const KneeOptions& knee = {});

enum class StrategyFormat { Yaml, Json };
// By extension: .json is JSON, .yaml/.yml YAML; anything else is an Error.
StrategyFormat strategy_format_for(const std::string& path);

std::string strategy_to_text(const Strategy& s, StrategyFormat format);
// `source` names the text in errors (the file path). Bounded: input size,
// nesting, counts and string lengths; malformed input is an Error, never a crash.
Strategy strategy_from_text(std::string_view text, StrategyFormat format, const std::string& source);

// Written atomically (temporary file renamed into place); format from the extension.
void write_strategy(const std::string& path, const Strategy& s);
// Format from the extension, or from the content ('{' first: JSON) when the
// extension says neither.
Strategy read_strategy(const std::string& path);

// Validates a (possibly hand-edited) strategy against the model's tensors:
// unknown, missing and repeated tensors, unknown type names (with the closest
// valid one), types Tailor cannot write, types whose block does not divide
// the row length, and the budget (sizes recomputed from the types; costs taken
// from the tensor's options where the type is one of them). One line per
// problem, naming `file` and the tensor; empty when the strategy is usable.
std::vector<std::string> check_strategy(const Strategy& s, std::span<const TensorOptions> model,
                                        const std::string& file);

}  // namespace tailor::plan
