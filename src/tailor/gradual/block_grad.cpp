#include "tailor/gradual/block_grad.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "tailor/engine/model.h"
#include "tailor/util/error.h"
#include "tailor/util/parallel.h"

namespace tailor::gradual {
namespace {

// Starting threads costs tens of microseconds: small loops stay on the caller.
constexpr int64_t kMinParallelWork = 1 << 15;

int threads_for(const Exec& ex, int64_t work) {
  return work < kMinParallelWork ? 1 : (ex.threads > 0 ? ex.threads : default_threads());
}

// fn(r) for r in [0, n), split over threads when n * cost is enough work.
template <typename Fn>
void each(const Exec& ex, int64_t n, int64_t cost, Fn&& fn) {
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) fn(r);
  }, threads_for(ex, n * cost));
}

// At least n values of a reused buffer (no shrinking, so steady-state training
// steps allocate nothing).
template <typename T>
T* grow(std::vector<T>& v, int64_t n) {
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
  return v.data();
}

template <typename T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename T>
T attention_scale(int64_t head_dim) {
  return static_cast<T>(1.0 / std::sqrt(static_cast<double>(head_dim)));
}

}  // namespace

const char* lin_name(int i) {
  static constexpr const char* kNames[kNumLin] = {"attn_q",   "attn_k",  "attn_v",  "attn_output",
                                                  "ffn_gate", "ffn_up",  "ffn_down"};
  if (i < 0 || i >= kNumLin) fail("gradual: linear index {} is outside 0..{}", i, kNumLin - 1);
  return kNames[i];
}

int64_t BlockDims::lin_out(int i) const {
  switch (i) {
    case kQ: return n_heads * head_dim;
    case kK:
    case kV: return n_kv_heads * head_dim;
    case kO: case kDown: return dim;
    case kGate: case kUp: return ff;
  }
  fail("gradual: linear index {} is outside 0..{}", i, kNumLin - 1);
}

int64_t BlockDims::lin_in(int i) const {
  switch (i) {
    case kQ: case kK: case kV: case kGate: case kUp: return dim;
    case kO: return n_heads * head_dim;
    case kDown: return ff;
  }
  fail("gradual: linear index {} is outside 0..{}", i, kNumLin - 1);
}

BlockDims block_dims(engine::Model& m) {
  const ModelConfig& c = m.config();
  BlockDims d;
  d.dim = c.hidden_size;
  d.n_heads = c.num_heads;
  d.n_kv_heads = c.num_kv_heads;
  d.head_dim = c.head_dim;
  d.ff = c.intermediate_size;
  d.eps = static_cast<float>(c.rms_norm_eps);
  d.qk_norm = c.qk_norm;
  d.inv_freq = m.rope_inv_freq();
  return d;
}

BlockParams block_params(engine::Model& m, int64_t layer) {
  const ModelConfig& c = m.config();
  if (layer < 0 || layer >= c.num_layers)
    fail("gradual: block {} is outside 0..{}", layer, c.num_layers - 1);
  if (c.layer_is_moe(layer))
    fail("gradual: block {} is a mixture of experts (only dense blocks are supported)", layer);
  const std::string p = "blk." + std::to_string(layer) + ".";
  const BlockDims d = block_dims(m);
  auto f32 = [&](const std::string& name, int64_t rows, int64_t cols) -> const float* {
    const engine::Weight& w = m.weight(name);
    if (w.quantized())
      fail("gradual: {} is kept quantized; load the model with dequantize = true", name);
    if (w.numel() != rows * cols || w.cols() != cols)
      fail("gradual: {} has {} values, expected {}x{}", name, w.numel(), rows, cols);
    return w.f32.data();
  };
  BlockParams bp;
  for (int i = 0; i < kNumLin; ++i) {
    const std::string base = p + lin_name(i);
    if (m.find_weight(base + ".bias") != nullptr)
      fail("gradual: {}.bias: linear biases are not supported", base);
    bp.w[i] = f32(base + ".weight", d.lin_out(i), d.lin_in(i));
  }
  bp.attn_norm = f32(p + "attn_norm.weight", 1, d.dim);
  bp.ffn_norm = f32(p + "ffn_norm.weight", 1, d.dim);
  if (d.qk_norm) {
    bp.q_norm = f32(p + "attn_q_norm.weight", 1, d.head_dim);
    bp.k_norm = f32(p + "attn_k_norm.weight", 1, d.head_dim);
  }
  return bp;
}

namespace ops {

template <typename T>
void gemm(const Exec& ex, bool at, bool bt, int64_t m, int64_t n, int64_t k, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, int threads) {
  if (threads < 0) threads = ex.threads;
  if constexpr (std::is_same_v<T, float>) {
    engine::sgemm_ex(ex.gemm, at, bt, m, n, k, a, lda, b, ldb, beta, c, ldc, threads);
  } else {
    // The double path only serves the finite-difference tests: plain loops.
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        T s = 0;
        for (int64_t p = 0; p < k; ++p)
          s += (at ? a[p * lda + i] : a[i * lda + p]) * (bt ? b[j * ldb + p] : b[p * ldb + j]);
        c[i * ldc + j] = (beta == T(0) ? T(0) : beta * c[i * ldc + j]) + s;
      }
  }
}

template <typename T>
void linear(const Exec& ex, const T* x, const T* w, T* y, int64_t rows, int64_t in, int64_t out) {
  gemm<T>(ex, false, true, rows, out, in, x, in, w, in, T(0), y, out);
}

template <typename T>
void linear_backward_input(const Exec& ex, const T* dy, const T* w, T* dx, int64_t rows,
                           int64_t in, int64_t out, T beta) {
  gemm<T>(ex, false, false, rows, in, out, dy, out, w, in, beta, dx, in);
}

template <typename T>
void linear_backward_weight(const Exec& ex, const T* dy, const T* x, T* dw, int64_t rows,
                            int64_t in, int64_t out) {
  gemm<T>(ex, true, false, out, in, rows, dy, out, x, in, T(0), dw, in);
}

// The reciprocal RMS of a row, accumulated in double as the engine does.
template <typename T>
T inv_rms(const T* x, int64_t dim, float eps) {
  double ss = 0;
  for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[i]) * x[i];
  return static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
}

template <typename T>
void rms_norm(const Exec& ex, const T* x, const T* w, T* y, int64_t rows, int64_t dim, float eps) {
  each(ex, rows, dim, [&](int64_t r) {
    const T* xr = x + r * dim;
    T* yr = y + r * dim;
    const T inv = inv_rms(xr, dim, eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv * w[i];
  });
}

// y_i = x_i r w_i with r = (sum x^2 / n + eps)^(-1/2), so dr/dx_i = -r^3 x_i / n
// and dx_i = r w_i dy_i - x_i r^3 / n * sum_j w_j dy_j x_j.
template <typename T>
void rms_norm_backward(const Exec& ex, const T* x, const T* w, const T* dy, T* dx, int64_t rows,
                       int64_t dim, float eps) {
  each(ex, rows, dim * 2, [&](int64_t r) {
    const T* xr = x + r * dim;
    const T* dyr = dy + r * dim;
    T* dxr = dx + r * dim;
    const T inv = inv_rms(xr, dim, eps);
    double dot = 0;
    for (int64_t i = 0; i < dim; ++i) dot += static_cast<double>(w[i]) * dyr[i] * xr[i];
    const T c = static_cast<T>(dot * inv * inv * inv / static_cast<double>(dim));
    for (int64_t i = 0; i < dim; ++i) dxr[i] = inv * w[i] * dyr[i] - xr[i] * c;
  });
}

template <typename T>
void rms_norm_weight_backward(const Exec& ex, const T* x, const T* dy, T* dw, int64_t rows, int64_t dim,
                              float eps) {
  std::vector<T> inv(static_cast<size_t>(rows));
  each(ex, rows, dim, [&](int64_t r) { inv[static_cast<size_t>(r)] = inv_rms(x + r * dim, dim, eps); });
  each(ex, dim, rows, [&](int64_t j) {
    double s = 0;
    for (int64_t r = 0; r < rows; ++r)
      s += static_cast<double>(dy[r * dim + j]) * x[r * dim + j] * inv[static_cast<size_t>(r)];
    dw[j] = static_cast<T>(s);
  });
}

template <typename T>
void rope(const Exec& ex, T* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t half,
          const T* cos, const T* sin, bool inverse) {
  const T sign = inverse ? T(-1) : T(1);
  each(ex, tokens, heads * head_dim, [&](int64_t t) {
    const T* c = cos + t * half;
    const T* s = sin + t * half;
    for (int64_t h = 0; h < heads; ++h) {
      T* lo = x + (t * heads + h) * head_dim;
      T* hi = lo + half;
      for (int64_t i = 0; i < half; ++i) {
        const T a = lo[i], b = hi[i], si = sign * s[i];
        lo[i] = a * c[i] - b * si;
        hi[i] = b * c[i] + a * si;
      }
    }
  });
}

template <typename T>
void swiglu(const Exec& ex, const T* g, const T* u, T* out, int64_t n) {
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = g[i] * sigmoid(g[i]) * u[i];
  }, threads_for(ex, n));
}

// silu'(g) = s + g s (1 - s) with s = sigmoid(g).
template <typename T>
void swiglu_backward(const Exec& ex, const T* g, const T* u, const T* dout, T* dg, T* du,
                     int64_t n) {
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T s = sigmoid(g[i]);
      du[i] = dout[i] * g[i] * s;
      dg[i] = dout[i] * u[i] * (s + g[i] * s * (T(1) - s));
    }
  }, threads_for(ex, n * 4));
}

int64_t attention_probs_size(const AttnDims& a, std::span<const int64_t> lengths) {
  int64_t n = 0;
  for (int64_t len : lengths) n += a.n_heads * len * len;
  return n;
}

namespace {

// Where sequence b's rows and probability matrices start.
struct SeqOffsets {
  std::vector<int64_t> row, prob;
};

SeqOffsets seq_offsets(const AttnDims& a, std::span<const int64_t> lengths) {
  SeqOffsets o;
  int64_t r = 0, p = 0;
  for (int64_t len : lengths) {
    o.row.push_back(r);
    o.prob.push_back(p);
    r += len;
    p += a.n_heads * len * len;
  }
  return o;
}

void check_attn(const AttnDims& a) {
  if (a.n_heads <= 0 || a.n_kv_heads <= 0 || a.head_dim <= 0 || a.n_heads % a.n_kv_heads != 0)
    fail("gradual attention: {} heads over {} kv heads of {} do not group evenly", a.n_heads,
         a.n_kv_heads, a.head_dim);
}

}  // namespace

template <typename T>
void attention(const Exec& ex, const AttnDims& a, std::span<const int64_t> lengths, const T* q,
               const T* k, const T* v, T* probs, T* out) {
  check_attn(a);
  const SeqOffsets off = seq_offsets(a, lengths);
  const int64_t hd = a.head_dim, qs = a.n_heads * hd, ks = a.n_kv_heads * hd;
  const int64_t group = a.n_heads / a.n_kv_heads;
  const T scale = attention_scale<T>(hd);
  const int64_t n_seq = static_cast<int64_t>(lengths.size());
  int64_t work = 0;
  for (int64_t len : lengths) work += a.n_heads * len * len * hd;
  // One (sequence, head) per task with a single-threaded GEMM inside, so the
  // threads never nest.
  parallel_for(n_seq * a.n_heads, [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t s = task / a.n_heads, h = task % a.n_heads, j = h / group;
      const int64_t len = lengths[static_cast<size_t>(s)], r0 = off.row[static_cast<size_t>(s)];
      T* p = probs + off.prob[static_cast<size_t>(s)] + h * len * len;
      const T* qh = q + r0 * qs + h * hd;
      const T* kj = k + r0 * ks + j * hd;
      const T* vj = v + r0 * ks + j * hd;
      gemm<T>(ex, false, true, len, len, hd, qh, qs, kj, ks, T(0), p, len, 1);
      for (int64_t r = 0; r < len; ++r) {
        T* pr = p + r * len;
        T mx = pr[0];
        for (int64_t c = 1; c <= r; ++c) mx = std::max(mx, pr[c]);
        T sum = 0;
        for (int64_t c = 0; c <= r; ++c) sum += (pr[c] = std::exp((pr[c] - mx) * scale));
        const T inv = T(1) / sum;
        for (int64_t c = 0; c <= r; ++c) pr[c] *= inv;
        std::fill(pr + r + 1, pr + len, T(0));
      }
      gemm<T>(ex, false, false, len, hd, len, p, len, vj, ks, T(0), out + r0 * qs + h * hd, qs, 1);
    }
  }, threads_for(ex, work));
}

// With S = scale Q K^T, P = softmax(S) (causal) and O = P V:
// dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = scale dS K,
// dK = scale dS^T Q; a kv head sums over the query heads of its group.
template <typename T>
void attention_backward(const Exec& ex, const AttnDims& a, std::span<const int64_t> lengths,
                        const T* q, const T* k, const T* v, const T* probs, const T* dout, T* dq,
                        T* dk, T* dv, T* scratch) {
  check_attn(a);
  const SeqOffsets off = seq_offsets(a, lengths);
  const int64_t hd = a.head_dim, qs = a.n_heads * hd, ks = a.n_kv_heads * hd;
  const int64_t group = a.n_heads / a.n_kv_heads;
  const T scale = attention_scale<T>(hd);
  const bool need_ds = dq != nullptr || dk != nullptr;
  const int64_t n_seq = static_cast<int64_t>(lengths.size());
  int64_t work = 0;
  for (int64_t len : lengths) work += a.n_heads * len * len * hd;
  // One (sequence, kv head) per task: the heads of a group add into the same
  // dK, dV rows, so they stay on one thread.
  parallel_for(n_seq * a.n_kv_heads, [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t s = task / a.n_kv_heads, j = task % a.n_kv_heads;
      const int64_t len = lengths[static_cast<size_t>(s)], r0 = off.row[static_cast<size_t>(s)];
      const T* kj = k + r0 * ks + j * hd;
      const T* vj = v + r0 * ks + j * hd;
      for (int64_t gi = 0; gi < group; ++gi) {
        const int64_t h = j * group + gi;
        const T beta = gi == 0 ? T(0) : T(1);
        const T* p = probs + off.prob[static_cast<size_t>(s)] + h * len * len;
        T* dp = scratch + off.prob[static_cast<size_t>(s)] + h * len * len;
        const T* doh = dout + r0 * qs + h * hd;
        if (dv != nullptr)
          gemm<T>(ex, true, false, len, hd, len, p, len, doh, qs, beta, dv + r0 * ks + j * hd, ks, 1);
        if (!need_ds) continue;
        gemm<T>(ex, false, true, len, len, hd, doh, qs, vj, ks, T(0), dp, len, 1);
        for (int64_t r = 0; r < len; ++r) {
          const T* pr = p + r * len;
          T* dr = dp + r * len;
          T dot = 0;
          for (int64_t c = 0; c <= r; ++c) dot += pr[c] * dr[c];
          for (int64_t c = 0; c <= r; ++c) dr[c] = scale * pr[c] * (dr[c] - dot);
          std::fill(dr + r + 1, dr + len, T(0));
        }
        if (dq != nullptr)
          gemm<T>(ex, false, false, len, hd, len, dp, len, kj, ks, T(0), dq + r0 * qs + h * hd, qs, 1);
        if (dk != nullptr)
          gemm<T>(ex, true, false, len, hd, len, dp, len, q + r0 * qs + h * hd, qs, beta,
                  dk + r0 * ks + j * hd, ks, 1);
      }
    }
  }, threads_for(ex, work * 3));
}

#define TAILOR_GRADUAL_OPS(T)                                                                     \
  template void gemm<T>(const Exec&, bool, bool, int64_t, int64_t, int64_t, const T*, int64_t,    \
                        const T*, int64_t, T, T*, int64_t, int);                                  \
  template void linear<T>(const Exec&, const T*, const T*, T*, int64_t, int64_t, int64_t);        \
  template void linear_backward_input<T>(const Exec&, const T*, const T*, T*, int64_t, int64_t,   \
                                         int64_t, T);                                             \
  template void linear_backward_weight<T>(const Exec&, const T*, const T*, T*, int64_t, int64_t,  \
                                          int64_t);                                               \
  template void rms_norm<T>(const Exec&, const T*, const T*, T*, int64_t, int64_t, float);        \
  template void rms_norm_backward<T>(const Exec&, const T*, const T*, const T*, T*, int64_t,      \
                                     int64_t, float);                                             \
  template void rms_norm_weight_backward<T>(const Exec&, const T*, const T*, T*, int64_t, int64_t, \
                                            float);                                               \
  template void rope<T>(const Exec&, T*, int64_t, int64_t, int64_t, int64_t, const T*, const T*,  \
                        bool);                                                                    \
  template void swiglu<T>(const Exec&, const T*, const T*, T*, int64_t);                          \
  template void swiglu_backward<T>(const Exec&, const T*, const T*, const T*, T*, T*, int64_t);   \
  template void attention<T>(const Exec&, const AttnDims&, std::span<const int64_t>, const T*,    \
                             const T*, const T*, T*, T*);                                         \
  template void attention_backward<T>(const Exec&, const AttnDims&, std::span<const int64_t>,     \
                                      const T*, const T*, const T*, const T*, const T*, T*, T*,   \
                                      T*, T*);
TAILOR_GRADUAL_OPS(float)
TAILOR_GRADUAL_OPS(double)
#undef TAILOR_GRADUAL_OPS

}  // namespace ops

template <typename T>
BasicBlockTape<T>::BasicBlockTape(BlockDims d, Exec ex) : d_(std::move(d)), ex_(ex) {
  const int64_t half = static_cast<int64_t>(d_.inv_freq.size());
  if (d_.dim <= 0 || d_.n_heads <= 0 || d_.n_kv_heads <= 0 || d_.head_dim <= 0 || d_.ff <= 0 ||
      d_.n_heads % d_.n_kv_heads != 0)
    fail("gradual block: bad dims dim={} heads={} kv_heads={} head_dim={} ff={}", d_.dim,
         d_.n_heads, d_.n_kv_heads, d_.head_dim, d_.ff);
  if (half <= 0 || 2 * half > d_.head_dim)
    fail("gradual block: {} rope frequencies do not fit head_dim {}", half, d_.head_dim);
}

template <typename T>
void BasicBlockTape<T>::forward(const BasicBlockParams<T>& p, const T* x,
                                std::span<const int64_t> lengths, T* y) {
  for (int i = 0; i < kNumLin; ++i)
    if (p.w[i] == nullptr) fail("gradual block: weight {} is missing", lin_name(i));
  if (p.attn_norm == nullptr || p.ffn_norm == nullptr ||
      (d_.qk_norm && (p.q_norm == nullptr || p.k_norm == nullptr)))
    fail("gradual block: a norm weight is missing");
  if (lengths.empty() || std::any_of(lengths.begin(), lengths.end(), [](int64_t n) { return n <= 0; }))
    fail("gradual block: the batch needs sequences of positive lengths");
  const int64_t D = d_.dim, hd = d_.head_dim;
  const int64_t qd = d_.n_heads * hd, kd = d_.n_kv_heads * hd;
  const int64_t half = static_cast<int64_t>(d_.inv_freq.size());
  int64_t rows = 0;
  for (int64_t len : lengths) rows += len;

  // The rope table of this batch layout, as the engine builds it (angles in
  // double, rounded once).
  if (!std::equal(lengths.begin(), lengths.end(), lengths_.begin(), lengths_.end())) {
    lengths_.assign(lengths.begin(), lengths.end());
    cos_.resize(static_cast<size_t>(rows * half));
    sin_.resize(cos_.size());
    int64_t t = 0;
    for (int64_t len : lengths)
      for (int64_t pos = 0; pos < len; ++pos, ++t)
        for (int64_t i = 0; i < half; ++i) {
          const double angle = static_cast<double>(pos) * d_.inv_freq[static_cast<size_t>(i)];
          cos_[static_cast<size_t>(t * half + i)] = static_cast<T>(std::cos(angle));
          sin_[static_cast<size_t>(t * half + i)] = static_cast<T>(std::sin(angle));
        }
  }
  rows_ = rows;

  T* xs = grow(x_, rows * D);
  std::copy_n(x, rows * D, xs);
  T* xn1 = grow(xn1_, rows * D);
  T* q = grow(q_, rows * qd);
  T* k = grow(k_, rows * kd);
  T* v = grow(v_, rows * kd);
  T* qr = d_.qk_norm ? grow(qraw_, rows * qd) : q;
  T* kr = d_.qk_norm ? grow(kraw_, rows * kd) : k;
  ops::rms_norm(ex_, xs, p.attn_norm, xn1, rows, D, d_.eps);
  ops::linear(ex_, xn1, p.w[kQ], qr, rows, D, qd);
  ops::linear(ex_, xn1, p.w[kK], kr, rows, D, kd);
  ops::linear(ex_, xn1, p.w[kV], v, rows, D, kd);
  if (d_.qk_norm) {
    ops::rms_norm(ex_, qr, p.q_norm, q, rows * d_.n_heads, hd, d_.eps);
    ops::rms_norm(ex_, kr, p.k_norm, k, rows * d_.n_kv_heads, hd, d_.eps);
  }
  ops::rope(ex_, q, rows, d_.n_heads, hd, half, cos_.data(), sin_.data(), false);
  ops::rope(ex_, k, rows, d_.n_kv_heads, hd, half, cos_.data(), sin_.data(), false);
  const ops::AttnDims ad{d_.n_heads, d_.n_kv_heads, hd};
  T* att = grow(att_, rows * qd);
  ops::attention(ex_, ad, lengths, q, k, v, grow(probs_, ops::attention_probs_size(ad, lengths)),
                 att);
  T* h = grow(h_, rows * D);
  ops::linear(ex_, att, p.w[kO], h, rows, qd, D);
  each(ex_, rows, D, [&](int64_t r) {
    for (int64_t i = r * D; i < (r + 1) * D; ++i) h[i] += xs[i];
  });
  forward_mlp(p, y);
}

template <typename T>
void BasicBlockTape<T>::forward_mlp(const BasicBlockParams<T>& p, T* y) {
  if (rows_ == 0) fail("gradual block: forward_mlp before forward");
  const int64_t rows = rows_, D = d_.dim, F = d_.ff;
  const T* h = h_.data();
  T* xn2 = grow(xn2_, rows * D);
  T* g = grow(g_, rows * F);
  T* u = grow(u_, rows * F);
  T* a = grow(a_, rows * F);
  ops::rms_norm(ex_, h, p.ffn_norm, xn2, rows, D, d_.eps);
  ops::linear(ex_, xn2, p.w[kGate], g, rows, D, F);
  ops::linear(ex_, xn2, p.w[kUp], u, rows, D, F);
  ops::swiglu(ex_, g, u, a, rows * F);
  ops::linear(ex_, a, p.w[kDown], y, rows, F, D);
  each(ex_, rows, D, [&](int64_t r) {
    for (int64_t i = r * D; i < (r + 1) * D; ++i) y[i] += h[i];
  });
}

template <typename T>
void BasicBlockTape<T>::backward(const BasicBlockParams<T>& p, const T* dy,
                                 std::array<T*, kNumLin> grads, T* dx, T* d_attn_norm,
                                 T* d_ffn_norm) {
  if (rows_ == 0) fail("gradual block: backward before forward");
  const int64_t rows = rows_, D = d_.dim, F = d_.ff, hd = d_.head_dim;
  const int64_t qd = d_.n_heads * hd, kd = d_.n_kv_heads * hd;
  const int64_t half = static_cast<int64_t>(d_.inv_freq.size());
  auto asked = [&](int i) { return grads[i] != nullptr; };
  const bool need_xn1 = dx != nullptr || d_attn_norm != nullptr;  // the gradient at the attention norm's output
  const bool need_qk = asked(kQ) || asked(kK) || need_xn1;
  const bool need_v = asked(kV) || need_xn1;
  const bool need_qkv = need_qk || need_v;
  const bool need_attn = need_qkv || asked(kO) || d_ffn_norm != nullptr;
  const bool need_mlp = need_attn || asked(kGate) || asked(kUp);

  // y = h + down(a): the residual passes dy to h unchanged.
  if (asked(kDown)) ops::linear_backward_weight(ex_, dy, a_.data(), grads[kDown], rows, F, D);
  if (!need_mlp) return;
  T* da = grow(da_, rows * F);
  T* dg = grow(dg_, rows * F);
  T* du = grow(du_, rows * F);
  ops::linear_backward_input(ex_, dy, p.w[kDown], da, rows, F, D);
  ops::swiglu_backward(ex_, g_.data(), u_.data(), da, dg, du, rows * F);
  if (asked(kGate)) ops::linear_backward_weight(ex_, dg, xn2_.data(), grads[kGate], rows, D, F);
  if (asked(kUp)) ops::linear_backward_weight(ex_, du, xn2_.data(), grads[kUp], rows, D, F);
  if (!need_attn) return;

  // h = x + o(att) feeds both the MLP's norm and the output residual.
  T* dxn = grow(dxn_, rows * D);
  T* dh = grow(dh_, rows * D);
  ops::linear_backward_input(ex_, dg, p.w[kGate], dxn, rows, D, F);
  ops::linear_backward_input(ex_, du, p.w[kUp], dxn, rows, D, F, T(1));
  ops::rms_norm_backward(ex_, h_.data(), p.ffn_norm, dxn, dh, rows, D, d_.eps);
  if (d_ffn_norm != nullptr) ops::rms_norm_weight_backward(ex_, h_.data(), dxn, d_ffn_norm, rows, D, d_.eps);
  each(ex_, rows, D, [&](int64_t r) {
    for (int64_t i = r * D; i < (r + 1) * D; ++i) dh[i] += dy[i];
  });
  if (asked(kO)) ops::linear_backward_weight(ex_, dh, att_.data(), grads[kO], rows, qd, D);
  if (!need_qkv) return;

  T* datt = grow(datt_, rows * qd);
  ops::linear_backward_input(ex_, dh, p.w[kO], datt, rows, qd, D);
  T* dq = need_qk ? grow(dq_, rows * qd) : nullptr;
  T* dk = need_qk ? grow(dk_, rows * kd) : nullptr;
  T* dv = need_v ? grow(dv_, rows * kd) : nullptr;
  const ops::AttnDims ad{d_.n_heads, d_.n_kv_heads, hd};
  ops::attention_backward(ex_, ad, lengths_, q_.data(), k_.data(), v_.data(), probs_.data(), datt,
                          dq, dk, dv, grow(dp_, ops::attention_probs_size(ad, lengths_)));
  if (asked(kV)) ops::linear_backward_weight(ex_, dv, xn1_.data(), grads[kV], rows, D, kd);
  if (!need_qk) return;

  ops::rope(ex_, dq, rows, d_.n_heads, hd, half, cos_.data(), sin_.data(), true);
  ops::rope(ex_, dk, rows, d_.n_kv_heads, hd, half, cos_.data(), sin_.data(), true);
  if (d_.qk_norm) {
    T* dqr = grow(dqraw_, rows * qd);
    T* dkr = grow(dkraw_, rows * kd);
    ops::rms_norm_backward(ex_, qraw_.data(), p.q_norm, dq, dqr, rows * d_.n_heads, hd, d_.eps);
    ops::rms_norm_backward(ex_, kraw_.data(), p.k_norm, dk, dkr, rows * d_.n_kv_heads, hd, d_.eps);
    dq = dqr;
    dk = dkr;
  }
  if (asked(kQ)) ops::linear_backward_weight(ex_, dq, xn1_.data(), grads[kQ], rows, D, qd);
  if (asked(kK)) ops::linear_backward_weight(ex_, dk, xn1_.data(), grads[kK], rows, D, kd);
  if (!need_xn1) return;

  // x feeds the attention's norm and the residual: dx = norm'(dq Wq + dk Wk + dv Wv) + dh.
  ops::linear_backward_input(ex_, dq, p.w[kQ], dxn, rows, D, qd);
  ops::linear_backward_input(ex_, dk, p.w[kK], dxn, rows, D, kd, T(1));
  ops::linear_backward_input(ex_, dv, p.w[kV], dxn, rows, D, kd, T(1));
  if (d_attn_norm != nullptr) ops::rms_norm_weight_backward(ex_, x_.data(), dxn, d_attn_norm, rows, D, d_.eps);
  if (dx == nullptr) return;
  ops::rms_norm_backward(ex_, x_.data(), p.attn_norm, dxn, dx, rows, D, d_.eps);
  each(ex_, rows, D, [&](int64_t r) {
    for (int64_t i = r * D; i < (r + 1) * D; ++i) dx[i] += dh[i];
  });
}

template class BasicBlockTape<float>;
template class BasicBlockTape<double>;

}  // namespace tailor::gradual
