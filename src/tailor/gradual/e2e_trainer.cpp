#include "tailor/gradual/e2e_trainer.h"

#include <algorithm>
#include <memory>

#include "tailor/util/clock.h"
#include "tailor/util/error.h"

namespace tailor::gradual {

nlohmann::json E2EReport::to_json() const {
  return {{"before", before}, {"after", after}, {"steps", steps}, {"seconds", seconds}, {"stopped", stopped}};
}

namespace {

class Runner {
 public:
  Runner(QuantModel& m, int64_t n_ctx) : m_(m), n_ctx_(n_ctx) {
    for (size_t b = 0; b < m.blocks.size(); ++b) tapes_.push_back(std::make_unique<BlockTape>(m.dims));
  }

  BlockParams params(size_t b) const {
    BlockParams p = m_.blocks[b];
    for (int i = 0; i < kNumLin; ++i)
      if (TrainableMatrix* t = m_.train[b][size_t(i)]) p.w[size_t(i)] = t->weights().data();
    return p;
  }
  const float* output_weights() const { return m_.output ? m_.output->weights().data() : m_.output_fixed; }

  // Hidden states after the last block for n sequences from x0, kept in h_.
  void forward(const float* x0, int64_t n) {
    const int64_t rows = n * n_ctx_, dim = m_.dims.dim;
    h_.assign(x0, x0 + rows * dim);
    const std::vector<int64_t> lengths(size_t(n), n_ctx_);
    for (size_t b = 0; b < tapes_.size(); ++b) tapes_[b]->forward(params(b), h_.data(), lengths, h_.data());
  }

  // Summed KL of n sequences starting at sequence s0.
  double kl(const float* x0, int64_t s0, int64_t n) {
    forward(x0 + s0 * n_ctx_ * m_.dims.dim, n);
    return head_kl(m_.head, h_.data(), m_.head.x_ref + s0 * n_ctx_ * m_.dims.dim, n * n_ctx_,
                   output_weights(), scratch_);
  }

  // One training step on n sequences from s0: forward, the KL's gradient back
  // through the head and every block, a signed step of every trainable matrix
  // right after its gradient is known (earlier blocks never read it).
  double step(const float* x0, int64_t s0, int64_t n, float lr, float lr_scale) {
    const int64_t rows = n * n_ctx_, dim = m_.dims.dim;
    forward(x0 + s0 * rows / n * dim, n);
    dh_.resize(size_t(rows * dim));
    const bool train_out = m_.output != nullptr;
    if (train_out) gout_.resize(size_t(m_.head.vocab * dim));
    const double kl = head_kl(m_.head, h_.data(), m_.head.x_ref + s0 * n_ctx_ * dim, rows, output_weights(),
                              scratch_, 1.0f / float(rows), train_out ? gout_.data() : nullptr, dh_.data());
    if (train_out) m_.output->step(gout_.data(), lr, lr_scale);
    for (size_t b = tapes_.size(); b-- > 0;) {
      std::array<float*, kNumLin> g{};
      for (int i = 0; i < kNumLin; ++i)
        if (m_.train[b][size_t(i)] != nullptr) {
          grads_[size_t(i)].resize(size_t(m_.dims.lin_out(i) * m_.dims.lin_in(i)));
          g[size_t(i)] = grads_[size_t(i)].data();
        }
      const BlockParams p = params(b);
      tapes_[b]->backward(p, dh_.data(), g, b > 0 ? dh_.data() : nullptr);
      for (int i = 0; i < kNumLin; ++i)
        if (g[size_t(i)] != nullptr) m_.train[b][size_t(i)]->step(g[size_t(i)], lr, lr_scale);
    }
    return kl / double(rows);
  }

  std::vector<TrainableMatrix::Params> save() const {
    std::vector<TrainableMatrix::Params> v;
    for (const auto* t : all()) v.push_back(t->save());
    return v;
  }
  void restore(const std::vector<TrainableMatrix::Params>& v) {
    const auto t = all();
    for (size_t k = 0; k < t.size(); ++k) t[k]->restore(v[k]);
  }

 private:
  std::vector<TrainableMatrix*> all() const {
    std::vector<TrainableMatrix*> v;
    for (const auto& blk : m_.train)
      for (TrainableMatrix* t : blk)
        if (t != nullptr) v.push_back(t);
    if (m_.output != nullptr) v.push_back(m_.output);
    return v;
  }

  QuantModel& m_;
  int64_t n_ctx_;
  std::vector<std::unique_ptr<BlockTape>> tapes_;
  std::vector<float> h_, dh_, gout_;
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
  E2EReport rep;
  const double t0 = now_seconds();
  const int64_t held = std::min(o.eval_sequences, seqs / 4);
  const int64_t train_seqs = seqs - held, per_epoch = train_seqs / o.batch;
  Runner r(m, n_ctx);
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
    last = r.step(x0, s0, o.batch, o.lr, o.lr * o.scale_lr_factor);
    ++rep.steps;
    if ((k + 1) % every == 0 || k + 1 == total) {
      const double kl = mean_kl(r, x0, 0, held, n_ctx, o.batch);
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
