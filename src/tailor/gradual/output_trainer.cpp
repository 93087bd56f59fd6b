#include "tailor/gradual/output_trainer.h"

#include <algorithm>
#include <cmath>

#include "tailor/engine/gemm.h"
#include "tailor/gradual/block_grad.h"
#include "tailor/util/clock.h"
#include "tailor/util/parallel.h"

namespace tailor::gradual {
namespace {


// rows of x, RMS-normalized and scaled by the norm weight.
void normalize(const OutputData& d, const float* x, int64_t n, const float* norm, std::vector<float>& out) {
  out.resize(size_t(n * d.dim));
  parallel_for(n, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * d.dim;
      double ss = 0;
      for (int64_t j = 0; j < d.dim; ++j) ss += double(xr[j]) * xr[j];
      const float inv = float(1.0 / std::sqrt(ss / double(d.dim) + d.eps));
      for (int64_t j = 0; j < d.dim; ++j) out[size_t(r * d.dim + j)] = xr[j] * inv * norm[j];
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

}  // namespace

// Log-probabilities of both models for n rows; returns the summed KL. With
// dw/dx, also the gradients of grad_scale * (summed KL) w.r.t. the quantized
// output weights and the quantized rows before the norm.
double head_kl(const OutputData& d, const float* xq, const float* xr, int64_t n, const float* wq,
               HeadScratch& b, float grad_scale, float* dw, float* dx, float* dnorm) {
  normalize(d, xq, n, d.norm, b.xq);
  normalize(d, xr, n, d.norm_ref != nullptr ? d.norm_ref : d.norm, b.xr);
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
  if (dw == nullptr && dx == nullptr && dnorm == nullptr) return kl;
  // d KL / d logits_q = softmax(q) - softmax(ref), in place of lq.
  parallel_for(n * d.vocab, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      b.lq[size_t(i)] = (std::exp(b.lq[size_t(i)]) - std::exp(b.lr[size_t(i)])) * grad_scale;
  });
  // dW [vocab][dim] = dlogits^T [vocab][n] x [n][dim]
  if (dw != nullptr)
    engine::sgemm_ex(g, true, false, d.vocab, d.dim, n, b.lq.data(), d.vocab, b.xq.data(), d.dim, 0.0f, dw, d.dim);
  if (dx != nullptr || dnorm != nullptr) {
    // d normed [n][dim] = dlogits [n][vocab] W [vocab][dim], then through the norm.
    b.dn.resize(size_t(n * d.dim));
    engine::sgemm_ex(g, false, false, n, d.dim, d.vocab, b.lq.data(), d.vocab, wq, d.dim, 0.0f, b.dn.data(), d.dim);
    if (dx != nullptr) ops::rms_norm_backward(Exec{}, xq, d.norm, b.dn.data(), dx, n, d.dim, d.eps);
    if (dnorm != nullptr) ops::rms_norm_weight_backward(Exec{}, xq, b.dn.data(), dnorm, n, d.dim, d.eps);
  }
  return kl;
}

double output_kl(const OutputData& d, const float* wq, int64_t first, int64_t n) {
  HeadScratch b;
  double kl = 0;
  for (int64_t r = first; r < first + n; r += 1024) {
    const int64_t m = std::min<int64_t>(1024, first + n - r);
    kl += head_kl(d, d.x_quant + r * d.dim, d.x_ref + r * d.dim, m, wq, b);
  }
  return n > 0 ? kl / double(n) : 0.0;
}

TrainReport train_output(TrainableMatrix& w, const OutputData& d, int epochs, float lr, float lr_scale,
                         int64_t batch_rows, int64_t eval_rows) {
  TrainReport rep;
  const double t0 = now_seconds();
  eval_rows = std::min(eval_rows, d.rows);
  rep.before = output_kl(d, w.weights().data(), 0, eval_rows);
  double best = rep.before;
  TrainableMatrix::Params kept = w.save();
  HeadScratch b;
  std::vector<float> grad(size_t(d.vocab * d.dim));
  for (int e = 0; e < epochs; ++e) {
    for (int64_t r = 0; r + batch_rows <= d.rows; r += batch_rows) {
      head_kl(d, d.x_quant + r * d.dim, d.x_ref + r * d.dim, batch_rows, w.weights().data(), b,
              1.0f / float(batch_rows), grad.data());
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
  rep.seconds = now_seconds() - t0;
  return rep;
}

}  // namespace tailor::gradual
