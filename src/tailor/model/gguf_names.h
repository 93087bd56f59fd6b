// How a Hugging Face checkpoint of a supported family is laid out in a GGUF
// file that llama.cpp loads: the architecture name, tensor names (per-expert
// HF tensors merge into one 3-D tensor per layer), the rotary row order of
// q/k projections for the llama family, and the hyperparameter keys.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tailor/model/config.h"

namespace tailor {

// "llama" for llama, mistral and mixtral (llama.cpp loads all three as llama),
// else qwen2, qwen3, qwen2moe, qwen3moe.
const char* gguf_arch_name(ModelFamily f);

// llama.cpp's rope for the llama architecture pairs adjacent dimensions
// (GPT-J style) while HF pairs the two halves of each head, so llama.cpp's
// converter reorders q/k rows; Qwen models use NeoX rope and keep HF order.
bool family_permutes_qk(ModelFamily f);

enum class QkPermute { None, Q, K };

struct GgufTensorName {
  std::string name;          // e.g. "blk.3.attn_q.weight"
  int64_t layer = -1;        // -1 outside the blocks
  int64_t expert = -1;       // HF per-expert tensor: its index along the merged tensor's ne[2]
  QkPermute permute = QkPermute::None;
};

// HF tensor name -> GGUF name; nullopt when the name is not part of the
// supported layout. Layer and expert indices are checked against the config.
std::optional<GgufTensorName> map_hf_tensor(const std::string& hf_name, const ModelConfig& c);
// Buffers some checkpoints carry that the model does not need (rotary inv_freq).
bool is_ignored_hf_tensor(const std::string& hf_name);
// The inverse: GGUF name (and, for merged expert tensors, the expert index)
// -> HF name. nullopt when the name is not part of the layout.
std::optional<std::string> gguf_to_hf_name(const std::string& gguf_name, const ModelConfig& c,
                                           int64_t expert = -1);
// Whether a GGUF tensor is a merged stack of experts (ne[2] = expert count).
bool is_merged_experts(const std::string& gguf_name);

// The shape (ggml order) llama.cpp expects for a GGUF tensor of this model;
// nullopt for names outside the layout. rope_freqs is {head_dim / 2}.
std::optional<std::vector<int64_t>> expected_gguf_shape(const std::string& gguf_name, const ModelConfig& c);

// Reorders the rows of a q (n_head = num_heads) or k (n_head = num_kv_heads)
// projection from HF order to llama.cpp order, in place. rows = n_head * head_dim,
// each row `cols` wide (cols = 1 for a bias).
void permute_qk_rows(float* data, int64_t rows, int64_t cols, int64_t n_head);
// The exact inverse of permute_qk_rows.
void unpermute_qk_rows(float* data, int64_t rows, int64_t cols, int64_t n_head);
// The same reordering for rows of any type, `row_bytes` each (e.g. rows of
// GGML blocks, which quantize row by row and so permute as wholes).
void permute_qk_row_bytes(void* data, int64_t rows, size_t row_bytes, int64_t n_head);

// One hyperparameter key for the GGUF header, kept free of the GGUF writer's types.
struct HParam {
  enum Kind { U32, F32, Str, Bool } kind = U32;
  std::string key;
  uint32_t u = 0;
  float f = 0;
  std::string s;
  bool b = false;
};
// The `{arch}.*` keys llama.cpp reads for this model.
std::vector<HParam> gguf_hparams(const ModelConfig& c);

// llama3 rope scaling is carried by a rope_freqs.weight tensor of head_dim/2
// per-frequency divisors (as llama.cpp's converter writes it); empty unless
// the config uses llama3 scaling.
std::vector<float> llama3_rope_factors(const ModelConfig& c);

}  // namespace tailor
