// A decoder-only model of a supported family (llama, mistral, qwen2, qwen3,
// mixtral, qwen2_moe, qwen3_moe) and its forward pass over batches of whole
// sequences (no KV cache), matching Hugging Face transformers in float32.
//
// Weights live under their GGUF names whatever the source, so an HF folder and
// a GGUF file load into the same model. Every linear layer can be observed
// (input and output activations), every tensor swapped in place, and the
// blocks run one at a time from cached activations.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tailor/engine/backend.h"
#include "tailor/model/config.h"
#include "tailor/quant/types.h"

namespace tailor::engine {

// One tensor. Matrices keep the PyTorch Linear layout [out, in]; merged
// experts are [experts, out, in]; norm weights and biases are [n]. q/k
// projections are in Hugging Face row order whatever the source: the
// llama-family row permutation GGUF files carry is undone on load (and must
// be redone by whoever writes them back to GGUF). Quantization is per row, so
// the order does not change what a quantizer makes of a row.
struct Weight {
  std::vector<int64_t> shape;
  GgmlType type = GgmlType::F32;  // F32: values in f32; else GGML blocks in `blocks`
  std::vector<float> f32;
  std::vector<uint8_t> blocks;    // rows of row_size(type, cols()) bytes
  // The GGUF type the f32 values were decoded from at load (F32 for F32
  // tensors and Hugging Face folders), so the forward pass can treat them as
  // llama.cpp treats that type (LoadOptions::emulate_ggml_activations).
  GgmlType source = GgmlType::F32;

  int64_t numel() const;
  int64_t cols() const { return shape.empty() ? 0 : shape.back(); }
  int64_t rows() const { return cols() == 0 ? 0 : numel() / cols(); }
  bool quantized() const { return type != GgmlType::F32; }
  // The type the values are stored in by their file: `type` for blocks, else `source`.
  GgmlType stored_type() const { return quantized() ? type : source; }
};

struct LoadOptions {
  // Matrices a GGUF stores in another type than F32: decoded to f32 once at
  // load (faster forward, 4 bytes a weight) or kept as blocks and decoded a
  // tile at a time inside each matmul (the file's memory footprint).
  bool dequantize = true;
  // Round the rope frequencies to bf16, as transformers ends up doing for a
  // checkpoint loaded in bf16 and then cast to float32 (the cast round-trips
  // the inv_freq buffer). The trained fixtures' references were made that
  // way; the exact frequencies are the default, as llama.cpp computes them.
  bool bf16_rope_freqs = false;
  // Round the input rows of every linear layer whose weight a GGUF stores in
  // a quantized or F16/BF16 type through that type's ggml vec_dot_type (Q8_K,
  // Q8_0, Q8_1, F16, BF16) before the product, as llama.cpp's CPU backend
  // does, so logits match what llama.cpp computes from the same file. The
  // hook still sees the unrounded input; token embeddings are not affected.
  bool emulate_ggml_activations = false;
  CpuOptions cpu;
};

// The residual stream of a batch between blocks: the rows of every sequence
// stacked, sequence b at rows [offset(b), offset(b) + lengths[b]).
struct Hidden {
  std::vector<int64_t> lengths;
  int64_t dim = 0;
  std::vector<float> data;  // [rows()][dim]

  int64_t rows() const;
  int64_t offset(size_t seq) const;
};

// What a linear-layer hook sees. Rows are the batch's stacked tokens (for an
// expert, only the tokens routed to it; for the output projection, one
// sequence at a time). The output includes the bias, if any.
struct LinearCall {
  const std::string& name;  // the weight's GGUF name, e.g. "blk.3.attn_q.weight"
  int64_t layer = -1;       // -1 for the output projection
  int64_t expert = -1;      // index into a merged expert tensor, else -1
  const float* input = nullptr;   // [rows, in]
  const float* output = nullptr;  // [rows, out]
  int64_t rows = 0, in = 0, out = 0;
};
using LinearHook = std::function<void(const LinearCall&)>;

// Receives the logits [length][vocab] of one sequence of the batch; the
// buffer is reused for the next sequence.
using LogitsFn = std::function<void(size_t seq, const float* logits, int64_t length, int64_t vocab)>;

using Sequences = std::vector<std::vector<int32_t>>;

// One forward pass at a time per Model (it caches the rope table and calls
// the hook from the calling thread); the backend spreads each op over threads.
class Model {
 public:
  // A Hugging Face folder (config.json + safetensors in F32/F16/BF16) or a
  // .gguf file, told apart by the path.
  static Model load(const std::string& path, const LoadOptions& options = {});
  static Model load_hf(const std::string& folder, const LoadOptions& options = {});
  static Model load_gguf(const std::string& path, const LoadOptions& options = {});

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  // Hyperparameters (for a GGUF, read from its keys and tensor shapes).
  const ModelConfig& config() const;
  int64_t vocab_size() const;
  int64_t num_layers() const;

  // Whole forward pass: logits of every position of every sequence.
  void forward(const Sequences& seqs, const LogitsFn& on_logits);
  // The same for `batch` sequences of `length` tokens, returned as [B][T][V].
  std::vector<float> forward(std::span<const int32_t> tokens, int64_t batch, int64_t length);

  // The forward pass in pieces: forward == embed, run_block 0..L-1, final_logits.
  Hidden embed(const Sequences& seqs) const;
  void run_block(int64_t layer, Hidden& h);
  void final_logits(const Hidden& h, const LogitsFn& on_logits);

  const Weight& weight(const std::string& name) const;  // Error when absent
  const Weight* find_weight(const std::string& name) const;
  std::vector<std::string> weight_names() const;
  // Replaces a tensor (same shape; matrices in any type the codecs decode,
  // vectors in f32) and hands back the old one, so it can be restored.
  Weight swap_weight(const std::string& name, Weight w);

  // Called after every linear layer; an empty function removes the hook.
  void set_linear_hook(LinearHook hook);
  // The rope inverse frequencies after any scaling (rot_dim / 2 of them), as
  // run_block uses them; for code that recomputes a block (training).
  const std::vector<double>& rope_inv_freq() const;
  Backend& backend();

  struct State;

 private:
  explicit Model(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

}  // namespace tailor::engine
