#include "tailor/plan/compare.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tailor/eval/run_eval.h"
#include "tailor/plan/quantize.h"
#include "tailor/util/error.h"

namespace tailor::plan {

namespace fs = std::filesystem;

std::vector<TensorOptions> quantizable_tensors(const engine::Model& model) {
  std::vector<TensorOptions> out;
  for (const std::string& name : model.weight_names()) {
    const engine::Weight& w = model.weight(name);
    const std::vector<int64_t> ne(w.shape.rbegin(), w.shape.rend());  // ggml order
    if (!tensor_is_quantizable(name, ne)) continue;
    TensorOptions t;
    t.name = name;
    t.n_elements = w.numel();
    t.row_length = w.cols();
    out.push_back(std::move(t));
  }
  return out;
}

TypeMap recipe_types(const std::string& model_folder, const Recipe& recipe, const eval::Imatrix* imatrix) {
  const RecipePlan plan = plan_recipe(model_folder, recipe, imatrix != nullptr);
  TypeMap types;
  for (const TensorChoice& t : plan.tensors) {
    if (t.type == GgmlType::F32) continue;
    // As llama-quantize: no importance values for such a type means no file.
    if (t.needs_imatrix && (imatrix == nullptr || imatrix->find(t.name) == nullptr))
      fail("{}: the importance matrix has no values for {}, which the {} recipe makes {}", model_folder, t.name,
           recipe.name, type_name(t.type));
    types[t.name] = t.type;
  }
  return types;
}

TypeMap strategy_types(const Strategy& s, std::span<const TensorOptions> tensors, const std::string& file) {
  // A strategy made for another model names tensors this one lacks; say that
  // once rather than tensor by tensor.
  std::set<std::string> names;
  for (const TensorOptions& t : tensors) names.insert(t.name);
  size_t foreign = 0;
  std::string first_foreign;
  for (const StrategyTensor& e : s.tensors)
    if (!names.count(e.name) && foreign++ == 0) first_foreign = e.name.substr(0, 200);
  if (foreign > 1)
    fail("{}: {} of its {} tensors are not in the model (e.g. {}); is it a strategy for another model{}?", file,
         foreign, s.tensors.size(), first_foreign,
         s.model.source.empty() ? "" : fmt::format(" ({})", s.model.source.substr(0, 200)));
  Strategy unbudgeted = s;
  unbudgeted.budget.value = 0;
  const std::vector<std::string> problems = check_strategy(unbudgeted, tensors, file);
  if (!problems.empty())
    fail("{}{}", problems[0],
         problems.size() > 1 ? fmt::format(" (and {} more problem{})", problems.size() - 1,
                                           problems.size() > 2 ? "s" : "")
                             : "");
  TypeMap types;
  for (const StrategyTensor& e : s.tensors) types[e.name] = find_type(e.type)->type;
  return types;
}

namespace {

void say(const CompareLog& log, const std::string& line) {
  if (log) log(line);
}

std::string entry_name(const std::string& path, const std::vector<CompareEntry>& taken) {
  std::string stem = fs::path(path).stem().string();
  if (stem.empty()) stem = path;
  for (const CompareEntry& e : taken)
    if (e.name == stem) return path;
  return stem;
}

}  // namespace

CompareResult run_compare(const CompareRequest& req, const CompareLog& log) {
  if (req.baselines.empty() && req.strategies.empty())
    fail("compare: nothing to compare (give --baselines and/or --strategy)");
  if (req.n_ctx < 2 || req.n_ctx > (1 << 20)) fail("compare: --ctx {} is outside 2..1048576", req.n_ctx);
  if (req.windows < 1 || req.windows > 100000) fail("compare: --windows {} is outside 1..100000", req.windows);
  if (req.calib_chunks < 1 || req.calib_chunks > 100000)
    fail("compare: --calib-chunks {} is outside 1..100000", req.calib_chunks);
  if (!req.imatrix.empty() && !req.calib.empty()) fail("compare: give --imatrix or --calib, not both");
  if (!fs::is_directory(req.model))
    fail("{}: not a Hugging Face model folder (compare quantizes from the unquantized checkpoint)", req.model);

  // Cheap checks first, so a typo costs no model load.
  std::vector<const Recipe*> recipes;
  for (const std::string& given : req.baselines) {
    // "Q8_0, Q4_K_M" splits into names with a leading space.
    const size_t b = given.find_first_not_of(" \t"), e = given.find_last_not_of(" \t");
    const Recipe& r = recipe_named(b == std::string::npos ? std::string() : given.substr(b, e - b + 1));
    if (std::find(recipes.begin(), recipes.end(), &r) != recipes.end())
      fail("compare: baseline {} is given more than once", r.name);
    recipes.push_back(&r);
  }
  const bool has_imatrix = !req.imatrix.empty() || !req.calib.empty();
  for (const Recipe* r : recipes) plan_recipe(req.model, *r, has_imatrix);  // throws if it needs an imatrix
  std::vector<Strategy> strategies;
  for (const std::string& path : req.strategies) strategies.push_back(read_strategy(path));
  std::optional<eval::Imatrix> imatrix;
  CompareResult out;
  if (!req.imatrix.empty()) {
    imatrix = eval::Imatrix::load(req.imatrix, req.n_ctx);
    out.imatrix = req.imatrix;
  }

  const auto tok = eval::load_model_tokenizer(req.model);
  const std::vector<int32_t> eval_tokens = eval::tokenize_text_file(*tok, req.text);
  if (int64_t(eval_tokens.size()) < req.n_ctx)
    fail("{}: {} tokens, fewer than one window of {}", req.text, eval_tokens.size(), req.n_ctx);
  std::vector<int32_t> calib_tokens;
  if (!req.calib.empty()) {
    calib_tokens = eval::tokenize_text_file(*tok, req.calib);
    if (int64_t(calib_tokens.size()) < req.n_ctx)
      fail("{}: {} tokens, fewer than one window of {}", req.calib, calib_tokens.size(), req.n_ctx);
  }
  engine::LoadOptions lo;
  lo.cpu.threads = req.threads;
  engine::Model model = engine::Model::load(req.model, lo);
  if (tok->vocab_size() > model.vocab_size())
    fail("{}: the tokenizer has {} tokens, the model's vocabulary only {}", req.model, tok->vocab_size(),
         model.vocab_size());
  assignment_bytes(model, {}, &out.n_elements);

  std::vector<TypeMap> strategy_maps;
  for (size_t i = 0; i < strategies.size(); ++i)
    strategy_maps.push_back(strategy_types(strategies[i], quantizable_tensors(model), req.strategies[i]));

  if (!req.calib.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    eval::ImatrixOptions io;
    io.n_ctx = req.n_ctx;
    io.max_chunks = req.calib_chunks;
    io.batch = 4;
    if (tok->bos_id() >= 0 && tok->add_bos()) io.bos = tok->bos_id();
    io.dataset = fs::path(req.calib).filename().string();
    imatrix.emplace();
    eval::collect_imatrix(model, calib_tokens, io, *imatrix);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out.imatrix = fmt::format("{} ({} windows of {} tokens)", req.calib, imatrix->chunk_count, req.n_ctx);
    say(log, fmt::format("importance matrix: {}, {:.1f} s", out.imatrix, secs));
  }
  const eval::Imatrix* im = imatrix ? &*imatrix : nullptr;
  std::vector<TypeMap> recipe_maps;
  for (const Recipe* r : recipes) recipe_maps.push_back(recipe_types(req.model, *r, im));

  const auto t0 = std::chrono::steady_clock::now();
  AssignmentEvaluator evaluator(model, eval_tokens, req.n_ctx, req.windows, im);
  out.n_ctx = req.n_ctx;
  out.windows = evaluator.windows();
  say(log, fmt::format("reference: {} windows of {} tokens, {:.1f} s", out.windows, req.n_ctx,
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));

  auto measure = [&](CompareEntry e, const TypeMap& types) {
    e.result = evaluator.evaluate(types);
    say(log, fmt::format("{:<16} {:9.2f} MiB {:7.3f} bpw  KLD {:.6f}  {:.1f} s", e.name,
                         double(e.result.bytes) / (1024.0 * 1024.0), e.result.bpw, e.result.report.kld.value,
                         e.result.seconds));
    out.entries.push_back(std::move(e));
  };
  for (size_t i = 0; i < recipes.size(); ++i) {
    CompareEntry e;
    e.name = std::string(recipes[i]->name);
    e.baseline = true;
    measure(std::move(e), recipe_maps[i]);
  }
  for (size_t i = 0; i < strategies.size(); ++i) {
    CompareEntry e;
    e.name = entry_name(req.strategies[i], out.entries);
    e.source = req.strategies[i];
    measure(std::move(e), strategy_maps[i]);
  }
  std::stable_sort(out.entries.begin(), out.entries.end(), [](const CompareEntry& a, const CompareEntry& b) {
    return a.result.bytes < b.result.bytes;
  });
  return out;
}

std::string format_compare_table(const CompareResult& r) {
  std::string s;
  if (!r.entries.empty()) {
    const eval::KldReport& k = r.entries.front().result.report;
    s += fmt::format("reference (unquantized): PPL {:.4f} ± {:.4f} over {} window{} of {} tokens\n", k.ppl_base.value,
                     k.ppl_base.error, r.windows, r.windows == 1 ? "" : "s", r.n_ctx);
  }
  s += fmt::format("importance matrix: {}\n\n", r.imatrix.empty() ? "none" : r.imatrix);
  s += fmt::format("{:<16} {:<8} {:>9} {:>7} {:>10} {:>9} {:>22} {:>10} {:>9}\n", "name", "kind", "size MiB", "bpw",
                   "PPL", "ΔPPL", "mean KLD ± err", "99% KLD", "same top");
  for (const CompareEntry& e : r.entries) {
    const eval::KldReport& k = e.result.report;
    s += fmt::format("{:<16} {:<8} {:>9.2f} {:>7.3f} {:>10.4f} {:>+9.4f} {:>11.6f} ± {:<8.6f} {:>10.6f} {:>8.2f}%\n",
                     e.name, e.baseline ? "recipe" : "strategy", double(e.result.bytes) / (1024.0 * 1024.0),
                     e.result.bpw, k.ppl.value, k.ppl_diff.value, k.kld.value, k.kld.error, k.kld_p99,
                     100.0 * k.same_top.value);
  }
  return s;
}

nlohmann::json compare_json(const CompareResult& r) {
  auto est = [](const eval::Estimate& e) { return nlohmann::json{{"value", e.value}, {"error", e.error}}; };
  nlohmann::json entries = nlohmann::json::array();
  for (const CompareEntry& e : r.entries) {
    const eval::KldReport& k = e.result.report;
    nlohmann::json j = {{"name", e.name},
                        {"kind", e.baseline ? "recipe" : "strategy"},
                        {"bytes", e.result.bytes},
                        {"mib", double(e.result.bytes) / (1024.0 * 1024.0)},
                        {"bpw", e.result.bpw},
                        {"ppl", est(k.ppl)},
                        {"ppl_diff", est(k.ppl_diff)},
                        {"kld", est(k.kld)},
                        {"kld_median", k.kld_median},
                        {"kld_p99", k.kld_p99},
                        {"kld_max", k.kld_max},
                        {"same_top", est(k.same_top)},
                        {"tokens", k.count},
                        {"seconds", e.result.seconds}};
    if (!e.source.empty()) j["source"] = e.source;
    entries.push_back(std::move(j));
  }
  nlohmann::json j = {{"ctx", r.n_ctx}, {"windows", r.windows}, {"n_elements", r.n_elements},
                      {"entries", std::move(entries)}};
  j["imatrix"] = r.imatrix.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.imatrix);
  if (!r.entries.empty()) j["ppl_base"] = est(r.entries.front().result.report.ppl_base);
  return j;
}

report::Chart compare_chart(const CompareResult& r) {
  report::Chart c;
  c.title = "Size against KL divergence from the unquantized model";
  c.x_label = "bits per weight";
  c.y_label = "mean KL divergence (nats)";
  c.y_log = true;
  report::Series recipes, strategies;
  recipes.name = "llama.cpp recipes";
  strategies.name = "strategies";
  for (const CompareEntry& e : r.entries)
    (e.baseline ? recipes : strategies).points.push_back({e.result.bpw, e.result.report.kld.value, e.name});
  // The line runs left to right whatever order the entries came in.
  std::stable_sort(strategies.points.begin(), strategies.points.end(),
                   [](const report::ChartPoint& a, const report::ChartPoint& b) { return a.x < b.x; });
  if (strategies.points.size() > 1) strategies.style = report::SeriesStyle::line;
  if (!recipes.points.empty()) c.series.push_back(std::move(recipes));
  if (!strategies.points.empty()) c.series.push_back(std::move(strategies));
  return c;
}

}  // namespace tailor::plan
