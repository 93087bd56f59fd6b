#include "tailor/gradual/gradual.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "tailor/convert/convert.h"
#include "tailor/eval/run_eval.h"
#include "tailor/gradual/e2e_trainer.h"
#include "tailor/gradual/output_trainer.h"
#include "tailor/gradual/trading.h"
#include "tailor/plan/evaluate.h"
#include "tailor/plan/planner.h"
#include "tailor/plan/quantize.h"
#include "tailor/quant/codec.h"
#include "tailor/util/atomic_file.h"
#include "tailor/util/clock.h"
#include "tailor/util/error.h"

namespace tailor::gradual {
namespace {

using nlohmann::json;


json type_list(const std::vector<GgmlType>& v) {
  json a = json::array();
  for (GgmlType t : v) a.push_back(std::string(type_name(t)));
  return a;
}

std::vector<GgmlType> types_of(const json& a) {
  std::vector<GgmlType> v;
  for (const auto& n : a) v.push_back(type_named(n.get<std::string>()));
  return v;
}

json phase_json(const TrainPhase& p) { return {{"epochs", p.epochs}, {"lr", p.lr}}; }
TrainPhase phase_of(const json& j) { return {j.at("epochs").get<int>(), j.at("lr").get<float>()}; }

}  // namespace

std::map<int, std::vector<GgmlType>> default_levels() {
  using T = GgmlType;
  return {{8, {T::Q8_0}},
          {6, {T::Q6_K}},
          {5, {T::Q5_K, T::Q5_1}},
          {4, {T::IQ4_XS, T::Q4_K, T::Q4_1}},
          {3, {T::IQ3_XXS, T::IQ3_S, T::Q3_K}},
          {2, {T::IQ2_XXS, T::IQ2_XS, T::IQ2_S, T::Q2_K}}};
}

json Settings::to_json() const {
  json lv = json::object();
  for (const auto& [bits, types] : levels) lv[std::to_string(bits)] = type_list(types);
  json j = {{"text", text},
            {"eval", eval},
            {"n_ctx", n_ctx},
            {"samples", samples},
            {"train",
             {{"attn", phase_json(train.attn)},
              {"mlp", phase_json(train.mlp)},
              {"joint", phase_json(train.joint)},
              {"scale_lr_factor", train.scale_lr_factor},
              {"batch", train.batch},
              {"adaptive", train.adaptive},
              {"small_sample", train.small_sample},
              {"eval_sequences", train.eval_sequences}}},
            {"final_lr_decay", final_lr_decay},
            {"ladder", ladder},
            {"levels", lv},
            {"max_recover", max_recover},
            {"output_epochs", output_epochs},
            {"e2e_epochs", e2e_epochs},
            {"e2e_lr", e2e_lr},
            {"e2e_samples", e2e_samples},
            {"e2e_norm_lr", e2e_norm_lr},
            {"embd_epochs", embd_epochs},
            {"embd_lr", embd_lr},
            {"importance", importance_options_json(importance)},
            {"safety", safety},
            {"genetic", genetic},
            {"eval_ctx", eval_ctx},
            {"eval_windows", eval_windows},
            {"measure", measure.to_json()}};
  j["max_ppl_increase"] = max_ppl_increase ? json(*max_ppl_increase) : json(nullptr);
  j["target_bytes"] = target_bytes ? json(*target_bytes) : json(nullptr);
  return j;
}

Settings Settings::from_json(const json& j) {
  try {
    Settings s;
    s.text = j.at("text").get<std::string>();
    s.eval = j.at("eval").get<std::string>();
    s.n_ctx = j.at("n_ctx").get<int64_t>();
    s.samples = j.at("samples").get<int64_t>();
    const json& t = j.at("train");
    s.train.attn = phase_of(t.at("attn"));
    s.train.mlp = phase_of(t.at("mlp"));
    s.train.joint = phase_of(t.at("joint"));
    s.train.scale_lr_factor = t.at("scale_lr_factor").get<float>();
    s.train.batch = t.at("batch").get<int64_t>();
    s.train.adaptive = t.at("adaptive").get<bool>();
    s.train.small_sample = t.at("small_sample").get<int64_t>();
    s.train.eval_sequences = t.at("eval_sequences").get<int64_t>();
    s.ladder = j.at("ladder").get<std::vector<int>>();
    s.levels.clear();
    for (const auto& [bits, types] : j.at("levels").items()) s.levels[std::stoi(bits)] = types_of(types);
    s.final_lr_decay = j.value("final_lr_decay", false);  // jobs from before the setting: constant
    s.max_recover = j.at("max_recover").get<int>();
    s.output_epochs = j.at("output_epochs").get<int>();
    s.e2e_epochs = j.value("e2e_epochs", 0);  // jobs from before end-to-end training: none
    s.e2e_lr = j.value("e2e_lr", s.e2e_lr);
    s.e2e_samples = j.value("e2e_samples", s.e2e_samples);
    s.e2e_norm_lr = j.value("e2e_norm_lr", s.e2e_norm_lr);
    s.embd_epochs = j.value("embd_epochs", 0);  // jobs from before embedding training: none
    s.embd_lr = j.value("embd_lr", s.embd_lr);
    s.importance = importance_options_from_json(j.at("importance"));
    s.safety = j.at("safety").get<double>();
    s.genetic = j.at("genetic").get<bool>();
    s.eval_ctx = j.at("eval_ctx").get<int64_t>();
    s.eval_windows = j.at("eval_windows").get<int64_t>();
    s.measure = measure::Settings::from_json(j.at("measure"));
    if (!j.at("max_ppl_increase").is_null()) s.max_ppl_increase = j.at("max_ppl_increase").get<double>();
    if (!j.at("target_bytes").is_null()) s.target_bytes = j.at("target_bytes").get<int64_t>();
    return s;
  } catch (const json::exception& e) {
    fail("gradual settings: {}", e.what());
  }
}

std::string parts_dir(const jobs::JobStore& store, int64_t job_id) {
  return store.path() + ".gradual/" + std::to_string(job_id);
}

namespace {

// Calibration activations at every block boundary of the unquantized model:
// acts[b] enters block b, acts[L] leaves the last one.
struct Calibration {
  int64_t seqs = 0, n_ctx = 0, dim = 0;
  std::vector<std::vector<float>> acts;
  BlockData block(int64_t b, const float* channel_weight) const {
    return {acts[size_t(b)].data(), acts[size_t(b + 1)].data(), seqs, n_ctx, dim, channel_weight};
  }
};

// ends_only: keep only the model's input and output (acts[0], acts[1]).
Calibration collect_calibration(engine::Model& model, const std::vector<int32_t>& tokens,
                                int64_t n_ctx, int64_t seqs, bool ends_only = false) {
  Calibration c;
  c.n_ctx = n_ctx;
  c.seqs = std::min<int64_t>(seqs, int64_t(tokens.size()) / n_ctx);
  c.dim = model.config().hidden_size;
  const int64_t L = model.num_layers(), per = n_ctx * c.dim;
  c.acts.assign(size_t(ends_only ? 2 : L + 1), std::vector<float>(size_t(c.seqs * per)));
  const int64_t batch = 16;
  for (int64_t s0 = 0; s0 < c.seqs; s0 += batch) {
    const int64_t n = std::min(batch, c.seqs - s0);
    engine::Sequences seqs_;
    for (int64_t i = 0; i < n; ++i)
      seqs_.emplace_back(tokens.begin() + (s0 + i) * n_ctx, tokens.begin() + (s0 + i + 1) * n_ctx);
    engine::Hidden h = model.embed(seqs_);
    for (int64_t b = 0; b <= L; ++b) {
      if (!ends_only || b == 0 || b == L)
        std::copy(h.data.begin(), h.data.end(), c.acts[size_t(ends_only ? b / L : b)].begin() + s0 * per);
      if (b < L) model.run_block(b, h);
    }
  }
  return c;
}

// How much an error in each channel of the residual stream after `block`
// reaches what reads it: every later norm's weight squared times the squared
// column norms of the matrices reading that norm's output (q, k, v; gate, up;
// the output layer), summed and scaled to mean 1. A first-order sensitivity,
// free to compute, that ranks channels as the model uses them.
std::vector<float> downstream_weights(engine::Model& m, int64_t block) {
  const int64_t dim = m.config().hidden_size;
  std::vector<double> w(static_cast<size_t>(dim), 0.0);
  auto add = [&](const std::string& norm, std::initializer_list<std::string> readers) {
    const engine::Weight& g = m.weight(norm);
    for (const std::string& r : readers) {
      const engine::Weight& W = m.weight(r);
      if (W.quantized() || W.cols() != dim) fail("gradual: {} is not an f32 [*, {}] matrix", r, dim);
      for (int64_t row = 0; row < W.rows(); ++row)
        for (int64_t j = 0; j < dim; ++j) {
          const double v = W.f32[size_t(row * dim + j)];
          w[size_t(j)] += double(g.f32[size_t(j)]) * g.f32[size_t(j)] * v * v;
        }
    }
  };
  for (int64_t b = block + 1; b < m.num_layers(); ++b) {
    const std::string p = fmt::format("blk.{}.", b);
    add(p + "attn_norm.weight", {p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"});
    add(p + "ffn_norm.weight", {p + "ffn_gate.weight", p + "ffn_up.weight"});
  }
  add("output_norm.weight", {m.find_weight("output.weight") ? "output.weight" : "token_embd.weight"});
  double mean = 0;
  for (double v : w) mean += v / double(dim);
  std::vector<float> out(static_cast<size_t>(dim));
  for (int64_t j = 0; j < dim; ++j) out[size_t(j)] = mean > 0 ? float(w[size_t(j)] / mean) : 1.0f;
  return out;
}

struct Context {
  std::string model_path;
  Settings s;
  engine::Model model;
  eval::Imatrix imatrix;
  std::vector<int32_t> calib_tokens, eval_tokens;
  json measurement;  // export of the measure job
  std::optional<Calibration> calib;
  Importance importance;
  std::vector<double> kld_budgets;  // per block, the ΔKL share it may spend
  std::vector<std::vector<float>> channel_weights;  // per block (downstream_weights)
  double total_budget = 0;         // ΔKL the blocks share
};

void say(const RunOptions& o, const std::string& line) {
  if (o.log) o.log(line);
}

std::string block_name(int64_t layer, int lin) {
  return fmt::format("blk.{}.{}.weight", layer, lin_name(lin));
}

bool row_ok(engine::Model& m, int64_t layer, GgmlType t) {
  for (int i = 0; i < kNumLin; ++i)
    if (!row_fits(t, m.weight(block_name(layer, i)).cols())) return false;
  return true;
}

json types_json(int64_t layer, const LayerTypes& t) {
  json j = json::object();
  for (int i = 0; i < kNumLin; ++i) j[block_name(layer, i)] = std::string(type_name(t[size_t(i)]));
  return j;
}

LayerTypes types_from(int64_t layer, const json& j) {
  LayerTypes t{};
  for (int i = 0; i < kNumLin; ++i) t[size_t(i)] = type_named(j.at(block_name(layer, i)).get<std::string>());
  return t;
}

// --- 2. progressive block quantization ------------------------------------

// The type a layer reverts to when `t` is not enough: the next finer type of
// its bit level, else what the level above chose for it.
GgmlType finer_type(const Settings& s, GgmlType t, GgmlType above) {
  for (const auto& [bits, types] : s.levels) {
    const auto it = std::find(types.begin(), types.end(), t);
    if (it != types.end() && it + 1 != types.end()) return *(it + 1);
  }
  return above;
}

constexpr double kRecoverWithin = 2.0;

json progressive_block(Context& c, int64_t layer, int64_t order, const RunOptions& opt) {
  const double t0 = now_seconds();
  const BlockData d = c.calib->block(layer, c.channel_weights.at(size_t(layer)).data());
  // The block's KLD share in this walk's own error measure: the importance
  // analysis measured the KLD of the block at Q4_K by plain rounding; the
  // same configuration's error here gives the gain that converts it.
  const BlockImportance* bi = nullptr;
  for (const BlockImportance& b : c.importance.blocks)
    if (b.block == layer) bi = &b;
  double gain = bi != nullptr ? bi->gain : 1.0;
  if (bi != nullptr && bi->rtn_kld.count(4) && row_ok(c.model, layer, GgmlType::Q4_K)) {
    BlockQuantizer g(c.model, layer, nullptr, c.s.train);
    LayerTypes q4;
    q4.fill(GgmlType::Q4_K);
    g.set_types(q4);
    const double e4 = g.error(d);
    if (e4 > 0) gain = bi->rtn_kld.at(4) / e4;
  }
  const double kld_budget = c.kld_budgets.at(size_t(layer));
  const double thr = gain > 0 ? kld_budget / gain : 0.0;
  BlockQuantizer q(c.model, layer, &c.imatrix, c.s.train);
  LayerTypes best;
  best.fill(GgmlType::F16);
  double best_error = 0, best_plain = 0;
  int best_bits = 16;
  bool best_trained = false;
  json best_recovered = json::array(), best_adaptive = nullptr, attempts = json::array();
  int64_t steps = 0;
  for (int bits : c.s.ladder) {
    const auto lv = c.s.levels.find(bits);
    if (lv == c.s.levels.end()) continue;
    bool level_ok = false;
    for (GgmlType t : lv->second) {
      if (!row_ok(c.model, layer, t)) continue;
      LayerTypes cfg;
      cfg.fill(t);
      q.set_types(cfg);
      const double plain = q.error(d);
      double err = plain;
      json att = {{"type", std::string(type_name(t))}, {"bits", bits}, {"plain_error", plain}};
      json adaptive = nullptr;
      bool trained = false;
      if (err > thr && rounding_trainable(t)) {
        const TrainReport r = q.train(d, thr);
        err = r.after;
        steps += r.steps;
        trained = true;
        att["trained_error"] = r.after;
        att["train"] = r.to_json();
        adaptive = {{"predicted", r.predicted >= 0 ? json(r.predicted) : json(nullptr)},
                    {"actual", r.after},
                    {"stopped_early", r.stopped_early}};
      }
      json recovered = json::array();
      // Recovery reverts single matrices: it can close a gap of some tens of
      // percent, not a factor. Further off, the next type is the better try.
      while (err > thr && err <= kRecoverWithin * thr && int(recovered.size()) < c.s.max_recover) {
        // Which single layer, made finer, lowers the block's error most?
        int pick = -1;
        double pick_err = err;
        GgmlType pick_type = t;
        const int64_t probe = std::min<int64_t>(d.seqs, c.s.train.eval_sequences);
        for (int i = 0; i < kNumLin; ++i) {
          if (q.types()[size_t(i)] != t) continue;
          const GgmlType f = finer_type(c.s, t, best[size_t(i)]);
          if (f == t || !row_fits(f, c.model.weight(block_name(layer, i)).cols())) continue;
          const double e = q.probe(i, f, d, probe);
          if (pick < 0 || e < pick_err) pick = i, pick_err = e, pick_type = f;
        }
        if (pick < 0) break;
        q.set_type(pick, pick_type);
        recovered.push_back({{"tensor", block_name(layer, pick)}, {"type", std::string(type_name(pick_type))}});
        const TrainReport r = q.train(d, thr);
        steps += r.steps;
        err = r.after;
        trained = trained || r.steps > 0;
      }
      att["recovered"] = recovered;
      att["error"] = err;
      att["ok"] = err <= thr;
      attempts.push_back(att);
      say(opt, fmt::format("block {}: {} plain {:.4g}{} -> {:.4g} (budget {:.4g}){}", layer, type_name(t),
                           plain, trained ? " trained" : "", err, thr, err <= thr ? " ok" : ""));
      if (err <= thr) {
        best = q.types();
        best_error = err;
        best_plain = plain;
        best_bits = bits;
        best_trained = trained;
        best_recovered = recovered;
        best_adaptive = adaptive;
        level_ok = true;
        break;
      }
    }
    if (!level_ok) break;  // roll back to the level above
  }
  q.set_types(best);
  json r = {{"block", layer},
            {"order", order},
            {"types", types_json(layer, best)},
            {"error", best_error},
            {"threshold", thr},
            {"kld_budget", kld_budget},
            {"gain", gain},
            {"plain_error", best_plain},
            {"trained", best_trained},
            {"recovered", json::array()},
            {"bits", best_bits},
            {"bytes", q.bytes()},
            {"seconds", now_seconds() - t0},
            {"train_steps", steps},
            {"adaptive", best_adaptive},
            {"attempts", attempts}};
  for (const auto& x : best_recovered) r["recovered"].push_back(x.at("tensor"));
  return r;
}

// --- 3. type trading -----------------------------------------------------------

// What training did to a block's error at each type it was trained at:
// trained / plain, from the progressive attempts without recovery.
// A block error ratio reaches the model's KL only in part: on llama-30m,
// block errors 20-35% lower gave KLs 2-14% lower block by block. Taken at
// full value, the ratios made trading swap IQ3_XXS for trainable Q2_K, a
// choice worth 18% more KLD by plain rounding that training did not win back.
constexpr double kRatioToKld = 0.5;

std::map<int64_t, std::map<GgmlType, double>> training_ratios(const std::vector<json>& blocks) {
  std::map<int64_t, std::map<GgmlType, double>> r;
  for (const json& b : blocks)
    for (const json& a : b.at("attempts"))
      if (a.contains("trained_error") && a.at("plain_error").get<double>() > 0)
        r[b.at("block").get<int64_t>()][type_named(a.at("type").get<std::string>())] =
            std::pow(a.at("trained_error").get<double>() / a.at("plain_error").get<double>(), kRatioToKld);
  return r;
}

int64_t layer_of(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  return std::stoll(name.substr(4, name.find('.', 4) - 4));
}

// The importance unit as the GUI reads it (flat per-method shares) with the
// analysis itself for resuming.
json importance_unit(const Importance& imp, const std::vector<double>& thr, const Settings& s,
                     double total_budget) {
  auto scores = [](json& j, const MethodScores& m) {
    j["noise"] = m.noise;
    j["rtn"] = m.rtn;
    j["disable"] = m.disable;
    j["upgrade"] = m.upgrade;
    j["combined"] = m.combined;
  };
  json blocks = json::array(), layers = json::array();
  for (size_t i = 0; i < imp.blocks.size(); ++i) {
    const BlockImportance& b = imp.blocks[i];
    json j = {{"block", b.block}, {"gain", b.gain}, {"threshold", thr.at(size_t(b.block))},
              {"kld_budget", thr.at(size_t(b.block))}};
    scores(j, b.s);
    json rk = json::object();
    for (const auto& [bits, v] : b.rtn_kld) rk[std::to_string(bits)] = v;
    j["rtn_kld"] = rk;
    blocks.push_back(j);
  }
  for (const LayerImportance& l : imp.layers) {
    json j = {{"name", l.name}, {"block", l.block}};
    scores(j, l.s);
    layers.push_back(j);
  }
  const ImportanceOptions& o = s.importance;
  return {{"blocks", blocks},
          {"layers", layers},
          {"weights", {{"rtn", o.w_rtn}, {"upgrade", o.w_upgrade}, {"disable", o.w_disable}, {"noise", o.w_noise}}},
          {"safety", s.safety},
          {"total_kld_budget", total_budget},
          {"seconds", imp.seconds},
          {"analysis", imp.to_json()}};
}

// Trading options: every planned tensor's measured types, costs scaled by
// what training did to its block at that type. A type not trained there takes
// the geometric mean of its ratios elsewhere, and a type trained nowhere (off
// the ladder: Q3_K, IQ3_S, ...) the mean of its block's ratios, so that the
// walk's types get no credit the others would earn too. Untrainable types: 1.
std::vector<TradeLayer> trade_layers(const plan::Plan& p, const std::vector<json>& blocks,
                                     std::map<std::string, GgmlType> start) {
  const auto ratios = training_ratios(blocks);
  std::map<GgmlType, std::pair<double, int>> mean;
  std::map<int64_t, std::pair<double, int>> block_mean;
  for (const auto& [b, m] : ratios)
    for (const auto& [t, r] : m) {
      const double lr = std::log(std::max(r, 1e-6));
      mean[t].first += lr;
      mean[t].second += 1;
      block_mean[b].first += lr;
      block_mean[b].second += 1;
    }
  std::vector<TradeLayer> out;
  for (size_t i = 0; i < p.options.size(); ++i) {
    const plan::TensorOptions& t = p.options[i];
    TradeLayer L;
    L.name = t.name;
    const int64_t layer = layer_of(t.name);
    const auto want = start.count(t.name) ? start.at(t.name) : p.allocation.choices[i].type;
    for (const plan::TypeOption& o : t.options) {
      if (!row_fits(o.type, t.row_length)) continue;
      double ratio = 1.0;
      if (layer >= 0 && rounding_trainable(o.type)) {
        const auto bit = ratios.find(layer);
        if (bit != ratios.end() && bit->second.count(o.type)) ratio = bit->second.at(o.type);
        else if (mean.count(o.type)) ratio = std::exp(mean[o.type].first / mean[o.type].second);
        else if (block_mean.count(layer)) ratio = std::exp(block_mean[layer].first / block_mean[layer].second);
      }
      if (o.type == want) L.current = L.options.size();
      L.options.push_back({o.type, o.bytes, o.cost * ratio});
    }
    if (L.options.empty()) fail("gradual: no usable type for {}", t.name);
    out.push_back(std::move(L));
  }
  return out;
}

void save_part(const std::string& dir, const std::string& tensor, const std::vector<uint8_t>& blocks) {
  std::filesystem::create_directories(dir);
  AtomicFile f(dir + "/" + tensor + ".bin");
  f.write(blocks.data(), blocks.size());
  f.commit();
}

std::vector<uint8_t> load_part(const std::string& dir, const std::string& tensor, size_t expect) {
  const std::string path = dir + "/" + tensor + ".bin";
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: trained blocks are missing (the job's folder was removed?)", path);
  std::vector<uint8_t> b(expect);
  in.read(reinterpret_cast<char*>(b.data()), std::streamsize(expect));
  if (size_t(in.gcount()) != expect || in.peek() != EOF)
    fail("{}: {} bytes expected, the file holds another size", path, expect);
  return b;
}

// A trained matrix's rounding parameters beside its blocks, so end-to-end
// training continues from them: per vector a u64 count, then its floats.
void save_params(const std::string& dir, const std::string& tensor, const TrainableMatrix& tm) {
  const TrainableMatrix::Params p = tm.save();
  AtomicFile f(dir + "/" + tensor + ".params");
  for (const std::vector<float>* v : {&p.offsets, &p.scale_mult, &p.min_mult}) {
    const uint64_t n = v->size();
    f.write(&n, sizeof n);
    f.write(v->data(), v->size() * sizeof(float));
  }
  f.commit();
}

// Restores what save_params wrote into tm (made with the same type and
// weights); false when there is no such file or it does not fit tm.
bool load_params(const std::string& dir, const std::string& tensor, TrainableMatrix& tm) {
  std::ifstream in(dir + "/" + tensor + ".params", std::ios::binary);
  if (!in) return false;
  TrainableMatrix::Params p = tm.save();
  for (std::vector<float>* v : {&p.offsets, &p.scale_mult, &p.min_mult}) {
    uint64_t n = 0;
    in.read(reinterpret_cast<char*>(&n), sizeof n);
    if (!in || n != v->size()) return false;
    in.read(reinterpret_cast<char*>(v->data()), std::streamsize(n * sizeof(float)));
    if (!in) return false;
  }
  if (in.peek() != EOF) return false;
  tm.restore(p);
  return true;
}

// Advances activations x (seqs x n_ctx rows) through block `layer` with the
// given dequantized weights.
void advance(engine::Model& model, int64_t layer, const std::array<const float*, kNumLin>& w,
             std::vector<float>& x, int64_t seqs, int64_t n_ctx, int64_t batch) {
  BlockDims dims = block_dims(model);
  BlockParams p = block_params(model, layer);
  p.w = w;
  BlockTape tape(dims);
  const int64_t per = n_ctx * dims.dim;
  std::vector<float> y;
  for (int64_t s0 = 0; s0 < seqs; s0 += batch) {
    const int64_t n = std::min(batch, seqs - s0);
    const std::vector<int64_t> lengths(size_t(n), n_ctx);
    y.resize(size_t(n * per));
    tape.forward(p, x.data() + s0 * per, lengths, y.data());
    std::copy(y.begin(), y.end(), x.begin() + s0 * per);
  }
}

}  // namespace
}  // namespace tailor::gradual

namespace tailor::gradual {
namespace {

std::vector<std::string> unit_keys(int64_t layers) {
  std::vector<std::string> u{"importance"};
  for (int64_t b = 0; b < layers; ++b) u.push_back(fmt::format("block.{}", b));
  u.push_back("trade");
  for (int64_t b = 0; b < layers; ++b) u.push_back(fmt::format("final.{}", b));
  u.push_back("final.output");
  u.push_back("final.embedding");
  u.push_back("end_to_end");
  u.push_back("validate");
  return u;
}

// The plan at the user's budget from the measurement: its options are what
// trading chooses from, its allocation is the plain-rounding plan of the
// same size the result is compared with.
plan::Plan budget_plan(const Context& c) {
  plan::PlanRequest req;
  req.model = c.model_path;
  req.measurement = c.measurement;
  if (c.s.target_bytes) req.target_bytes = c.s.target_bytes;
  else req.max_ppl_increase = c.s.max_ppl_increase.value_or(5.0);
  return plan::make_plan(req);
}

class Worker {
 public:
  Worker(jobs::JobStore& store, int64_t job, Context& c, const RunOptions& opt)
      : store_(store), job_(job), c_(c), opt_(opt), L_(c.model.num_layers()) {}

  Outcome run();

 private:
  bool should_stop(Outcome& why);
  void report(const std::string& unit, const std::string& line);
  void ensure_calibration();
  void importance();
  void blocks();
  void trade();
  void finals();
  void output(const std::vector<float>& x);
  void embedding();
  void end_to_end();
  std::optional<jobs::Unit> claim_last(const std::string& key);
  E2EOptions e2e_options(const std::string& key, int epochs, float lr, float norm_lr);
  E2EReport train_or_pause(QuantModel& qm, const Calibration& cal, const float* x0, const E2EOptions& o);
  void validate();
  std::vector<json> block_results();

  jobs::JobStore& store_;
  int64_t job_;
  Context& c_;
  const RunOptions& opt_;
  int64_t L_;
  int64_t done_ = 0, total_ = 0;
};

bool Worker::should_stop(Outcome& why) {
  if (opt_.stop != nullptr && opt_.stop->load()) {
    store_.pause(job_);
    why = Outcome::Paused;
    return true;
  }
  const jobs::JobState st = store_.state(job_);
  if (st == jobs::JobState::Paused) return why = Outcome::Paused, true;
  if (st == jobs::JobState::Cancelled) return why = Outcome::Cancelled, true;
  return false;
}

void Worker::report(const std::string& unit, const std::string& line) {
  const jobs::JobInfo info = store_.job(job_);
  store_.log(job_, unit + ": " + line);
  if (opt_.on_unit) opt_.on_unit({info.units_done, info.units_total, unit, line});
}

void Worker::ensure_calibration() {
  if (c_.calib) return;
  say(opt_, fmt::format("calibration: {} sequences of {} tokens through the unquantized model",
                        c_.s.samples, c_.s.n_ctx));
  c_.calib = collect_calibration(c_.model, c_.calib_tokens, c_.s.n_ctx, c_.s.samples);
  for (int64_t b = 0; b < L_; ++b) c_.channel_weights.push_back(downstream_weights(c_.model, b));
}

void Worker::importance() {
  if (auto u = store_.claim_unit(job_, "importance")) {
    say(opt_, "importance: noise, RTN, disable and upgrade probes of every block and layer");
    Importance imp = analyze_importance(c_.model, c_.calib_tokens, c_.s.importance);
    const plan::Plan p = budget_plan(c_);
    // The quality the blocks may spend: the user's limit, or what the plain
    // plan at the memory target is predicted to cost.
    const double total = c_.s.max_ppl_increase ? std::log1p(*c_.s.max_ppl_increase / 100.0)
                                               : p.allocation.total_cost;
    // Each block's share of it; the walk converts a share into its own error
    // measure (progressive_block). The GUI shows the share as the budget.
    const std::vector<double> thr = block_kld_budgets(imp, total, c_.s.safety);
    store_.commit_result(u->id, importance_unit(imp, thr, c_.s, total));
    report("importance", fmt::format("done in {:.1f} s", imp.seconds));
  }
  const auto m = store_.unit_metrics(job_, "importance");
  if (!m) fail("gradual job {}: the importance analysis is not done", job_);
  c_.importance = Importance::from_json(m->at("analysis"));
  c_.total_budget = m->at("total_kld_budget").get<double>();
  c_.kld_budgets.assign(size_t(L_), 0.0);
  for (const json& b : m->at("blocks")) c_.kld_budgets.at(b.at("block").get<size_t>()) = b.at("threshold").get<double>();
}

void Worker::blocks() {
  std::vector<std::pair<double, int64_t>> order;
  for (const BlockImportance& b : c_.importance.blocks) order.emplace_back(b.s.combined, b.block);
  std::stable_sort(order.begin(), order.end());
  for (size_t k = 0; k < order.size(); ++k) {
    Outcome why;
    if (should_stop(why)) throw why;
    const std::string key = fmt::format("block.{}", order[k].second);
    if (store_.unit_metrics(job_, key)) continue;
    ensure_calibration();
    auto u = store_.claim_unit(job_, key);
    if (!u) continue;
    const json r = progressive_block(c_, order[k].second, int64_t(k), opt_);
    store_.commit_result(u->id, r);
    std::string types;
    for (const auto& [n, t] : r.at("types").items()) types += (types.empty() ? "" : " ") + t.get<std::string>();
    report(key, fmt::format("{} error {:.4g} / {:.4g} in {:.1f} s", types, r.at("error").get<double>(),
                            r.at("threshold").get<double>(), r.at("seconds").get<double>()));
  }
}

std::vector<json> Worker::block_results() {
  std::vector<json> v;
  for (int64_t b = 0; b < L_; ++b)
    if (auto m = store_.unit_metrics(job_, fmt::format("block.{}", b))) v.push_back(*m);
  return v;
}

void Worker::trade() {
  auto u = store_.claim_unit(job_, "trade");
  if (!u) return;
  const plan::Plan p = budget_plan(c_);
  std::map<std::string, GgmlType> start;
  const std::vector<json> br = block_results();
  for (const json& b : br)
    for (const auto& [n, t] : b.at("types").items()) start[n] = type_named(t.get<std::string>());
  const std::vector<TradeLayer> layers = trade_layers(p, br, start);
  TradeLimits lim;
  if (c_.s.target_bytes) lim.memory_target = int64_t(p.budget.value);
  if (c_.s.max_ppl_increase) lim.quality_budget = std::log1p(*c_.s.max_ppl_increase / 100.0);
  if (!lim.memory_target) {
    // Quality mode: trades may only make the model smaller.
    int64_t now = 0;
    for (const TradeLayer& l : layers) now += l.options[l.current].bytes;
    lim.memory_target = now;
  }
  TradeResult r = greedy_trade(layers, lim);
  json j = {{"greedy", {{"bytes", r.bytes}, {"cost", r.cost}, {"trades", r.trades.size()}, {"feasible", r.feasible}}}};
  // Greedy trading is local: start it again from the plain-rounding plan's
  // allocation (optimal for untrained costs) and keep the better end.
  std::vector<TradeLayer> from_plain = layers;
  for (size_t i = 0; i < from_plain.size(); ++i)
    for (size_t k = 0; k < from_plain[i].options.size(); ++k)
      if (from_plain[i].options[k].type == p.allocation.choices[i].type) from_plain[i].current = k;
  const TradeResult rp = greedy_trade(from_plain, lim);
  j["greedy_from_plain"] = {{"bytes", rp.bytes}, {"cost", rp.cost}, {"trades", rp.trades.size()}, {"feasible", rp.feasible}};
  if (rp.feasible && (!r.feasible || rp.cost < r.cost)) r = rp;
  if (c_.s.genetic) {
    const TradeResult g = genetic_trade(layers, lim, r);
    j["genetic"] = {{"bytes", g.bytes}, {"cost", g.cost}, {"feasible", g.feasible}};
    r = g;
  }
  json types = json::object(), plain = json::object();
  for (size_t i = 0; i < layers.size(); ++i) {
    types[layers[i].name] = std::string(type_name(layers[i].options[r.choice[i]].type));
    plain[p.options[i].name] = std::string(type_name(p.allocation.choices[i].type));
  }
  j["types"] = types;
  j["plain_plan"] = plain;  // the same budget by plain rounding (for the report)
  j["bytes"] = r.bytes + p.fixed_bytes;
  j["cost"] = r.cost;
  j["feasible"] = r.feasible;
  if (!r.feasible) j["problem"] = r.problem;
  store_.commit_result(u->id, j);
  report("trade", fmt::format("{} trades, {:.2f} MiB, predicted ΔKL {:.4g}", r.trades.size(),
                              double(r.bytes + p.fixed_bytes) / (1 << 20), r.cost));
}

void Worker::finals() {
  const auto tr = store_.unit_metrics(job_, "trade");
  if (!tr) fail("gradual job {}: type trading is not done", job_);
  if (store_.unit_metrics(job_, "final.output")) return;  // every final unit is done
  const std::string dir = parts_dir(store_, job_);
  std::vector<float> x;  // activations entering block b from the quantized blocks before it
  for (int64_t b = 0; b < L_; ++b) {
    Outcome why;
    if (should_stop(why)) throw why;
    const std::string key = fmt::format("final.{}", b);
    const auto done = store_.unit_metrics(job_, key);
    ensure_calibration();
    if (x.empty()) x = c_.calib->acts[0];
    LayerTypes types = types_from(b, tr->at("types"));
    std::array<std::vector<float>, kNumLin> w;
    std::array<const float*, kNumLin> wp{};
    if (done) {
      for (int i = 0; i < kNumLin; ++i) {
        const engine::Weight& fw = c_.model.weight(block_name(b, i));
        const auto blocks = load_part(dir, block_name(b, i), row_size(types[size_t(i)], fw.cols()) * size_t(fw.rows()));
        w[size_t(i)].resize(size_t(fw.numel()));
        dequantize_rows(types[size_t(i)], blocks.data(), w[size_t(i)].data(), fw.rows(), fw.cols());
        wp[size_t(i)] = w[size_t(i)].data();
      }
    } else {
      auto u = store_.claim_unit(job_, key);
      if (!u) fail("gradual job {}: unit {} is claimed by another worker", job_, key);
      const Calibration& cal = *c_.calib;
      const BlockData d{x.data(), cal.acts[size_t(b + 1)].data(), cal.seqs, cal.n_ctx, cal.dim,
                        c_.channel_weights.at(size_t(b)).data()};
      // The types are settled: nothing is gained by stopping early, so the
      // final training always runs the whole schedule on the whole sample.
      TrainOptions to = c_.s.train;
      to.adaptive = false;
      to.decay = c_.s.final_lr_decay;
      BlockQuantizer q(c_.model, b, &c_.imatrix, to);
      q.set_types(types);
      const auto bm = store_.unit_metrics(job_, fmt::format("block.{}", b));
      const double thr = bm ? bm->at("threshold").get<double>() : 0.0;
      const TrainReport r = q.train(d, thr);
      for (int i = 0; i < kNumLin; ++i) {
        save_part(dir, block_name(b, i), q.blocks(i));
        if (const TrainableMatrix* t = q.trainable(i)) save_params(dir, block_name(b, i), *t);
        w[size_t(i)] = q.weights(i);
        wp[size_t(i)] = w[size_t(i)].data();
      }
      json j = {{"block", b}, {"types", types_json(b, types)}, {"threshold", thr}, {"bytes", q.bytes()},
                {"train", r.to_json()}, {"error", r.after}, {"plain_error", r.before}};
      store_.commit_result(u->id, j);
      report(key, fmt::format("error {:.4g} (plain {:.4g}) in {:.1f} s", r.after, r.before, r.seconds));
    }
    advance(c_.model, b, wp, x, c_.calib->seqs, c_.calib->n_ctx, c_.s.train.batch);
  }
  output(x);
}

// The imatrix column weights of tensor `name` ([cols]), empty when it has none.
std::vector<float> importance_of(const Context& c, const std::string& name, int64_t cols) {
  std::vector<float> imp;
  if (const eval::ImatrixEntry* e = c.imatrix.find(name)) imp = e->values();
  if (imp.size() != size_t(cols)) imp.clear();
  return imp;
}
const float* or_null(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

void Worker::output(const std::vector<float>& x) {
  auto u = store_.claim_unit(job_, "final.output");
  if (!u) return;
  const auto tr = store_.unit_metrics(job_, "trade");
  const engine::Weight* w = c_.model.find_weight("output.weight");
  json j = {{"tensor", "output.weight"}, {"trained", false}};
  const GgmlType type = w != nullptr && tr->at("types").contains("output.weight")
                            ? type_named(tr->at("types").at("output.weight").get<std::string>())
                            : GgmlType::F32;
  if (w == nullptr || !rounding_trainable(type) || w->quantized() || c_.s.output_epochs <= 0) {
    // Tied embeddings (the matrix is also the lookup table) or a plain-only type.
    store_.commit_result(u->id, j);
    return;
  }
  const Calibration& cal = *c_.calib;
  OutputData d;
  d.x_quant = x.data();
  d.x_ref = cal.acts[size_t(L_)].data();
  d.norm = c_.model.weight("output_norm.weight").f32.data();
  d.w_ref = w->f32.data();
  d.rows = cal.seqs * cal.n_ctx;
  d.dim = cal.dim;
  d.vocab = w->rows();
  d.eps = float(c_.model.config().rms_norm_eps);
  const std::vector<float> imp = importance_of(c_, "output.weight", w->cols());
  TrainableMatrix tm(type, w->f32.data(), w->rows(), w->cols(), or_null(imp));
  const TrainReport r = train_output(tm, d, c_.s.output_epochs, c_.s.train.attn.lr,
                                     c_.s.train.attn.lr * c_.s.train.scale_lr_factor);
  save_part(parts_dir(store_, job_), "output.weight", tm.blocks());
  save_params(parts_dir(store_, job_), "output.weight", tm);
  j["trained"] = true;
  j["type"] = std::string(type_name(type));
  j["train"] = r.to_json();
  j["kl_before"] = r.before;
  j["kl_after"] = r.after;
  store_.commit_result(u->id, j);
  report("final.output", fmt::format("{}: KL {:.4g} -> {:.4g} in {:.1f} s", type_name(type), r.before, r.after, r.seconds));
}

bool embedding_trained(jobs::JobStore& store, int64_t job) {
  const auto m = store.unit_metrics(job, "final.embedding");
  return m && m->value("trained", false);
}

// The trained token embedding's blocks (type t), as embedding training saved them.
std::vector<uint8_t> trained_embedding(jobs::JobStore& store, int64_t job, Context& c, GgmlType t) {
  const engine::Weight& e = c.model.weight("token_embd.weight");
  return load_part(parts_dir(store, job), "token_embd.weight", row_size(t, e.cols()) * size_t(e.rows()));
}

// Block 0's inputs as the written model computes them: the calibration
// embeddings with the token_embd rows in their chosen type, trained or plainly
// rounded. Only the rows of tokens in the sample are decoded (or quantized).
std::vector<float> quantized_embeddings(jobs::JobStore& store, int64_t job, Context& c, const Calibration& cal,
                                        const json& types) {
  std::vector<float> x = cal.acts[0];
  const engine::Weight& e = c.model.weight("token_embd.weight");
  if (!types.contains("token_embd.weight") || e.quantized()) return x;
  const GgmlType t = type_named(types.at("token_embd.weight").get<std::string>());
  const size_t row_bytes = row_size(t, e.cols());
  const std::vector<uint8_t> trained = embedding_trained(store, job) ? trained_embedding(store, job, c, t)
                                                                     : std::vector<uint8_t>{};
  const std::vector<float> imp = importance_of(c, "token_embd.weight", e.cols());
  std::vector<uint8_t> q(row_bytes);
  std::vector<float> row(size_t(e.cols()));
  std::map<int32_t, std::vector<float>> delta;  // token -> quantized row minus float row
  for (int64_t r = 0; r < cal.seqs * cal.n_ctx; ++r) {
    const int32_t tok = c.calib_tokens[size_t(r)];
    auto [it, fresh] = delta.try_emplace(tok);
    if (fresh) {
      const float* w = e.f32.data() + int64_t(tok) * e.cols();
      if (trained.empty()) quantize_rows(t, w, q.data(), 1, e.cols(), or_null(imp));
      dequantize_rows(t, trained.empty() ? q.data() : trained.data() + size_t(tok) * row_bytes, row.data(), 1, e.cols());
      it->second.resize(size_t(e.cols()));
      for (int64_t j = 0; j < e.cols(); ++j) it->second[size_t(j)] = row[size_t(j)] - w[j];
    }
    for (int64_t j = 0; j < cal.dim; ++j) x[size_t(r * cal.dim + j)] += it->second[size_t(j)];
  }
  return x;
}

// The job's quantized model as the final units left it: each block matrix
// and the output matrix trainable from its saved parameters when `trainable`
// and its type allows, else fixed at its saved blocks' decode. The head is
// set up to read `cal`'s final hidden states.
struct JobModel {
  QuantModel qm;
  std::vector<std::pair<std::string, std::unique_ptr<TrainableMatrix>>> trainees;
  std::deque<std::vector<float>> fixed;
};

std::unique_ptr<JobModel> job_model(jobs::JobStore& store, int64_t job, Context& c, const Calibration& cal,
                                    const json& types, bool trainable) {
  auto jm = std::make_unique<JobModel>();
  const std::string dir = parts_dir(store, job);
  auto load = [&](const std::string& n, const float** fixed_out) -> TrainableMatrix* {
    const engine::Weight& w = c.model.weight(n);
    const GgmlType t = type_named(types.at(n).get<std::string>());
    if (trainable && rounding_trainable(t) && !w.quantized()) {
      const std::vector<float> imp = importance_of(c, n, w.cols());
      auto tm = std::make_unique<TrainableMatrix>(t, w.f32.data(), w.rows(), w.cols(), or_null(imp));
      if (load_params(dir, n, *tm)) {
        jm->trainees.emplace_back(n, std::move(tm));
        return jm->trainees.back().second.get();
      }
    }
    jm->fixed.emplace_back(size_t(w.numel()));
    const size_t bytes = row_size(t, w.cols()) * size_t(w.rows());
    dequantize_rows(t, load_part(dir, n, bytes).data(), jm->fixed.back().data(), w.rows(), w.cols());
    *fixed_out = jm->fixed.back().data();
    return nullptr;
  };
  QuantModel& qm = jm->qm;
  qm.dims = block_dims(c.model);
  for (int64_t b = 0; b < c.model.num_layers(); ++b) {
    BlockParams p = block_params(c.model, b);
    std::array<TrainableMatrix*, kNumLin> t{};
    for (int i = 0; i < kNumLin; ++i) t[size_t(i)] = load(block_name(b, i), &p.w[size_t(i)]);
    qm.blocks.push_back(p);
    qm.train.push_back(t);
  }
  const engine::Weight& ow = c.model.weight("output.weight");
  qm.output = load("output.weight", &qm.output_fixed);
  qm.head.x_ref = cal.acts.back().data();
  qm.head.norm = c.model.weight("output_norm.weight").f32.data();
  qm.head.w_ref = ow.f32.data();
  qm.head.rows = cal.seqs * cal.n_ctx;
  qm.head.dim = cal.dim;
  qm.head.vocab = ow.rows();
  qm.head.eps = float(c.model.config().rms_norm_eps);
  return jm;
}

// True when the output matrix has its own trained part (not tied, not plain-only).
bool output_trained(jobs::JobStore& store, int64_t job, engine::Model& m) {
  const engine::Weight* ow = m.find_weight("output.weight");
  const auto u = store.unit_metrics(job, "final.output");
  return ow != nullptr && !ow->quantized() && u && u->value("trained", false);
}

// The unit `key` of the steps after the final blocks, claimed; none when it
// is done or the job is from before that unit existed. Throws on a stop request.
std::optional<jobs::Unit> Worker::claim_last(const std::string& key) {
  if (store_.unit_metrics(job_, key)) return std::nullopt;
  Outcome why;
  if (should_stop(why)) throw why;
  return store_.claim_unit(job_, key);
}

// Training on the model's KL divergence (e2e_trainer.h) as unit `key` runs it.
E2EOptions Worker::e2e_options(const std::string& key, int epochs, float lr, float norm_lr) {
  E2EOptions o;
  o.epochs = epochs;
  o.lr = lr;
  o.scale_lr_factor = c_.s.train.scale_lr_factor;
  o.batch = c_.s.train.batch;
  o.eval_sequences = c_.s.train.eval_sequences;
  o.norm_lr = norm_lr;
  o.stop = opt_.stop;
  o.progress = [this, key](int64_t step, int64_t steps, double) {
    if (opt_.on_steps) opt_.on_steps(key, step, steps);
  };
  return o;
}

// Trains; a stop request pauses the job (the unit runs again on resume).
E2EReport Worker::train_or_pause(QuantModel& qm, const Calibration& cal, const float* x0, const E2EOptions& o) {
  const E2EReport r = train_end_to_end(qm, x0, cal.seqs, cal.n_ctx, o);
  if (r.stopped) {
    store_.pause(job_);
    throw Outcome::Paused;
  }
  return r;
}

void Worker::embedding() {
  const auto u = claim_last("final.embedding");
  if (!u) return;
  json j = {{"tensor", "token_embd.weight"}, {"trained", false}};
  const json types = store_.unit_metrics(job_, "trade")->at("types");
  const engine::Weight* e = c_.model.find_weight("token_embd.weight");
  const GgmlType type = e != nullptr && types.contains("token_embd.weight")
                            ? type_named(types.at("token_embd.weight").get<std::string>())
                            : GgmlType::F32;
  if (c_.s.embd_epochs <= 0 || e == nullptr || e->quantized() || !rounding_trainable(type) ||
      !output_trained(store_, job_, c_.model)) {
    store_.commit_result(u->id, j);
    return;
  }
  // The embedding rows reach the output through every block, so they learn
  // from the model's KL divergence itself, all other matrices held at their
  // trained state. Its own sample, as end-to-end training has.
  c_.calib.reset();
  c_.channel_weights.clear();
  const int64_t samples = c_.s.e2e_samples > 0 ? c_.s.e2e_samples : 2 * c_.s.samples;
  say(opt_, fmt::format("token embedding: {} sequences of {} tokens through the unquantized model", samples, c_.s.n_ctx));
  const Calibration cal = collect_calibration(c_.model, c_.calib_tokens, c_.s.n_ctx, samples, true);
  const auto jm = job_model(store_, job_, c_, cal, types, false);
  const std::vector<float> imp = importance_of(c_, "token_embd.weight", e->cols());
  TrainableMatrix tm(type, e->f32.data(), e->rows(), e->cols(), or_null(imp));
  jm->qm.embedding = &tm;
  jm->qm.embedding_ref = e->f32.data();
  jm->qm.tokens = c_.calib_tokens.data();
  E2EOptions o = e2e_options("final.embedding", c_.s.embd_epochs, c_.s.embd_lr, 0.0f);
  o.decay = true;
  const E2EReport r = train_or_pause(jm->qm, cal, cal.acts[0].data(), o);
  save_part(parts_dir(store_, job_), "token_embd.weight", tm.blocks());
  j = r.to_json();
  j["tensor"] = "token_embd.weight";
  j["type"] = std::string(type_name(type));
  j["trained"] = true;
  store_.commit_result(u->id, j);
  report("final.embedding", fmt::format("{}: held-out KL {:.4g} -> {:.4g} in {} steps, {:.1f} s", type_name(type),
                                        r.before, r.after, r.steps, r.seconds));
}

void Worker::end_to_end() {
  const auto u = claim_last("end_to_end");
  if (!u) return;
  json j = {{"trained", false}};
  if (c_.s.e2e_epochs <= 0) {
    store_.commit_result(u->id, j);
    return;
  }
  if (!output_trained(store_, job_, c_.model)) {
    // Tied or untrained output matrix: the part is not there; nothing to train.
    j["problem"] = "the output matrix was not trained, so the head is not known here";
    store_.commit_result(u->id, j);
    return;
  }
  // Its own sample, as large as asked: every matrix learns from the whole
  // model's output, and with 512 sequences the training KL fell well below
  // the held-out one.
  c_.calib.reset();  // the blocks' activations are done with
  c_.channel_weights.clear();
  const int64_t samples = c_.s.e2e_samples > 0 ? c_.s.e2e_samples : 2 * c_.s.samples;
  say(opt_, fmt::format("end-to-end: {} sequences of {} tokens through the unquantized model", samples, c_.s.n_ctx));
  const Calibration cal = collect_calibration(c_.model, c_.calib_tokens, c_.s.n_ctx, samples, true);
  const json types = store_.unit_metrics(job_, "trade")->at("types");
  const std::string dir = parts_dir(store_, job_);
  const auto jm = job_model(store_, job_, c_, cal, types, true);
  QuantModel& qm = jm->qm;
  const auto& trainees = jm->trainees;
  const std::vector<float> x0 = quantized_embeddings(store_, job_, c_, cal, types);
  const E2EOptions o = e2e_options("end_to_end", c_.s.e2e_epochs, c_.s.e2e_lr, c_.s.e2e_norm_lr);
  say(opt_, fmt::format("end-to-end: {} matrices trained together on the model's KL divergence, {} epochs",
                        trainees.size(), o.epochs));
  const E2EReport r = train_or_pause(qm, cal, x0.data(), o);
  // Always written (the best iterate may be the start), so the parts agree
  // with each other; the .params stay as they were: a rerun starts over.
  for (const auto& [n, tm] : trainees) save_part(dir, n, tm->blocks());
  json norms = json::array();
  auto save_norm = [&](const std::string& n, const std::vector<float>& v) {
    std::vector<uint8_t> bytes(v.size() * sizeof(float));
    std::memcpy(bytes.data(), v.data(), bytes.size());
    save_part(dir, n, bytes);
    norms.push_back(n);
  };
  for (size_t b = 0; b < qm.norms.size(); ++b) {
    save_norm(fmt::format("blk.{}.attn_norm.weight", b), qm.norms[b][0]);
    save_norm(fmt::format("blk.{}.ffn_norm.weight", b), qm.norms[b][1]);
  }
  if (!qm.output_norm.empty()) save_norm("output_norm.weight", qm.output_norm);
  j = r.to_json();
  j["trained"] = true;
  j["matrices"] = trainees.size();
  j["norms"] = norms;
  store_.commit_result(u->id, j);
  report("end_to_end", fmt::format("held-out KL {:.4g} -> {:.4g} in {} steps, {:.1f} s", r.before, r.after,
                                   r.steps, r.seconds));
}

// The norm weights end-to-end training changed (F32 values in the job's
// folder), added to `types` and `blocks` for evaluation or writing.
void add_trained_norms(jobs::JobStore& store, int64_t job, engine::Model& model,
                       std::map<std::string, GgmlType>& types, std::map<std::string, std::vector<uint8_t>>& blocks) {
  const auto m = store.unit_metrics(job, "end_to_end");
  if (!m || !m->contains("norms")) return;
  const std::string dir = parts_dir(store, job);
  for (const json& n : m->at("norms")) {
    const std::string name = n.get<std::string>();
    blocks[name] = load_part(dir, name, size_t(model.weight(name).numel()) * sizeof(float));
    types[name] = GgmlType::F32;
  }
}

void Worker::validate() {
  auto u = store_.claim_unit(job_, "validate");
  if (!u) return;
  const auto tr = store_.unit_metrics(job_, "trade");
  plan::TypeMap types;
  for (const auto& [n, t] : tr->at("types").items()) types[n] = type_named(t.get<std::string>());
  plan::AssignmentEvaluator::Prequantized blocks;
  const std::string dir = parts_dir(store_, job_);
  for (int64_t b = 0; b < L_; ++b)
    for (int i = 0; i < kNumLin; ++i) {
      const std::string n = block_name(b, i);
      const engine::Weight& w = c_.model.weight(n);
      blocks[n] = load_part(dir, n, row_size(types.at(n), w.cols()) * size_t(w.rows()));
    }
  if (const auto o = store_.unit_metrics(job_, "final.output"); o && o->value("trained", false)) {
    const engine::Weight& w = c_.model.weight("output.weight");
    blocks["output.weight"] = load_part(dir, "output.weight", row_size(types.at("output.weight"), w.cols()) * size_t(w.rows()));
  }
  if (embedding_trained(store_, job_)) blocks["token_embd.weight"] = trained_embedding(store_, job_, c_, types.at("token_embd.weight"));
  add_trained_norms(store_, job_, c_.model, types, blocks);
  say(opt_, fmt::format("validation: {} windows of {} tokens of {}", c_.s.eval_windows, c_.s.eval_ctx,
                        c_.s.eval.empty() ? c_.s.text : c_.s.eval));
  plan::AssignmentEvaluator ev(c_.model, c_.eval_tokens, c_.s.eval_ctx, c_.s.eval_windows, &c_.imatrix);
  plan::AssignmentResult r = ev.evaluate(types, &blocks);
  json upgrades = json::array();
  // Upgrade selectively while the quality limit is violated: the tensor whose
  // next finer type buys the most predicted quality per byte, plainly rounded.
  if (c_.s.max_ppl_increase) {
    const plan::Plan p = budget_plan(c_);
    for (int round = 0; round < 6; ++round) {
      const double inc = 100.0 * (r.report.ppl.value - r.report.ppl_base.value) / r.report.ppl_base.value;
      if (inc <= *c_.s.max_ppl_increase) break;
      double best = 0;
      std::string pick;
      GgmlType to = GgmlType::F16;
      for (const plan::TensorOptions& t : p.options) {
        const GgmlType cur = types.at(t.name);
        const plan::TypeOption* now = nullptr;
        for (const auto& o : t.options) if (o.type == cur) now = &o;
        if (now == nullptr) continue;
        for (const auto& o : t.options) {
          if (o.bytes <= now->bytes || o.cost >= now->cost) continue;
          const double gain = (now->cost - o.cost) / double(o.bytes - now->bytes);
          if (gain > best) best = gain, pick = t.name, to = o.type;
        }
      }
      if (pick.empty()) break;
      upgrades.push_back(fmt::format("{}: {} -> {}", pick, type_name(types[pick]), type_name(to)));
      types[pick] = to;
      blocks.erase(pick);
      r = ev.evaluate(types, &blocks);
    }
  }
  plan::TypeMap plain;
  for (const auto& [n, t] : tr->at("plain_plan").items()) plain[n] = type_named(t.get<std::string>());
  const plan::AssignmentResult pr = ev.evaluate(plain);
  const double inc = 100.0 * (r.report.ppl.value - r.report.ppl_base.value) / r.report.ppl_base.value;
  json j = {{"kld", r.report.kld.value},
            {"kld_error", r.report.kld.error},
            {"ppl_base", r.report.ppl_base.value},
            {"ppl", r.report.ppl.value},
            {"ppl_increase", inc},
            {"same_top", r.report.same_top.value},
            {"bytes", r.bytes},
            {"bpw", r.bpw},
            {"upgrades", upgrades},
            {"types", json::object()},
            {"plain_plan", {{"kld", pr.report.kld.value}, {"kld_error", pr.report.kld.error},
                            {"ppl", pr.report.ppl.value}, {"bytes", pr.bytes}, {"bpw", pr.bpw}}}};
  if (c_.s.target_bytes) j["target_bytes"] = *c_.s.target_bytes;
  if (c_.s.max_ppl_increase) j["max_ppl_increase"] = *c_.s.max_ppl_increase;
  j["met"] = (!c_.s.max_ppl_increase || inc <= *c_.s.max_ppl_increase) &&
             (!c_.s.target_bytes || r.bytes <= *c_.s.target_bytes);
  for (const auto& [n, t] : types) j["types"][n] = std::string(type_name(t));
  store_.commit_result(u->id, j);
  report("validate", fmt::format("mean KLD {:.5f} (plain plan of the same size {:.5f}), PPL {:.3f} ({:+.2f}%), {:.2f} MiB",
                                 r.report.kld.value, pr.report.kld.value, r.report.ppl.value, inc,
                                 double(r.bytes) / (1 << 20)));
}

Outcome Worker::run() {
  store_.begin_work(job_);
  try {
    importance();
    blocks();
    trade();
    finals();
    embedding();
    end_to_end();
    validate();
  } catch (Outcome o) {
    return o;
  }
  return Outcome::Done;
}

// Writes the GGUF of a finished job: trained blocks for the block matrices
// the validation kept, plain rounding (with the imatrix) for the rest.
void write_output(jobs::JobStore& store, int64_t job, Context& c, const std::string& output) {
  const auto v = store.unit_metrics(job, "validate");
  if (!v) fail("gradual job {}: not validated yet", job);
  ConvertOptions co;
  co.input = c.model_path;
  co.output = output;
  for (const auto& [n, t] : v->at("types").items()) co.tensor_types[n] = type_named(t.get<std::string>());
  const auto tr = store.unit_metrics(job, "trade");
  const std::string dir = parts_dir(store, job);
  for (int64_t b = 0; b < c.model.num_layers(); ++b)
    for (int i = 0; i < kNumLin; ++i) {
      const std::string n = block_name(b, i);
      const GgmlType t = co.tensor_types.at(n);
      if (tr->at("types").at(n).get<std::string>() != type_name(t)) continue;  // upgraded by validation
      const engine::Weight& w = c.model.weight(n);
      co.tensor_blocks[n] = load_part(dir, n, row_size(t, w.cols()) * size_t(w.rows()));
    }
  if (const auto o = store.unit_metrics(job, "final.output"); o && o->value("trained", false) &&
                                                               tr->at("types").at("output.weight") == v->at("types").at("output.weight")) {
    const engine::Weight& w = c.model.weight("output.weight");
    co.tensor_blocks["output.weight"] =
        load_part(dir, "output.weight", row_size(co.tensor_types.at("output.weight"), w.cols()) * size_t(w.rows()));
  }
  if (embedding_trained(store, job) && tr->at("types").at("token_embd.weight") == v->at("types").at("token_embd.weight"))
    co.tensor_blocks["token_embd.weight"] = trained_embedding(store, job, c, co.tensor_types.at("token_embd.weight"));
  add_trained_norms(store, job, c.model, co.tensor_types, co.tensor_blocks);
  co.file_type = dominant_file_type(c.model_path, co.tensor_types);
  co.imatrix = &c.imatrix;
  convert_hf_to_gguf(co);
}

std::unique_ptr<Context> load_context(const std::string& model_path, const Settings& s, jobs::JobStore& store,
                                      const RunOptions& opt) {
  auto c = std::make_unique<Context>(Context{model_path, s, engine::Model::load(model_path)});
  const auto tok = eval::load_model_tokenizer(model_path);
  c->calib_tokens = eval::tokenize_text_file(*tok, s.text);
  c->eval_tokens = eval::tokenize_text_file(*tok, s.eval.empty() ? s.text : s.eval);
  if (int64_t(c->calib_tokens.size()) < s.n_ctx * s.train.batch)
    fail("{}: {} tokens, fewer than {} sequences of {}", s.text, c->calib_tokens.size(), s.train.batch, s.n_ctx);
  say(opt, "measurement: per-tensor costs for type trading (tailor measure, resumable)");
  measure::RunOptions mo;
  mo.log = opt.log;
  mo.stop = opt.stop;
  const measure::RunResult mr = measure::run_measure(store, model_path, s.measure, mo);
  if (mr.outcome != measure::Outcome::Done) throw Outcome::Paused;
  c->measurement = store.export_json(mr.job_id);
  if (auto im = measure::settings_imatrix(c->model, model_path, s.measure)) c->imatrix = std::move(*im);
  return c;
}

RunResult finish(jobs::JobStore& store, int64_t job, Context& c, Outcome o, double t0, const RunOptions& opt) {
  RunResult r;
  r.job_id = job;
  r.outcome = o;
  if (o == Outcome::Done) {
    if (!opt.output.empty()) {
      say(opt, "writing " + opt.output);
      write_output(store, job, c, opt.output);
    }
    r.report = store.export_json(job);
  }
  r.seconds = now_seconds() - t0;
  return r;
}

RunResult work(jobs::JobStore& store, int64_t job, const std::string& model_path, const Settings& s,
               const RunOptions& opt) {
  const double t0 = now_seconds();
  if (opt.on_job) opt.on_job(job);
  std::unique_ptr<Context> c;
  try {
    c = load_context(model_path, s, store, opt);
  } catch (Outcome o) {
    return RunResult{job, o, now_seconds() - t0, nullptr};
  }
  if (store.job(job).state == jobs::JobState::Done) return finish(store, job, *c, Outcome::Done, t0, opt);
  Worker w(store, job, *c, opt);
  Outcome o;
  try {
    o = w.run();
  } catch (const std::exception& e) {
    store.fail_job(job, e.what());
    throw;
  }
  return finish(store, job, *c, o, t0, opt);
}

}  // namespace

RunResult run_gradual(jobs::JobStore& store, const std::string& model_path, const Settings& settings,
                      const RunOptions& opt) {
  Settings s = settings;
  if (s.levels.empty()) s.levels = default_levels();
  if (s.eval.empty()) s.eval = s.text;
  if (s.measure.text.empty()) s.measure.text = s.text;
  if (s.measure.eval.empty()) s.measure.eval = s.text;  // decisions never see the eval text
  if (s.measure.types.empty())
    s.measure.types = measure::parse_types("Q8_0,Q6_K,Q5_K,Q4_K,IQ4_XS,Q3_K,IQ3_S,IQ3_XXS,Q2_K,IQ2_S,IQ2_XS");
  for (const std::string* f : {&s.text, &s.eval})
    if (!std::filesystem::is_regular_file(*f)) fail("{}: no such text file", *f);
  const ModelConfig cfg = load_model_config(model_path);
  if (cfg.is_moe()) fail("{}: gradual mode trains dense blocks only; {} has experts", model_path, cfg.model_type);
  jobs::JobSpec spec;
  spec.kind = "gradual";
  spec.model = jobs::local_model_ref(model_path);
  spec.settings = s.to_json();
  spec.units = unit_keys(cfg.num_layers);
  const int64_t job = store.create_job(spec);
  return work(store, job, model_path, s, opt);
}

RunResult resume_gradual(jobs::JobStore& store, int64_t job_id, const std::string& model_path,
                         const RunOptions& opt) {
  const auto [info, path] = jobs::job_to_resume(store, job_id, "gradual", model_path);
  return work(store, job_id, path, Settings::from_json(info.settings), opt);
}

}  // namespace tailor::gradual
