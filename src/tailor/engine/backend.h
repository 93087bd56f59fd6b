// The compute core of the inference engine: the operations a transformer
// forward pass over batches of whole sequences needs, behind one interface so
// a GPU backend can stand beside the CPU one. All tensors are f32, row-major,
// contiguous unless a stride is named; pointers belong to the backend's memory
// (host memory for the CPU backend). Shapes are in elements.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tailor/engine/gemm.h"
#include "tailor/quant/types.h"

namespace tailor::engine {

// A weight [rows = out features][cols = in features] stored as GGML blocks,
// each row row_size(type, cols) bytes (the GGUF layout of a Linear weight).
struct QuantMatrix {
  GgmlType type = GgmlType::F32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// How a checkpoint stretches rotary positions beyond its training length
// (HF `rope_scaling` / `rope_parameters`).
struct RopeScaling {
  enum class Kind { None, Linear, Llama3 };
  Kind kind = Kind::None;
  double factor = 1.0;  // Linear and Llama3
  double low_freq_factor = 1.0;  // Llama3 only
  double high_freq_factor = 4.0;
  double original_max_position = 8192;  // original_max_position_embeddings
};

// Inverse frequencies theta^(-2i/rot_dim), i < rot_dim/2, after scaling.
std::vector<double> rope_inv_freq(int64_t rot_dim, double theta, const RopeScaling& scaling);

// cos and sin of position * inv_freq[i], one row of rot_dim/2 per token.
// rot_dim may be less than head_dim: then only the first rot_dim elements of
// each head rotate (partial rotary), the rest pass through.
struct RopeTable {
  int64_t rot_dim = 0;
  std::vector<float> cos, sin;  // [tokens][rot_dim / 2]
  int64_t tokens() const { return rot_dim > 0 ? static_cast<int64_t>(cos.size()) / (rot_dim / 2) : 0; }
};
RopeTable make_rope_table(std::span<const int64_t> positions, int64_t rot_dim, double theta,
                          const RopeScaling& scaling = {});

// Causal grouped-query attention. q: [q_len, n_heads, head_dim];
// k, v: [kv_len, n_kv_heads, head_dim]; out: [q_len, n_heads, head_dim].
// Query i sits at position kv_len - q_len + i and sees keys 0..that position,
// so q_len == kv_len is a whole sequence and kv_len > q_len continues one.
// Query head h reads kv head h / (n_heads / n_kv_heads), as HF's repeat_kv.
struct AttentionShape {
  int64_t q_len = 0;
  int64_t kv_len = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  float scale = 0;  // usually 1 / sqrt(head_dim)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // y[t,n] = x[t,k] * w^T with w [n,k] (PyTorch Linear layout).
  virtual void matmul(const float* x, const float* w, float* y, int64_t t, int64_t k,
                      int64_t n) = 0;
  // The same with w stored quantized: rows are decoded to f32 a tile at a
  // time, never the whole matrix. Caching decoded weights is the caller's call.
  virtual void matmul(const float* x, const QuantMatrix& w, float* y, int64_t t) = 0;

  // y = x / sqrt(mean(x^2) + eps) * weight per row of dim; weight may be null
  // (no scale). y may alias x.
  virtual void rms_norm(const float* x, const float* weight, float* y, int64_t rows, int64_t dim,
                        float eps) = 0;
  // y[r, :] += bias for each of rows rows of n.
  virtual void add_bias(float* y, const float* bias, int64_t rows, int64_t n) = 0;
  // y += x (residual connection).
  virtual void add(float* y, const float* x, int64_t count) = 0;
  // out = silu(gate) * up (SwiGLU); out may alias gate or up.
  virtual void swiglu(const float* gate, const float* up, float* out, int64_t count) = 0;
  // In-place softmax of each row.
  virtual void softmax_rows(float* x, int64_t rows, int64_t cols) = 0;
  // NEOX-style rotation (HF rotate_half) of x [tokens, heads, head_dim] in
  // place; table has one row per token.
  virtual void rope(float* x, int64_t tokens, int64_t heads, int64_t head_dim,
                    const RopeTable& table) = 0;
  virtual void attention(const AttentionShape& s, const float* q, const float* k, const float* v,
                         float* out) = 0;
  // MoE routing per row of router logits [rows, n_experts]: softmax, then the
  // k largest probabilities (ties to the lower expert id), in descending order,
  // optionally rescaled to sum to 1. ids, weights: [rows, k].
  virtual void topk_gating(const float* logits, int64_t rows, int64_t n_experts, int k,
                           bool renormalize, int32_t* ids, float* weights) = 0;
};

// Decodes rows x cols of GGML blocks to f32 (the signature of dequantize_rows).
using DequantizeRowsFn = void (*)(GgmlType, const void*, float*, int64_t rows, int64_t cols,
                                  int threads);

struct CpuOptions {
  GemmImpl gemm = default_gemm();
  int threads = 0;  // 0 = every core
  // Weight rows decoded per step of the quantized matmul; bounds its scratch
  // to tile_rows * cols floats.
  int64_t tile_rows = 256;
  // nullptr = tailor::dequantize_rows.
  DequantizeRowsFn dequantize = nullptr;
};

std::unique_ptr<Backend> make_cpu_backend(const CpuOptions& options = {});

}  // namespace tailor::engine
