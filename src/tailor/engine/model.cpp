// Loading a Model from a Hugging Face folder or a GGUF file into one naming
// (GGUF names, HF row order), and checking every tensor against the
// hyperparameters before the forward pass may touch it.
#include <algorithm>
#include <filesystem>
#include <numeric>
#include <optional>

#include "tailor/engine/model_state.h"
#include "tailor/formats/gguf.h"
#include "tailor/formats/safetensors.h"
#include "tailor/model/gguf_names.h"
#include "tailor/quant/codec.h"
#include "tailor/util/error.h"
#include "tailor/util/fp16.h"
#include "tailor/util/mapped_file.h"

namespace tailor::engine {
namespace {

namespace fs = std::filesystem;

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Rope frequencies for an HF config: plain, linear or llama3 scaling as
// transformers computes them; other scalings change results and are refused.
std::vector<double> hf_inv_freq(const ModelConfig& c, const std::string& src) {
  RopeScaling s;
  const tailor::RopeScaling& rs = c.rope_scaling;
  if (rs.type == "linear") {
    s.kind = RopeScaling::Kind::Linear;
    s.factor = rs.factor;
  } else if (rs.type == "llama3") {
    s.kind = RopeScaling::Kind::Llama3;
    s.factor = rs.factor;
    s.low_freq_factor = rs.low_freq_factor;
    s.high_freq_factor = rs.high_freq_factor;
    s.original_max_position = static_cast<double>(rs.original_max_positions);
  } else if (rs.type != "none") {
    fail("{}: rope scaling '{}' is not supported by the engine (none, linear, llama3)", src,
         rs.type);
  }
  return rope_inv_freq(c.head_dim, c.rope_theta, s);
}

void round_freqs_to_bf16(std::vector<double>& inv_freq) {
  for (double& f : inv_freq) f = bf16_to_fp32(fp32_to_bf16(static_cast<float>(f)));
}

// Stable index vector for a q/k row permutation: entry i is the GGUF row that
// holds HF row i. Built by running the float permutation on row numbers, so
// the row order is defined in one place (gguf_names) for floats and blocks.
std::vector<int64_t> hf_row_sources(int64_t rows, int64_t n_head) {
  std::vector<float> idx(static_cast<size_t>(rows));
  std::iota(idx.begin(), idx.end(), 0.0f);
  unpermute_qk_rows(idx.data(), rows, 1, n_head);
  return std::vector<int64_t>(idx.begin(), idx.end());
}

void unpermute_weight(Weight& w, int64_t n_head) {
  const int64_t rows = w.rows(), cols = w.cols();
  if (!w.quantized()) {
    unpermute_qk_rows(w.f32.data(), rows, cols, n_head);
    return;
  }
  const std::vector<int64_t> src = hf_row_sources(rows, n_head);
  const size_t rb = row_size(w.type, cols);
  std::vector<uint8_t> out(w.blocks.size());
  for (int64_t r = 0; r < rows; ++r)
    std::copy_n(w.blocks.data() + src[r] * rb, rb, out.data() + r * rb);
  w.blocks = std::move(out);
}

// ---- GGUF ---------------------------------------------------------------

class GgufKeys {
 public:
  GgufKeys(const GgufFile& g, std::string arch) : g_(g), arch_(std::move(arch)) {}

  std::optional<int64_t> opt_int(const std::string& key, int64_t lo, int64_t hi) const {
    const GgufValue* v = g_.find(arch_ + "." + key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_integer()) fail("{}: key {}.{} is not an integer", g_.path(), arch_, key);
    const int64_t x = v->as_int();
    if (x < lo || x > hi)
      fail("{}: key {}.{} = {} is outside {}..{}", g_.path(), arch_, key, x, lo, hi);
    return x;
  }
  int64_t req_int(const std::string& key, int64_t lo, int64_t hi) const {
    auto x = opt_int(key, lo, hi);
    if (!x) fail("{}: missing key {}.{}", g_.path(), arch_, key);
    return *x;
  }
  std::optional<double> opt_float(const std::string& key) const {
    const GgufValue* v = g_.find(arch_ + "." + key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_float() && !v->is_integer())
      fail("{}: key {}.{} is not a number", g_.path(), arch_, key);
    return v->as_float();
  }
  const GgufValue* find(const std::string& key) const { return g_.find(arch_ + "." + key); }

 private:
  const GgufFile& g_;
  std::string arch_;
};

ModelFamily family_of_gguf(const GgufFile& g, const std::string& arch) {
  if (arch == "llama") {
    const GgufValue* e = g.find("llama.expert_count");
    return e != nullptr && e->is_integer() && e->as_int() > 0 ? ModelFamily::Mixtral
                                                               : ModelFamily::Llama;
  }
  if (arch == "qwen2") return ModelFamily::Qwen2;
  if (arch == "qwen3") return ModelFamily::Qwen3;
  if (arch == "qwen2moe") return ModelFamily::Qwen2Moe;
  if (arch == "qwen3moe") return ModelFamily::Qwen3Moe;
  fail("{}: architecture '{}' is not supported by the engine (llama, qwen2, qwen3, qwen2moe, "
       "qwen3moe)", g.path(), arch);
}

ModelConfig gguf_config(const GgufFile& g, std::vector<double>& inv_freq) {
  const GgufValue* a = g.find("general.architecture");
  if (a == nullptr || a->type != GgufType::STRING)
    fail("{}: missing string key general.architecture", g.path());
  const std::string arch = a->as_string();
  const GgufKeys k(g, arch);
  constexpr int64_t kMaxDim = 1 << 20;
  ModelConfig c;
  c.family = family_of_gguf(g, arch);
  c.model_type = family_name(c.family);
  c.hidden_size = k.req_int("embedding_length", 1, kMaxDim);
  c.num_layers = k.req_int("block_count", 1, 1 << 12);
  c.num_heads = k.req_int("attention.head_count", 1, 1 << 12);
  c.num_kv_heads = k.opt_int("attention.head_count_kv", 1, c.num_heads).value_or(c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0)
    fail("{}: {} attention heads do not split into {} kv heads", g.path(), c.num_heads,
         c.num_kv_heads);
  if (auto kl = k.opt_int("attention.key_length", 2, 1 << 16)) {
    c.head_dim = *kl;
    c.head_dim_explicit = true;
    if (auto vl = k.opt_int("attention.value_length", 1, 1 << 16); vl && *vl != *kl)
      fail("{}: key_length {} differs from value_length {}", g.path(), *kl, *vl);
  } else {
    if (c.hidden_size % c.num_heads != 0)
      fail("{}: embedding_length {} is not a multiple of {} heads", g.path(), c.hidden_size,
           c.num_heads);
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.intermediate_size = k.opt_int("feed_forward_length", 0, kMaxDim).value_or(0);
  c.max_positions = k.opt_int("context_length", 0, int64_t{1} << 31).value_or(0);
  auto eps = k.opt_float("attention.layer_norm_rms_epsilon");
  if (!eps || !(*eps > 0 && *eps < 1))
    fail("{}: key {}.attention.layer_norm_rms_epsilon is missing or outside (0, 1)", g.path(), arch);
  c.rms_norm_eps = *eps;
  c.rope_theta = k.opt_float("rope.freq_base").value_or(10000.0);
  if (!(c.rope_theta > 0)) fail("{}: rope.freq_base {} is not positive", g.path(), c.rope_theta);
  const int64_t rot = k.opt_int("rope.dimension_count", 2, c.head_dim).value_or(c.head_dim);
  if (rot % 2 != 0) fail("{}: rope.dimension_count {} is odd", g.path(), rot);

  RopeScaling s;
  if (const GgufValue* t = k.find("rope.scaling.type")) {
    const std::string type = t->type == GgufType::STRING ? t->as_string() : "?";
    if (type == "linear") {
      s.kind = RopeScaling::Kind::Linear;
      s.factor = k.opt_float("rope.scaling.factor").value_or(1.0);
      c.rope_scaling.type = "linear";
      c.rope_scaling.factor = s.factor;
    } else if (type != "none") {
      fail("{}: rope scaling '{}' is not supported by the engine (none, linear, rope_freqs)",
           g.path(), type);
    }
  }
  inv_freq = rope_inv_freq(rot, c.rope_theta, s);
  // llama3 scaling travels as per-frequency divisors in rope_freqs.weight.
  if (const GgufTensorInfo* f = g.find_tensor("rope_freqs.weight")) {
    if (f->type != GgmlType::F32 || f->numel() != rot / 2)
      fail("{}: rope_freqs.weight must be F32 with {} values", g.path(), rot / 2);
    const float* div = reinterpret_cast<const float*>(f->data);
    for (int64_t i = 0; i < rot / 2; ++i) {
      if (!(div[i] > 0)) fail("{}: rope_freqs.weight[{}] = {} is not positive", g.path(), i, div[i]);
      inv_freq[i] /= div[i];
    }
  }

  if (c.family == ModelFamily::Mixtral || c.family == ModelFamily::Qwen2Moe ||
      c.family == ModelFamily::Qwen3Moe) {
    c.num_experts = k.req_int("expert_count", 1, 1 << 16);
    c.num_experts_used = k.req_int("expert_used_count", 1, c.num_experts);
    c.moe_intermediate_size = k.opt_int("expert_feed_forward_length", 1, kMaxDim).value_or(0);
    c.shared_expert_intermediate_size =
        k.opt_int("expert_shared_feed_forward_length", 1, kMaxDim).value_or(0);
    // What llama.cpp does per architecture, unless the file says otherwise.
    c.norm_topk_prob = c.family != ModelFamily::Qwen2Moe;
    if (const GgufValue* n = k.find("expert_weights_norm"); n && n->type == GgufType::BOOL)
      c.norm_topk_prob = n->as_bool();
  }
  c.qk_norm = g.find_tensor("blk.0.attn_q_norm.weight") != nullptr;
  c.attention_bias = g.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.tie_word_embeddings = g.find_tensor("output.weight") == nullptr;
  const GgufTensorInfo* emb = g.find_tensor("token_embd.weight");
  if (emb == nullptr || emb->ne.size() != 2)
    fail("{}: missing 2-D tensor token_embd.weight", g.path());
  c.vocab_size = emb->ne[1];
  return c;
}

Weight gguf_weight(const GgufFile& g, const GgufTensorInfo& t, bool dequantize) {
  Weight w;
  w.shape.assign(t.ne.rbegin(), t.ne.rend());
  const int64_t cols = w.cols(), rows = w.rows();
  if (!row_fits(t.type, cols) || t.nbytes != row_size(t.type, cols) * static_cast<size_t>(rows))
    fail("{}: tensor {} of type {} does not hold {} rows of {}", g.path(), t.name,
         type_name(t.type), rows, cols);
  if (t.type == GgmlType::F32) {
    w.f32.resize(static_cast<size_t>(t.numel()));
    std::copy_n(t.data, w.f32.size() * sizeof(float), reinterpret_cast<uint8_t*>(w.f32.data()));
    return w;
  }
  const TypeInfo* ti = find_type(static_cast<uint32_t>(t.type));
  if (ti == nullptr || !ti->can_dequantize)
    fail("{}: tensor {} has type {} which Tailor cannot decode", g.path(), t.name,
         ti ? ti->name : std::string_view("?"));
  if (dequantize || w.shape.size() == 1) {
    w.f32.resize(static_cast<size_t>(t.numel()));
    dequantize_rows(t.type, t.data, w.f32.data(), rows, cols);
    w.source = t.type;
  } else {
    w.type = t.type;
    w.blocks.assign(t.data, t.data + t.nbytes);
  }
  return w;
}

}  // namespace

int64_t Weight::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return shape.empty() ? 0 : n;
}

int64_t Hidden::rows() const { return std::accumulate(lengths.begin(), lengths.end(), int64_t{0}); }

int64_t Hidden::offset(size_t seq) const {
  return std::accumulate(lengths.begin(), lengths.begin() + static_cast<std::ptrdiff_t>(seq),
                         int64_t{0});
}

Model::Model(std::unique_ptr<State> s) : s_(std::move(s)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& path, const LoadOptions& options) {
  if (fs::is_regular_file(path) && fs::path(path).extension() == ".gguf") return load_gguf(path, options);
  if (fs::is_directory(path)) return load_hf(path, options);
  fail("{}: not a .gguf file or a Hugging Face model folder", path);
}

Model Model::load_hf(const std::string& folder, const LoadOptions& options) {
  auto s = std::make_unique<State>();
  s->cfg = load_model_config(folder);
  const ModelConfig& c = s->cfg;
  s->inv_freq = hf_inv_freq(c, folder);
  if (options.bf16_rope_freqs) round_freqs_to_bf16(s->inv_freq);
  const Safetensors st = Safetensors::open(folder);
  std::map<std::string, int64_t> experts_seen;
  for (const StTensor& t : st.tensors()) {
    if (is_ignored_hf_tensor(t.name)) continue;
    auto m = map_hf_tensor(t.name, c);
    if (!m) fail("{}: tensor '{}' is not part of a {} model", t.file, t.name, family_name(c.family));
    if (t.shape.empty() || t.shape.size() > 2 || t.numel() <= 0)
      fail("{}: tensor '{}' has shape {}; expected 1 or 2 non-empty dimensions", t.file, t.name,
           shape_str(t.shape));
    Weight& w = s->weights[m->name];
    if (m->expert < 0) {
      if (!w.shape.empty()) fail("{}: tensor '{}' appears twice", t.file, t.name);
      w.shape = t.shape;
      w.f32.resize(static_cast<size_t>(t.numel()));
      Safetensors::to_f32(t, w.f32.data());
      drop_mapped_pages(t.data, t.nbytes);
      continue;
    }
    // Per-expert matrices stack into [experts, out, in] in expert order.
    std::vector<int64_t> shape{c.num_experts};
    shape.insert(shape.end(), t.shape.begin(), t.shape.end());
    if (w.shape.empty()) {
      w.shape = shape;
      w.f32.resize(static_cast<size_t>(w.numel()));
    } else if (w.shape != shape) {
      fail("{}: tensor '{}' has shape {} unlike the other experts' {}", t.file, t.name,
           shape_str(t.shape), shape_str({w.shape.begin() + 1, w.shape.end()}));
    }
    Safetensors::to_f32(t, w.f32.data() + m->expert * t.numel());
    drop_mapped_pages(t.data, t.nbytes);
    ++experts_seen[m->name];
  }
  for (const auto& [name, n] : experts_seen)
    if (n != c.num_experts)
      fail("{}: {} holds {} of {} experts", folder, name, n, c.num_experts);
  s->backend = make_cpu_backend(options.cpu);
  s->emulate_activations = options.emulate_ggml_activations;
  s->bind();
  return Model(std::move(s));
}

Model Model::load_gguf(const std::string& path, const LoadOptions& options) {
  const GgufFile g = GgufFile::open(path);
  auto s = std::make_unique<State>();
  s->cfg = gguf_config(g, s->inv_freq);
  if (options.bf16_rope_freqs) round_freqs_to_bf16(s->inv_freq);
  const ModelConfig& c = s->cfg;
  const bool permuted = family_permutes_qk(c.family);
  for (const GgufTensorInfo& t : g.tensors()) {
    if (t.name == "rope_freqs.weight") continue;  // folded into inv_freq
    const bool merged = is_merged_experts(t.name);
    if (!gguf_to_hf_name(t.name, c, merged ? 0 : -1))
      fail("{}: tensor '{}' is not part of a {} model with {} layers", path, t.name,
           family_name(c.family), c.num_layers);
    if (t.numel() <= 0) fail("{}: tensor '{}' is empty", path, t.name);
    Weight w = gguf_weight(g, t, options.dequantize);
    // The shared-expert gate is a [1, hidden] Linear stored as a vector.
    if (t.name.ends_with("ffn_gate_inp_shexp.weight") && w.shape.size() == 1)
      w.shape.insert(w.shape.begin(), 1);
    const bool is_q = t.name.ends_with(".attn_q.weight") || t.name.ends_with(".attn_q.bias");
    const bool is_k = t.name.ends_with(".attn_k.weight") || t.name.ends_with(".attn_k.bias");
    if (permuted && (is_q || is_k)) {
      const int64_t heads = is_q ? c.num_heads : c.num_kv_heads;
      if (w.rows() != heads * c.head_dim)
        fail("{}: tensor '{}' has {} rows, expected {} heads of {}", path, t.name, w.rows(), heads,
             c.head_dim);
      if (w.shape.size() == 1) w.shape = {w.shape[0], 1};  // a bias permutes as rows of one
      unpermute_weight(w, heads);
      if (w.shape.back() == 1 && t.ne.size() == 1) w.shape = {w.shape[0]};
    }
    s->weights.emplace(t.name, std::move(w));
  }
  s->backend = make_cpu_backend(options.cpu);
  s->emulate_activations = options.emulate_ggml_activations;
  s->bind();
  return Model(std::move(s));
}

void Model::State::bind() {
  const ModelConfig& c = cfg;
  const std::string fam = family_name(c.family);
  const int64_t d = c.hidden_size, hd = c.head_dim;
  std::map<std::string, bool> used;
  for (const auto& kv : weights) used[kv.first] = false;

  auto check = [&](const std::string& name, Weight& w, std::vector<int64_t> want) {
    if (w.shape != want)
      fail("{} model: tensor {} has shape {}, expected {}", fam, name, shape_str(w.shape),
           shape_str(want));
    if (w.quantized()) {
      if (want.size() == 1) fail("{} model: vector {} must be F32", fam, name);
      const TypeInfo* ti = find_type(static_cast<uint32_t>(w.type));
      if (ti == nullptr || !ti->can_dequantize || !row_fits(w.type, w.cols()) ||
          w.blocks.size() != row_size(w.type, w.cols()) * static_cast<size_t>(w.rows()))
        fail("{} model: tensor {} does not hold {} rows of {}", fam, name, w.rows(),
             ti ? ti->name : std::string_view("?"));
    } else if (w.f32.size() != static_cast<size_t>(w.numel())) {
      fail("{} model: tensor {} holds {} values, expected {}", fam, name, w.f32.size(), w.numel());
    }
  };
  auto get = [&](const std::string& name, bool required) -> std::pair<const std::string*, Weight*> {
    auto it = weights.find(name);
    if (it == weights.end()) {
      if (required) fail("{} model: tensor {} is missing", fam, name);
      return {nullptr, nullptr};
    }
    used[name] = true;
    return {&it->first, &it->second};
  };
  auto vec = [&](const std::string& name, int64_t n, bool required) -> Weight* {
    auto [key, w] = get(name, required);
    if (w) check(name, *w, {n});
    return w;
  };
  // A linear with weight [out, in] (or [experts, out, in]); out == 0 takes
  // the weight's own row count, returned through `out`.
  auto linear = [&](const std::string& base, int64_t layer, int64_t experts, int64_t in,
                    int64_t& out, bool required, bool bias_required = false) -> Linear {
    Linear l;
    l.layer = layer;
    auto [key, w] = get(base + ".weight", required);
    if (w == nullptr) return l;
    if (out == 0 && w->shape.size() >= 2) out = w->shape[w->shape.size() - 2];
    std::vector<int64_t> want{out, in};
    if (experts > 0) want.insert(want.begin(), experts);
    check(*key, *w, want);
    l.name = key;
    l.w = w;
    if (auto [bkey, b] = get(base + ".bias", bias_required); b) {
      if (experts > 0) fail("{} model: expert tensor {} cannot carry a bias", fam, *bkey);
      check(*bkey, *b, {out});
      l.b = b;
    }
    return l;
  };

  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0 || hd <= 0)
    fail("{} model: {} heads, {} kv heads and head_dim {} do not fit together", fam, c.num_heads,
         c.num_kv_heads, hd);
  if (static_cast<int64_t>(inv_freq.size()) * 2 > hd)
    fail("{} model: rotary dimension {} exceeds head_dim {}", fam, inv_freq.size() * 2, hd);
  int64_t vocab = c.vocab_size;
  tok_embd = get("token_embd.weight", true).second;
  check("token_embd.weight", *tok_embd, {vocab, d});
  out_norm = vec("output_norm.weight", d, true);
  output = linear("output", -1, 0, d, vocab, false);
  if (!output) {
    if (!c.tie_word_embeddings) fail("{} model: output.weight is missing and embeddings are not tied", fam);
    output = linear("token_embd", -1, 0, d, vocab, true);
  }

  layers.assign(static_cast<size_t>(c.num_layers), Layer{});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    Layer& L = layers[static_cast<size_t>(i)];
    const std::string p = "blk." + std::to_string(i) + ".";
    int64_t q_out = c.num_heads * hd, kv_out = c.num_kv_heads * hd, d_out = d;
    L.attn_norm = vec(p + "attn_norm.weight", d, true);
    // q/k/v biases come all together (qwen2 family, llama's attention_bias).
    L.q = linear(p + "attn_q", i, 0, d, q_out, true, c.attention_bias);
    L.k = linear(p + "attn_k", i, 0, d, kv_out, true, c.attention_bias);
    L.v = linear(p + "attn_v", i, 0, d, kv_out, true, c.attention_bias);
    L.o = linear(p + "attn_output", i, 0, q_out, d_out, true);
    L.q_norm = vec(p + "attn_q_norm.weight", hd, c.qk_norm);
    L.k_norm = vec(p + "attn_k_norm.weight", hd, c.qk_norm);
    if ((L.q_norm == nullptr) != (L.k_norm == nullptr))
      fail("{} model: layer {} has only one of attn_q_norm and attn_k_norm", fam, i);
    L.ffn_norm = vec(p + "ffn_norm.weight", d, true);
    const bool moe = c.is_moe() && weights.count(p + "ffn_gate_inp.weight") > 0;
    if (!moe) {
      int64_t ff = 0;
      L.gate = linear(p + "ffn_gate", i, 0, d, ff, true);
      L.up = linear(p + "ffn_up", i, 0, d, ff, true);
      L.down = linear(p + "ffn_down", i, 0, ff, d_out, true);
      continue;
    }
    int64_t e = c.num_experts, ff = 0;
    L.router = linear(p + "ffn_gate_inp", i, 0, d, e, true);
    L.gate_exps = linear(p + "ffn_gate_exps", i, c.num_experts, d, ff, true);
    L.up_exps = linear(p + "ffn_up_exps", i, c.num_experts, d, ff, true);
    L.down_exps = linear(p + "ffn_down_exps", i, c.num_experts, ff, d_out, true);
    int64_t ffs = 0, one = 1;
    L.gate_shexp = linear(p + "ffn_gate_shexp", i, 0, d, ffs, false);
    if (L.gate_shexp) {
      L.up_shexp = linear(p + "ffn_up_shexp", i, 0, d, ffs, true);
      L.down_shexp = linear(p + "ffn_down_shexp", i, 0, ffs, d_out, true);
      L.shexp_gate = linear(p + "ffn_gate_inp_shexp", i, 0, d, one, true);
    }
  }
  for (const auto& [name, u] : used)
    if (!u) fail("{} model: tensor {} is not used by this architecture", fam, name);
}

const ModelConfig& Model::config() const { return s_->cfg; }
int64_t Model::vocab_size() const { return s_->cfg.vocab_size; }
int64_t Model::num_layers() const { return s_->cfg.num_layers; }
Backend& Model::backend() { return *s_->backend; }
void Model::set_linear_hook(LinearHook hook) { s_->hook = std::move(hook); }
const std::vector<double>& Model::rope_inv_freq() const { return s_->inv_freq; }

const Weight* Model::find_weight(const std::string& name) const {
  auto it = s_->weights.find(name);
  return it == s_->weights.end() ? nullptr : &it->second;
}

const Weight& Model::weight(const std::string& name) const {
  const Weight* w = find_weight(name);
  if (w == nullptr) fail("model: no tensor named {}", name);
  return *w;
}

std::vector<std::string> Model::weight_names() const {
  std::vector<std::string> names;
  for (const auto& kv : s_->weights) names.push_back(kv.first);
  return names;
}

Weight Model::swap_weight(const std::string& name, Weight w) {
  auto it = s_->weights.find(name);
  if (it == s_->weights.end()) fail("model: no tensor named {}", name);
  if (w.shape != it->second.shape)
    fail("model: tensor {} has shape {}; the replacement has {}", name,
         shape_str(it->second.shape), shape_str(w.shape));
  std::swap(it->second, w);
  try {
    s_->bind();  // re-checks sizes and types; pointers stay valid (same map node)
  } catch (...) {
    std::swap(it->second, w);
    s_->bind();  // the failed bind left the layer table half built
    throw;
  }
  return w;
}

}  // namespace tailor::engine
