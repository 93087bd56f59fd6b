// tailor quantize <hf-folder> -o out.gguf --type Q4_K_M: one of llama.cpp's
// quantization recipes (llama-quantize's file types), tensor for tensor the
// types llama-quantize would choose, written straight from the checkpoint.
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "tailor/hub/hub.h"
#include "plan_args.h"
#include "tailor/engine/model.h"
#include "tailor/eval/imatrix.h"
#include "tailor/jobs/job_store.h"
#include "tailor/measure/measure.h"
#include "tailor/plan/strategy.h"
#include "tailor/plan/compare.h"
#include "tailor/plan/planner.h"
#include "tailor/plan/quantize.h"
#include "tailor/util/error.h"
#include "write_report.h"

namespace tailor::cli {
namespace {

struct QuantizeArgs {
  PlanArgs plan;  // --target-bpw / --max-kld ...: measure and plan on the way
  std::string input, output, recipe, imatrix, name, strategy;
  int threads = 0;
  bool json = false, quiet = false, dry_run = false;
};

struct TypeTotals {
  int tensors = 0;
  uint64_t params = 0, bytes = 0;
};

double bits(uint64_t bytes, uint64_t params) { return params ? 8.0 * double(bytes) / double(params) : 0.0; }

uint64_t numel(const std::vector<int64_t>& ne) {
  uint64_t n = 1;
  for (int64_t d : ne) n *= static_cast<uint64_t>(d);
  return n;
}

// --dry-run: the recipe's choice per tensor, nothing read or written.
void print_plan(const QuantizeArgs& a, const Recipe& r) {
  const std::vector<TensorDesc> layout = gguf_tensor_layout(a.input);
  const RecipePlan plan = apply_recipe(r, recipe_model(a.input, !a.imatrix.empty()), layout);
  if (a.json) {
    nlohmann::json ts = nlohmann::json::array();
    for (size_t i = 0; i < layout.size(); ++i)
      ts.push_back({{"name", layout[i].name}, {"ne", layout[i].ne}, {"type", std::string(type_name(plan.tensors[i].type))},
                    {"fallback", plan.tensors[i].fell_back}});
    std::printf("%s\n", nlohmann::json{{"recipe", std::string(r.name)}, {"file_type", plan.file_type},
                                       {"tensors", ts}}.dump(2).c_str());
    return;
  }
  for (size_t i = 0; i < layout.size(); ++i)
    std::printf("%-36s %-8s%s\n", layout[i].name.c_str(), std::string(type_name(plan.tensors[i].type)).c_str(),
                plan.tensors[i].fell_back ? " (fallback)" : "");
}

// The strategy's types, after checking it is for this model and usable.
std::map<std::string, GgmlType> strategy_types_checked(const QuantizeArgs& a) {
  const plan::Strategy s = plan::read_strategy(a.strategy);
  plan::check_strategy_model(s, a.input, a.strategy);
  return plan::strategy_types(s, plan::model_tensors(a.input), a.strategy);
}

void run_quantize(QuantizeArgs a) {
  if (has_budget(a.plan)) {
    if (!a.strategy.empty() || !a.recipe.empty())
      fail("quantize: a budget (--target-bpw, --target-size, --max-kld, --max-ppl-increase) replaces --type and --strategy");
    if (a.output.empty()) fail("quantize: --output FILE is required");
    // The plan is kept beside the model file, for review and reuse.
    a.plan.model = a.input;
    a.plan.output = a.output + ".strategy.yaml";
    a.plan.quiet = a.quiet || a.json;
    const int64_t job = run_plan(a.plan);
    a.strategy = a.plan.output;
    if (a.imatrix.empty()) {
      // Quantize with the importance matrix the measurement (and so the plan) assumed.
      jobs::JobStore store(a.plan.db.empty() ? jobs::JobStore::default_path() : a.plan.db);
      const measure::Settings ms = measure::Settings::from_json(store.job(job).settings);
      engine::Model model = engine::Model::load(a.input);
      if (auto im = measure::settings_imatrix(model, a.input, ms)) {
        a.imatrix = a.output + ".imatrix.gguf";
        im->save_gguf(a.imatrix);
      }
    }
  }
  if (a.strategy.empty() == a.recipe.empty())
    fail("quantize: give --type RECIPE, --strategy FILE, or a budget such as --target-bpw 4.5");
  std::optional<Recipe> recipe;
  std::map<std::string, GgmlType> strategy;
  if (!a.strategy.empty()) strategy = strategy_types_checked(a);
  else recipe = recipe_named(a.recipe);
  const Recipe& r = recipe ? *recipe : Recipe{};
  if (a.dry_run && recipe) return print_plan(a, r);
  QuantizeRequest q;
  q.input = a.input;
  q.output = a.output;
  q.threads = a.threads;
  q.name = a.name;
  std::optional<eval::Imatrix> im;
  if (!a.imatrix.empty()) {
    im = eval::Imatrix::load(a.imatrix);
    q.imatrix = &*im;
  }
  q.on_tensor = tensor_progress(!a.quiet && !a.json);
  const auto t0 = std::chrono::steady_clock::now();
  uint32_t file_type = r.file_type;
  std::string label(r.name);
  ConvertResult res;
  if (recipe) {
    res = quantize_with_recipe(q, r);
  } else {
    file_type = dominant_file_type(a.input, strategy);
    label = a.strategy;
    res = quantize_with_types(q, strategy, file_type, GgmlType::F16);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  if (!a.quiet && !a.json) warn_missing_importance(res.missing_importance, a.imatrix);
  std::map<std::string, TypeTotals> by_type;
  for (const ConvertedTensor& ct : res.tensors) {
    TypeTotals& t = by_type[std::string(type_name(ct.type))];
    ++t.tensors;
    t.params += numel(ct.ne);
    t.bytes += ct.nbytes;
  }
  const double bpw = bits(res.file_size, res.params);
  if (a.json) {
    nlohmann::json j;
    j["output"] = a.output;
    j["recipe"] = recipe ? nlohmann::json(std::string(r.name)) : nlohmann::json(nullptr);
    if (!recipe) j["strategy"] = a.strategy;
    j["file_type"] = file_type;
    j["architecture"] = res.arch;
    j["tensor_count"] = res.tensors.size();
    j["parameters"] = res.params;
    j["file_size"] = res.file_size;
    j["bits_per_weight"] = bpw;
    j["fallbacks"] = res.fallbacks;
    j["missing_importance"] = res.missing_importance;
    j["seconds"] = secs;
    nlohmann::json types = nlohmann::json::object();
    for (const auto& [k, t] : by_type)
      types[k] = {{"tensors", t.tensors}, {"parameters", t.params}, {"bytes", t.bytes},
                  {"bits_per_weight", bits(t.bytes, t.params)}};
    j["types"] = types;
    j["tensors"] = tensors_json(res.tensors);
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  if (a.quiet) return;
  std::printf("%-8s %8s %12s %10s %6s\n", "type", "tensors", "parameters", "MiB", "bpw");
  for (const auto& [k, t] : by_type)
    std::printf("%-8s %8d %12llu %10.2f %6.2f\n", k.c_str(), t.tensors, static_cast<unsigned long long>(t.params),
                double(t.bytes) / (1024.0 * 1024.0), bits(t.bytes, t.params));
  std::printf("wrote %s: %s %s (file_type %u), %zu tensors, %.1f M parameters, %.2f MiB, %.3f bits per weight, "
              "%.1f s\n",
              a.output.c_str(), res.arch.c_str(), label.c_str(), file_type, res.tensors.size(),
              double(res.params) / 1e6, double(res.file_size) / (1024.0 * 1024.0), bpw, secs);
  if (res.fallbacks)
    std::printf("%d tensor(s) used a fallback type: their rows do not fit the recipe's blocks\n", res.fallbacks);
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto args = std::make_shared<QuantizeArgs>();
  auto* cmd = app.add_subcommand("quantize", "Quantize a Hugging Face model folder with a llama.cpp recipe (Q4_K_M, ...) or a strategy from `tailor plan`");
  cmd->add_option("input", args->input, "Hugging Face model folder (config.json, *.safetensors, tokenizer)")
      ->required();
  cmd->add_option("-o,--output", args->output, "Output .gguf file (written atomically)");
  cmd->add_option("-t,--type", args->recipe,
                  "llama-quantize file type: Q4_K_M, Q5_K_M, Q3_K_S, Q8_0, IQ4_XS, IQ2_XXS (needs --imatrix), ...");
  cmd->add_option("--strategy", args->strategy,
                  "Strategy file from `tailor plan` (YAML/JSON): the type of every tensor");
  add_budget_options(cmd, args->plan);
  cmd->add_option("--imatrix", args->imatrix,
                  "Importance matrix (llama-imatrix GGUF or .dat, or tailor imatrix); needed by the lowest-bit types");
  cmd->add_option("--name", args->name, "general.name (default: the folder name)");
  cmd->add_option("-j,--threads", args->threads, "Threads for quantization (0 = all cores)")->capture_default_str();
  cmd->add_flag("--dry-run", args->dry_run, "Print each tensor's type and write nothing");
  cmd->add_flag("--json", args->json, "Print a JSON summary with every tensor's type on stdout");
  cmd->add_flag("-q,--quiet", args->quiet, "No progress or summary");
  cmd->callback([args] {
    if (!args->dry_run && args->output.empty()) fail("quantize: --output FILE is required");
    // ORG/NAME: pulled into the Hub cache; general.name is then NAME, not the snapshot's commit.
    const std::string given = args->input;
    args->input = hub::resolve_model_path(given);
    if (args->name.empty() && args->input != given) args->name = hub::parse_repo_spec(given).name();
    run_quantize(*args);
  });
}

}  // namespace tailor::cli
