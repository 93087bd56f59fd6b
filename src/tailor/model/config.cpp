#include "tailor/model/config.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "tailor/util/error.h"

namespace tailor {
namespace {

using json = nlohmann::json;

// Limits keep later size arithmetic (rows * cols * experts) far from overflow.
constexpr int64_t kMaxDim = int64_t{1} << 31;

struct Reader {
  const json& j;
  const std::string& src;

  const json* find(const char* key) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return nullptr;
    return &*it;
  }
  std::optional<int64_t> opt_int(const char* key, int64_t lo = 0, int64_t hi = kMaxDim) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    int64_t x = 0;
    if (v->is_number_integer()) {
      x = v->get<int64_t>();
    } else if (v->is_number_float() && v->get<double>() == static_cast<double>(
                                                                static_cast<int64_t>(v->get<double>()))) {
      x = static_cast<int64_t>(v->get<double>());
    } else {
      fail("{}: field '{}' must be an integer, got {}", src, key, v->dump());
    }
    if (x < lo || x > hi) fail("{}: field '{}' = {} is out of range [{}, {}]", src, key, x, lo, hi);
    return x;
  }
  int64_t req_int(const char* key, int64_t lo = 1, int64_t hi = kMaxDim) const {
    auto v = opt_int(key, lo, hi);
    if (!v) fail("{}: missing required field '{}'", src, key);
    return *v;
  }
  std::optional<double> opt_num(const json& obj, const char* key) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return std::nullopt;
    if (!it->is_number()) fail("{}: field '{}' must be a number, got {}", src, key, it->dump());
    return it->get<double>();
  }
  std::optional<bool> opt_bool(const char* key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) fail("{}: field '{}' must be true or false, got {}", src, key, v->dump());
    return v->get<bool>();
  }
  std::string opt_str(const char* key) const {
    const json* v = find(key);
    if (!v) return {};
    if (!v->is_string()) fail("{}: field '{}' must be a string, got {}", src, key, v->dump());
    return v->get<std::string>();
  }
};

struct FamilyName {
  ModelFamily family;
  const char* model_type;
  const char* architecture;
};
constexpr FamilyName kFamilies[] = {
    {ModelFamily::Llama, "llama", "LlamaForCausalLM"},
    {ModelFamily::Mistral, "mistral", "MistralForCausalLM"},
    {ModelFamily::Qwen2, "qwen2", "Qwen2ForCausalLM"},
    {ModelFamily::Qwen3, "qwen3", "Qwen3ForCausalLM"},
    {ModelFamily::Mixtral, "mixtral", "MixtralForCausalLM"},
    {ModelFamily::Qwen2Moe, "qwen2_moe", "Qwen2MoeForCausalLM"},
    {ModelFamily::Qwen3Moe, "qwen3_moe", "Qwen3MoeForCausalLM"},
};

ModelFamily detect_family(const Reader& r, std::string& model_type, std::string& arch) {
  model_type = r.opt_str("model_type");
  if (const json* a = r.find("architectures")) {
    if (!a->is_array()) fail("{}: field 'architectures' must be a list", r.src);
    if (!a->empty()) {
      if (!(*a)[0].is_string()) fail("{}: field 'architectures' must hold strings", r.src);
      arch = (*a)[0].get<std::string>();
    }
  }
  for (const auto& f : kFamilies)
    if (!model_type.empty() && model_type == f.model_type) return f.family;
  for (const auto& f : kFamilies)
    if (model_type.empty() && arch == f.architecture) return f.family;
  if (model_type.empty() && arch.empty())
    fail("{}: missing required field 'model_type' (and no 'architectures')", r.src);
  fail("{}: model_type '{}' (architecture '{}') is not supported; supported: llama, mistral, "
       "qwen2, qwen3, mixtral, qwen2_moe, qwen3_moe",
       r.src, model_type, arch);
}

RopeScaling parse_scaling(const Reader& r, const json& obj, const char* where) {
  RopeScaling s;
  std::string type;
  for (const char* k : {"rope_type", "type"}) {
    auto it = obj.find(k);
    if (it != obj.end() && !it->is_null()) {
      if (!it->is_string()) fail("{}: field '{}.{}' must be a string", r.src, where, k);
      type = it->get<std::string>();
      break;
    }
  }
  if (type.empty() || type == "default") return s;
  if (type == "su") type = "longrope";
  s.type = type;
  if (type != "linear" && type != "yarn" && type != "llama3" && type != "dynamic" &&
      type != "longrope")
    fail("{}: field '{}.rope_type' = '{}' is not a known rope scaling type", r.src, where, type);
  auto factor = r.opt_num(obj, "factor");
  if (factor) {
    if (!(*factor > 0)) fail("{}: field '{}.factor' must be positive", r.src, where);
    s.factor = *factor;
  } else if (type == "linear" || type == "yarn") {
    fail("{}: missing required field '{}.factor' for rope type {}", r.src, where, type);
  } else if (type == "llama3") {
    s.factor = 8.0;
  }
  if (auto v = r.opt_num(obj, "low_freq_factor")) s.low_freq_factor = *v;
  if (auto v = r.opt_num(obj, "high_freq_factor")) s.high_freq_factor = *v;
  if (auto v = r.opt_num(obj, "original_max_position_embeddings")) {
    if (!(*v >= 1 && *v < static_cast<double>(kMaxDim)))
      fail("{}: field '{}.original_max_position_embeddings' is out of range", r.src, where);
    s.original_max_positions = static_cast<int64_t>(*v);
  } else if (type == "llama3") {
    s.original_max_positions = 8192;
  } else if (type == "yarn") {
    fail("{}: missing required field '{}.original_max_position_embeddings' for rope type yarn",
         r.src, where);
  }
  if (type == "llama3" && !(s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor))
    fail("{}: fields '{}.low_freq_factor' / 'high_freq_factor' must satisfy 0 < low < high",
         r.src, where);
  s.attention_factor = r.opt_num(obj, "attention_factor");
  if (!s.attention_factor) s.attention_factor = r.opt_num(obj, "attn_factor");
  s.beta_fast = r.opt_num(obj, "beta_fast");
  s.beta_slow = r.opt_num(obj, "beta_slow");
  return s;
}

void parse_rope(const Reader& r, ModelConfig& c) {
  // transformers 5 moved theta and scaling into rope_parameters, optionally
  // keyed by layer type; the full-attention entry is the one that matters here.
  if (const json* rp = r.find("rope_parameters")) {
    if (!rp->is_object()) fail("{}: field 'rope_parameters' must be an object", r.src);
    const json* p = rp;
    const char* where = "rope_parameters";
    auto fa = rp->find("full_attention");
    if (fa != rp->end() && fa->is_object()) {
      p = &*fa;
      where = "rope_parameters.full_attention";
    }
    if (auto t = r.opt_num(*p, "rope_theta")) c.rope_theta = *t;
    else if (auto t2 = r.opt_num(r.j, "rope_theta")) c.rope_theta = *t2;
    c.rope_scaling = parse_scaling(r, *p, where);
  } else {
    if (auto t = r.opt_num(r.j, "rope_theta")) c.rope_theta = *t;
    if (const json* rs = r.find("rope_scaling")) {
      if (!rs->is_object()) fail("{}: field 'rope_scaling' must be an object or null", r.src);
      c.rope_scaling = parse_scaling(r, *rs, "rope_scaling");
    }
  }
  if (!(c.rope_theta > 0)) fail("{}: field 'rope_theta' must be positive", r.src);
}

std::optional<int64_t> token_id(const Reader& r, const char* key) {
  const json* v = r.find(key);
  if (!v) return std::nullopt;
  if (v->is_array()) {
    if (v->empty()) return std::nullopt;
    if (!(*v)[0].is_number_integer()) fail("{}: field '{}' must hold integers", r.src, key);
    return (*v)[0].get<int64_t>();
  }
  return r.opt_int(key, 0, kMaxDim);
}

}  // namespace

const char* family_name(ModelFamily f) {
  for (const auto& n : kFamilies)
    if (n.family == f) return n.model_type;
  return "?";
}

bool ModelConfig::layer_is_moe(int64_t l) const {
  if (!is_moe()) return false;
  for (int64_t m : mlp_only_layers)
    if (m == l) return false;
  return decoder_sparse_step <= 1 || (l + 1) % decoder_sparse_step == 0;
}

int64_t ModelConfig::expert_ffn_size() const {
  return moe_intermediate_size > 0 ? moe_intermediate_size : intermediate_size;
}

ModelConfig parse_model_config(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: expected a JSON object", source);
  // Multimodal wrappers keep the language model under text_config.
  if (auto tc = j.find("text_config"); tc != j.end() && tc->is_object() && !j.contains("hidden_size")) {
    json merged = *tc;
    for (auto it = j.begin(); it != j.end(); ++it)
      if (!merged.contains(it.key()) && it.key() != "text_config") merged[it.key()] = it.value();
    return parse_model_config(merged, source);
  }
  Reader r{j, source};
  ModelConfig c;
  c.family = detect_family(r, c.model_type, c.architecture);
  if (c.model_type.empty()) c.model_type = family_name(c.family);

  c.hidden_size = r.req_int("hidden_size");
  c.num_layers = r.req_int("num_hidden_layers", 1, 1 << 16);
  c.num_heads = r.req_int("num_attention_heads", 1, 1 << 16);
  c.num_kv_heads = r.opt_int("num_key_value_heads", 1, 1 << 16).value_or(c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0)
    fail("{}: field 'num_key_value_heads' = {} does not divide num_attention_heads = {}", source,
         c.num_kv_heads, c.num_heads);
  if (auto hd = r.opt_int("head_dim", 1, 1 << 16)) {
    c.head_dim = *hd;
    c.head_dim_explicit = true;
  } else {
    if (c.hidden_size % c.num_heads != 0)
      fail("{}: field 'head_dim' is missing and hidden_size {} is not a multiple of "
           "num_attention_heads {}", source, c.hidden_size, c.num_heads);
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) fail("{}: field 'head_dim' = {} must be even for rope", source, c.head_dim);
  c.vocab_size = r.req_int("vocab_size");
  c.intermediate_size = r.req_int("intermediate_size");
  c.max_positions = r.req_int("max_position_embeddings");
  parse_rope(r, c);

  auto eps = r.opt_num(j, "rms_norm_eps");
  if (!eps) fail("{}: missing required field 'rms_norm_eps'", source);
  if (!(*eps > 0 && *eps < 1)) fail("{}: field 'rms_norm_eps' = {} is out of range (0, 1)", source, *eps);
  c.rms_norm_eps = *eps;

  c.tie_word_embeddings = r.opt_bool("tie_word_embeddings").value_or(false);
  c.mlp_bias = r.opt_bool("mlp_bias").value_or(false);
  switch (c.family) {
    case ModelFamily::Qwen2:
    case ModelFamily::Qwen2Moe:
      // Qwen2 always has q/k/v biases; newer configs spell it out as qkv_bias.
      c.attention_bias = r.opt_bool("qkv_bias").value_or(r.opt_bool("attention_bias").value_or(true));
      break;
    default:
      c.attention_bias = r.opt_bool("attention_bias").value_or(false);
  }
  c.qk_norm = c.family == ModelFamily::Qwen3 || c.family == ModelFamily::Qwen3Moe;

  const bool moe_family = c.family == ModelFamily::Mixtral || c.family == ModelFamily::Qwen2Moe ||
                          c.family == ModelFamily::Qwen3Moe;
  if (moe_family) {
    auto n = r.opt_int("num_local_experts", 1, 1 << 16);
    if (!n) n = r.opt_int("num_experts", 1, 1 << 16);
    if (!n) fail("{}: missing required field 'num_local_experts' (or 'num_experts')", source);
    c.num_experts = *n;
    c.num_experts_used = r.req_int("num_experts_per_tok", 1, c.num_experts);
    if (c.family == ModelFamily::Mixtral) {
      c.norm_topk_prob = true;  // Mixtral renormalises the top-k weights by construction
      c.moe_intermediate_size = r.opt_int("moe_intermediate_size", 1).value_or(c.intermediate_size);
    } else {
      c.moe_intermediate_size = r.req_int("moe_intermediate_size");
      c.norm_topk_prob = r.opt_bool("norm_topk_prob").value_or(false);
      c.decoder_sparse_step = r.opt_int("decoder_sparse_step", 0, c.num_layers).value_or(1);
    }
    if (c.family == ModelFamily::Qwen2Moe)
      c.shared_expert_intermediate_size = r.opt_int("shared_expert_intermediate_size", 1).value_or(0);
    if (const json* m = r.find("mlp_only_layers")) {
      if (!m->is_array()) fail("{}: field 'mlp_only_layers' must be a list", source);
      for (const auto& e : *m) {
        if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= c.num_layers)
          fail("{}: field 'mlp_only_layers' holds {} which is not a layer index", source, e.dump());
        c.mlp_only_layers.push_back(e.get<int64_t>());
      }
    }
  }

  c.bos_token_id = token_id(r, "bos_token_id");
  if (const json* e = r.find("eos_token_id")) {
    if (e->is_array()) {
      for (const auto& x : *e) {
        if (!x.is_number_integer() || x.get<int64_t>() < 0)
          fail("{}: field 'eos_token_id' must hold non-negative integers", source);
        c.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else {
      c.eos_token_ids.push_back(*r.opt_int("eos_token_id"));
    }
  }
  c.pad_token_id = token_id(r, "pad_token_id");
  if (r.opt_bool("use_sliding_window").value_or(true)) {
    auto sw = r.opt_int("sliding_window", 0);
    if (sw && *sw > 0) c.sliding_window = sw;
  }
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  namespace fs = std::filesystem;
  std::string file = fs::is_directory(path) ? (fs::path(path) / "config.json").string() : path;
  std::ifstream in(file);
  if (!in) fail("{}: cannot open (a Hugging Face model folder needs a config.json)", file);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", file, e.what());
  }
  return parse_model_config(j, file);
}

}  // namespace tailor
