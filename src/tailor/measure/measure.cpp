#include "tailor/measure/measure.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "tailor/analysis/block_cache.h"
#include "tailor/analysis/local_error.h"
#include "tailor/analysis/predict.h"
#include "tailor/engine/model.h"
#include "tailor/eval/run_eval.h"
#include "tailor/util/error.h"

namespace tailor::measure {

const char* level_name(Level l) {
  switch (l) {
    case Level::Proxy: return "proxy";
    case Level::Kld: return "kld";
    case Level::Full: return "full";
  }
  return "?";
}

Level parse_level(const std::string& s) {
  if (s == "proxy") return Level::Proxy;
  if (s == "kld") return Level::Kld;
  if (s == "full") return Level::Full;
  fail("unknown measurement level '{}' (use proxy, kld or full)", s);
}

std::vector<GgmlType> default_types() {
  return {GgmlType::Q8_0, GgmlType::Q6_K, GgmlType::Q5_K, GgmlType::Q4_K,
          GgmlType::IQ4_XS, GgmlType::Q3_K, GgmlType::Q2_K};
}

std::vector<GgmlType> parse_types(const std::string& list) {
  std::vector<GgmlType> out;
  size_t pos = 0;
  while (pos <= list.size()) {
    const size_t comma = std::min(list.find(',', pos), list.size());
    std::string name = list.substr(pos, comma - pos);
    std::erase_if(name, [](char c) { return c == ' '; });
    if (!name.empty()) {
      const TypeInfo* t = find_type(name);
      if (!t) fail("unknown type '{}' in --types (e.g. Q8_0,Q6_K,Q4_K,IQ4_XS,Q2_K)", name);
      if (!t->can_quantize || !t->can_dequantize) fail("type {} has no quantizer; it cannot be measured", name);
      if (std::find(out.begin(), out.end(), t->type) == out.end()) out.push_back(t->type);
    }
    pos = comma + 1;
  }
  if (out.empty()) fail("--types names no type");
  return out;
}

Shard parse_shard(const std::string& s) {
  Shard sh;
  const size_t slash = s.find('/');
  auto num = [&](std::string_view v, int64_t& out) {
    const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    return ec == std::errc() && p == v.data() + v.size();
  };
  if (slash == std::string::npos || !num(std::string_view(s).substr(0, slash), sh.k) ||
      !num(std::string_view(s).substr(slash + 1), sh.n) || sh.n < 1 || sh.k < 1 || sh.k > sh.n)
    fail("--shard '{}': expected K/N with 1 <= K <= N, e.g. 2/8", s);
  return sh;
}

namespace {

nlohmann::json type_names(const std::vector<GgmlType>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (GgmlType t : v) a.push_back(std::string(type_name(t)));
  return a;
}

std::vector<GgmlType> types_from(const nlohmann::json& a) {
  std::vector<GgmlType> out;
  for (const auto& n : a) out.push_back(type_named(n.get<std::string>()));
  return out;
}

}  // namespace

nlohmann::json Settings::to_json() const {
  return {{"level", level_name(level)},      {"types", type_names(types.empty() ? default_types() : types)},
          {"text", text},                    {"eval", eval},
          {"imatrix", imatrix},              {"n_ctx", n_ctx},
          {"windows", windows},              {"calib_chunks", calib_chunks},
          {"sample_rows", sample_rows},      {"top_k", top_k},
          {"max_rel_error", max_rel_error},  {"noise_floor", noise_floor},
          {"min_windows", min_windows},      {"calibrate", type_names(calibrate)},
          {"holdout_every", holdout_every},  {"exponent", exponent},
          {"calib_max_rel_error", calib_max_rel_error}, {"calib_min_windows", calib_min_windows}};
}

Settings Settings::from_json(const nlohmann::json& j) {
  try {
    Settings s;
    s.level = parse_level(j.at("level").get<std::string>());
    s.types = types_from(j.at("types"));
    s.text = j.at("text").get<std::string>();
    s.eval = j.at("eval").get<std::string>();
    s.imatrix = j.at("imatrix").get<std::string>();
    s.n_ctx = j.at("n_ctx").get<int64_t>();
    s.windows = j.at("windows").get<int64_t>();
    s.calib_chunks = j.at("calib_chunks").get<int64_t>();
    s.sample_rows = j.at("sample_rows").get<int64_t>();
    s.top_k = j.at("top_k").get<int64_t>();
    s.max_rel_error = j.at("max_rel_error").get<double>();
    s.noise_floor = j.at("noise_floor").get<double>();
    s.min_windows = j.at("min_windows").get<int64_t>();
    s.calibrate = types_from(j.at("calibrate"));
    s.holdout_every = j.at("holdout_every").get<int64_t>();
    s.exponent = j.at("exponent").get<double>();
    s.calib_max_rel_error = j.value("calib_max_rel_error", s.calib_max_rel_error);
    s.calib_min_windows = j.value("calib_min_windows", s.calib_min_windows);
    return s;
  } catch (const nlohmann::json::exception& e) {
    fail("measurement settings: {}", e.what());
  }
}

namespace {

using Clock = std::chrono::steady_clock;

void say(const RunOptions& opt, const std::string& line) {
  if (opt.log) opt.log(line);
}

// Matrices worth a type of their own: every weight of two or more dimensions
// except MoE routers, which llama.cpp keeps in F32. Ordered as the model runs
// them (embedding, blocks in order, output).
std::vector<std::string> measured_tensors(const engine::Model& model) {
  std::vector<std::string> names;
  for (const std::string& n : model.weight_names()) {
    if (model.weight(n).shape.size() < 2) continue;
    if (n.find("ffn_gate_inp") != std::string::npos) continue;
    names.push_back(n);
  }
  auto block_of = [](const std::string& n) -> int64_t {
    if (n.starts_with("token_embd")) return -1;
    if (!n.starts_with("blk.")) return 1 << 30;
    int64_t i = 0;
    std::from_chars(n.data() + 4, n.data() + n.size(), i);
    return i;
  };
  std::stable_sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
    const int64_t ba = block_of(a), bb = block_of(b);
    return ba != bb ? ba < bb : a < b;
  });
  return names;
}

double bits_per_weight(GgmlType t) { return type_info(t).bits_per_weight(); }

struct Roles {
  std::vector<GgmlType> measured;  // end to end, in this order, before the others
  bool holdout = false;
};

// Which types of tensor `index` are measured end to end.
Roles roles_for(const Settings& s, int64_t index) {
  Roles r;
  const std::vector<GgmlType>& types = s.types;
  if (s.level == Level::Full) {
    r.measured = types;
    return r;
  }
  if (s.level == Level::Proxy) return r;
  r.measured = s.calibrate;
  if (r.measured.empty()) {
    GgmlType best = types.front();
    for (GgmlType t : types)
      if (std::abs(bits_per_weight(t) - 4.5) < std::abs(bits_per_weight(best) - 4.5)) best = t;
    r.measured.push_back(best);
  }
  if (s.holdout_every > 0 && index % s.holdout_every == 0) {
    // The extra type: the one with the fewest bits not yet measured (the
    // prediction matters most where errors are large).
    std::optional<GgmlType> extra;
    for (GgmlType t : types)
      if (std::find(r.measured.begin(), r.measured.end(), t) == r.measured.end() &&
          (!extra || bits_per_weight(t) < bits_per_weight(*extra)))
        extra = t;
    if (extra) {
      r.measured.push_back(*extra);
      r.holdout = true;
    }
  }
  return r;
}

std::string unit_key(const std::string& tensor, GgmlType t) {
  return tensor + "|" + std::string(type_name(t));
}

std::vector<std::string> unit_keys(const std::vector<std::string>& tensors, const Settings& s, Shard shard) {
  std::vector<std::string> keys;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (int64_t(i) % shard.n != shard.k - 1) continue;
    const Roles r = roles_for(s, int64_t(i));
    for (GgmlType t : r.measured) keys.push_back(unit_key(tensors[i], t));
    for (GgmlType t : s.types)
      if (std::find(r.measured.begin(), r.measured.end(), t) == r.measured.end())
        keys.push_back(unit_key(tensors[i], t));
  }
  return keys;
}

Settings normalized(Settings s) {
  if (s.types.empty()) s.types = default_types();
  if (s.text.empty()) fail("measure: a calibration text is needed (--text FILE)");
  if (s.n_ctx < 8) fail("measure: --ctx {} is too small (at least 8)", s.n_ctx);
  if (s.windows < 1) fail("measure: --windows must be at least 1");
  if (s.eval.empty()) s.eval = s.text;
  auto absolute = [](std::string& p) {
    if (!p.empty() && p != "none") p = std::filesystem::absolute(p).lexically_normal().string();
  };
  absolute(s.text);
  absolute(s.eval);
  absolute(s.imatrix);
  for (GgmlType t : s.calibrate)
    if (std::find(s.types.begin(), s.types.end(), t) == s.types.end())
      fail("measure: calibration type {} is not among --types", type_name(t));
  return s;
}

// What a worker needs in memory: the model, importance values, activation
// samples and (above the proxy level) the cached block inputs.
struct Context {
  engine::Model model;
  std::vector<std::string> tensors;
  eval::Imatrix imatrix;
  bool have_imatrix = false;
  analysis::ActivationSamples samples;
  std::unique_ptr<analysis::BlockCache> cache;
};

std::vector<int32_t> calibration_tokens(const Tokenizer& tok, const Settings& s) {
  std::vector<int32_t> calib = eval::tokenize_text_file(tok, s.text);
  if (int64_t(calib.size()) < s.n_ctx)
    fail("{}: {} tokens, fewer than one window of {} (use a longer text or a smaller --ctx)", s.text,
         calib.size(), s.n_ctx);
  return calib;
}

void prepare(Context& c, const std::string& model_path, const Settings& s, const RunOptions& opt) {
  const auto tok = eval::load_model_tokenizer(model_path);
  const std::vector<int32_t> calib = calibration_tokens(*tok, s);
  if (s.imatrix.empty())
    say(opt, fmt::format("importance matrix: {} windows of {} tokens of {}", s.calib_chunks, s.n_ctx, s.text));
  if (auto im = settings_imatrix(c.model, model_path, s)) {
    c.imatrix = std::move(*im);
    c.have_imatrix = true;
  }
  // Activation samples from the calibration windows, spread over four windows.
  engine::Sequences seqs;
  for (int64_t w = 0; w < 4 && (w + 1) * s.n_ctx <= int64_t(calib.size()); ++w)
    seqs.emplace_back(calib.begin() + w * s.n_ctx, calib.begin() + (w + 1) * s.n_ctx);
  analysis::SampleOptions so;
  so.max_rows = s.sample_rows;
  so.stride = std::max<int64_t>(1, int64_t(seqs.size()) * s.n_ctx / std::max<int64_t>(1, s.sample_rows));
  c.samples = analysis::sample_activations(c.model, seqs, so);
  if (s.level != Level::Proxy) {
    const std::vector<int32_t> ev = eval::tokenize_text_file(*tok, s.eval);
    if (int64_t(ev.size()) < s.n_ctx)
      fail("{}: {} tokens, fewer than one window of {}", s.eval, ev.size(), s.n_ctx);
    say(opt, fmt::format("reference: caching block inputs of {} windows of {} tokens", s.windows, s.n_ctx));
    analysis::CacheOptions co;
    co.n_ctx = s.n_ctx;
    co.max_windows = s.windows;
    co.top_k = s.top_k;
    c.cache = std::make_unique<analysis::BlockCache>(c.model, ev, co);
  }
}

std::vector<float> importance_for(const Context& c, const std::string& tensor) {
  if (!c.have_imatrix) return {};
  const eval::ImatrixEntry* e = c.imatrix.find(tensor);
  if (!e) return {};
  return e->values();
}

void put_stats(nlohmann::json& m, const analysis::ErrorStats& s) {
  m["rmse"] = s.rmse;
  m["max_abs"] = s.max_abs;
  m["rel_frobenius"] = s.rel_frobenius;
  m["rel_weighted"] = s.rel_weighted;
  if (s.rel_output >= 0) m["rel_output"] = s.rel_output;
  m["activation_rows"] = s.activation_rows;
  m["proxy"] = analysis::proxy_score(s);
}

// The fit of this tensor's gain from its measured types (already committed:
// they come first in the tensor's units).
std::optional<analysis::GainFit> tensor_gain(jobs::JobStore& store, int64_t job, const std::string& tensor,
                                             const Roles& roles, double exponent) {
  std::vector<analysis::GainPoint> pts;
  for (GgmlType t : roles.measured) {
    const auto m = store.unit_metrics(job, unit_key(tensor, t));
    if (!m || !m->contains("kld") || !m->contains("proxy")) continue;
    pts.push_back({(*m)["proxy"].get<double>(), (*m)["kld"].get<double>()});
  }
  const analysis::GainFit f = analysis::fit_gain(pts, exponent);
  if (f.points == 0) return std::nullopt;
  return f;
}

nlohmann::json run_unit(Context& c, jobs::JobStore& store, int64_t job, const Settings& s,
                        const std::string& key) {
  const size_t bar = key.rfind('|');
  if (bar == std::string::npos) fail("unit '{}' is not tensor|type", key);
  const std::string tensor = key.substr(0, bar);
  const GgmlType type = type_named(key.substr(bar + 1));
  const auto idx_it = std::find(c.tensors.begin(), c.tensors.end(), tensor);
  if (idx_it == c.tensors.end()) fail("unit '{}': the model has no tensor {}", key, tensor);
  const Roles roles = roles_for(s, int64_t(idx_it - c.tensors.begin()));
  const engine::Weight& w = c.model.weight(tensor);
  const std::vector<float> imp = importance_for(c, tensor);
  const auto sample = c.samples.find(tensor);
  engine::Weight q;
  const analysis::LocalError le = analysis::measure_local(
      tensor, w, type, imp, sample == c.samples.end() ? nullptr : &sample->second, &q);

  nlohmann::json m = {{"tensor", tensor}, {"type", std::string(type_name(type))}, {"applicable", le.applicable}};
  if (!le.applicable) {
    m["reason"] = le.reason;
    return m;
  }
  m["bytes"] = le.bytes;
  m["bpw"] = le.bits_per_weight;
  m["n_elements"] = w.numel();
  m["weighted"] = !imp.empty();
  put_stats(m, le.total);
  const bool measured = std::find(roles.measured.begin(), roles.measured.end(), type) != roles.measured.end();
  if (measured) {
    analysis::AdaptiveOptions ao;
    const bool calibration = s.level == Level::Kld;
    ao.max_rel_error = calibration ? s.calib_max_rel_error : s.max_rel_error;
    ao.noise_floor = s.noise_floor;
    ao.min_windows_precise = calibration ? s.calib_min_windows : s.min_windows;
    const analysis::EndToEnd e = c.cache->measure(tensor, std::move(q), ao);
    const double se = std::max(e.kld.error, e.kld_window_error);
    m["kld"] = e.kld.value;
    m["kld_error"] = se;
    m["kld_token_error"] = e.kld.error;
    m["dppl"] = e.ppl_diff.value;
    m["dppl_error"] = e.ppl_diff.error;
    m["ppl"] = e.ppl;
    m["ppl_base"] = e.ppl_base;
    m["tokens"] = e.tokens;
    m["windows"] = e.windows;
    m["stop"] = analysis::stop_reason_name(e.stop);
    m["e2e_seconds"] = e.seconds;
    m["cost"] = e.kld.value;
    m["cost_error"] = se;
    m["source"] = "measured";
    return m;
  }
  if (s.level == Level::Kld) {
    if (const auto fit = tensor_gain(store, job, tensor, roles, s.exponent)) {
      m["kld_predicted"] = fit->predict(analysis::proxy_score(le.total));
      m["log_gain"] = fit->log_gain;
      m["cost"] = m["kld_predicted"];
      m["source"] = "predicted";
      return m;
    }
  }
  m["cost"] = m["proxy"];
  m["source"] = "proxy";
  return m;
}

RunResult work(jobs::JobStore& store, int64_t job, const std::string& model_path, const Settings& s,
               std::unique_ptr<Context> ctx, const RunOptions& opt) {
  const auto t0 = Clock::now();
  RunResult res;
  res.job_id = job;
  const jobs::JobInfo info = store.job(job);
  if (info.state == jobs::JobState::Done) {
    if (opt.on_job) opt.on_job(job);
    return res;
  }
  if (info.state == jobs::JobState::Cancelled)
    fail("job {} was cancelled; remove it (tailor jobs rm {}) to measure again", job, job);
  store.begin_work(job);
  // Told after begin_work, so a pause requested at once is not overwritten by it.
  if (opt.on_job) opt.on_job(job);
  bool prepared = false;
  Progress p;
  p.left_at_start = info.units_total - info.units_done;
  store.log(job, fmt::format("worker started: {} of {} units left", p.left_at_start, info.units_total));
  while (true) {
    if (opt.stop && opt.stop->load()) {
      store.pause(job);
      store.log(job, "paused by the user");
      res.outcome = Outcome::Paused;
      break;
    }
    const jobs::JobState st = store.state(job);
    if (st == jobs::JobState::Paused || st == jobs::JobState::Cancelled) {
      res.outcome = st == jobs::JobState::Paused ? Outcome::Paused : Outcome::Cancelled;
      break;
    }
    const auto unit = store.claim_next(job);
    if (!unit) break;
    if (!prepared) {
      prepare(*ctx, model_path, s, opt);
      prepared = true;
    }
    try {
      store.commit_result(unit->id, run_unit(*ctx, store, job, s, unit->key));
    } catch (const Error& e) {
      store.fail_unit(unit->id, e.what());
      store.log(job, fmt::format("{}: {}", unit->key, e.what()));
      ++res.units_failed;
    }
    ++res.units_run;
    if (opt.on_unit) {
      const jobs::JobInfo j = store.job(job);
      p.done = j.units_done + j.units_failed;
      p.total = j.units_total;
      p.done_this_run = res.units_run;
      p.last_key = unit->key;
      opt.on_unit(p);
    }
  }
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return res;
}

std::unique_ptr<Context> load_context(const std::string& model_path, const Settings& s) {
  auto c = std::make_unique<Context>(Context{engine::Model::load(model_path), {}, {}, false, {}, nullptr});
  c->tensors = measured_tensors(c->model);
  if (c->tensors.empty()) fail("{}: no weight matrices to measure", model_path);
  // A type that fits none of the tensors is a typo'd list, not a measurement.
  for (GgmlType t : s.types) {
    bool any = false;
    for (const auto& n : c->tensors) any = any || row_fits(t, c->model.weight(n).cols());
    if (!any)
      fail("{}: no tensor's rows can be stored in {} (blocks of {}); leave it out of --types", model_path,
           type_name(t), type_info(t).block_size);
  }
  return c;
}

}  // namespace

std::optional<eval::Imatrix> settings_imatrix(engine::Model& model, const std::string& model_path,
                                              const Settings& s) {
  if (s.imatrix == "none") return std::nullopt;
  if (!s.imatrix.empty()) return eval::Imatrix::load(s.imatrix, s.n_ctx);
  const auto tok = eval::load_model_tokenizer(model_path);
  const std::vector<int32_t> calib = calibration_tokens(*tok, s);
  eval::ImatrixOptions io;
  io.n_ctx = s.n_ctx;
  io.max_chunks = s.calib_chunks;
  io.batch = 4;
  if (tok->add_bos()) io.bos = tok->bos_id();
  eval::Imatrix im;
  eval::collect_imatrix(model, calib, io, im);
  return im;
}

int64_t find_measurement(jobs::JobStore& store, const std::string& model_path) {
  const std::string hash = jobs::model_content_hash(model_path);
  int64_t best = 0;
  double when = -1;
  for (const jobs::JobInfo& j : store.list_jobs()) {
    if (j.kind != "measure" || j.state != jobs::JobState::Done || j.model.hash != hash) continue;
    const double t = j.finished.value_or(j.updated);
    if (t > when) when = t, best = j.id;
  }
  return best;
}

RunResult run_measure(jobs::JobStore& store, const std::string& model_path, const Settings& settings,
                      const RunOptions& opt) {
  const Settings s = normalized(settings);
  for (const std::string* f : {&s.text, &s.eval})
    if (!std::filesystem::is_regular_file(*f)) fail("{}: no such text file", *f);
  if (!s.imatrix.empty() && s.imatrix != "none" && !std::filesystem::is_regular_file(s.imatrix))
    fail("{}: no such imatrix file", s.imatrix);
  jobs::JobSpec spec;
  spec.kind = "measure";
  spec.model = jobs::local_model_ref(model_path);
  spec.settings = s.to_json();
  auto ctx = load_context(model_path, s);
  spec.units = unit_keys(ctx->tensors, s, opt.shard);
  const int64_t job = store.create_job(spec);
  return work(store, job, model_path, s, std::move(ctx), opt);
}

RunResult resume_measure(jobs::JobStore& store, int64_t job_id, const std::string& model_path,
                         const RunOptions& opt) {
  const auto [info, path] = jobs::job_to_resume(store, job_id, "measure", model_path);
  const Settings s = Settings::from_json(info.settings);
  return work(store, job_id, path, s, load_context(path, s), opt);
}

nlohmann::json summarize(const nlohmann::json& exported) {
  const nlohmann::json& units = exported.at("units");
  // tensor -> type -> metrics, in unit order.
  std::vector<std::string> tensors;
  std::map<std::string, std::map<std::string, nlohmann::json>> by;
  for (const auto& u : units) {
    const std::string t = u.value("tensor", "");
    if (!by.contains(t)) tensors.push_back(t);
    by[t][u.value("type", "")] = u.value("metrics", nlohmann::json(nullptr));
  }
  nlohmann::json rows = nlohmann::json::array();
  int64_t measured = 0, predicted = 0, proxy = 0, not_applicable = 0, pending = 0;
  // Holdout check: each tensor measured at two or more types predicts each of
  // them from the others (leave one out); the error is that of a prediction.
  std::vector<double> log_errors;
  double exponent = 1.0;
  if (exported.at("job").contains("settings") && exported["job"]["settings"].contains("exponent"))
    exponent = exported["job"]["settings"]["exponent"].get<double>();
  for (const std::string& t : tensors) {
    nlohmann::json row = {{"tensor", t}, {"types", nlohmann::json::object()}};
    std::vector<analysis::GainPoint> pts;
    for (const auto& [type, m] : by[t]) {
      if (m.is_null()) {
        ++pending;
        continue;
      }
      if (!m.value("applicable", true)) {
        ++not_applicable;
        row["types"][type] = {{"applicable", false}, {"reason", m.value("reason", "")}};
        continue;
      }
      const std::string src = m.value("source", "proxy");
      (src == "measured" ? measured : src == "predicted" ? predicted : proxy)++;
      nlohmann::json cell = {{"cost", m.value("cost", 0.0)}, {"source", src}, {"bpw", m.value("bpw", 0.0)},
                             {"bytes", m.value("bytes", int64_t(0))}};
      if (m.contains("cost_error")) cell["cost_error"] = m["cost_error"];
      if (m.contains("dppl")) cell["dppl"] = m["dppl"];
      row["types"][type] = cell;
      if (src == "measured" && m.contains("proxy"))
        pts.push_back({m["proxy"].get<double>(), m["kld"].get<double>()});
    }
    if (pts.size() >= 2) {
      for (size_t i = 0; i < pts.size(); ++i) {
        std::vector<analysis::GainPoint> others;
        for (size_t j = 0; j < pts.size(); ++j)
          if (j != i) others.push_back(pts[j]);
        const analysis::GainFit f = analysis::fit_gain(others, exponent);
        const double pred = f.predict(pts[i].proxy);
        if (f.points > 0 && pred > 0 && pts[i].kld > 0) log_errors.push_back(std::log(pred / pts[i].kld));
      }
    }
    rows.push_back(std::move(row));
  }
  nlohmann::json out = {{"tensors", rows},
                        {"counts",
                         {{"measured", measured},
                          {"predicted", predicted},
                          {"proxy", proxy},
                          {"not_applicable", not_applicable},
                          {"pending", pending}}}};
  if (!log_errors.empty()) {
    std::vector<double> abs_err;
    for (double e : log_errors) abs_err.push_back(std::abs(e));
    std::sort(abs_err.begin(), abs_err.end());
    double bias = 0;
    for (double e : log_errors) bias += e;
    bias /= double(log_errors.size());
    // Reported as factors: a median error of 1.3 means predictions are
    // typically within 30% (either way) of what was measured.
    out["prediction_error"] = {{"pairs", log_errors.size()},
                               {"median_factor", std::exp(abs_err[abs_err.size() / 2])},
                               {"p90_factor", std::exp(abs_err[std::min(abs_err.size() - 1,
                                                                        size_t(0.9 * double(abs_err.size())))])},
                               {"mean_log_bias", bias}};
  }
  return out;
}

}  // namespace tailor::measure
