// A differentiable copy of the engine's dense transformer block
// (engine::Model::run_block): forward over stacked sequences keeping what the
// backward needs, and hand-derived gradients of the block's linear weights,
// for training the rounding of a quantized block against the float one.
//
// Templated on the scalar so the tests can check every backward against
// central differences in double; production runs float (GEMMs through
// engine::sgemm_ex, elementwise loops over util/parallel.h).
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "tailor/engine/gemm.h"

namespace tailor::engine {
class Model;
}

namespace tailor::gradual {

enum Lin { kQ, kK, kV, kO, kGate, kUp, kDown, kNumLin };
// The weight's GGUF name part: blk.N.<name>.weight.
const char* lin_name(int i);

struct BlockDims {
  int64_t dim = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, ff = 0;
  float eps = 1e-6f;
  bool qk_norm = false;
  std::vector<double> inv_freq;  // rope: rot_dim / 2 frequencies, rot_dim <= head_dim

  // Output and input features of a linear weight ([out][in]).
  int64_t lin_out(int i) const;
  int64_t lin_in(int i) const;
};
BlockDims block_dims(engine::Model& m);

// Non-owning views, PyTorch layout [out][in].
template <typename T>
struct BasicBlockParams {
  std::array<const T*, kNumLin> w{};
  const T* attn_norm = nullptr;
  const T* ffn_norm = nullptr;
  const T* q_norm = nullptr;  // qwen3 family only
  const T* k_norm = nullptr;
};
using BlockParams = BasicBlockParams<float>;
// Views of a loaded model's f32 weights for one dense layer; Error for MoE
// layers, biases, or weights kept quantized (load with dequantize = true).
BlockParams block_params(engine::Model& m, int64_t layer);

// How the ops run: GEMM library and threads (0 = every core).
struct Exec {
  engine::GemmImpl gemm = engine::default_gemm();
  int threads = 0;
};

template <typename T>
class BasicBlockTape {
 public:
  explicit BasicBlockTape(BlockDims d, Exec ex = {});

  // y[rows][dim] = block(x) for sequences of `lengths` stacked row-wise (each
  // starts at position 0), keeping what backward needs. y may alias x.
  void forward(const BasicBlockParams<T>& p, const T* x, std::span<const int64_t> lengths, T* y);
  // The MLP half again from the attention half's output kept by the last
  // forward: valid while x and the attention weights are unchanged since, so
  // training only the MLP weights skips attention (about 40% of a forward).
  void forward_mlp(const BasicBlockParams<T>& p, T* y);
  // After forward: gradients of L = sum(dy * y) w.r.t. each linear weight
  // whose grads[i] != nullptr ([out][in], overwritten), and w.r.t. the
  // block's input x when dx != nullptr ([rows][dim]; may alias dy), so
  // gradients can flow on to earlier blocks, and w.r.t. the attention and
  // MLP norm weights when d_attn_norm / d_ffn_norm != nullptr ([dim]). Only
  // the part of the backward those outputs need runs (MLP-only grads skip
  // attention).
  void backward(const BasicBlockParams<T>& p, const T* dy, std::array<T*, kNumLin> grads,
                T* dx = nullptr, T* d_attn_norm = nullptr, T* d_ffn_norm = nullptr);

  const BlockDims& dims() const { return d_; }

 private:
  BlockDims d_;
  Exec ex_;
  std::vector<int64_t> lengths_;
  int64_t rows_ = 0;
  // Forward tape.
  std::vector<T> cos_, sin_, x_, xn1_, qraw_, kraw_, q_, k_, v_, probs_, att_, h_, xn2_, g_, u_, a_;
  // Backward scratch.
  std::vector<T> da_, dg_, du_, dxn_, dh_, datt_, dq_, dk_, dv_, dqraw_, dkraw_, dp_;
};
using BlockTape = BasicBlockTape<float>;
extern template class BasicBlockTape<float>;
extern template class BasicBlockTape<double>;

// The block's operations one by one (exposed for the finite-difference tests).
// Rows are stacked tokens; every backward takes the forward's inputs again.
namespace ops {

// C[m,n] = op(A) op(B) + beta C, row-major, op = transpose when asked
// (A^T: A stored [k,m]; B^T: B stored [n,k]). threads < 0: ex.threads.
template <typename T>
void gemm(const Exec& ex, bool at, bool bt, int64_t m, int64_t n, int64_t k, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, int threads = -1);

// y = x W^T; dx = dy W; dW = dy^T x (W [out][in]).
template <typename T>
void linear(const Exec& ex, const T* x, const T* w, T* y, int64_t rows, int64_t in, int64_t out);
template <typename T>
void linear_backward_input(const Exec& ex, const T* dy, const T* w, T* dx, int64_t rows,
                           int64_t in, int64_t out, T beta = 0);
template <typename T>
void linear_backward_weight(const Exec& ex, const T* dy, const T* x, T* dw, int64_t rows,
                            int64_t in, int64_t out);

// y = x / sqrt(mean(x^2) + eps) * w per row of dim (y may alias x).
template <typename T>
void rms_norm(const Exec& ex, const T* x, const T* w, T* y, int64_t rows, int64_t dim, float eps);
// dx (not aliasing dy) from dy, for the norm's input x.
template <typename T>
void rms_norm_backward(const Exec& ex, const T* x, const T* w, const T* dy, T* dx, int64_t rows,
                       int64_t dim, float eps);
// dw [dim] (overwritten): the gradient w.r.t. the norm's weight,
// sum over rows of dy * x / rms(x).
template <typename T>
void rms_norm_weight_backward(const Exec& ex, const T* x, const T* dy, T* dw, int64_t rows, int64_t dim,
                              float eps);

// NeoX rotation (rotate_half) in place of x [tokens][heads][head_dim], the
// first 2*half elements of each head, by cos/sin [tokens][half]. The rotation
// is orthogonal, so its backward is the inverse rotation (inverse = true).
template <typename T>
void rope(const Exec& ex, T* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t half,
          const T* cos, const T* sin, bool inverse);

// out = silu(g) * u; dg, du from dout.
template <typename T>
void swiglu(const Exec& ex, const T* g, const T* u, T* out, int64_t n);
template <typename T>
void swiglu_backward(const Exec& ex, const T* g, const T* u, const T* dout, T* dg, T* du,
                     int64_t n);

struct AttnDims {
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0;
};
// Values of probs for a batch of `lengths`: n_heads * len^2 per sequence.
int64_t attention_probs_size(const AttnDims& a, std::span<const int64_t> lengths);
// Causal GQA attention per sequence, scale 1/sqrt(head_dim): q, out
// [rows][n_heads][head_dim]; k, v [rows][n_kv_heads][head_dim]; probs keeps
// the softmax rows (zero above the diagonal) for the backward.
template <typename T>
void attention(const Exec& ex, const AttnDims& a, std::span<const int64_t> lengths, const T* q,
               const T* k, const T* v, T* probs, T* out);
// dq, dk, dv (each overwritten, skipped when nullptr) from dout; scratch
// holds attention_probs_size values.
template <typename T>
void attention_backward(const Exec& ex, const AttnDims& a, std::span<const int64_t> lengths,
                        const T* q, const T* k, const T* v, const T* probs, const T* dout, T* dq,
                        T* dk, T* dv, T* scratch);

}  // namespace ops
}  // namespace tailor::gradual
