// From a measurement to a strategy: the measured (tensor, type) costs become
// the planner's options, the user's budget becomes bytes or ΔKL, the
// allocation is solved, and the plan can be verified on the real model and
// corrected where the per-tensor costs did not add up.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tailor/plan/allocate.h"
#include "tailor/plan/evaluate.h"
#include "tailor/plan/strategy.h"

namespace tailor::plan {

// "18MB", "1.5 GiB", "900K", "123456" (bytes); MB/GB are powers of 1000,
// MiB/GiB of 1024. Error on anything else.
int64_t parse_size(const std::string& text);
// A size as parse_size reads it, or a llama.cpp recipe's name (Q4_K_M): the
// bytes of all weights of `model` (HF folder) quantized by that recipe.
int64_t target_size_bytes(const std::string& model, const std::string& text);

struct PlanRequest {
  std::string model;          // HF folder (for the tensor list and identity)
  nlohmann::json measurement; // JobStore::export_json of a measure job
  // Exactly one budget.
  std::optional<double> target_bpw;       // bits per weight of all weights
  std::optional<int64_t> target_bytes;    // bytes of all weights
  std::optional<double> max_kld;          // predicted mean ΔKL (nats)
  std::optional<double> max_ppl_increase; // percent; taken as ΔKL <= ln(1 + p/100)
  std::vector<std::string> rules;         // pins / floors (allocate.h)
  std::vector<GgmlType> allowed;          // empty: every measured type (+ F16)
};

struct Plan {
  std::vector<TensorOptions> options;  // the planned tensors, in model order
  Budget budget;                       // on the planned tensors only
  std::string budget_spec;
  int64_t fixed_bytes = 0;             // tensors the planner does not choose for (F32 vectors)
  int64_t total_elements = 0;
  Allocation allocation;
  Strategy strategy;
};

// Errors: a measurement of another model or with unfinished units, no or
// several budgets, a budget nothing can meet (with the minimum).
Plan make_plan(const PlanRequest& request);

// The strategy as a tensor -> type map (Error on an unknown type name).
TypeMap strategy_types(const Strategy& s);

// The quantizable tensors of the HF folder `model` (names, sizes, row
// lengths; no options), for checking a strategy without a measurement.
std::vector<TensorOptions> model_tensors(const std::string& model);

// Error when the strategy records another model's content hash than `model`'s.
void check_strategy_model(const Strategy& s, const std::string& model, const std::string& file);

struct Verification {
  double predicted = 0;       // sum of the per-tensor ΔKL of the final plan
  double measured = 0, measured_error = 0;
  double ppl = 0, ppl_base = 0;
  int rounds = 0;             // evaluations run
  std::vector<std::string> upgrades;  // "tensor: A -> B", in the order made
  bool met = true;            // the quality budget holds as measured
};

// Measures the plan's real ΔKL. With a quality budget (Cost), upgrades the
// tensors with the best predicted gain per byte until the measured ΔKL is
// within it (at most `max_rounds` evaluations), updating plan.strategy.
Verification verify_plan(Plan& plan, AssignmentEvaluator& evaluator, int max_rounds = 6);

}  // namespace tailor::plan
