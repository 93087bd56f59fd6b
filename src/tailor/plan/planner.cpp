#include "tailor/plan/planner.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>

#include <fmt/format.h>

#include "tailor/jobs/job_store.h"
#include "tailor/measure/measure.h"
#include "tailor/plan/quantize.h"
#include "tailor/util/error.h"

namespace tailor::plan {

int64_t parse_size(const std::string& text) {
  std::string s;
  for (char c : text)
    if (c != ' ') s += char(std::toupper(static_cast<unsigned char>(c)));
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  double v = 0;
  try {
    size_t used = 0;
    v = std::stod(s.substr(0, i), &used);
    if (used != i) throw std::invalid_argument("");
  } catch (const std::exception&) {
    fail("size '{}': expected a number with an optional unit (e.g. 18MB, 1.5GiB, 900K)", text);
  }
  const std::string unit = s.substr(i);
  static const std::map<std::string, double> units = {
      {"", 1},      {"B", 1},     {"K", 1e3},           {"KB", 1e3},           {"M", 1e6},
      {"MB", 1e6},  {"G", 1e9},   {"GB", 1e9},          {"KIB", 1024.0},       {"MIB", 1048576.0},
      {"GIB", 1073741824.0},      {"T", 1e12},          {"TB", 1e12},          {"TIB", 1099511627776.0}};
  const auto it = units.find(unit);
  if (it == units.end()) fail("size '{}': unknown unit '{}' (B, KB, MB, GB, KiB, MiB, GiB)", text, unit);
  const double bytes = v * it->second;
  if (!(bytes > 0) || bytes > 9e18) fail("size '{}' is out of range", text);
  return int64_t(bytes);
}

int64_t target_size_bytes(const std::string& model, const std::string& text) {
  const Recipe* r = find_recipe(text);
  if (r == nullptr) return parse_size(text);
  const RecipePlan rp = plan_recipe(model, *r, true);
  const std::vector<TensorDesc> layout = gguf_tensor_layout(model);
  int64_t bytes = 0;
  for (size_t i = 0; i < layout.size(); ++i) {
    int64_t n = 1;
    for (int64_t x : layout[i].ne) n *= x;
    bytes += int64_t(row_size(rp.tensors[i].type, layout[i].ne.at(0))) * (n / layout[i].ne.at(0));
  }
  return bytes;
}

namespace {

}  // namespace

TypeMap strategy_types(const Strategy& s) {
  TypeMap m;
  for (const StrategyTensor& t : s.tensors) {
    const TypeInfo* ti = find_type(t.type);
    if (!ti) fail("strategy: tensor {} has unknown type '{}'", t.name, t.type);
    m[t.name] = ti->type;
  }
  return m;
}

std::vector<TensorOptions> model_tensors(const std::string& model) {
  std::vector<TensorOptions> out;
  for (const TensorDesc& d : gguf_tensor_layout(model)) {
    if (!tensor_is_quantizable(d.name, d.ne)) continue;
    TensorOptions t;
    t.name = d.name;
    t.n_elements = 1;
    for (int64_t x : d.ne) t.n_elements *= x;
    t.row_length = d.ne.at(0);
    out.push_back(std::move(t));
  }
  return out;
}

void check_strategy_model(const Strategy& s, const std::string& model, const std::string& file) {
  const std::string hash = jobs::model_content_hash(model);
  if (!s.model.content_hash.empty() && s.model.content_hash != hash)
    fail("{}: the strategy is for another model (content hash {}, {} has {})", file, s.model.content_hash, model,
         hash);
}

Plan make_plan(const PlanRequest& req) {
  const nlohmann::json& job = req.measurement.at("job");
  const int64_t job_id = job.value("id", int64_t(0));
  const std::string hash = jobs::model_content_hash(req.model);
  if (job.at("model").value("hash", "") != hash)
    fail("{}: measurement job {} was made for another model, or this one changed since (content hash {}, the job "
         "has {}); measure it again",
         req.model, job_id, hash, job.at("model").value("hash", ""));
  if (job.value("units_done", int64_t(0)) + job.value("units_failed", int64_t(0)) < job.value("units_total", int64_t(0)))
    fail("measurement job {} is not finished ({} of {} units); continue it with `tailor measure --job {}`", job_id,
         job.value("units_done", int64_t(0)), job.value("units_total", int64_t(0)), job_id);
  const int budgets = int(req.target_bpw.has_value()) + int(req.target_bytes.has_value()) +
                      int(req.max_kld.has_value()) + int(req.max_ppl_increase.has_value());
  if (budgets != 1)
    fail("plan: give exactly one budget: --target-bpw, --target-size, --max-kld or --max-ppl-increase ({} given)",
         budgets);

  Plan p;
  const std::vector<TensorDesc> layout = gguf_tensor_layout(req.model);
  std::map<std::string, const TensorDesc*> by_name;
  for (const TensorDesc& d : layout) by_name[d.name] = &d;
  // Options per measured tensor, in the measurement's order.
  std::map<std::string, size_t> index;
  bool proxy_only = false;
  for (const auto& u : req.measurement.at("units")) {
    const nlohmann::json& m = u.at("metrics");
    if (m.is_null() || !m.value("applicable", true) || !m.contains("cost")) continue;
    const std::string name = m.at("tensor").get<std::string>();
    const auto d = by_name.find(name);
    if (d == by_name.end()) fail("{}: the measurement has tensor {}, which the model does not", req.model, name);
    if (!index.contains(name)) {
      index[name] = p.options.size();
      TensorOptions t;
      t.name = name;
      t.n_elements = m.at("n_elements").get<int64_t>();
      t.row_length = d->second->ne.at(0);
      p.options.push_back(std::move(t));
    }
    TypeOption o;
    o.type = type_named(m.at("type").get<std::string>());
    o.bytes = m.at("bytes").get<int64_t>();
    o.cost = std::max(0.0, m.at("cost").get<double>());
    o.cost_error = m.value("cost_error", 0.0);
    o.measured = m.value("source", "") == "measured";
    proxy_only = proxy_only || m.value("source", "") == "proxy";
    p.options[index[name]].options.push_back(o);
  }
  if (p.options.empty()) fail("measurement job {} has no usable results", job_id);
  // Predicted costs carry the prediction's error as measured on the holdout
  // pairs (relative, from the typical factor), so knees see honest error bars.
  double pred_rel = 0.25;
  const nlohmann::json summary = measure::summarize(req.measurement);
  if (summary.contains("prediction_error"))
    pred_rel = std::max(0.05, summary["prediction_error"]["median_factor"].get<double>() - 1.0) * 1.5;
  for (TensorOptions& t : p.options) {
    for (TypeOption& o : t.options)
      if (!o.measured && o.cost_error == 0) o.cost_error = o.cost * pred_rel;
    // F16 as the top option. ΔKL scales with the squared error and F16's
    // error is ~2^-8 of Q8_0's, so its cost is Q8_0's times 2^-16.
    const auto q8 = std::find_if(t.options.begin(), t.options.end(),
                                 [](const TypeOption& o) { return o.type == GgmlType::Q8_0; });
    const bool have = std::any_of(t.options.begin(), t.options.end(),
                                  [](const TypeOption& o) { return o.type == GgmlType::F16; });
    if (!have)
      t.options.push_back({GgmlType::F16, t.n_elements * 2, q8 == t.options.end() ? 0.0 : q8->cost / 65536.0,
                           0.0, false});
  }
  for (const TensorDesc& d : layout) {
    int64_t n = 1;
    for (int64_t x : d.ne) n *= x;
    p.total_elements += n;
    if (!index.contains(d.name)) p.fixed_bytes += n * 4;
  }

  if (req.target_bpw || req.target_bytes) {
    const double total = req.target_bpw ? *req.target_bpw * double(p.total_elements) / 8.0 : double(*req.target_bytes);
    p.budget = {Budget::Kind::Bytes, total - double(p.fixed_bytes)};
    p.budget_spec = req.target_bpw ? fmt::format("{} bpw", *req.target_bpw) : fmt::format("{} bytes", *req.target_bytes);
    if (p.budget.value <= 0)
      fail("plan: the budget ({:.0f} bytes) does not even hold the {} bytes of vectors kept in F32", total,
           p.fixed_bytes);
  } else {
    if (proxy_only)
      fail("plan: a quality budget needs ΔKL figures; measurement job {} is at the proxy level (measure with --level kld)",
           job_id);
    const double k = req.max_kld ? *req.max_kld : std::log1p(*req.max_ppl_increase / 100.0);
    p.budget = {Budget::Kind::Cost, k};
    p.budget_spec = req.max_kld ? fmt::format("ΔKL <= {}", k)
                                : fmt::format("PPL +{}% (ΔKL <= {:.4g})", *req.max_ppl_increase, k);
  }
  AllocateOptions ao;
  std::vector<Rule> rules;
  for (const std::string& r : req.rules) rules.push_back(parse_rule(r));
  ao.rules = rules;
  ao.allowed = req.allowed;
  p.allocation = allocate(p.options, p.budget, ao);
  ModelIdentity id;
  id.source = job.at("model").value("path", req.model);
  id.content_hash = hash;
  id.arch = recipe_model(req.model, false).arch;
  p.strategy = make_strategy(p.options, p.allocation, p.budget, id, rules, p.budget_spec);
  return p;
}

namespace {

void set_choice(Plan& p, size_t i, size_t option, const std::string& reason) {
  const TypeOption& o = p.options[i].options[option];
  Choice& c = p.allocation.choices[i];
  c.option = option;
  c.type = o.type;
  c.bytes = o.bytes;
  c.cost = o.cost;
  c.cost_error = o.cost_error;
  c.reason = reason;
  for (StrategyTensor& t : p.strategy.tensors) {
    if (t.name != p.options[i].name) continue;
    t.type = std::string(type_name(o.type));
    t.bytes = o.bytes;
    t.bpw = bits_per_weight(o.bytes, p.options[i].n_elements);
    t.cost = o.cost;
    t.cost_error = o.cost_error;
    t.reason = reason;
  }
}

void retotal(Plan& p) {
  StrategyTotals& s = p.strategy.totals;
  s.bytes = 0;
  s.cost = 0;
  double var = 0;
  for (const StrategyTensor& t : p.strategy.tensors) {
    s.bytes += t.bytes;
    s.cost += t.cost;
    var += t.cost_error * t.cost_error;
  }
  s.bpw = bits_per_weight(s.bytes, s.n_elements);
  s.cost_error = std::sqrt(var);
  p.allocation.total_bytes = s.bytes;
  p.allocation.total_cost = s.cost;
}

}  // namespace

Verification verify_plan(Plan& plan, AssignmentEvaluator& evaluator, int max_rounds) {
  Verification v;
  const bool quality = plan.budget.kind == Budget::Kind::Cost;
  while (true) {
    const AssignmentResult r = evaluator.evaluate(strategy_types(plan.strategy));
    ++v.rounds;
    v.predicted = plan.strategy.totals.cost;
    v.measured = r.report.kld.value;
    v.measured_error = r.report.kld.error;
    v.ppl = r.report.ppl.value;
    v.ppl_base = r.report.ppl_base.value;
    v.met = !quality || v.measured <= plan.budget.value;
    if (v.met || v.rounds >= max_rounds) break;
    // The costs did not add up: ask the prediction for the missing share
    // (scaled by how far it was off) and buy it where it is cheapest per byte.
    const double scale = v.predicted > 0 ? v.predicted / v.measured : 1.0;
    double need = (v.measured - plan.budget.value) * scale * 1.05, got = 0;
    while (got < need) {
      double best = 0;
      size_t bi = 0, bo = 0;
      for (size_t i = 0; i < plan.options.size(); ++i) {
        const Choice& c = plan.allocation.choices[i];
        if (c.pinned) continue;
        const auto& opts = plan.options[i].options;
        for (size_t o = 0; o < opts.size(); ++o) {
          if (opts[o].bytes <= c.bytes || opts[o].cost >= c.cost) continue;
          if (!row_fits(opts[o].type, plan.options[i].row_length)) continue;
          const double gain = (c.cost - opts[o].cost) / double(opts[o].bytes - c.bytes);
          if (gain > best) best = gain, bi = i, bo = o;
        }
      }
      if (best <= 0) break;  // nothing left to upgrade
      const Choice old = plan.allocation.choices[bi];
      got += old.cost - plan.options[bi].options[bo].cost;
      const std::string from(type_name(old.type)), to(type_name(plan.options[bi].options[bo].type));
      set_choice(plan, bi, bo, fmt::format("upgraded from {} after verification (measured ΔKL {:.4g} > budget)",
                                           from, v.measured));
      v.upgrades.push_back(fmt::format("{}: {} -> {}", plan.options[bi].name, from, to));
    }
    retotal(plan);
    if (got == 0) break;
  }
  return v;
}

}  // namespace tailor::plan
