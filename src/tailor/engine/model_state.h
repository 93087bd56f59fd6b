// Internal to the engine: what a loaded Model holds, shared by the loaders
// (model.cpp) and the forward pass (forward.cpp).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "tailor/engine/model.h"

namespace tailor::engine {

// A linear layer: weight (and optional bias) resolved from the weight map.
struct Linear {
  const std::string* name = nullptr;
  Weight* w = nullptr;
  Weight* b = nullptr;
  int64_t layer = -1;
  explicit operator bool() const { return w != nullptr; }
};

struct Layer {
  Weight* attn_norm = nullptr;
  Weight* ffn_norm = nullptr;
  Weight* q_norm = nullptr;  // qwen3 family: per-head RMS norm before rope
  Weight* k_norm = nullptr;
  Linear q, k, v, o;
  Linear gate, up, down;                         // dense MLP
  Linear router, gate_exps, up_exps, down_exps;  // experts
  Linear gate_shexp, up_shexp, down_shexp, shexp_gate;  // qwen2_moe shared expert
};

struct Model::State {
  ModelConfig cfg;
  std::map<std::string, Weight> weights;  // node addresses are stable, Linear points into it
  std::vector<double> inv_freq;           // rope frequencies after any scaling
  std::unique_ptr<Backend> backend;
  LinearHook hook;
  bool emulate_activations = false;  // LoadOptions::emulate_ggml_activations
  GgmlType rounded_type = GgmlType::F32;  // what scratch.rounded last received

  std::vector<Layer> layers;
  Weight* tok_embd = nullptr;
  Weight* out_norm = nullptr;
  Linear output;  // token_embd when the embeddings are tied

  // The rope table of the last batch layout, reused by every block.
  std::vector<int64_t> rope_lengths;
  RopeTable rope;

  // Activation buffers reused by every block and forward: allocating them
  // per layer cost page faults and zeroing comparable to the elementwise ops.
  struct Scratch {
    std::vector<float> xn, tmp, q, k, v, att, gate, up, rounded;
  } scratch;

  // Resolves names into layers and checks every shape against cfg, so the
  // forward pass never reads outside a tensor.
  void bind();
};

}  // namespace tailor::engine
