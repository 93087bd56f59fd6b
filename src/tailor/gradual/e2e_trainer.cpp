#include "tailor/gradual/e2e_trainer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>

#include "tailor/util/clock.h"
#include "tailor/util/parallel.h"
#include "tailor/util/error.h"

namespace tailor::gradual {

nlohmann::json E2EReport::to_json() const {
  return {{"before", before}, {"after", after}, {"steps", steps}, {"seconds", seconds}, {"stopped", stopped},
          {"checks", checks}};
}

namespace {

// A relative signed step: each weight moves by a fraction of its size.
void norm_step(std::vector<float>& w, const std::vector<float>& g, float lr) {
  for (size_t j = 0; j < w.size(); ++j)
    if (g[j] != 0) w[j] -= lr * std::fabs(w[j]) * (g[j] > 0 ? 1.0f : -1.0f);
}

class Runner {
 public:
  Runner(QuantModel& m, int64_t n_ctx, float norm_lr = 0, float momentum = 0)
      : m_(m), n_ctx_(n_ctx), norm_lr_(norm_lr), momentum_(momentum) {
    for (size_t b = 0; b < m.blocks.size(); ++b) tapes_.push_back(std::make_unique<BlockTape>(m.dims));
    if (norm_lr_ > 0) {
      const int64_t dim = m.dims.dim;
      m.norms.resize(m.blocks.size());
      for (size_t b = 0; b < m.blocks.size(); ++b) {
        m.norms[b][0].assign(m.blocks[b].attn_norm, m.blocks[b].attn_norm + dim);
        m.norms[b][1].assign(m.blocks[b].ffn_norm, m.blocks[b].ffn_norm + dim);
        m.blocks[b].attn_norm = m.norms[b][0].data();
        m.blocks[b].ffn_norm = m.norms[b][1].data();
      }
      if (m.head.norm_ref == nullptr) m.head.norm_ref = m.head.norm;
      m.output_norm.assign(m.head.norm, m.head.norm + dim);
      m.head.norm = m.output_norm.data();
      dan_.resize(size_t(dim));
      dfn_.resize(size_t(dim));
      dout_norm_.resize(size_t(dim));
    }
  }

  BlockParams params(size_t b) const {
    BlockParams p = m_.blocks[b];
    for (int i = 0; i < kNumLin; ++i)
      if (TrainableMatrix* t = m_.train[b][size_t(i)]) p.w[size_t(i)] = t->weights().data();
    return p;
  }
  const float* output_weights() const { return m_.output ? m_.output->weights().data() : m_.output_fixed; }

  // Hidden states after the last block for sequences [s0, s0 + n) of x0, kept in h_.
  void forward(const float* x0, int64_t s0, int64_t n) {
    const int64_t rows = n * n_ctx_, dim = m_.dims.dim, r0 = s0 * n_ctx_;
    h_.assign(x0 + r0 * dim, x0 + (r0 + rows) * dim);
    if (m_.embedding != nullptr) {
      const float* q = m_.embedding->weights().data();
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t t = m_.tokens[r0 + r];
        for (int64_t j = 0; j < dim; ++j) h_[size_t(r * dim + j)] += q[t * dim + j] - m_.embedding_ref[t * dim + j];
      }
    }
    const std::vector<int64_t> lengths(size_t(n), n_ctx_);
    for (size_t b = 0; b < tapes_.size(); ++b) tapes_[b]->forward(params(b), h_.data(), lengths, h_.data());
  }

  // Summed KL of n sequences starting at sequence s0.
  double kl(const float* x0, int64_t s0, int64_t n) {
    forward(x0, s0, n);
    return head_kl(m_.head, h_.data(), m_.head.x_ref + s0 * n_ctx_ * m_.dims.dim, n * n_ctx_,
                   output_weights(), scratch_);
  }

  // One training step on n sequences from s0: forward, the KL's gradient back
  // through the head and every block, a signed step of every trainable matrix
  // right after its gradient is known (earlier blocks never read it).
  double step(const float* x0, int64_t s0, int64_t n, float lr, float lr_scale) {
    const int64_t rows = n * n_ctx_, dim = m_.dims.dim;
    forward(x0, s0, n);
    dh_.resize(size_t(rows * dim));
    const bool train_out = m_.output != nullptr;
    if (train_out) gout_.resize(size_t(m_.head.vocab * dim));
    const bool norms = norm_lr_ > 0;
    const double kl = head_kl(m_.head, h_.data(), m_.head.x_ref + s0 * n_ctx_ * dim, rows, output_weights(),
                              scratch_, 1.0f / float(rows), train_out ? gout_.data() : nullptr, dh_.data(),
                              norms ? dout_norm_.data() : nullptr);
    if (train_out) m_.output->step(average(m_.output, gout_.data()), lr, lr_scale);
    if (norms) norm_step(m_.output_norm, dout_norm_, norm_lr_);
    for (size_t b = tapes_.size(); b-- > 0;) {
      std::array<float*, kNumLin> g{};
      for (int i = 0; i < kNumLin; ++i)
        if (m_.train[b][size_t(i)] != nullptr) {
          grads_[size_t(i)].resize(size_t(m_.dims.lin_out(i) * m_.dims.lin_in(i)));
          g[size_t(i)] = grads_[size_t(i)].data();
        }
      const BlockParams p = params(b);
      const bool dx = b > 0 || m_.embedding != nullptr;
      tapes_[b]->backward(p, dh_.data(), g, dx ? dh_.data() : nullptr, norms ? dan_.data() : nullptr,
                          norms ? dfn_.data() : nullptr);
      for (int i = 0; i < kNumLin; ++i)
        if (g[size_t(i)] != nullptr)
          m_.train[b][size_t(i)]->step(average(m_.train[b][size_t(i)], g[size_t(i)]), lr, lr_scale);
      if (norms) {
        norm_step(m_.norms[b][0], dan_, norm_lr_);
        norm_step(m_.norms[b][1], dfn_, norm_lr_);
      }
    }
    if (m_.embedding != nullptr) {
      // Each token's row gathers the input gradients of the rows it fed.
      gemb_.assign(size_t(m_.embedding->rows() * dim), 0.0f);
      const int64_t r0 = s0 * n_ctx_;
      for (int64_t r = 0; r < rows; ++r) {
        float* g = gemb_.data() + int64_t(m_.tokens[r0 + r]) * dim;
        for (int64_t j = 0; j < dim; ++j) g[j] += dh_[size_t(r * dim + j)];
      }
      m_.embedding->step(gemb_.data(), lr, lr_scale);
    }
    return kl / double(rows);
  }

  // The running average of t's weight gradients with g folded in (g itself
  // without momentum).
  const float* average(const TrainableMatrix* t, const float* g) {
    if (momentum_ <= 0) return g;
    std::vector<float>& m = avg_[t];
    const size_t n = size_t(t->rows() * t->cols());
    if (m.empty()) {
      m.assign(g, g + n);
      return m.data();
    }
    const float b = momentum_;
    parallel_for(int64_t(n), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) m[size_t(i)] = b * m[size_t(i)] + (1 - b) * g[i];
    });
    return m.data();
  }

  struct State {
    std::vector<TrainableMatrix::Params> params;
    std::vector<std::array<std::vector<float>, 2>> norms;
    std::vector<float> output_norm;
  };
  State save() const {
    State s{{}, m_.norms, m_.output_norm};
    for (const auto* t : all()) s.params.push_back(t->save());
    return s;
  }
  // Copies back in place: blocks and head keep pointing at the same vectors.
  void restore(const State& s) {
    const auto t = all();
    for (size_t k = 0; k < t.size(); ++k) t[k]->restore(s.params[k]);
    for (size_t b = 0; b < s.norms.size(); ++b)
      for (int k = 0; k < 2; ++k) std::copy(s.norms[b][k].begin(), s.norms[b][k].end(), m_.norms[b][k].begin());
    std::copy(s.output_norm.begin(), s.output_norm.end(), m_.output_norm.begin());
  }

 private:
  std::vector<TrainableMatrix*> all() const {
    std::vector<TrainableMatrix*> v;
    for (const auto& blk : m_.train)
      for (TrainableMatrix* t : blk)
        if (t != nullptr) v.push_back(t);
    if (m_.output != nullptr) v.push_back(m_.output);
    if (m_.embedding != nullptr) v.push_back(m_.embedding);
    return v;
  }

  QuantModel& m_;
  int64_t n_ctx_;
  float norm_lr_, momentum_;
  std::map<const TrainableMatrix*, std::vector<float>> avg_;
  std::vector<float> dan_, dfn_, dout_norm_;
  std::vector<std::unique_ptr<BlockTape>> tapes_;
  std::vector<float> h_, dh_, gout_, gemb_;
  std::array<std::vector<float>, kNumLin> grads_;
  HeadScratch scratch_;
};

double mean_kl(Runner& r, const float* x0, int64_t first, int64_t n, int64_t n_ctx, int64_t batch) {
  double s = 0;
  for (int64_t s0 = first; s0 < first + n; s0 += batch) s += r.kl(x0, s0, std::min(batch, first + n - s0));
  return n > 0 ? s / double(n * n_ctx) : 0.0;
}

}  // namespace

double model_kl(QuantModel& m, const float* x0, int64_t first, int64_t n, int64_t n_ctx, int64_t batch) {
  Runner r(m, n_ctx);
  return mean_kl(r, x0, first, n, n_ctx, batch);
}

E2EReport train_end_to_end(QuantModel& m, const float* x0, int64_t seqs, int64_t n_ctx, const E2EOptions& o) {
  if (m.train.size() != m.blocks.size()) fail("end-to-end training: {} blocks but {} trainable sets", m.blocks.size(), m.train.size());
  if (m.embedding != nullptr) {
    if (m.tokens == nullptr || m.embedding_ref == nullptr || m.embedding->cols() != m.dims.dim)
      fail("end-to-end training: the token embedding needs tokens, float rows and {} columns", m.dims.dim);
    for (int64_t r = 0; r < seqs * n_ctx; ++r)
      if (m.tokens[r] < 0 || m.tokens[r] >= m.embedding->rows())
        fail("end-to-end training: token id {} outside the embedding's {} rows", m.tokens[r], m.embedding->rows());
  }
  E2EReport rep;
  const double t0 = now_seconds();
  const int64_t held = std::min(o.eval_sequences, seqs / 4);
  const int64_t train_seqs = seqs - held, per_epoch = train_seqs / o.batch;
  Runner r(m, n_ctx, o.norm_lr, o.momentum);
  rep.before = mean_kl(r, x0, 0, held, n_ctx, o.batch);
  rep.after = rep.before;
  if (per_epoch <= 0 || o.epochs <= 0) {
    rep.seconds = now_seconds() - t0;
    return rep;
  }
  auto best = r.save();
  const int64_t total = per_epoch * o.epochs;
  const int64_t every = std::max<int64_t>(1, per_epoch / std::max(1, o.evals_per_epoch));
  double last = 0;
  for (int64_t k = 0; k < total; ++k) {
    if (o.stop != nullptr && o.stop->load()) {
      rep.stopped = true;
      break;
    }
    const int64_t s0 = held + (k % per_epoch) * o.batch;
    const float lr = o.decay ? o.lr * float(total - k) / float(total) : o.lr;
    last = r.step(x0, s0, o.batch, lr, lr * o.scale_lr_factor);
    ++rep.steps;
    if ((k + 1) % every == 0 || k + 1 == total) {
      const double kl = mean_kl(r, x0, 0, held, n_ctx, o.batch);
      rep.checks.emplace_back(k + 1, kl);
      if (kl < rep.after) {
        rep.after = kl;
        best = r.save();
      }
    }
    if (o.progress) o.progress(k + 1, total, last);
  }
  r.restore(best);
  rep.seconds = now_seconds() - t0;
  return rep;
}

}  // namespace tailor::gradual
