// The CPU backend: GEMM through the selected BLAS, everything else as plain
// loops split over threads with tailor::parallel_for.
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "tailor/engine/backend.h"
#include "tailor/quant/codec.h"
#include "tailor/util/error.h"
#include "tailor/util/parallel.h"

namespace tailor::engine {
namespace {

// Starting threads costs tens of microseconds: small jobs (one token while
// decoding) run on the calling thread.
constexpr int64_t kMinParallelWork = 1 << 15;

// e^x for the softmax and SiLU loops. std::exp is a library call the compiler
// cannot vectorise; this is branch-free, so those loops vectorise. x = n ln2
// + r with |r| <= ln2/2, e^r by its degree-7 Taylor polynomial (truncation
// below 1e-8 relative), 2^n built in the exponent bits. Inputs are clamped
// to the range where 2^n is a normal float: e^-87 is 1.6e-38, below any
// weight that survives a softmax sum, and e^88 only ever divides.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  constexpr float kLog2e = 1.44269504f, kRound = 12582912.0f;  // 1.5 * 2^23
  const float n = (x * kLog2e + kRound) - kRound;                  // round to nearest
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 split hi - lo
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuOptions& o) : opt_(o) {
    if (opt_.threads <= 0) opt_.threads = default_threads();
    if (opt_.tile_rows <= 0) fail("cpu backend: tile_rows {} is not positive", opt_.tile_rows);
    if (opt_.dequantize == nullptr) opt_.dequantize = &tailor::dequantize_rows;
  }

  std::string name() const override { return "cpu/" + std::string(gemm_name(opt_.gemm)); }

  void matmul(const float* x, const float* w, float* y, int64_t t, int64_t k,
              int64_t n) override {
    sgemm(opt_.gemm, true, t, n, k, x, k, w, k, 0.0f, y, n, opt_.threads);
  }

  void matmul(const float* x, const QuantMatrix& w, float* y, int64_t t) override {
    if (w.data == nullptr || w.rows <= 0 || w.cols <= 0 || !row_fits(w.type, w.cols))
      fail("matmul: quantized weight {}x{} of type {} is not a valid matrix", w.rows, w.cols,
           type_name(w.type));
    const size_t row_bytes = row_size(w.type, w.cols);
    const int64_t tile = std::min(opt_.tile_rows, w.rows);
    std::vector<float> buf(static_cast<size_t>(tile * w.cols));
    for (int64_t r0 = 0; r0 < w.rows; r0 += tile) {
      const int64_t rows = std::min(tile, w.rows - r0);
      opt_.dequantize(w.type, static_cast<const uint8_t*>(w.data) + r0 * row_bytes, buf.data(),
                      rows, w.cols, opt_.threads);
      // Output columns [r0, r0 + rows) of every token row.
      sgemm(opt_.gemm, true, t, rows, w.cols, x, w.cols, buf.data(), w.cols, 0.0f, y + r0, w.rows,
            opt_.threads);
    }
  }

  void rms_norm(const float* x, const float* weight, float* y, int64_t rows, int64_t dim,
                float eps) override {
    check_positive("rms_norm", rows, dim);
    each_row(rows, dim, [&](int64_t r) {
      const float* xr = x + r * dim;
      float* yr = y + r * dim;
      double ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
      const float inv = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
      for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv * (weight ? weight[i] : 1.0f);
    });
  }

  void add_bias(float* y, const float* bias, int64_t rows, int64_t n) override {
    check_positive("add_bias", rows, n);
    each_row(rows, n, [&](int64_t r) {
      float* yr = y + r * n;
      for (int64_t i = 0; i < n; ++i) yr[i] += bias[i];
    });
  }

  void add(float* y, const float* x, int64_t count) override {
    each_span(count, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) y[i] += x[i];
    });
  }

  void swiglu(const float* gate, const float* up, float* out, int64_t count) override {
    each_span(count, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float g = gate[i];
        out[i] = g / (1.0f + exp_approx(-g)) * up[i];
      }
    });
  }

  void softmax_rows(float* x, int64_t rows, int64_t cols) override {
    check_positive("softmax_rows", rows, cols);
    each_row(rows, cols, [&](int64_t r) { softmax(x + r * cols, cols); });
  }

  void rope(float* x, int64_t tokens, int64_t heads, int64_t head_dim,
            const RopeTable& table) override {
    check_positive("rope", tokens, heads * head_dim);
    if (table.rot_dim <= 0 || table.rot_dim > head_dim || table.tokens() != tokens)
      fail("rope: table for {} tokens of rotary dim {} does not fit {} tokens of head_dim {}",
           table.tokens(), table.rot_dim, tokens, head_dim);
    const int64_t half = table.rot_dim / 2;
    each_row(tokens, heads * head_dim, [&](int64_t t) {
      const float* c = table.cos.data() + t * half;
      const float* s = table.sin.data() + t * half;
      for (int64_t h = 0; h < heads; ++h) {
        float* lo = x + (t * heads + h) * head_dim;
        float* hi = lo + half;
        for (int64_t i = 0; i < half; ++i) {
          const float a = lo[i], b = hi[i];
          lo[i] = a * c[i] - b * s[i];
          hi[i] = b * c[i] + a * s[i];
        }
      }
    });
  }

  void attention(const AttentionShape& s, const float* q, const float* k, const float* v,
                 float* out) override;

  void topk_gating(const float* logits, int64_t rows, int64_t n_experts, int k, bool renormalize,
                   int32_t* ids, float* weights) override {
    check_positive("topk_gating", rows, n_experts);
    if (k <= 0 || k > n_experts) fail("topk_gating: k = {} is outside 1..{}", k, n_experts);
    each_row(rows, n_experts * 4, [&](int64_t r) {
      std::vector<float> p(logits + r * n_experts, logits + (r + 1) * n_experts);
      softmax(p.data(), n_experts);
      std::vector<int32_t> order(n_experts);
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        return p[a] > p[b] || (p[a] == p[b] && a < b);
      });
      float sum = 0;
      for (int j = 0; j < k; ++j) sum += p[order[j]];
      for (int j = 0; j < k; ++j) {
        ids[r * k + j] = order[j];
        weights[r * k + j] = renormalize ? p[order[j]] / sum : p[order[j]];
      }
    });
  }

 private:
  static void check_positive(const char* op, int64_t rows, int64_t cols) {
    if (rows <= 0 || cols <= 0) fail("{}: empty or negative shape {}x{}", op, rows, cols);
  }

  // softmax(scale * x) in place; scale > 0, so the row maximum of x gives the
  // shift. Eight float partial sums keep the loop free of a serial
  // dependency; their rounding is far below the 1e-6 the ops are held to.
  static void softmax(float* x, int64_t n, float scale = 1.0f) {
    const float mx = *std::max_element(x, x + n);
    // The exponentials in a loop of their own: it vectorises, the sum does not.
    for (int64_t i = 0; i < n; ++i) x[i] = exp_approx((x[i] - mx) * scale);
    float part[8] = {};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      for (int j = 0; j < 8; ++j) part[j] += x[i + j];
    for (; i < n; ++i) part[0] += x[i];
    const float sum = ((part[0] + part[1]) + (part[2] + part[3])) +
                      ((part[4] + part[5]) + (part[6] + part[7]));
    const float inv = 1.0f / sum;
    for (i = 0; i < n; ++i) x[i] *= inv;
  }

  int threads_for(int64_t work) const {
    return work < kMinParallelWork ? 1 : opt_.threads;
  }

  // fn(r) for every row, rows spread over threads when there is enough work.
  template <typename Fn>
  void each_row(int64_t rows, int64_t row_cost, Fn&& fn) const {
    parallel_for(rows, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) fn(r);
    }, threads_for(rows * row_cost));
  }

  template <typename Fn>
  void each_span(int64_t count, Fn&& fn) const {
    if (count < 0) fail("elementwise op: negative count {}", count);
    parallel_for(count, fn, threads_for(count));
  }

  CpuOptions opt_;
};

// Each (query head, tile of query rows) is one task: scores = Q K^T through
// the GEMM (strided views, no copies), causal mask and softmax on the rows,
// then out = P V through the GEMM. Tasks run one per thread with a
// single-threaded GEMM, so both cores stay busy without nested thread pools.
void CpuBackend::attention(const AttentionShape& s, const float* q, const float* k,
                           const float* v, float* out) {
  if (s.q_len <= 0 || s.kv_len < s.q_len || s.n_heads <= 0 || s.n_kv_heads <= 0 ||
      s.head_dim <= 0 || s.n_heads % s.n_kv_heads != 0 || !(s.scale > 0))
    fail("attention: bad shape q_len={} kv_len={} heads={} kv_heads={} head_dim={} scale={}",
         s.q_len, s.kv_len, s.n_heads, s.n_kv_heads, s.head_dim, s.scale);
  constexpr int64_t kTile = 64;
  const int64_t tiles = (s.q_len + kTile - 1) / kTile;
  const int64_t group = s.n_heads / s.n_kv_heads;
  const int64_t q_stride = s.n_heads * s.head_dim, kv_stride = s.n_kv_heads * s.head_dim;
  const int64_t offset = s.kv_len - s.q_len;  // position of query 0
  const int64_t work = s.n_heads * s.q_len * s.kv_len * s.head_dim;
  // Head-major task order: contiguous chunks get whole heads, so the cheap
  // early tiles and expensive late ones are shared evenly.
  parallel_for(s.n_heads * tiles, [&](int64_t b, int64_t e) {
    std::vector<float> scores(static_cast<size_t>(kTile * s.kv_len));
    for (int64_t task = b; task < e; ++task) {
      const int64_t h = task / tiles, i0 = (task % tiles) * kTile;
      const int64_t rows = std::min(kTile, s.q_len - i0);
      const int64_t keys = offset + i0 + rows;  // keys visible to the tile's last row
      const float* kh = k + (h / group) * s.head_dim;
      const float* vh = v + (h / group) * s.head_dim;
      sgemm(opt_.gemm, true, rows, keys, s.head_dim, q + i0 * q_stride + h * s.head_dim,
            q_stride, kh, kv_stride, 0.0f, scores.data(), keys, 1);
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = scores.data() + r * keys;
        const int64_t visible = offset + i0 + r + 1;
        softmax(sr, visible, s.scale);
        std::fill(sr + visible, sr + keys, 0.0f);
      }
      sgemm(opt_.gemm, false, rows, s.head_dim, keys, scores.data(), keys, vh, kv_stride, 0.0f,
            out + i0 * q_stride + h * s.head_dim, q_stride, 1);
    }
  }, threads_for(work));
}

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const CpuOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

}  // namespace tailor::engine
