#include "tailor/model/gguf_names.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <map>
#include <numbers>
#include <string_view>

#include "tailor/util/error.h"

namespace tailor {
namespace {

enum FamilyMask : unsigned {
  kLlamaLike = 1u << 0,  // llama, mistral
  kQwenDense = 1u << 1,  // qwen2, qwen3
  kMixtral = 1u << 2,
  kQwenMoe = 1u << 3,    // qwen2_moe, qwen3_moe
  kAll = 0xfu,
};

unsigned mask_of(ModelFamily f) {
  switch (f) {
    case ModelFamily::Llama:
    case ModelFamily::Mistral: return kLlamaLike;
    case ModelFamily::Qwen2:
    case ModelFamily::Qwen3: return kQwenDense;
    case ModelFamily::Mixtral: return kMixtral;
    case ModelFamily::Qwen2Moe:
    case ModelFamily::Qwen3Moe: return kQwenMoe;
  }
  return 0;
}

// Per-layer tensors: the part after "model.layers.N." and after "blk.N.".
struct LayerName {
  const char* hf;
  const char* gguf;
  QkPermute permute;
  unsigned families;
};
constexpr LayerName kLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight", QkPermute::None, kAll},
    {"self_attn.q_proj.weight", "attn_q.weight", QkPermute::Q, kAll},
    {"self_attn.q_proj.bias", "attn_q.bias", QkPermute::Q, kAll},
    {"self_attn.k_proj.weight", "attn_k.weight", QkPermute::K, kAll},
    {"self_attn.k_proj.bias", "attn_k.bias", QkPermute::K, kAll},
    {"self_attn.v_proj.weight", "attn_v.weight", QkPermute::None, kAll},
    {"self_attn.v_proj.bias", "attn_v.bias", QkPermute::None, kAll},
    {"self_attn.o_proj.weight", "attn_output.weight", QkPermute::None, kAll},
    {"self_attn.o_proj.bias", "attn_output.bias", QkPermute::None, kAll},
    {"self_attn.q_norm.weight", "attn_q_norm.weight", QkPermute::None, kAll},
    {"self_attn.k_norm.weight", "attn_k_norm.weight", QkPermute::None, kAll},
    {"post_attention_layernorm.weight", "ffn_norm.weight", QkPermute::None, kAll},
    {"mlp.gate_proj.weight", "ffn_gate.weight", QkPermute::None, kAll},
    {"mlp.up_proj.weight", "ffn_up.weight", QkPermute::None, kAll},
    {"mlp.down_proj.weight", "ffn_down.weight", QkPermute::None, kAll},
    {"mlp.gate_proj.bias", "ffn_gate.bias", QkPermute::None, kAll},
    {"mlp.up_proj.bias", "ffn_up.bias", QkPermute::None, kAll},
    {"mlp.down_proj.bias", "ffn_down.bias", QkPermute::None, kAll},
    {"block_sparse_moe.gate.weight", "ffn_gate_inp.weight", QkPermute::None, kMixtral},
    {"mlp.gate.weight", "ffn_gate_inp.weight", QkPermute::None, kQwenMoe},
    {"mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight", QkPermute::None, kQwenMoe},
    {"mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight", QkPermute::None, kQwenMoe},
    {"mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight", QkPermute::None, kQwenMoe},
    {"mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight", QkPermute::None, kQwenMoe},
};

// Per-expert tensors: "<prefix>.E.<hf>" merges into "blk.N.<gguf>".
struct ExpertName {
  const char* prefix;
  const char* hf;
  const char* gguf;
  unsigned families;
};
constexpr ExpertName kExpertNames[] = {
    {"block_sparse_moe.experts.", "w1.weight", "ffn_gate_exps.weight", kMixtral},
    {"block_sparse_moe.experts.", "w2.weight", "ffn_down_exps.weight", kMixtral},
    {"block_sparse_moe.experts.", "w3.weight", "ffn_up_exps.weight", kMixtral},
    {"mlp.experts.", "gate_proj.weight", "ffn_gate_exps.weight", kQwenMoe},
    {"mlp.experts.", "down_proj.weight", "ffn_down_exps.weight", kQwenMoe},
    {"mlp.experts.", "up_proj.weight", "ffn_up_exps.weight", kQwenMoe},
};

struct GlobalName {
  const char* hf;
  const char* gguf;
};
constexpr GlobalName kGlobalNames[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

// Parses a decimal index at the start of `s` followed by '.', advancing `s` past the dot.
std::optional<int64_t> take_index(std::string_view& s) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p == s.data() || p == s.data() + s.size() || *p != '.' || v < 0)
    return std::nullopt;
  s.remove_prefix(static_cast<size_t>(p - s.data()) + 1);
  return v;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

void reorder_rows(unsigned char* data, int64_t rows, size_t row_bytes, int64_t n_head, bool forward) {
  if (n_head <= 0 || rows % n_head != 0 || (rows / n_head) % 2 != 0)
    fail("q/k permutation: {} rows do not split into {} heads of even size", rows, n_head);
  const int64_t hd = rows / n_head, half = hd / 2;
  std::vector<unsigned char> head(row_bytes * static_cast<size_t>(hd));
  for (int64_t h = 0; h < n_head; ++h) {
    unsigned char* base = data + static_cast<size_t>(h * hd) * row_bytes;
    std::memcpy(head.data(), base, head.size());
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        int64_t gguf_row = i * 2 + j, hf_row = j * half + i;
        int64_t dst = forward ? gguf_row : hf_row, src = forward ? hf_row : gguf_row;
        std::memcpy(base + static_cast<size_t>(dst) * row_bytes, head.data() + static_cast<size_t>(src) * row_bytes,
                    row_bytes);
      }
    }
  }
}

}  // namespace

const char* gguf_arch_name(ModelFamily f) {
  switch (f) {
    case ModelFamily::Llama:
    case ModelFamily::Mistral:
    case ModelFamily::Mixtral: return "llama";
    case ModelFamily::Qwen2: return "qwen2";
    case ModelFamily::Qwen3: return "qwen3";
    case ModelFamily::Qwen2Moe: return "qwen2moe";
    case ModelFamily::Qwen3Moe: return "qwen3moe";
  }
  return "?";
}

bool family_permutes_qk(ModelFamily f) {
  return f == ModelFamily::Llama || f == ModelFamily::Mistral || f == ModelFamily::Mixtral;
}

bool is_ignored_hf_tensor(const std::string& hf_name) {
  return hf_name.ends_with("rotary_emb.inv_freq");
}

std::optional<GgufTensorName> map_hf_tensor(const std::string& hf_name, const ModelConfig& c) {
  for (const auto& g : kGlobalNames)
    if (hf_name == g.hf) return GgufTensorName{g.gguf};
  std::string_view rest = hf_name;
  if (!starts_with(rest, "model.layers.")) return std::nullopt;
  rest.remove_prefix(13);
  auto layer = take_index(rest);
  if (!layer || *layer >= c.num_layers) return std::nullopt;
  const unsigned fam = mask_of(c.family);
  const std::string blk = "blk." + std::to_string(*layer) + ".";
  for (const auto& n : kLayerNames) {
    if ((n.families & fam) && rest == n.hf) {
      QkPermute p = family_permutes_qk(c.family) ? n.permute : QkPermute::None;
      return GgufTensorName{blk + n.gguf, *layer, -1, p};
    }
  }
  for (const auto& n : kExpertNames) {
    if (!(n.families & fam) || !starts_with(rest, n.prefix)) continue;
    std::string_view tail = rest.substr(std::strlen(n.prefix));
    auto expert = take_index(tail);
    if (!expert || *expert >= c.num_experts) return std::nullopt;
    if (tail == n.hf) return GgufTensorName{blk + n.gguf, *layer, *expert, QkPermute::None};
  }
  return std::nullopt;
}

bool is_merged_experts(const std::string& gguf_name) {
  return gguf_name.ends_with("_exps.weight");
}

std::optional<std::string> gguf_to_hf_name(const std::string& gguf_name, const ModelConfig& c,
                                           int64_t expert) {
  for (const auto& g : kGlobalNames)
    if (gguf_name == g.gguf) return expert < 0 ? std::optional<std::string>(g.hf) : std::nullopt;
  std::string_view rest = gguf_name;
  if (!starts_with(rest, "blk.")) return std::nullopt;
  rest.remove_prefix(4);
  auto layer = take_index(rest);
  if (!layer || *layer >= c.num_layers) return std::nullopt;
  const unsigned fam = mask_of(c.family);
  const std::string prefix = "model.layers." + std::to_string(*layer) + ".";
  if (expert < 0) {
    for (const auto& n : kLayerNames)
      if ((n.families & fam) && rest == n.gguf) return prefix + n.hf;
    return std::nullopt;
  }
  if (expert >= c.num_experts) return std::nullopt;
  for (const auto& n : kExpertNames)
    if ((n.families & fam) && rest == n.gguf)
      return prefix + n.prefix + std::to_string(expert) + "." + n.hf;
  return std::nullopt;
}

std::optional<std::vector<int64_t>> expected_gguf_shape(const std::string& gguf_name, const ModelConfig& c) {
  using Shape = std::vector<int64_t>;
  const int64_t H = c.hidden_size, V = c.vocab_size, q = c.num_heads * c.head_dim,
                kv = c.num_kv_heads * c.head_dim, F = c.intermediate_size, E = c.num_experts,
                EF = c.expert_ffn_size(), SF = c.shared_expert_intermediate_size;
  if (gguf_name == "token_embd.weight" || gguf_name == "output.weight") return Shape{H, V};
  if (gguf_name == "output_norm.weight") return Shape{H};
  if (gguf_name == "rope_freqs.weight") return Shape{c.head_dim / 2};
  std::string_view rest = gguf_name;
  if (!starts_with(rest, "blk.")) return std::nullopt;
  rest.remove_prefix(4);
  auto layer = take_index(rest);
  if (!layer || *layer >= c.num_layers) return std::nullopt;
  static const std::map<std::string_view, int> kinds = {
      {"attn_norm.weight", 0}, {"ffn_norm.weight", 0}, {"attn_output.bias", 0}, {"ffn_down.bias", 0},
      {"ffn_gate_inp_shexp.weight", 0},
      {"attn_q.weight", 1}, {"attn_k.weight", 2}, {"attn_v.weight", 2}, {"attn_output.weight", 3},
      {"attn_q.bias", 4}, {"attn_k.bias", 5}, {"attn_v.bias", 5},
      {"attn_q_norm.weight", 6}, {"attn_k_norm.weight", 6},
      {"ffn_gate.weight", 7}, {"ffn_up.weight", 7}, {"ffn_down.weight", 8},
      {"ffn_gate.bias", 9}, {"ffn_up.bias", 9},
      {"ffn_gate_inp.weight", 10},
      {"ffn_gate_exps.weight", 11}, {"ffn_up_exps.weight", 11}, {"ffn_down_exps.weight", 12},
      {"ffn_gate_shexp.weight", 13}, {"ffn_up_shexp.weight", 13}, {"ffn_down_shexp.weight", 14},
  };
  auto it = kinds.find(rest);
  if (it == kinds.end()) return std::nullopt;
  switch (it->second) {
    case 0: return Shape{H};
    case 1: return Shape{H, q};
    case 2: return Shape{H, kv};
    case 3: return Shape{q, H};
    case 4: return Shape{q};
    case 5: return Shape{kv};
    case 6: return Shape{c.head_dim};
    case 7: return Shape{H, F};
    case 8: return Shape{F, H};
    case 9: return Shape{F};
    case 10: return Shape{H, E};
    case 11: return Shape{H, EF, E};
    case 12: return Shape{EF, H, E};
    case 13: return Shape{H, SF};
    case 14: return Shape{SF, H};
  }
  return std::nullopt;
}

void permute_qk_rows(float* data, int64_t rows, int64_t cols, int64_t n_head) {
  reorder_rows(reinterpret_cast<unsigned char*>(data), rows, static_cast<size_t>(cols) * sizeof(float), n_head, true);
}

void unpermute_qk_rows(float* data, int64_t rows, int64_t cols, int64_t n_head) {
  reorder_rows(reinterpret_cast<unsigned char*>(data), rows, static_cast<size_t>(cols) * sizeof(float), n_head, false);
}

void permute_qk_row_bytes(void* data, int64_t rows, size_t row_bytes, int64_t n_head) {
  reorder_rows(static_cast<unsigned char*>(data), rows, row_bytes, n_head, true);
}

std::vector<HParam> gguf_hparams(const ModelConfig& c) {
  const std::string a = gguf_arch_name(c.family);
  std::vector<HParam> out;
  auto u32 = [&](const std::string& k, int64_t v) {
    HParam p;
    p.kind = HParam::U32;
    p.key = a + "." + k;
    p.u = static_cast<uint32_t>(v);
    out.push_back(std::move(p));
  };
  auto f32 = [&](const std::string& k, double v) {
    HParam p;
    p.kind = HParam::F32;
    p.key = a + "." + k;
    p.f = static_cast<float>(v);
    out.push_back(std::move(p));
  };
  auto str = [&](const std::string& k, const std::string& v) {
    HParam p;
    p.kind = HParam::Str;
    p.key = a + "." + k;
    p.s = v;
    out.push_back(std::move(p));
  };
  u32("vocab_size", c.vocab_size);
  u32("context_length", c.max_positions);
  u32("embedding_length", c.hidden_size);
  u32("block_count", c.num_layers);
  u32("feed_forward_length", c.intermediate_size);
  u32("attention.head_count", c.num_heads);
  u32("attention.head_count_kv", c.num_kv_heads);
  u32("rope.dimension_count", c.head_dim);
  if (c.head_dim_explicit) {
    u32("attention.key_length", c.head_dim);
    u32("attention.value_length", c.head_dim);
  }
  f32("rope.freq_base", c.rope_theta);
  f32("attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == "linear" || rs.type == "yarn") {
    str("rope.scaling.type", rs.type);
    f32("rope.scaling.factor", rs.factor);
    if (rs.type == "yarn") {
      u32("rope.scaling.original_context_length", rs.original_max_positions);
      if (rs.attention_factor) f32("rope.scaling.yarn_attn_factor", *rs.attention_factor);
      if (rs.beta_fast) f32("rope.scaling.yarn_beta_fast", *rs.beta_fast);
      if (rs.beta_slow) f32("rope.scaling.yarn_beta_slow", *rs.beta_slow);
    }
  } else if (rs.type == "longrope") {
    str("rope.scaling.type", "longrope");
  }
  // llama3 scaling travels as the rope_freqs tensor (llama3_rope_factors).
  if (c.is_moe()) {
    u32("expert_count", c.num_experts);
    u32("expert_used_count", c.num_experts_used);
    if (c.family != ModelFamily::Mixtral) u32("expert_feed_forward_length", c.expert_ffn_size());
    if (c.shared_expert_intermediate_size > 0)
      u32("expert_shared_feed_forward_length", c.shared_expert_intermediate_size);
  }
  return out;
}

std::vector<float> llama3_rope_factors(const ModelConfig& c) {
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type != "llama3") return {};
  const double old_ctx = static_cast<double>(rs.original_max_positions);
  const double low_wavelen = old_ctx / rs.low_freq_factor;
  const double high_wavelen = old_ctx / rs.high_freq_factor;
  std::vector<float> factors;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    // Frequencies in float32 as the reference converter computes them.
    const float freq = 1.0f / std::pow(static_cast<float>(c.rope_theta),
                                       static_cast<float>(i) / static_cast<float>(c.head_dim));
    const double wavelen = 2 * std::numbers::pi / freq;
    double f;
    if (wavelen < high_wavelen) {
      f = 1.0;
    } else if (wavelen > low_wavelen) {
      f = rs.factor;
    } else {
      double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      f = 1.0 / ((1 - smooth) / rs.factor + smooth);
    }
    factors.push_back(static_cast<float>(f));
  }
  return factors;
}

}  // namespace tailor
