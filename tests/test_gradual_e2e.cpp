// End-to-end training (gradual/e2e_trainer.h): the output head's KL gradient
// against finite differences, and training a whole quantized model lowering
// its KL on sequences it never trained on.
#include <algorithm>
#include <cmath>
#include <deque>
#include <memory>
#include <random>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "tailor/engine/model.h"
#include "tailor/gradual/e2e_trainer.h"
#include "tailor/quant/codec.h"

namespace tailor::gradual {
namespace {

const std::string kModels = std::string(TAILOR_SHARED_DIR) + "/models";

std::vector<float> randn(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

// The head of `m` reading the unquantized model's final hidden states x_ref.
void set_head(QuantModel& qm, engine::Model& m, const engine::Weight& out, const std::vector<float>& x_ref,
              int64_t rows) {
  qm.head.x_ref = x_ref.data();
  qm.head.norm = m.weight("output_norm.weight").f32.data();
  qm.head.w_ref = out.f32.data();
  qm.head.rows = rows;
  qm.head.dim = qm.dims.dim;
  qm.head.vocab = out.rows();
  qm.head.eps = float(m.config().rms_norm_eps);
}

// The summed KL through head_kl is differentiated with respect to the
// quantized weights, the hidden states before the norm and the norm weight;
// all are checked by central differences. In float with h = 1e-2 on O(1) values the
// difference quotient is good to ~1e-4 of the largest gradient; dropping the
// norm's mean term or the softmax of either side moves entries by far more
// than the 3e-3 allowed.
TEST(GradualE2E, HeadGradientsMatchFiniteDifferences) {
  const int64_t rows = 5, dim = 16, vocab = 24;
  std::vector<float> xq = randn(size_t(rows * dim), 1, 1.0f), xr = randn(size_t(rows * dim), 2, 1.0f);
  std::vector<float> norm = randn(size_t(dim), 3, 0.3f), wq = randn(size_t(vocab * dim), 4, 0.5f);
  std::vector<float> wr = wq;
  for (size_t i = 0; i < wr.size(); ++i) wr[i] += randn(1, uint32_t(100 + i), 0.2f)[0];
  for (float& g : norm) g += 1.0f;
  OutputData d;
  d.norm = norm.data();
  d.w_ref = wr.data();
  d.dim = dim;
  d.vocab = vocab;
  d.rows = rows;
  d.eps = 1e-5f;
  const std::vector<float> ref_norm = norm;  // the reference head keeps its own norm
  d.norm_ref = ref_norm.data();
  HeadScratch s;
  std::vector<float> dw(wq.size()), dx(xq.size()), dnorm(norm.size());
  const double kl = head_kl(d, xq.data(), xr.data(), rows, wq.data(), s, 1.0f, dw.data(), dx.data(), dnorm.data());
  EXPECT_GT(kl, 0.01);
  auto check = [&](std::vector<float>& p, const std::vector<float>& an, const char* what) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < p.size(); ++i) {
      const float keep = p[i], h = 1e-2f;
      p[i] = keep + h;
      const double up = head_kl(d, xq.data(), xr.data(), rows, wq.data(), s);
      p[i] = keep - h;
      const double down = head_kl(d, xq.data(), xr.data(), rows, wq.data(), s);
      p[i] = keep;
      const double fd = (up - down) / (2.0 * h);
      worst = std::max(worst, std::fabs(fd - an[i]));
      scale = std::max(scale, std::fabs(fd));
    }
    EXPECT_GT(scale, 1e-3) << what;
    EXPECT_LT(worst / scale, 3e-3) << what;
  };
  check(wq, dw, "dKL/dW");
  check(xq, dx, "dKL/dx");
  check(norm, dnorm, "dKL/dnorm");  // the quantized side's norm only (d.norm_ref)
}

// A 2-layer model with every matrix in Q4_0 (IQ3_S for one, held fixed as
// the job holds a quantized input tensor) is trained end to end on random-token
// sequences; the held-out KL must fall (random tokens on random weights
// generalize little: 7%), and the matrices left behind must
// give exactly the reported KL.
TEST(GradualE2E, TrainingLowersHeldOutKl) {
  engine::Model m = engine::Model::load(kModels + "/arch-refs/llama3-rope-scaling");
  const int64_t seqs = 48, n_ctx = 32, L = m.num_layers();
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> id(3, int32_t(m.vocab_size() - 1));
  engine::Sequences sq(static_cast<size_t>(seqs));
  for (auto& s : sq)
    for (int64_t i = 0; i < n_ctx; ++i) s.push_back(id(rng));
  engine::Hidden h = m.embed(sq);
  const std::vector<float> x0 = h.data;
  for (int64_t b = 0; b < L; ++b) m.run_block(b, h);
  const std::vector<float> x_ref = h.data;

  QuantModel qm;
  qm.dims = block_dims(m);
  std::vector<std::unique_ptr<TrainableMatrix>> own;
  std::vector<float> fixed;
  for (int64_t b = 0; b < L; ++b) {
    BlockParams p = block_params(m, b);
    std::array<TrainableMatrix*, kNumLin> t{};
    for (int i = 0; i < kNumLin; ++i) {
      const engine::Weight& w = m.weight(fmt::format("blk.{}.{}.weight", b, lin_name(i)));
      if (b == 1 && i == kUp) {  // a fixed matrix stays as it is
        std::vector<uint8_t> q(row_size(GgmlType::IQ3_S, w.cols()) * size_t(w.rows()));
        quantize_rows(GgmlType::IQ3_S, w.f32.data(), q.data(), w.rows(), w.cols(), nullptr);
        fixed.resize(size_t(w.numel()));
        dequantize_rows(GgmlType::IQ3_S, q.data(), fixed.data(), w.rows(), w.cols());
        p.w[size_t(i)] = fixed.data();
        continue;
      }
      own.push_back(std::make_unique<TrainableMatrix>(GgmlType::Q4_0, w.f32.data(), w.rows(), w.cols(), nullptr));
      t[size_t(i)] = own.back().get();
    }
    qm.blocks.push_back(p);
    qm.train.push_back(t);
  }
  const engine::Weight* ow = m.find_weight("output.weight");
  if (ow == nullptr) ow = &m.weight("token_embd.weight");
  TrainableMatrix out(GgmlType::Q4_0, ow->f32.data(), ow->rows(), ow->cols(), nullptr);
  qm.output = &out;
  set_head(qm, m, *ow, x_ref, seqs * n_ctx);

  E2EOptions o;
  o.epochs = 4;
  o.lr = 1e-2f;
  o.batch = 4;
  o.eval_sequences = 8;
  std::vector<TrainableMatrix::Params> start;
  for (auto& t : own) start.push_back(t->save());
  const E2EReport r = train_end_to_end(qm, x0.data(), seqs, n_ctx, o);
  std::printf("held-out KL %.5f -> %.5f in %lld steps\n", r.before, r.after, static_cast<long long>(r.steps));
  EXPECT_EQ(r.steps, 4 * (seqs - 8) / 4);
  EXPECT_LT(r.after, 0.96 * r.before);  // 7% on this random model and random tokens
  EXPECT_NEAR(model_kl(qm, x0.data(), 0, 8, n_ctx), r.after, 1e-6 * r.before);
  // Training moved the block matrices, not just the head.
  bool moved = false;
  for (size_t k = 0; k < own.size(); ++k) moved = moved || own[k]->save().offsets != start[k].offsets;
  EXPECT_TRUE(moved);
}

// Only the token embedding trains (IQ2_S, whose steps re-quantize), every
// other matrix fixed in Q4_0: the held-out KL must fall, the rows of tokens
// the sequences never use must keep their plain rounding byte for byte, and
// the model left behind must give exactly the reported KL.
TEST(GradualE2E, EmbeddingTrainingLowersHeldOutKl) {
  engine::Model m = engine::Model::load(kModels + "/arch-refs/llama3-rope-scaling");
  const int64_t seqs = 48, n_ctx = 32, L = m.num_layers(), used = 100;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> id(3, int32_t(used - 1));  // a small vocabulary: rows repeat
  engine::Sequences sq(static_cast<size_t>(seqs));
  std::vector<int32_t> tokens;
  for (auto& s : sq)
    for (int64_t i = 0; i < n_ctx; ++i) {
      s.push_back(id(rng));
      tokens.push_back(s.back());
    }
  engine::Hidden h = m.embed(sq);
  const std::vector<float> x0 = h.data;
  for (int64_t b = 0; b < L; ++b) m.run_block(b, h);
  const std::vector<float> x_ref = h.data;

  std::deque<std::vector<float>> fixed;
  auto quantized = [&](const engine::Weight& w) {
    std::vector<uint8_t> q(row_size(GgmlType::Q4_0, w.cols()) * size_t(w.rows()));
    quantize_rows(GgmlType::Q4_0, w.f32.data(), q.data(), w.rows(), w.cols(), nullptr);
    fixed.emplace_back(size_t(w.numel()));
    dequantize_rows(GgmlType::Q4_0, q.data(), fixed.back().data(), w.rows(), w.cols());
    return fixed.back().data();
  };
  QuantModel qm;
  qm.dims = block_dims(m);
  for (int64_t b = 0; b < L; ++b) {
    BlockParams p = block_params(m, b);
    for (int i = 0; i < kNumLin; ++i) p.w[size_t(i)] = quantized(m.weight(fmt::format("blk.{}.{}.weight", b, lin_name(i))));
    qm.blocks.push_back(p);
    qm.train.push_back({});
  }
  const engine::Weight* ow = m.find_weight("output.weight");
  ASSERT_NE(ow, nullptr);
  qm.output_fixed = quantized(*ow);
  set_head(qm, m, *ow, x_ref, seqs * n_ctx);
  const engine::Weight& e = m.weight("token_embd.weight");
  TrainableMatrix emb(GgmlType::IQ2_S, e.f32.data(), e.rows(), e.cols(), nullptr);
  const std::vector<uint8_t> plain = emb.blocks();
  qm.embedding = &emb;
  qm.embedding_ref = e.f32.data();
  qm.tokens = tokens.data();

  E2EOptions o;
  o.epochs = 4;
  o.lr = 2e-2f;
  o.batch = 4;
  o.eval_sequences = 8;
  o.decay = true;
  const E2EReport r = train_end_to_end(qm, x0.data(), seqs, n_ctx, o);
  std::printf("embedding: held-out KL %.5f -> %.5f in %lld steps\n", r.before, r.after, static_cast<long long>(r.steps));
  EXPECT_LT(r.after, 0.97 * r.before);
  EXPECT_NEAR(model_kl(qm, x0.data(), 0, 8, n_ctx), r.after, 1e-6 * r.before);
  const size_t row = row_size(GgmlType::IQ2_S, e.cols());
  int64_t changed = 0;
  for (int64_t t = 0; t < e.rows(); ++t) {
    const bool same = std::equal(plain.begin() + t * row, plain.begin() + (t + 1) * row, emb.blocks().begin() + t * row);
    if (t >= used) EXPECT_TRUE(same) << "row " << t << " of a token no sequence uses changed";
    changed += !same;
  }
  EXPECT_GT(changed, used / 2);
}

}  // namespace
}  // namespace tailor::gradual
