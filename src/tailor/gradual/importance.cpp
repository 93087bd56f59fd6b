#include "tailor/gradual/importance.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <random>
#include <utility>

#include "tailor/analysis/block_cache.h"
#include "tailor/quant/codec.h"
#include "tailor/util/error.h"

namespace tailor::gradual {
namespace {

// Tensors swapped into the model; the originals go back, last swapped first,
// when the guard leaves scope (normally or by an exception). They are moved,
// never copied, so the restored weights are the very same bytes.
class Swaps {
 public:
  explicit Swaps(engine::Model& m) : m_(m) {}
  ~Swaps() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) m_.swap_weight(it->first, std::move(it->second));
  }
  Swaps(const Swaps&) = delete;
  Swaps& operator=(const Swaps&) = delete;

  void put(const std::string& name, engine::Weight w) {
    engine::Weight old = m_.swap_weight(name, std::move(w));
    if (!find(name)) saved_.emplace_back(name, std::move(old));
  }
  // The tensor the model held before the first put() of `name`.
  const engine::Weight& original(const std::string& name) const {
    const engine::Weight* w = find(name);
    if (!w) fail("importance: {} was not swapped", name);
    return *w;
  }

 private:
  const engine::Weight* find(const std::string& name) const {
    for (const auto& [n, w] : saved_)
      if (n == name) return &w;
    return nullptr;
  }
  engine::Model& m_;
  std::vector<std::pair<std::string, engine::Weight>> saved_;
};

std::vector<float> values_of(const engine::Weight& w) {
  if (!w.quantized()) return w.f32;
  std::vector<float> v(size_t(w.numel()));
  dequantize_rows(w.type, w.blocks.data(), v.data(), w.rows(), w.cols());
  return v;
}

// A probe's tensor in f32: the forward pass runs it through the plain sgemm.
engine::Weight f32_like(const engine::Weight& w, std::vector<float> values) {
  engine::Weight out;
  out.shape = w.shape;
  out.type = GgmlType::F32;
  out.f32 = std::move(values);
  out.source = w.source;
  return out;
}

// Round-to-nearest without importance, kept as GGML blocks.
engine::Weight rounded(const engine::Weight& w, GgmlType type) {
  const std::vector<float> v = values_of(w);
  engine::Weight q;
  q.shape = w.shape;
  q.type = type;
  q.source = w.source;
  q.blocks.resize(row_size(type, w.cols()) * size_t(w.rows()));
  quantize_rows(type, v.data(), q.blocks.data(), w.rows(), w.cols(), nullptr);
  return q;
}

// FNV-1a: a seed per tensor that does not depend on the standard library.
uint64_t name_hash(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

engine::Weight noisy(const std::string& name, const engine::Weight& w, double sigma, uint64_t seed) {
  std::vector<float> v = values_of(w);
  double ss = 0;
  for (float x : v) ss += double(x) * x;
  const double std_dev = sigma * std::sqrt(ss / double(std::max<size_t>(1, v.size())));
  std::mt19937_64 rng(seed ^ name_hash(name));
  std::normal_distribution<double> dist(0.0, 1.0);
  for (float& x : v) x = float(double(x) + std_dev * dist(rng));
  return f32_like(w, std::move(v));
}

engine::Weight zeros_like(const engine::Weight& w) {
  return f32_like(w, std::vector<float>(size_t(w.numel()), 0.0f));
}

constexpr std::pair<int, GgmlType> kRtnLevels[] = {{8, GgmlType::Q8_0}, {4, GgmlType::Q4_K}, {2, GgmlType::Q2_K}};

// KLD per unit of relative output error: the median of the per-level ratios
// (robust to the one level where the relation bends, usually 2 bits).
double fit_gain(const BlockImportance& b) {
  std::vector<double> r;
  for (const auto& [bits, kld] : b.rtn_kld) {
    const auto e = b.rtn_err.find(bits);
    if (e != b.rtn_err.end() && e->second > 0 && kld > 0 && std::isfinite(kld / e->second))
      r.push_back(kld / e->second);
  }
  if (r.empty()) return 0;
  std::sort(r.begin(), r.end());
  const size_t n = r.size();
  return n % 2 ? r[n / 2] : 0.5 * (r[n / 2 - 1] + r[n / 2]);
}

// Shares summing to 1. A probe can measure ~0 or even a slightly negative
// change (an upgrade whose error happened to cancel another); such entries
// keep a small positive share (1e-3 of the largest) instead of none.
std::vector<double> normalized(const std::vector<double>& v) {
  std::vector<double> out(v.size(), v.empty() ? 0.0 : 1.0 / double(v.size()));
  double mx = 0;
  for (double x : v)
    if (std::isfinite(x)) mx = std::max(mx, x);
  if (mx <= 0) return out;
  double sum = 0;
  for (size_t i = 0; i < v.size(); ++i) sum += out[i] = std::isfinite(v[i]) ? std::max(v[i], 1e-3 * mx) : 1e-3 * mx;
  for (double& x : out) x /= sum;
  return out;
}

void normalize_methods(std::vector<MethodScores*> rows, const std::vector<const MethodScores*>& raws) {
  for (double MethodScores::*field : {&MethodScores::noise, &MethodScores::rtn, &MethodScores::disable, &MethodScores::upgrade}) {
    std::vector<double> v;
    for (const MethodScores* r : raws) v.push_back(r->*field);
    const std::vector<double> n = normalized(v);
    for (size_t i = 0; i < rows.size(); ++i) rows[i]->*field = n[i];
  }
}

double combined_of(const MethodScores& s, const ImportanceOptions& o) {
  const double wsum = o.w_rtn + o.w_upgrade + o.w_disable + o.w_noise;
  return (o.w_rtn * s.rtn + o.w_upgrade * s.upgrade + o.w_disable * s.disable + o.w_noise * s.noise) / wsum;
}

void check_options(const ImportanceOptions& o) {
  if (o.n_ctx < 2) fail("importance: n_ctx {} is below 2", o.n_ctx);
  if (o.windows < 1) fail("importance: {} windows asked, at least 1 needed", o.windows);
  if (o.top_k < 1) fail("importance: top_k {} is below 1", o.top_k);
  if (!(o.noise_sigma > 0) || !std::isfinite(o.noise_sigma))
    fail("importance: noise sigma {} is not a positive number", o.noise_sigma);
  for (double w : {o.w_rtn, o.w_upgrade, o.w_disable, o.w_noise})
    if (!(w >= 0) || !std::isfinite(w)) fail("importance: method weight {} is not a finite number >= 0", w);
  if (!(o.w_rtn + o.w_upgrade + o.w_disable + o.w_noise > 0)) fail("importance: the method weights sum to 0");
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::vector<std::string> block_matrices(const engine::Model& model, int64_t block) {
  const std::string prefix = "blk." + std::to_string(block) + ".";
  std::vector<std::string> out;
  for (const std::string& n : model.weight_names()) {
    if (!n.starts_with(prefix)) continue;
    const engine::Weight& w = model.weight(n);
    if (w.shape.size() == 2) out.push_back(n);
    if (w.shape.size() > 2) fail("importance: {} has {} dimensions; only dense blocks are supported", n, w.shape.size());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void combine_scores(Importance& imp) {
  check_options(imp.options);
  std::vector<MethodScores*> rows;
  std::vector<const MethodScores*> raws;
  for (BlockImportance& b : imp.blocks) rows.push_back(&b.s), raws.push_back(&b.raw);
  normalize_methods(rows, raws);
  rows.clear(), raws.clear();
  for (LayerImportance& l : imp.layers) rows.push_back(&l.s), raws.push_back(&l.raw);
  normalize_methods(rows, raws);
  for (BlockImportance& b : imp.blocks) b.s.combined = combined_of(b.s, imp.options);
  for (LayerImportance& l : imp.layers) l.s.combined = combined_of(l.s, imp.options);
}

Importance analyze_importance(engine::Model& model, const std::vector<int32_t>& tokens,
                              const ImportanceOptions& o, const ImportanceProgress& progress) {
  check_options(o);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n_blocks = model.num_layers();
  std::vector<std::vector<std::string>> mats(static_cast<size_t>(n_blocks));
  for (int64_t b = 0; b < n_blocks; ++b) {
    mats[size_t(b)] = block_matrices(model, b);
    if (mats[size_t(b)].empty()) fail("importance: block {} has no matrices", b);
    for (const std::string& m : mats[size_t(b)])
      if (model.weight(m).cols() % 256 != 0)
        fail("importance: {} has {} columns, not a multiple of 256 (Q4_K and Q2_K need that)", m,
             model.weight(m).cols());
  }

  analysis::BlockCache cache(model, tokens,
                             {.n_ctx = o.n_ctx, .max_windows = o.windows, .top_k = o.top_k});
  Importance imp;
  imp.options = o;
  imp.options.windows = cache.windows();  // fewer when the tokens or memory hold fewer

  int64_t total = 1, done = 0;  // 1: the Q4_K baseline
  for (const auto& m : mats) total += int64_t(1 + (o.layers ? m.size() : 0)) * 6;  // noise, 3 rtn, disable, upgrade
  const auto tick = [&](const char* step) {
    ++done;
    if (progress) progress(step, done, total);
  };
  const auto kld = [](const analysis::EndToEnd& e) { return e.kld.value; };
  const auto original = [&](const std::string& name) -> const engine::Weight& { return model.weight(name); };

  // Block and layer probes of one method: `make` builds the replacement of a
  // matrix; the block probe swaps all of them, each layer probe one.
  const auto probe = [&](int64_t b, const char* step, const std::function<engine::Weight(const std::string&)>& make,
                         const std::function<double()>& measure_block, double MethodScores::*field,
                         BlockImportance& bi, size_t first_layer) {
    std::vector<engine::Weight> repl;
    for (const std::string& m : mats[size_t(b)]) repl.push_back(make(m));
    {
      Swaps s(model);
      for (size_t k = 0; k < repl.size(); ++k) s.put(mats[size_t(b)][k], repl[k]);
      bi.raw.*field = measure_block();
    }
    tick(step);
    if (!o.layers) return;
    for (size_t k = 0; k < repl.size(); ++k) {
      Swaps s(model);
      s.put(mats[size_t(b)][k], std::move(repl[k]));
      imp.layers[first_layer + k].raw.*field = kld(cache.measure_from(b));
      tick(step);
    }
  };

  // The Q4_K matrices for the baseline, kept as blocks (~0.56 bytes a weight)
  // until they are decoded into the model.
  std::map<std::string, engine::Weight> q4;
  for (int64_t b = 0; b < n_blocks; ++b) {
    BlockImportance& bi = imp.blocks.emplace_back();
    bi.block = b;
    const size_t first_layer = imp.layers.size();
    if (o.layers)
      for (const std::string& m : mats[size_t(b)]) imp.layers.push_back({.name = m, .block = b, .raw = {}, .s = {}});

    probe(b, "noise", [&](const std::string& m) { return noisy(m, original(m), o.noise_sigma, o.seed); },
          [&] { return kld(cache.measure_from(b)); }, &MethodScores::noise, bi, first_layer);

    std::vector<double> layer_rtn(mats[size_t(b)].size(), 0.0);
    for (const auto& [bits, type] : kRtnLevels) {
      const GgmlType t = type;
      const int nbits = bits;
      // The block output's error, accumulated over the windows as block b runs.
      double err = 0, ref = 0;
      const auto measure_block = [&] {
        const int64_t dim = model.config().hidden_size;
        const auto after = [&](int64_t first, int64_t block, const engine::Hidden& h) {
          if (block != b) return;
          for (size_t s = 0; s < h.lengths.size(); ++s) {
            const std::vector<float>& y = cache.block_input(first + int64_t(s), b + 1);
            const float* yq = h.data.data() + h.offset(s) * dim;
            for (size_t i = 0; i < y.size(); ++i) {
              const double d = double(yq[i]) - y[i];
              err += d * d, ref += double(y[i]) * y[i];
            }
          }
        };
        return kld(cache.measure_from(b, -1, -1, {}, after));
      };
      probe(b, "rtn", [&](const std::string& m) {
              engine::Weight q = rounded(original(m), t);
              engine::Weight w = f32_like(q, values_of(q));
              if (nbits == 4) q4[m] = std::move(q);
              return w;
            }, measure_block, &MethodScores::rtn, bi, first_layer);
      bi.rtn_kld[nbits] = bi.raw.rtn;
      bi.rtn_err[nbits] = ref > 0 ? err / ref : 0;
      if (o.layers)
        for (size_t k = 0; k < layer_rtn.size(); ++k) layer_rtn[k] += imp.layers[first_layer + k].raw.rtn;
    }
    double mean = 0;
    for (const auto& [bits, v] : bi.rtn_kld) mean += v / double(bi.rtn_kld.size());
    bi.raw.rtn = mean;
    if (o.layers)
      for (size_t k = 0; k < layer_rtn.size(); ++k)
        imp.layers[first_layer + k].raw.rtn = layer_rtn[k] / double(std::size(kRtnLevels));
    bi.gain = fit_gain(bi);

    // Disable: the block skipped (run from its own cached input at the next
    // block); a layer zeroed.
    probe(b, "disable", [&](const std::string& m) { return zeros_like(original(m)); },
          [&] { return kld(cache.measure_from(b + 1, b)); }, &MethodScores::disable, bi, first_layer);
  }

  // Upgrade: everything at Q4_K; the baseline's own residual stream at every
  // block input is kept, so an upgraded block re-runs only from there.
  {
    Swaps base(model);
    for (auto& [name, q] : q4) {
      engine::Weight w = f32_like(q, values_of(q));
      q = {};
      base.put(name, std::move(w));
    }
    q4.clear();
    const int64_t n_win = cache.windows(), dim = model.config().hidden_size;
    std::vector<std::vector<std::vector<float>>> base_in(static_cast<size_t>(n_blocks));  // [block][window]
    for (auto& v : base_in) v.resize(size_t(n_win));
    const auto capture = [&](int64_t first, int64_t block, const engine::Hidden& h) {
      if (block + 1 >= n_blocks) return;
      for (size_t s = 0; s < h.lengths.size(); ++s) {
        const float* p = h.data.data() + h.offset(s) * dim;
        base_in[size_t(block + 1)][size_t(first) + s].assign(p, p + h.lengths[s] * dim);
      }
    };
    imp.baseline4_kld = kld(cache.measure_from(0, -1, -1, {}, capture));
    tick("upgrade");
    for (int64_t b = 0; b < n_blocks; ++b) {
      // Block 0's input is the embedding, which no probe changes.
      const analysis::BlockCache::InputFn from_base = [&, b](int64_t w) -> const std::vector<float>& {
        return b == 0 ? cache.block_input(w, 0) : base_in[size_t(b)][size_t(w)];
      };
      BlockImportance& bi = imp.blocks[size_t(b)];
      {
        Swaps up(model);
        for (const std::string& m : mats[size_t(b)]) up.put(m, base.original(m));
        bi.raw.upgrade = imp.baseline4_kld - kld(cache.measure_from(b, -1, -1, from_base));
      }
      tick("upgrade");
      if (!o.layers) continue;
      for (LayerImportance& l : imp.layers) {
        if (l.block != b) continue;
        Swaps up(model);
        up.put(l.name, base.original(l.name));
        l.raw.upgrade = imp.baseline4_kld - kld(cache.measure_from(b, -1, -1, from_base));
        tick("upgrade");
      }
    }
  }

  combine_scores(imp);
  imp.seconds = seconds_since(t0);
  return imp;
}

std::vector<double> block_kld_budgets(const Importance& imp, double total_kld_budget, double safety) {
  if (imp.blocks.empty()) fail("importance: no blocks to share a budget among");
  if (!(total_kld_budget > 0) || !std::isfinite(total_kld_budget))
    fail("importance: KLD budget {} is not a positive number", total_kld_budget);
  if (!(safety > 0) || !std::isfinite(safety)) fail("importance: safety factor {} is not a positive number", safety);
  std::vector<double> inv;
  double sum = 0;
  for (const BlockImportance& b : imp.blocks) {
    if (!(b.s.combined > 0) || !std::isfinite(b.s.combined))
      fail("importance: block {} has combined importance {}; expected > 0", b.block, b.s.combined);
    sum += inv.emplace_back(1.0 / b.s.combined);
  }
  for (double& x : inv) x = x / sum * total_kld_budget / safety;
  return inv;
}

std::vector<double> block_thresholds(const Importance& imp, double total_kld_budget, double safety) {
  const std::vector<double> kld = block_kld_budgets(imp, total_kld_budget, safety);
  // Blocks without a usable gain (no positive RTN error) borrow the median of the others'.
  std::vector<double> gains;
  for (const BlockImportance& b : imp.blocks)
    if (b.gain > 0 && std::isfinite(b.gain)) gains.push_back(b.gain);
  if (gains.empty()) fail("importance: no block has a measured KLD gain");
  std::sort(gains.begin(), gains.end());
  const double fallback = gains[gains.size() / 2];
  std::vector<double> out(kld.size());
  for (size_t i = 0; i < kld.size(); ++i) {
    const double g = imp.blocks[i].gain;
    out[i] = kld[i] / (g > 0 && std::isfinite(g) ? g : fallback);
  }
  return out;
}

// --- JSON ------------------------------------------------------------------

namespace {

nlohmann::json scores_json(const MethodScores& s) {
  return {{"noise", s.noise}, {"rtn", s.rtn}, {"disable", s.disable}, {"upgrade", s.upgrade}, {"combined", s.combined}};
}

MethodScores scores_from(const nlohmann::json& j) {
  MethodScores s;
  s.noise = j.at("noise").get<double>();
  s.rtn = j.at("rtn").get<double>();
  s.disable = j.at("disable").get<double>();
  s.upgrade = j.at("upgrade").get<double>();
  s.combined = j.at("combined").get<double>();
  return s;
}

nlohmann::json by_bits_json(const std::map<int, double>& m) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [bits, v] : m) j[std::to_string(bits)] = v;
  return j;
}

}  // namespace

nlohmann::json importance_options_json(const ImportanceOptions& o) {
  return {{"n_ctx", o.n_ctx}, {"windows", o.windows}, {"top_k", o.top_k}, {"noise_sigma", o.noise_sigma},
          {"w_rtn", o.w_rtn}, {"w_upgrade", o.w_upgrade}, {"w_disable", o.w_disable}, {"w_noise", o.w_noise},
          {"seed", o.seed}, {"layers", o.layers}};
}

ImportanceOptions importance_options_from_json(const nlohmann::json& o) {
  ImportanceOptions io;
  io.n_ctx = o.at("n_ctx").get<int64_t>();
  io.windows = o.at("windows").get<int64_t>();
  io.top_k = o.at("top_k").get<int64_t>();
  io.noise_sigma = o.at("noise_sigma").get<double>();
  io.w_rtn = o.at("w_rtn").get<double>();
  io.w_upgrade = o.at("w_upgrade").get<double>();
  io.w_disable = o.at("w_disable").get<double>();
  io.w_noise = o.at("w_noise").get<double>();
  io.seed = o.at("seed").get<uint64_t>();
  io.layers = o.at("layers").get<bool>();
  return io;
}

nlohmann::json Importance::to_json() const {
  nlohmann::json j;
  j["version"] = 1;
  j["options"] = importance_options_json(options);
  j["baseline4_kld"] = baseline4_kld;
  j["seconds"] = seconds;
  j["blocks"] = nlohmann::json::array();
  for (const BlockImportance& b : blocks)
    j["blocks"].push_back({{"block", b.block}, {"raw", scores_json(b.raw)}, {"s", scores_json(b.s)},
                           {"rtn_kld", by_bits_json(b.rtn_kld)}, {"rtn_err", by_bits_json(b.rtn_err)},
                           {"gain", b.gain}});
  j["layers"] = nlohmann::json::array();
  for (const LayerImportance& l : layers)
    j["layers"].push_back({{"name", l.name}, {"block", l.block}, {"raw", scores_json(l.raw)}, {"s", scores_json(l.s)}});
  return j;
}

Importance Importance::from_json(const nlohmann::json& j) {
  try {
    if (j.at("version").get<int>() != 1) fail("importance json: version {} is not 1", j.at("version").dump());
    Importance imp;
    imp.options = importance_options_from_json(j.at("options"));
    imp.baseline4_kld = j.at("baseline4_kld").get<double>();
    imp.seconds = j.at("seconds").get<double>();
    const auto bits_map = [](const nlohmann::json& m) {
      std::map<int, double> out;
      for (const auto& [k, v] : m.items()) {
        int bits = 0;
        const auto [end, ec] = std::from_chars(k.data(), k.data() + k.size(), bits);
        if (ec != std::errc() || end != k.data() + k.size() || k.empty())
          fail("importance json: bit level '{}' is not a number", k);
        out[bits] = v.get<double>();
      }
      return out;
    };
    for (const nlohmann::json& b : j.at("blocks")) {
      BlockImportance& bi = imp.blocks.emplace_back();
      bi.block = b.at("block").get<int64_t>();
      bi.raw = scores_from(b.at("raw"));
      bi.s = scores_from(b.at("s"));
      bi.rtn_kld = bits_map(b.at("rtn_kld"));
      bi.rtn_err = bits_map(b.at("rtn_err"));
      bi.gain = b.at("gain").get<double>();
    }
    for (const nlohmann::json& l : j.at("layers"))
      imp.layers.push_back({.name = l.at("name").get<std::string>(), .block = l.at("block").get<int64_t>(),
                            .raw = scores_from(l.at("raw")), .s = scores_from(l.at("s"))});
    return imp;
  } catch (const nlohmann::json::exception& e) {
    fail("importance json: {}", e.what());
  }
}

}  // namespace tailor::gradual
