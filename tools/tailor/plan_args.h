// `tailor plan`'s options and its whole flow, shared with `tailor quantize
// --target-bpw/--max-kld/...`, which plans on the way.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace tailor::cli {

struct PlanArgs {
  std::string model, db, output, check, target_size, types, eval, text;
  std::optional<double> target_bpw, max_kld, max_ppl;
  std::vector<std::string> rules;
  int64_t job = 0, windows = 16, ctx = 512;
  bool no_verify = false, json = false, quiet = false;
};

// Finds (or, with --text, makes) the measurement, plans, verifies, writes
// a.output and prints the summary (or JSON). Returns the measurement job's id
// (0 for --check).
int64_t run_plan(const PlanArgs& a);
// The budget, rule, --text and --db options.
void add_budget_options(CLI::App* cmd, PlanArgs& a);
bool has_budget(const PlanArgs& a);

}  // namespace tailor::cli
