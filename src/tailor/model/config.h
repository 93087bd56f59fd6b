// A typed description of a Hugging Face decoder-only model, read from its
// config.json. Covers the dense (llama, mistral, qwen2, qwen3) and MoE
// (mixtral, qwen2_moe, qwen3_moe) families Tailor converts. Both the classic
// top-level rope_theta / rope_scaling fields and transformers-5
// `rope_parameters` are understood.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace tailor {

enum class ModelFamily { Llama, Mistral, Qwen2, Qwen3, Mixtral, Qwen2Moe, Qwen3Moe };

// The HF model_type spelling ("llama", "qwen2_moe", ...).
const char* family_name(ModelFamily f);

struct RopeScaling {
  std::string type = "none";  // none, linear, yarn, llama3, dynamic, longrope
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_positions = 0;
  std::optional<double> attention_factor, beta_fast, beta_slow;  // yarn
};

struct ModelConfig {
  ModelFamily family = ModelFamily::Llama;
  std::string model_type;    // as in config.json
  std::string architecture;  // architectures[0], may be empty

  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  bool head_dim_explicit = false;  // config.json named head_dim (not hidden / heads)
  int64_t vocab_size = 0;
  int64_t intermediate_size = 0;
  int64_t max_positions = 0;

  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-6;

  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and, for llama, o) projections carry biases
  bool mlp_bias = false;
  bool qk_norm = false;         // per-head RMS norm of q and k (qwen3 family)

  // Mixture of experts (num_experts == 0 for dense models).
  int64_t num_experts = 0;
  int64_t num_experts_used = 0;
  int64_t moe_intermediate_size = 0;     // per expert
  int64_t shared_expert_intermediate_size = 0;
  bool norm_topk_prob = false;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;  // layers with a dense MLP in an MoE model

  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  std::optional<int64_t> sliding_window;

  bool is_moe() const { return num_experts > 0; }
  // Whether layer `l` uses the expert block (false for dense layers of MoE models).
  bool layer_is_moe(int64_t l) const;
  // Expert FFN width: moe_intermediate_size, or intermediate_size when the
  // family has no separate field (mixtral).
  int64_t expert_ffn_size() const;
};

// `source` names the file in error messages ("<dir>/config.json").
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source);
// Reads <folder>/config.json (or the file itself when given a .json path).
ModelConfig load_model_config(const std::string& path);

}  // namespace tailor
