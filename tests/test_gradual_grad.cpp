// The differentiable block (gradual/block_grad.h): its forward against the
// engine's run_block on real models, and every backward against central
// finite differences in double.
//
// Why the finite-difference checks can fail: in double with step 1e-5 the
// central difference is exact to ~1e-9 relative (truncation h^2 f''' ~ 1e-10,
// rounding 1e-16 / h ~ 1e-11), and every check allows 1e-6 of the gradient's
// largest entry. A dropped term moves gradients by far more: the RMS norm's
// mean term -x r^3 <w dy, x> / n is O(1) relative for unit-scale inputs, the
// softmax's rowsum term is as large as the dS it corrects, a missing GQA
// accumulation zeroes half of dK/dV, a wrong rope sign rotates the gradient.
// NegativeChecks below shows the checker rejects a gradient with a term
// dropped (rms mean term, softmax rowsum) and one perturbed by 1e-4.
#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "tailor/engine/gemm.h"
#include "tailor/engine/model.h"
#include "tailor/gradual/block_grad.h"
#include "tailor/util/error.h"

namespace tailor::gradual {
namespace {

const std::string kModels = std::string(TAILOR_SHARED_DIR) + "/models";
using Vec = std::vector<double>;
const Exec kEx{};

Vec randn(size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, scale);
  Vec v(n);
  for (double& x : v) x = nd(rng);
  return v;
}

// max_i |fd_i - an_i| / max_i |fd_i|, fd by central differences of loss()
// in each element of `param` (perturbed in place and restored).
double fd_error(Vec& param, const Vec& analytic, const std::function<double()>& loss,
                double h = 1e-5) {
  EXPECT_EQ(param.size(), analytic.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < param.size(); ++i) {
    const double keep = param[i];
    param[i] = keep + h;
    const double up = loss();
    param[i] = keep - h;
    const double down = loss();
    param[i] = keep;
    const double fd = (up - down) / (2 * h);
    worst = std::max(worst, std::fabs(fd - analytic[i]));
    scale = std::max(scale, std::fabs(fd));
  }
  EXPECT_GT(scale, 1e-3) << "gradient too small to test anything";
  return worst / scale;
}

constexpr double kTol = 1e-6;

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

TEST(GradualOps, Linear) {
  const int64_t rows = 5, in = 7, out = 4;
  Vec x = randn(rows * in, 1), w = randn(out * in, 2), r = randn(rows * out, 3);
  Vec y(rows * out), dx(x.size()), dw(w.size());
  auto loss = [&] {
    ops::linear(kEx, x.data(), w.data(), y.data(), rows, in, out);
    return dot(r, y);
  };
  ops::linear_backward_input(kEx, r.data(), w.data(), dx.data(), rows, in, out);
  ops::linear_backward_weight(kEx, r.data(), x.data(), dw.data(), rows, in, out);
  EXPECT_LT(fd_error(x, dx, loss), kTol);
  EXPECT_LT(fd_error(w, dw, loss), kTol);
}

TEST(GradualOps, RmsNorm) {
  const int64_t rows = 4, dim = 9;
  Vec x = randn(rows * dim, 4), w = randn(dim, 5), r = randn(rows * dim, 6), y(x.size()),
      dx(x.size());
  auto loss = [&] {
    ops::rms_norm(kEx, x.data(), w.data(), y.data(), rows, dim, 1e-5f);
    return dot(r, y);
  };
  ops::rms_norm_backward(kEx, x.data(), w.data(), r.data(), dx.data(), rows, dim, 1e-5f);
  EXPECT_LT(fd_error(x, dx, loss), kTol);
}

// Partial rotary (half < head_dim / 2) checks the pass-through part as well.
TEST(GradualOps, Rope) {
  for (int64_t half : {4, 3}) {
    const int64_t tokens = 5, heads = 3, hd = 8;
    Vec angles = randn(tokens * half, 7, 2.0), c(angles.size()), s(angles.size());
    for (size_t i = 0; i < angles.size(); ++i) c[i] = std::cos(angles[i]), s[i] = std::sin(angles[i]);
    Vec x = randn(tokens * heads * hd, 8), r = randn(x.size(), 9), y(x.size());
    auto loss = [&] {
      y = x;
      ops::rope(kEx, y.data(), tokens, heads, hd, half, c.data(), s.data(), false);
      return dot(r, y);
    };
    Vec dx = r;
    ops::rope(kEx, dx.data(), tokens, heads, hd, half, c.data(), s.data(), true);
    EXPECT_LT(fd_error(x, dx, loss), kTol) << "half " << half;
  }
}

TEST(GradualOps, Swiglu) {
  const int64_t n = 40;
  Vec g = randn(n, 10, 2.0), u = randn(n, 11), r = randn(n, 12), y(n), dg(n), du(n);
  auto loss = [&] {
    ops::swiglu(kEx, g.data(), u.data(), y.data(), n);
    return dot(r, y);
  };
  ops::swiglu_backward(kEx, g.data(), u.data(), r.data(), dg.data(), du.data(), n);
  EXPECT_LT(fd_error(g, dg, loss), kTol);
  EXPECT_LT(fd_error(u, du, loss), kTol);
}

struct AttnCase {
  ops::AttnDims a{4, 2, 4};
  std::vector<int64_t> lengths{5, 3};
  int64_t rows = 8;
  Vec q = randn(rows * 16, 13, 1.5), k = randn(rows * 8, 14, 1.5), v = randn(rows * 8, 15);
  Vec r = randn(rows * 16, 16);
  Vec probs = Vec(size_t(ops::attention_probs_size(a, lengths))), out = Vec(rows * 16);
  double loss() {
    ops::attention(kEx, a, lengths, q.data(), k.data(), v.data(), probs.data(), out.data());
    return dot(r, out);
  }
};

TEST(GradualOps, AttentionGqaCausal) {
  AttnCase t;
  t.loss();
  Vec dq(t.q.size()), dk(t.k.size()), dv(t.v.size()), scratch(t.probs.size());
  ops::attention_backward(kEx, t.a, t.lengths, t.q.data(), t.k.data(), t.v.data(), t.probs.data(),
                          t.r.data(), dq.data(), dk.data(), dv.data(), scratch.data());
  auto loss = [&] { return t.loss(); };
  EXPECT_LT(fd_error(t.q, dq, loss), kTol);
  EXPECT_LT(fd_error(t.k, dk, loss), kTol);
  EXPECT_LT(fd_error(t.v, dv, loss), kTol);
  // Causality: a query never sees later keys; the first row attends to itself only.
  EXPECT_DOUBLE_EQ(t.probs[0], 1.0);
  EXPECT_EQ(t.probs[1], 0.0);
}

// The checker itself: gradients with a term dropped, or off by 1e-4 of their
// scale in one element, must fail the tolerance the checks above use.
TEST(GradualOps, NegativeChecks) {
  {  // RMS norm without its mean term: dx = r w dy.
    const int64_t rows = 3, dim = 6;
    const float eps = 1e-5f;
    Vec x = randn(rows * dim, 20), w = randn(dim, 21), r = randn(rows * dim, 22), y(x.size());
    auto loss = [&] {
      ops::rms_norm(kEx, x.data(), w.data(), y.data(), rows, dim, eps);
      return dot(r, y);
    };
    Vec dx(x.size());
    for (int64_t i = 0; i < rows; ++i) {
      double ss = 0;
      for (int64_t j = 0; j < dim; ++j) ss += x[i * dim + j] * x[i * dim + j];
      const double inv = 1 / std::sqrt(ss / dim + eps);
      for (int64_t j = 0; j < dim; ++j) dx[i * dim + j] = inv * w[j] * r[i * dim + j];
    }
    EXPECT_GT(fd_error(x, dx, loss), 1e-2);
  }
  {  // Softmax without the rowsum term: dS = P * dP (scaled), gives a wrong dQ.
    AttnCase t;
    t.loss();
    Vec dq(t.q.size()), dk(t.k.size()), dv(t.v.size()), scratch(t.probs.size());
    ops::attention_backward(kEx, t.a, t.lengths, t.q.data(), t.k.data(), t.v.data(),
                            t.probs.data(), t.r.data(), dq.data(), dk.data(), dv.data(),
                            scratch.data());
    // Recompute dQ of sequence 0, head 0 with the term dropped.
    const int64_t len = 5, hd = 4, qs = 16, ks = 8;
    const double scale = 0.5;
    for (int64_t i = 0; i < len; ++i)
      for (int64_t d = 0; d < hd; ++d) {
        double s = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double dp = 0;
          for (int64_t e = 0; e < hd; ++e) dp += t.r[i * qs + e] * t.v[j * ks + e];
          s += scale * t.probs[i * len + j] * dp * t.k[j * ks + d];
        }
        dq[i * qs + d] = s;
      }
    auto loss = [&] { return t.loss(); };
    EXPECT_GT(fd_error(t.q, dq, loss), 1e-2);
  }
  {  // One element off by 1e-4 of the scale.
    const int64_t n = 10;
    Vec g = randn(n, 23), u = randn(n, 24), r = randn(n, 25), y(n), dg(n), du(n);
    auto loss = [&] {
      ops::swiglu(kEx, g.data(), u.data(), y.data(), n);
      return dot(r, y);
    };
    ops::swiglu_backward(kEx, g.data(), u.data(), r.data(), dg.data(), du.data(), n);
    double mx = 0;
    for (double d : dg) mx = std::max(mx, std::fabs(d));
    dg[3] += 1e-4 * mx;
    EXPECT_GT(fd_error(g, dg, loss), 1e-5);
  }
}

// A tiny random block (dim 16, 4 heads over 2 kv heads of 4, ff 24) in double,
// two sequences of 5 and 3 tokens.
struct TinyBlock {
  BlockDims d;
  std::vector<Vec> w;
  Vec attn_norm, ffn_norm, q_norm, k_norm;
  std::vector<int64_t> lengths{5, 3};
  Vec x, r, y;

  explicit TinyBlock(bool qk_norm, int64_t rope_half) {
    d.dim = 16, d.n_heads = 4, d.n_kv_heads = 2, d.head_dim = 4, d.ff = 24, d.eps = 1e-5f;
    d.qk_norm = qk_norm;
    for (int64_t i = 0; i < rope_half; ++i) d.inv_freq.push_back(std::pow(0.3, double(i)) * 0.9);
    for (int i = 0; i < kNumLin; ++i)
      w.push_back(randn(size_t(d.lin_out(i) * d.lin_in(i)), 100 + i, 0.4));
    attn_norm = randn(16, 200, 0.3), ffn_norm = randn(16, 201, 0.3);
    for (double& v : attn_norm) v += 1;
    for (double& v : ffn_norm) v += 1;
    q_norm = randn(4, 202, 0.3), k_norm = randn(4, 203, 0.3);
    for (double& v : q_norm) v += 1;
    for (double& v : k_norm) v += 1;
    x = randn(8 * 16, 300), r = randn(8 * 16, 301), y.resize(8 * 16);
  }
  template <typename T>
  BasicBlockParams<T> params(const std::vector<std::vector<T>>& ws, const std::vector<T>& an,
                             const std::vector<T>& fn, const std::vector<T>& qn,
                             const std::vector<T>& kn) const {
    BasicBlockParams<T> p;
    for (int i = 0; i < kNumLin; ++i) p.w[i] = ws[size_t(i)].data();
    p.attn_norm = an.data(), p.ffn_norm = fn.data();
    if (d.qk_norm) p.q_norm = qn.data(), p.k_norm = kn.data();
    return p;
  }
  BasicBlockParams<double> params() const {
    return params<double>(w, attn_norm, ffn_norm, q_norm, k_norm);
  }
};

void check_block_grads(bool qk_norm, int64_t rope_half) {
  TinyBlock b(qk_norm, rope_half);
  BasicBlockTape<double> tape(b.d);
  tape.forward(b.params(), b.x.data(), b.lengths, b.y.data());
  std::vector<Vec> grads;
  std::array<double*, kNumLin> gp{};
  for (int i = 0; i < kNumLin; ++i) {
    grads.emplace_back(b.w[size_t(i)].size());
    gp[i] = grads.back().data();
  }
  Vec dx(b.x.size()), dan(b.attn_norm.size()), dfn(b.ffn_norm.size());
  tape.backward(b.params(), b.r.data(), gp, dx.data(), dan.data(), dfn.data());
  auto loss = [&] {
    BasicBlockTape<double> t(b.d);
    t.forward(b.params(), b.x.data(), b.lengths, b.y.data());
    return dot(b.r, b.y);
  };
  for (int i = 0; i < kNumLin; ++i)
    EXPECT_LT(fd_error(b.w[size_t(i)], grads[size_t(i)], loss), kTol)
        << lin_name(i) << " qk_norm " << qk_norm << " rope half " << rope_half;
  EXPECT_LT(fd_error(b.x, dx, loss), kTol) << "input, qk_norm " << qk_norm;
  EXPECT_LT(fd_error(b.attn_norm, dan, loss), kTol) << "attention norm weight, qk_norm " << qk_norm;
  EXPECT_LT(fd_error(b.ffn_norm, dfn, loss), kTol) << "MLP norm weight, qk_norm " << qk_norm;

  // The norm weights' gradients alone (no input gradient asked) are the same.
  Vec an2(dan.size()), fn2(dfn.size());
  tape.forward(b.params(), b.x.data(), b.lengths, b.y.data());
  tape.backward(b.params(), b.r.data(), {}, nullptr, an2.data(), fn2.data());
  for (size_t j = 0; j < dan.size(); ++j) ASSERT_NEAR(an2[j], dan[j], 1e-12) << "attention norm alone";
  for (size_t j = 0; j < dfn.size(); ++j) ASSERT_NEAR(fn2[j], dfn[j], 1e-12) << "MLP norm alone";

  // The input gradient alone, written over dy (the aliasing backward allows).
  Vec dy = b.r;
  tape.forward(b.params(), b.x.data(), b.lengths, b.y.data());
  tape.backward(b.params(), dy.data(), {}, dy.data());
  for (size_t j = 0; j < dx.size(); ++j) ASSERT_NEAR(dy[j], dx[j], 1e-12) << "input alone";

  // Asking for a subset runs less of the backward but must give the same values.
  for (std::vector<int> subset : {std::vector<int>{kDown}, std::vector<int>{kGate, kUp},
                                  std::vector<int>{kO}, std::vector<int>{kV},
                                  std::vector<int>{kK}, std::vector<int>{kQ, kDown}}) {
    std::array<double*, kNumLin> sp{};
    std::vector<Vec> sg(kNumLin);
    for (int i : subset) {
      sg[size_t(i)].assign(grads[size_t(i)].size(), 7.0);
      sp[i] = sg[size_t(i)].data();
    }
    tape.forward(b.params(), b.x.data(), b.lengths, b.y.data());
    tape.backward(b.params(), b.r.data(), sp);
    for (int i : subset)
      for (size_t j = 0; j < grads[size_t(i)].size(); ++j)
        ASSERT_NEAR(sg[size_t(i)][j], grads[size_t(i)][j], 1e-12) << lin_name(i);
  }
}

// forward_mlp after changing only MLP weights equals a whole forward.
TEST(GradualBlock, ForwardMlpReusesAttention) {
  TinyBlock b(false, 2);
  BasicBlockTape<double> tape(b.d), fresh(b.d);
  tape.forward(b.params(), b.x.data(), b.lengths, b.y.data());
  for (int i : {kGate, kDown})
    for (double& v : b.w[size_t(i)]) v *= 1.1;
  Vec y1(b.y.size()), y2(b.y.size());
  tape.forward_mlp(b.params(), y1.data());
  fresh.forward(b.params(), b.x.data(), b.lengths, y2.data());
  double changed = 0;
  for (size_t i = 0; i < y1.size(); ++i) {
    ASSERT_NEAR(y1[i], y2[i], 1e-12);
    changed = std::max(changed, std::fabs(y1[i] - b.y[i]));
  }
  EXPECT_GT(changed, 1e-3);
}

TEST(GradualBlock, WeightGradsMatchFiniteDifferences) { check_block_grads(false, 2); }
TEST(GradualBlock, WeightGradsWithQkNormAndPartialRope) { check_block_grads(true, 1); }

// The float path (oneDNN, transposed-A GEMMs, threads) against the double one.
TEST(GradualBlock, FloatMatchesDouble) {
  TinyBlock b(true, 2);
  auto to_f = [](const Vec& v) { return std::vector<float>(v.begin(), v.end()); };
  std::vector<std::vector<float>> wf;
  for (const Vec& v : b.w) wf.push_back(to_f(v));
  const auto an = to_f(b.attn_norm), fn = to_f(b.ffn_norm), qn = to_f(b.q_norm), kn = to_f(b.k_norm);
  const auto xf = to_f(b.x), rf = to_f(b.r);
  std::vector<float> yf(xf.size());
  BlockTape tf(b.d);
  const BlockParams pf = b.params<float>(wf, an, fn, qn, kn);
  tf.forward(pf, xf.data(), b.lengths, yf.data());
  BasicBlockTape<double> td(b.d);
  td.forward(b.params(), b.x.data(), b.lengths, b.y.data());
  for (size_t i = 0; i < yf.size(); ++i) ASSERT_NEAR(yf[i], b.y[i], 1e-4 * (1 + std::fabs(b.y[i])));
  std::array<float*, kNumLin> gf{};
  std::array<double*, kNumLin> gd{};
  std::vector<std::vector<float>> bf;
  std::vector<Vec> bd;
  for (int i = 0; i < kNumLin; ++i) bf.emplace_back(b.w[size_t(i)].size()), bd.emplace_back(b.w[size_t(i)].size());
  for (int i = 0; i < kNumLin; ++i) gf[i] = bf[size_t(i)].data(), gd[i] = bd[size_t(i)].data();
  tf.backward(pf, rf.data(), gf);
  td.backward(b.params(), b.r.data(), gd);
  for (int i = 0; i < kNumLin; ++i) {
    double mx = 0;
    for (double v : bd[size_t(i)]) mx = std::max(mx, std::fabs(v));
    for (size_t j = 0; j < bd[size_t(i)].size(); ++j)
      ASSERT_NEAR(bf[size_t(i)][j], bd[size_t(i)][j], 1e-4 * mx) << lin_name(i);
  }
}

TEST(GradualGemm, TransposedOperandsEveryImpl) {
  const int64_t m = 5, n = 6, k = 7;
  const Vec a = randn(m * k, 30), b = randn(k * n, 31);
  for (auto impl : {engine::GemmImpl::Dnnl, engine::GemmImpl::OpenBlas, engine::GemmImpl::Naive})
    for (bool at : {false, true})
      for (bool bt : {false, true}) {
        // Store A as [k,m] when transposed, B as [n,k].
        std::vector<float> af(a.size()), bf(b.size()), c(m * n, 1.0f);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t p = 0; p < k; ++p) af[at ? p * m + i : i * k + p] = float(a[i * k + p]);
        for (int64_t p = 0; p < k; ++p)
          for (int64_t j = 0; j < n; ++j) bf[bt ? j * k + p : p * n + j] = float(b[p * n + j]);
        engine::sgemm_ex(impl, at, bt, m, n, k, af.data(), at ? m : k, bf.data(), bt ? k : n, 0.5f,
                         c.data(), n, 2);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double s = 0.5;
            for (int64_t p = 0; p < k; ++p) s += a[i * k + p] * b[p * n + j];
            ASSERT_NEAR(c[i * n + j], s, 1e-4) << engine::gemm_name(impl) << at << bt;
          }
      }
}

// Our forward against the engine's run_block on a batch of sequences of
// different lengths. Metric: max |ours - engine| / max |engine - input| (the
// block's own contribution, stricter than relative to the residual stream).
void check_against_engine(const std::string& path, std::vector<int64_t> layers) {
  engine::Model m = engine::Model::load(path);
  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> id(3, int32_t(m.vocab_size() - 1));
  engine::Sequences seqs;
  for (int len : {37, 12, 64}) {
    seqs.emplace_back();
    for (int i = 0; i < len; ++i) seqs.back().push_back(id(rng));
  }
  engine::Hidden h = m.embed(seqs);
  BlockTape tape(block_dims(m));
  int64_t next = 0;
  for (int64_t layer : layers) {
    while (next < layer) m.run_block(next++, h);
    std::vector<float> y(h.data.size());
    const std::vector<float> x = h.data;
    tape.forward(block_params(m, layer), x.data(), h.lengths, y.data());
    m.run_block(layer, h);
    ++next;
    double diff = 0, delta = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      diff = std::max(diff, std::fabs(double(y[i]) - h.data[i]));
      delta = std::max(delta, std::fabs(double(h.data[i]) - x[i]));
    }
    EXPECT_LT(diff / delta, 1e-4) << path << " block " << layer;
    ::testing::Test::RecordProperty("rel_err_block_" + std::to_string(layer), std::to_string(diff / delta));
    std::printf("%s block %lld: max |ours - engine| / max |block delta| = %.3g\n", path.c_str(),
                static_cast<long long>(layer), diff / delta);
  }
}

TEST(GradualBlock, ForwardMatchesEngineLlama30m) {
  check_against_engine(kModels + "/llama-30m", {0, 3, 7});
}

TEST(GradualBlock, ForwardMatchesEngineQwen3QkNorm) {
  check_against_engine(kModels + "/arch-refs/qwen3", {0, 1});
}

TEST(GradualBlock, RejectsMoeAndBiases) {
  engine::Model moe = engine::Model::load(kModels + "/arch-refs/mixtral");
  EXPECT_THROW(block_params(moe, 0), Error);
  engine::Model bias = engine::Model::load(kModels + "/arch-refs/qwen2");
  EXPECT_THROW(block_params(bias, 0), Error);
  engine::Model ok = engine::Model::load(kModels + "/arch-refs/llama-tied");
  EXPECT_NO_THROW(block_params(ok, 1));
  EXPECT_THROW(block_params(ok, 2), Error);
}

}  // namespace
}  // namespace tailor::gradual
