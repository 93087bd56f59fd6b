#include "tailor/gradual/output_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "tailor/engine/gemm.h"
#include "tailor/util/parallel.h"

namespace tailor::gradual {
namespace {

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// rows of x, RMS-normalized and scaled by the norm weight.
void normalize(const OutputData& d, const float* x, int64_t n, std::vector<float>& out) {
  out.resize(size_t(n * d.dim));
  parallel_for(n, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * d.dim;
      double ss = 0;
      for (int64_t j = 0; j < d.dim; ++j) ss += double(xr[j]) * xr[j];
      const float inv = float(1.0 / std::sqrt(ss / double(d.dim) + d.eps));
      for (int64_t j = 0; j < d.dim; ++j) out[size_t(r * d.dim + j)] = xr[j] * inv * d.norm[j];
    }
  });
}

// logits -> log-softmax in place, per row.
void log_softmax(std::vector<float>& z, int64_t n, int64_t v) {
  parallel_for(n, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = z.data() + r * v;
      const float m = *std::max_element(row, row + v);
      double s = 0;
      for (int64_t i = 0; i < v; ++i) s += std::exp(double(row[i] - m));
      const float lse = m + float(std::log(s));
      for (int64_t i = 0; i < v; ++i) row[i] -= lse;
    }
  });
}

struct Batch {
  std::vector<float> xq, xr, lq, lr;
};

// Log-probabilities of both models for rows [first, first + n); returns the
// summed KL and leaves the batch's normalized quantized inputs in b.xq.
double batch_kl(const OutputData& d, const float* wq, int64_t first, int64_t n, Batch& b) {
  normalize(d, d.x_quant + first * d.dim, n, b.xq);
  normalize(d, d.x_ref + first * d.dim, n, b.xr);
  b.lq.resize(size_t(n * d.vocab));
  b.lr.resize(b.lq.size());
  const auto g = engine::default_gemm();
  engine::sgemm(g, true, n, d.vocab, d.dim, b.xq.data(), d.dim, wq, d.dim, 0.0f, b.lq.data(), d.vocab);
  engine::sgemm(g, true, n, d.vocab, d.dim, b.xr.data(), d.dim, d.w_ref, d.dim, 0.0f, b.lr.data(), d.vocab);
  log_softmax(b.lq, n, d.vocab);
  log_softmax(b.lr, n, d.vocab);
  std::vector<double> part(size_t(n), 0.0);
  parallel_for(n, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      double s = 0;
      for (int64_t i = 0; i < d.vocab; ++i) {
        const size_t k = size_t(r * d.vocab + i);
        s += std::exp(double(b.lr[k])) * (double(b.lr[k]) - b.lq[k]);
      }
      part[size_t(r)] = s;
    }
  });
  double kl = 0;
  for (double v : part) kl += v;
  return kl;
}

}  // namespace

double output_kl(const OutputData& d, const float* wq, int64_t first, int64_t n) {
  Batch b;
  double kl = 0;
  for (int64_t r = first; r < first + n; r += 1024) {
    const int64_t m = std::min<int64_t>(1024, first + n - r);
    kl += batch_kl(d, wq, r, m, b);
  }
  return n > 0 ? kl / double(n) : 0.0;
}

TrainReport train_output(TrainableMatrix& w, const OutputData& d, int epochs, float lr, float lr_scale,
                         int64_t batch_rows, int64_t eval_rows) {
  TrainReport rep;
  const double t0 = now_s();
  eval_rows = std::min(eval_rows, d.rows);
  rep.before = output_kl(d, w.weights().data(), 0, eval_rows);
  double best = rep.before;
  TrainableMatrix::Params kept = w.save();
  Batch b;
  std::vector<float> grad(size_t(d.vocab * d.dim));
  for (int e = 0; e < epochs; ++e) {
    for (int64_t r = 0; r + batch_rows <= d.rows; r += batch_rows) {
      batch_kl(d, w.weights().data(), r, batch_rows, b);
      // d KL / d logits_q = softmax(q) - softmax(ref), averaged over the batch.
      const float inv = 1.0f / float(batch_rows);
      parallel_for(batch_rows * d.vocab, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
          b.lq[size_t(i)] = (std::exp(b.lq[size_t(i)]) - std::exp(b.lr[size_t(i)])) * inv;
      });
      // dW [vocab][dim] = dlogits^T [vocab][rows] x [rows][dim]
      engine::sgemm_ex(engine::default_gemm(), true, false, d.vocab, d.dim, batch_rows, b.lq.data(), d.vocab,
                       b.xq.data(), d.dim, 0.0f, grad.data(), d.dim);
      w.step(grad.data(), lr, lr_scale);
      ++rep.steps;
    }
    const double kl = output_kl(d, w.weights().data(), 0, eval_rows);
    if (kl < best) {
      best = kl;
      kept = w.save();
    }
  }
  w.restore(kept);
  rep.after = best;
  rep.full_run = true;
  rep.seconds = now_s() - t0;
  return rep;
}

}  // namespace tailor::gradual
