// tailor plan <model> --target-bpw X | --target-size S | --max-kld K | --max-ppl-increase P -o strategy.yaml:
// the best type per tensor for a budget, from the model's measurement job;
// verified on the real model and corrected. `tailor plan --check FILE <model>`
// validates an edited strategy.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "commands.h"
#include "tailor/hub/hub.h"
#include "plan_args.h"
#include "tailor/engine/model.h"
#include "tailor/eval/run_eval.h"
#include "tailor/measure/measure.h"
#include "tailor/plan/planner.h"
#include "tailor/plan/quantize.h"
#include "tailor/util/error.h"

namespace tailor::cli {
namespace {

std::string db_of(const PlanArgs& a) { return a.db.empty() ? jobs::JobStore::default_path() : a.db; }

// The measurement to plan from: --job, else the newest finished one of this
// model, else (with --text) a new kld-level measurement.
int64_t measurement_job(jobs::JobStore& store, const PlanArgs& a) {
  if (a.job > 0) return a.job;
  if (const int64_t id = measure::find_measurement(store, a.model)) return id;
  if (a.text.empty())
    fail("{}: no finished measurement of this model in {}; run `tailor measure {} --text CALIB` first, or give "
         "--text CALIB to measure now",
         a.model, store.path(), a.model);
  measure::Settings s;
  s.text = a.text;
  s.eval = a.eval;
  s.types = measure::parse_types("Q8_0,Q6_K,Q5_K,Q4_K,IQ4_XS,Q3_K,IQ3_S,IQ3_XXS,Q2_K,IQ2_S,IQ2_XS");
  measure::RunOptions opt;
  if (!a.quiet && !a.json) opt.log = [](const std::string& l) { std::fprintf(stderr, "%s\n", l.c_str()); };
  const measure::RunResult r = measure::run_measure(store, a.model, s, opt);
  if (r.outcome != measure::Outcome::Done) fail("measurement job {} did not finish", r.job_id);
  return r.job_id;
}

void check(const PlanArgs& a) {
  if (a.model.empty()) fail("plan --check: give the model the strategy is for");
  const plan::Strategy s = plan::read_strategy(a.check);
  plan::check_strategy_model(s, a.model, a.check);
  // The model's tensors with their measured options when there is a measurement.
  std::vector<plan::TensorOptions> model;
  jobs::JobStore store(db_of(a));
  const int64_t job = a.job > 0 ? a.job : measure::find_measurement(store, a.model);
  if (job > 0) {
    plan::PlanRequest req;
    req.model = a.model;
    req.measurement = store.export_json(job);
    req.target_bpw = 1000;  // any budget: only the options are wanted
    model = plan::make_plan(req).options;
  } else {
    model = plan::model_tensors(a.model);
  }
  const std::vector<std::string> problems = plan::check_strategy(s, model, a.check);
  if (a.json) {
    std::printf("%s\n", nlohmann::json{{"file", a.check}, {"ok", problems.empty()}, {"problems", problems}}.dump(2).c_str());
  } else {
    for (const auto& p : problems) std::fprintf(stderr, "%s\n", p.c_str());
    if (problems.empty())
      std::printf("%s: OK, %zu tensors, %.2f MiB, %.3f bits per weight\n", a.check.c_str(), s.tensors.size(),
                  double(s.totals.bytes) / 1048576.0, s.totals.bpw);
  }
  if (!problems.empty()) throw ExitCode{1};
}

}  // namespace

int64_t run_plan(const PlanArgs& a) {
  if (!a.check.empty()) {
    check(a);
    return 0;
  }
  if (a.model.empty()) fail("plan: give a model folder");
  jobs::JobStore store(db_of(a));
  const int64_t job = measurement_job(store, a);
  plan::PlanRequest req;
  req.model = a.model;
  req.measurement = store.export_json(job);
  req.target_bpw = a.target_bpw;
  if (!a.target_size.empty()) req.target_bytes = plan::target_size_bytes(a.model, a.target_size);
  req.max_kld = a.max_kld;
  req.max_ppl_increase = a.max_ppl;
  req.rules = a.rules;
  if (!a.types.empty()) req.allowed = measure::parse_types(a.types);
  plan::Plan p = plan::make_plan(req);

  std::optional<plan::Verification> v;
  if (!a.no_verify) {
    const measure::Settings ms = measure::Settings::from_json(req.measurement["job"]["settings"]);
    const std::string eval_text = a.eval.empty() ? ms.eval : a.eval;
    if (!a.quiet && !a.json)
      std::fprintf(stderr, "verifying the plan on %lld windows of %lld tokens of %s\n", (long long)a.windows,
                   (long long)a.ctx, eval_text.c_str());
    engine::Model model = engine::Model::load(a.model);
    const auto im = measure::settings_imatrix(model, a.model, ms);
    const auto tok = eval::load_model_tokenizer(a.model);
    plan::AssignmentEvaluator ev(model, eval::tokenize_text_file(*tok, eval_text), a.ctx, a.windows,
                                 im ? &*im : nullptr);
    v = plan::verify_plan(p, ev);
  }
  if (!a.output.empty()) plan::write_strategy(a.output, p.strategy);

  const plan::StrategyTotals& t = p.strategy.totals;
  const double total_bytes = double(t.bytes + p.fixed_bytes);
  const double bpw_all = 8.0 * total_bytes / double(p.total_elements);
  if (a.json) {
    nlohmann::json out = nlohmann::json::parse(plan::strategy_to_text(p.strategy, plan::StrategyFormat::Json));
    out["measurement_job"] = job;
    out["all_weights"] = {{"bytes", total_bytes}, {"bpw", bpw_all}, {"fixed_bytes", p.fixed_bytes}};
    if (v)
      out["verification"] = {{"predicted_kld", v->predicted}, {"measured_kld", v->measured},
                             {"measured_kld_error", v->measured_error}, {"ppl", v->ppl},
                             {"ppl_base", v->ppl_base},     {"rounds", v->rounds},
                             {"upgrades", v->upgrades},     {"met", v->met}};
    std::printf("%s\n", out.dump(2).c_str());
  } else if (!a.quiet) {
    std::map<std::string, std::pair<int, int64_t>> by_type;
    int knees_below = 0;
    for (const auto& s : p.strategy.tensors) {
      auto& e = by_type[s.type];
      ++e.first;
      e.second += s.bytes;
      const TypeInfo* kt = s.knee.empty() ? nullptr : find_type(s.knee);
      const TypeInfo* ct = find_type(s.type);
      if (kt && ct && ct->bits_per_weight() < kt->bits_per_weight()) ++knees_below;
    }
    std::printf("%-8s %8s %10s\n", "type", "tensors", "MiB");
    for (const auto& [k, e] : by_type) std::printf("%-8s %8d %10.2f\n", k.c_str(), e.first, double(e.second) / 1048576.0);
    std::printf("plan for %s (measurement job %lld, budget %s): %.2f MiB of weights, %.3f bits per weight; "
                "predicted ΔKL %.4g ± %.2g%s\n",
                a.model.c_str(), (long long)job, p.budget_spec.c_str(), total_bytes / 1048576.0, bpw_all, t.cost,
                t.cost_error, p.allocation.proven_optimal ? " (proven optimal)" : "");
    if (knees_below) std::printf("%d tensor(s) planned below their knee (the budget forces it)\n", knees_below);
    if (v) {
      std::printf("verified on the model: measured ΔKL %.4g ± %.2g (predicted %.4g), PPL %.4f vs %.4f unquantized\n",
                  v->measured, v->measured_error, v->predicted, v->ppl, v->ppl_base);
      for (const auto& u : v->upgrades) std::printf("  upgraded %s\n", u.c_str());
      if (!v->met) std::printf("the quality budget still does not hold after %d rounds\n", v->rounds);
    }
    if (!a.output.empty()) std::printf("wrote %s; quantize with `tailor quantize %s --strategy %s -o OUT.gguf`\n",
                                       a.output.c_str(), a.model.c_str(), a.output.c_str());
  }
  if (v && !v->met) throw ExitCode{3};
  return job;
}

void add_budget_options(CLI::App* cmd, PlanArgs& a) {
  cmd->add_option("--target-bpw", a.target_bpw, "Budget: bits per weight over all weights");
  cmd->add_option("--target-size", a.target_size, "Budget: size of all weights, e.g. 18MB, 1.5GiB, or a llama.cpp recipe (Q4_K_M: no larger than its file)");
  cmd->add_option("--max-kld", a.max_kld, "Budget: mean KL divergence to the unquantized model (nats)");
  cmd->add_option("--max-ppl-increase", a.max_ppl, "Budget: perplexity increase in percent");
  cmd->add_option("--rule", a.rules,
                  "Pin or floor, repeatable: output.weight=Q8_0, attn_v=Q6_K+ (that type or more bits), "
                  "attn_(q|k)>=Q4_K, ffn_.*>=3.5 (bits per weight)");
  cmd->add_option("--text", a.text, "Calibration text: measure now (kld level) when there is no measurement");
  cmd->add_option("--db", a.db, "Job database (default: $TAILOR_DB, else $XDG_DATA_HOME/tailor/jobs.db)");
}

bool has_budget(const PlanArgs& a) {
  return a.target_bpw || a.max_kld || a.max_ppl || !a.target_size.empty();
}

void register_plan(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  auto* cmd = app.add_subcommand(
      "plan",
      "Choose a type per tensor for a budget from the model's measurement (tailor measure), verify it on the\n"
      "model and write a strategy file (YAML or JSON) to review, edit and give to `tailor quantize --strategy`.");
  cmd->add_option("model", a->model, "HF model folder");
  cmd->add_option("-o,--output", a->output, "Strategy file to write (.yaml, .yml or .json)");
  add_budget_options(cmd, *a);
  cmd->add_option("--types", a->types, "Types the plan may use (default: every measured type, and F16)");
  cmd->add_option("--job", a->job, "Measurement job to plan from (default: the newest finished one of this model)");
  cmd->add_option("--eval", a->eval, "Eval text for the verification (default: the measurement's)");
  cmd->add_option("--windows", a->windows, "Verification windows")->capture_default_str();
  cmd->add_option("--ctx", a->ctx, "Verification window length")->capture_default_str();
  cmd->add_flag("--no-verify", a->no_verify, "Skip measuring the plan on the model");
  cmd->add_option("--check", a->check, "Validate this (edited) strategy file against the model and exit");
  cmd->add_flag("--json", a->json, "Print the strategy and verification as JSON");
  cmd->add_flag("-q,--quiet", a->quiet, "No summary");
  cmd->callback([a] {
    a->model = hub::resolve_model_path(a->model);  // ORG/NAME: pulled into the Hub cache
    run_plan(*a);
  });
}

}  // namespace tailor::cli
