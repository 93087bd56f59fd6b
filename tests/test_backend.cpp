// The engine's compute core checked op by op against straightforward
// double-precision references on random data, for every GEMM implementation.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tailor/engine/backend.h"
#include "tailor/quant/codec.h"
#include "tailor/util/error.h"
#include "tailor/util/fp16.h"

namespace tailor::engine {
namespace {

const GemmImpl kImpls[] = {GemmImpl::Dnnl, GemmImpl::OpenBlas, GemmImpl::Naive};

std::vector<float> random_values(size_t n, unsigned seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// ||got - want|| / ||want|| over the whole tensor.
double rel_error(const std::vector<float>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// y[t,n] = sum_k x[t,k] w[n,k] in double.
std::vector<double> ref_matmul(const std::vector<float>& x, const std::vector<float>& w,
                               int64_t t, int64_t k, int64_t n) {
  std::vector<double> y(t * n);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p) s += static_cast<double>(x[i * k + p]) * w[j * k + p];
      y[i * n + j] = s;
    }
  return y;
}

std::unique_ptr<Backend> cpu(GemmImpl g, int threads = 2) {
  CpuOptions o;
  o.gemm = g;
  o.threads = threads;
  return make_cpu_backend(o);
}

TEST(Gemm, NamesRoundTripAndUnknownIsAnError) {
  for (GemmImpl g : kImpls) EXPECT_EQ(parse_gemm(gemm_name(g)), g);
  EXPECT_THROW(parse_gemm("mkl"), Error);
}

TEST(Gemm, OddSizesMatchReferenceForEveryBackendAndThreadCount) {
  struct Shape { int64_t t, k, n; };
  const Shape shapes[] = {{1, 7, 5}, {1, 512, 1280}, {3, 13, 17}, {33, 100, 65}, {64, 257, 31},
                          {5, 1, 9}};
  for (GemmImpl g : kImpls)
    for (int threads : {1, 2})
      for (const Shape& s : shapes) {
        auto x = random_values(s.t * s.k, 1), w = random_values(s.n * s.k, 2);
        std::vector<float> y(s.t * s.n, 123.0f);  // stale output must be overwritten
        cpu(g, threads)->matmul(x.data(), w.data(), y.data(), s.t, s.k, s.n);
        EXPECT_LT(rel_error(y, ref_matmul(x, w, s.t, s.k, s.n)), 2e-6)
            << gemm_name(g) << " threads=" << threads << " t=" << s.t << " k=" << s.k
            << " n=" << s.n;
      }
}

// Attention uses strided views, the untransposed layout and beta; check them
// directly: C[m,n] = A[m,k] B[k,n] + 0.5 C with every leading dim padded.
TEST(Gemm, StridedUntransposedWithBeta) {
  const int64_t m = 9, n = 11, k = 19, lda = 23, ldb = 14, ldc = 13;
  auto a = random_values(m * lda, 3), b = random_values(k * ldb, 4), c0 = random_values(m * ldc, 5);
  std::vector<double> want(m * ldc);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < ldc; ++j) {
      if (j >= n) { want[i * ldc + j] = c0[i * ldc + j]; continue; }  // padding untouched
      double s = 0.5 * c0[i * ldc + j];
      for (int64_t p = 0; p < k; ++p) s += static_cast<double>(a[i * lda + p]) * b[p * ldb + j];
      want[i * ldc + j] = s;
    }
  for (GemmImpl g : kImpls) {
    auto c = c0;
    sgemm(g, false, m, n, k, a.data(), lda, b.data(), ldb, 0.5f, c.data(), ldc, 2);
    EXPECT_LT(rel_error(c, want), 2e-6) << gemm_name(g);
  }
  std::vector<float> c(4);
  EXPECT_THROW(sgemm(GemmImpl::Naive, true, 2, 2, 4, a.data(), 3, b.data(), 4, 0, c.data(), 2),
               Error);
}

// Local stand-in for the F16/BF16 codecs (other helpers own quant/): decodes
// with the shared bit-exact conversions from util/fp16.h.
void local_dequantize(GgmlType t, const void* src, float* dst, int64_t rows, int64_t cols, int) {
  const auto* h = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < rows * cols; ++i)
    dst[i] = t == GgmlType::F16 ? fp16_to_fp32(h[i]) : bf16_to_fp32(h[i]);
}

TEST(QuantMatmul, TiledDecodeMatchesReferenceOnDecodedWeights) {
  const int64_t t = 5, k = 48, n = 37;  // 37 rows over tiles of 8: ragged last tile
  auto x = random_values(t * k, 6), wf = random_values(n * k, 7);
  for (GgmlType type : {GgmlType::F16, GgmlType::BF16}) {
    std::vector<uint16_t> packed(n * k);
    std::vector<float> decoded(n * k);
    for (size_t i = 0; i < packed.size(); ++i) {
      packed[i] = type == GgmlType::F16 ? fp32_to_fp16(wf[i]) : fp32_to_bf16(wf[i]);
      decoded[i] = type == GgmlType::F16 ? fp16_to_fp32(packed[i]) : bf16_to_fp32(packed[i]);
    }
    for (GemmImpl g : kImpls) {
      CpuOptions o;
      o.gemm = g;
      o.tile_rows = 8;
      o.dequantize = &local_dequantize;
      std::vector<float> y(t * n, 7.0f);
      make_cpu_backend(o)->matmul(x.data(), QuantMatrix{type, packed.data(), n, k}, y.data(), t);
      EXPECT_LT(rel_error(y, ref_matmul(x, decoded, t, k, n)), 2e-6)
          << gemm_name(g) << " " << type_name(type);
    }
  }
  std::vector<float> y(t * n);
  EXPECT_THROW(cpu(GemmImpl::Naive)->matmul(x.data(), QuantMatrix{GgmlType::Q4_0, wf.data(), n, 40},
                                            y.data(), t),
               Error);  // 40 columns do not fill 32-element blocks
}

// Through the project's own codecs (quant/codec.h). Skips only while a codec
// still reports "not implemented" on this branch.
TEST(QuantMatmul, RealCodecsMatchDequantizeThenMatmul) {
  const int64_t t = 3, k = 256, n = 300;
  auto x = random_values(t * k, 8), wf = random_values(n * k, 9);
  int ran = 0;
  for (GgmlType type : {GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_K}) {
    std::vector<uint8_t> packed(row_size(type, k) * n);
    std::vector<float> decoded(n * k);
    try {
      quantize_rows(type, wf.data(), packed.data(), n, k, nullptr);
      dequantize_rows(type, packed.data(), decoded.data(), n, k);
    } catch (const Error& e) {
      if (std::string(e.what()).find("not implemented") != std::string::npos) continue;
      throw;
    }
    ++ran;
    std::vector<float> y(t * n);
    cpu(GemmImpl::Dnnl)->matmul(x.data(), QuantMatrix{type, packed.data(), n, k}, y.data(), t);
    EXPECT_LT(rel_error(y, ref_matmul(x, decoded, t, k, n)), 2e-6) << type_name(type);
  }
  if (ran == 0) GTEST_SKIP() << "F16, Q8_0 and Q4_K codecs are not implemented on this branch";
}

TEST(Ops, RmsNormWithAndWithoutWeightInPlace) {
  const int64_t rows = 70, dim = 300;  // 21000 elements: serial path; 300x300 below: threaded
  for (int64_t r : {rows, int64_t{300}}) {
    auto x = random_values(r * dim, 10, -3, 3), w = random_values(dim, 11);
    for (bool with_weight : {true, false}) {
      std::vector<double> want(r * dim);
      for (int64_t i = 0; i < r; ++i) {
        double ss = 0;
        for (int64_t j = 0; j < dim; ++j) ss += double(x[i * dim + j]) * x[i * dim + j];
        const double inv = 1 / std::sqrt(ss / dim + 1e-5);
        for (int64_t j = 0; j < dim; ++j)
          want[i * dim + j] = x[i * dim + j] * inv * (with_weight ? w[j] : 1.0);
      }
      auto y = x;
      cpu(GemmImpl::Naive)->rms_norm(y.data(), with_weight ? w.data() : nullptr, y.data(), r, dim,
                                     1e-5f);
      EXPECT_LT(rel_error(y, want), 1e-6) << r << " " << with_weight;
    }
  }
}

TEST(Ops, BiasResidualSwiGlu) {
  const int64_t rows = 130, n = 513;
  auto y0 = random_values(rows * n, 12), bias = random_values(n, 13), x = random_values(rows * n, 14);
  auto be = cpu(GemmImpl::Naive);
  auto y = y0;
  be->add_bias(y.data(), bias.data(), rows, n);
  std::vector<double> want(rows * n);
  for (int64_t i = 0; i < rows * n; ++i) want[i] = double(y0[i]) + bias[i % n];
  EXPECT_LT(rel_error(y, want), 1e-7);

  y = y0;
  be->add(y.data(), x.data(), rows * n);
  for (int64_t i = 0; i < rows * n; ++i) want[i] = double(y0[i]) + x[i];
  EXPECT_LT(rel_error(y, want), 1e-7);

  auto gate = random_values(rows * n, 15, -12, 12);
  std::vector<float> out(rows * n);
  be->swiglu(gate.data(), x.data(), out.data(), rows * n);
  for (int64_t i = 0; i < rows * n; ++i) want[i] = gate[i] / (1 + std::exp(-double(gate[i]))) * x[i];
  EXPECT_LT(rel_error(out, want), 1e-6);
  be->swiglu(gate.data(), x.data(), gate.data(), rows * n);  // out aliases gate
  EXPECT_EQ(gate, out);
}

TEST(Ops, SoftmaxRowsIsStableForLargeLogits) {
  const int64_t rows = 40, cols = 1001;
  auto x = random_values(rows * cols, 16, -30, 30);
  for (int64_t j = 0; j < cols; ++j) x[j] += 1000.0f;  // row 0 would overflow a naive exp
  std::vector<double> want(rows * cols);
  for (int64_t i = 0; i < rows; ++i) {
    double mx = *std::max_element(x.begin() + i * cols, x.begin() + (i + 1) * cols), sum = 0;
    for (int64_t j = 0; j < cols; ++j) sum += std::exp(double(x[i * cols + j]) - mx);
    for (int64_t j = 0; j < cols; ++j) want[i * cols + j] = std::exp(double(x[i * cols + j]) - mx) / sum;
  }
  cpu(GemmImpl::Naive)->softmax_rows(x.data(), rows, cols);
  EXPECT_LT(rel_error(x, want), 1e-6);
}

TEST(Rope, HandComputedRotation) {
  // head_dim 4, theta 10000: inverse frequencies 1 and 1/100; pairs are
  // (x0, x2) and (x1, x3) (halves, not neighbours). Values from
  // cos/sin of 1, 2, 0.01, 0.02 worked out by hand (python math).
  std::vector<float> x = {1, 2, 3, 4, 1, 2, 3, 4};
  const int64_t positions[] = {1, 2};
  RopeTable table = make_rope_table(positions, 4, 10000.0);
  cpu(GemmImpl::Naive)->rope(x.data(), 2, 1, 4, table);
  const double want[] = {-1.9841106485555495, 1.959900667496664, 2.4623779024123156,
                         4.019799668334994, -3.1440391170241875, 1.9196053465598233,
                         -0.33914308281574557, 4.039197360052977};
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(x[i], want[i], 2e-6) << i;
}

TEST(Rope, RandomHeadsPartialRotaryAndArbitraryPositions) {
  const int64_t tokens = 37, heads = 3, head_dim = 16, rot = 12;
  std::vector<int64_t> pos(tokens);
  for (int64_t t = 0; t < tokens; ++t) pos[t] = 5 + 31 * t;
  auto x = random_values(tokens * heads * head_dim, 17);
  std::vector<double> want(x.size());
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      const float* in = x.data() + (t * heads + h) * head_dim;
      double* o = want.data() + (t * heads + h) * head_dim;
      for (int64_t j = 0; j < head_dim; ++j) o[j] = in[j];
      for (int64_t i = 0; i < rot / 2; ++i) {
        const double a = pos[t] * std::pow(500000.0, -2.0 * i / rot);
        o[i] = in[i] * std::cos(a) - in[i + rot / 2] * std::sin(a);
        o[i + rot / 2] = in[i + rot / 2] * std::cos(a) + in[i] * std::sin(a);
      }
    }
  RopeTable table = make_rope_table(pos, rot, 500000.0);
  cpu(GemmImpl::Naive)->rope(x.data(), tokens, heads, head_dim, table);
  EXPECT_LT(rel_error(x, want), 1e-6);
  EXPECT_THROW(cpu(GemmImpl::Naive)->rope(x.data(), tokens - 1, heads, head_dim, table), Error);
}

TEST(Rope, Llama3ScalingFollowsTheFormula) {
  // Llama 3.1's published values.
  RopeScaling s;
  s.kind = RopeScaling::Kind::Llama3;
  s.factor = 8;
  s.low_freq_factor = 1;
  s.high_freq_factor = 4;
  s.original_max_position = 8192;
  const double theta = 500000;
  const int64_t dim = 128;
  auto got = rope_inv_freq(dim, theta, s);
  ASSERT_EQ(got.size(), 64u);
  int kept = 0, slowed = 0, blended = 0;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double f = std::pow(theta, -2.0 * i / dim), wavelen = 2 * std::numbers::pi / f;
    double want;
    if (wavelen < 8192.0 / 4) {
      want = f, ++kept;
    } else if (wavelen > 8192.0 / 1) {
      want = f / 8, ++slowed;
    } else {
      const double smooth = (8192.0 / wavelen - 1) / (4 - 1);
      want = (1 - smooth) * f / 8 + smooth * f, ++blended;
    }
    EXPECT_NEAR(got[i], want, 1e-12 * want) << i;
  }
  // The three bands are all exercised by these parameters.
  EXPECT_GT(kept, 0);
  EXPECT_GT(slowed, 0);
  EXPECT_GT(blended, 0);

  s.kind = RopeScaling::Kind::Linear;
  s.factor = 4;
  auto lin = rope_inv_freq(dim, theta, s), plain = rope_inv_freq(dim, theta, {});
  for (size_t i = 0; i < lin.size(); ++i) EXPECT_DOUBLE_EQ(lin[i], plain[i] / 4);
  s.kind = RopeScaling::Kind::Llama3;
  s.high_freq_factor = 1;  // bands collapse: rejected, not divided by zero
  EXPECT_THROW(rope_inv_freq(dim, theta, s), Error);
  EXPECT_THROW(rope_inv_freq(7, theta, {}), Error);
}

// out[i,h] = softmax_j<=pos(i) (q[i,h] . k[j,h/group] * scale) v[j,h/group].
std::vector<double> ref_attention(const AttentionShape& s, const std::vector<float>& q,
                                  const std::vector<float>& k, const std::vector<float>& v) {
  std::vector<double> out(s.q_len * s.n_heads * s.head_dim);
  const int64_t group = s.n_heads / s.n_kv_heads;
  for (int64_t i = 0; i < s.q_len; ++i)
    for (int64_t h = 0; h < s.n_heads; ++h) {
      const int64_t kvh = h / group, last = s.kv_len - s.q_len + i;
      std::vector<double> p(last + 1);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j <= last; ++j) {
        double d = 0;
        for (int64_t c = 0; c < s.head_dim; ++c)
          d += double(q[(i * s.n_heads + h) * s.head_dim + c]) *
               k[(j * s.n_kv_heads + kvh) * s.head_dim + c];
        p[j] = d * s.scale;
        mx = std::max(mx, p[j]);
      }
      for (auto& e : p) sum += e = std::exp(e - mx);
      for (int64_t c = 0; c < s.head_dim; ++c) {
        double acc = 0;
        for (int64_t j = 0; j <= last; ++j) acc += p[j] * v[(j * s.n_kv_heads + kvh) * s.head_dim + c];
        out[(i * s.n_heads + h) * s.head_dim + c] = acc / sum;
      }
    }
  return out;
}

struct AttentionData {
  std::vector<float> q, k, v;
  AttentionData(const AttentionShape& s, unsigned seed)
      : q(random_values(s.q_len * s.n_heads * s.head_dim, seed, -2, 2)),
        k(random_values(s.kv_len * s.n_kv_heads * s.head_dim, seed + 1, -2, 2)),
        v(random_values(s.kv_len * s.n_kv_heads * s.head_dim, seed + 2)) {}
};

TEST(Attention, MatchesReferenceWholeSequenceAndContinuation) {
  // 150 queries cross the 64-row tiles; 8 heads over 2 kv heads; the second
  // shape continues a sequence (kv_len > q_len), the third is one decode step.
  const AttentionShape shapes[] = {{150, 150, 8, 2, 32, 1 / std::sqrt(32.0f)},
                                   {20, 90, 4, 4, 16, 0.25f},
                                   {1, 40, 6, 3, 8, 0.5f}};
  for (GemmImpl g : kImpls)
    for (const AttentionShape& s : shapes) {
      AttentionData d(s, 20);
      std::vector<float> out(s.q_len * s.n_heads * s.head_dim, 9.0f);
      cpu(g)->attention(s, d.q.data(), d.k.data(), d.v.data(), out.data());
      EXPECT_LT(rel_error(out, ref_attention(s, d.q, d.k, d.v)), 5e-6)
          << gemm_name(g) << " q_len=" << s.q_len << " kv_len=" << s.kv_len;
    }
}

TEST(Attention, FutureTokensDoNotLeakIntoEarlierOutputs) {
  const AttentionShape s{100, 100, 4, 2, 16, 0.25f};
  for (GemmImpl g : kImpls) {
    AttentionData d(s, 30);
    std::vector<float> before(s.q_len * s.n_heads * s.head_dim), after(before.size());
    auto be = cpu(g);
    be->attention(s, d.q.data(), d.k.data(), d.v.data(), before.data());
    // Rewrite keys and values from position 70 on: rows 0..69 must not move.
    const int64_t cut = 70, row = s.n_kv_heads * s.head_dim;
    for (int64_t i = cut * row; i < s.kv_len * row; ++i) d.k[i] = 50.0f, d.v[i] = -50.0f;
    be->attention(s, d.q.data(), d.k.data(), d.v.data(), after.data());
    const int64_t out_row = s.n_heads * s.head_dim;
    EXPECT_TRUE(std::equal(before.begin(), before.begin() + cut * out_row, after.begin()))
        << gemm_name(g);
    EXPECT_FALSE(std::equal(before.begin() + cut * out_row, before.end(), after.begin() + cut * out_row))
        << gemm_name(g);
  }
}

TEST(Attention, QueryHeadsReadTheirGroupsKvHead) {
  // Value vectors of kv head j are all j + 1, so every output element of
  // query head h is exactly h / group + 1 whatever the weights.
  const AttentionShape s{33, 33, 8, 2, 8, 0.3f};
  for (GemmImpl g : kImpls) {
    AttentionData d(s, 40);
    for (int64_t j = 0; j < s.kv_len; ++j)
      for (int64_t kvh = 0; kvh < s.n_kv_heads; ++kvh)
        for (int64_t c = 0; c < s.head_dim; ++c)
          d.v[(j * s.n_kv_heads + kvh) * s.head_dim + c] = static_cast<float>(kvh + 1);
    std::vector<float> out(s.q_len * s.n_heads * s.head_dim);
    cpu(g)->attention(s, d.q.data(), d.k.data(), d.v.data(), out.data());
    for (int64_t i = 0; i < s.q_len; ++i)
      for (int64_t h = 0; h < s.n_heads; ++h)
        EXPECT_NEAR(out[(i * s.n_heads + h) * s.head_dim], h / 4 + 1, 1e-5) << gemm_name(g);
  }
  std::vector<float> out(8);
  AttentionData d(s, 41);
  EXPECT_THROW(cpu(GemmImpl::Naive)->attention({4, 4, 6, 4, 8, 1}, d.q.data(), d.k.data(),
                                               d.v.data(), out.data()),
               Error);  // 6 heads do not group over 4 kv heads
}

TEST(Gating, TopKOfSoftmaxWithAndWithoutRenormalisation) {
  const int64_t rows = 50, experts = 8;
  const int k = 2;
  auto logits = random_values(rows * experts, 50, -4, 4);
  logits[0] = logits[1] = 5.0f;  // a tie: lower id first
  std::vector<int32_t> ids(rows * k);
  std::vector<float> w(rows * k);
  for (bool renorm : {false, true}) {
    cpu(GemmImpl::Naive)->topk_gating(logits.data(), rows, experts, k, renorm, ids.data(), w.data());
    for (int64_t r = 0; r < rows; ++r) {
      const float* l = logits.data() + r * experts;
      double mx = *std::max_element(l, l + experts), sum = 0;
      std::vector<double> p(experts);
      for (int64_t e = 0; e < experts; ++e) sum += p[e] = std::exp(l[e] - mx);
      for (auto& e : p) e /= sum;
      std::vector<int> order(experts);
      for (int e = 0; e < experts; ++e) order[e] = e;
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
      const double kept = p[order[0]] + p[order[1]];
      for (int j = 0; j < k; ++j) {
        EXPECT_EQ(ids[r * k + j], order[j]) << r;
        const double want = renorm ? p[order[j]] / kept : p[order[j]];
        EXPECT_NEAR(w[r * k + j], want, 1e-6 * want) << r;
      }
    }
  }
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 1);
  EXPECT_THROW(cpu(GemmImpl::Naive)->topk_gating(logits.data(), rows, experts, 9, true, ids.data(),
                                                 w.data()),
               Error);
}

// The ops composed into the Hugging Face forward pass of every tiny
// arch-refs model (dense, tied, llama3 rope scaling, attention bias, q/k norm,
// MoE) must reproduce transformers' float32 logits. This checks the
// conventions the unit tests cannot: rope halves, repeat_kv order, the order
// of norm, rope and bias, and the routing of Mixtral / Qwen3-MoE.
using nlohmann::json;

// The fixtures are single-file, all-F32 checkpoints; raw views are all this
// test needs (the project's checked reader lives in formats/).
class F32Checkpoint {
 public:
  explicit F32Checkpoint(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    bytes_.assign(std::istreambuf_iterator<char>(f), {});
    uint64_t n = 0;
    if (bytes_.size() < 8) throw std::runtime_error(path + ": too short");
    std::memcpy(&n, bytes_.data(), 8);
    header_ = json::parse(bytes_.begin() + 8, bytes_.begin() + 8 + static_cast<int64_t>(n));
    base_ = 8 + n;
  }
  bool has(const std::string& name) const { return header_.contains(name); }
  const float* get(const std::string& name) const {
    if (!has(name) || header_[name]["dtype"] != "F32") throw std::runtime_error("no F32 " + name);
    return reinterpret_cast<const float*>(bytes_.data() + base_ +
                                          header_[name]["data_offsets"][0].get<size_t>());
  }

 private:
  std::vector<char> bytes_;
  json header_;
  size_t base_ = 0;
};

std::vector<float> hf_forward(Backend& be, const F32Checkpoint& w, const json& cfg,
                              const std::vector<int64_t>& ids) {
  const int64_t t = static_cast<int64_t>(ids.size()), d = cfg["hidden_size"];
  const int64_t heads = cfg["num_attention_heads"], kv = cfg["num_key_value_heads"];
  const int64_t vocab = cfg["vocab_size"], layers = cfg["num_hidden_layers"];
  const int64_t hd = cfg.value("head_dim", json()).is_null() ? d / heads : cfg["head_dim"].get<int64_t>();
  const float eps = cfg["rms_norm_eps"];
  const json& rp = cfg["rope_parameters"];
  RopeScaling rs;
  if (rp.value("rope_type", "") == "llama3") {
    rs.kind = RopeScaling::Kind::Llama3;
    rs.factor = rp["factor"];
    rs.low_freq_factor = rp["low_freq_factor"];
    rs.high_freq_factor = rp["high_freq_factor"];
    rs.original_max_position = rp["original_max_position_embeddings"];
  }
  std::vector<int64_t> pos(t);
  for (int64_t i = 0; i < t; ++i) pos[i] = i;
  const RopeTable rope = make_rope_table(pos, hd, rp["rope_theta"].get<double>(), rs);

  const float* embed = w.get("model.embed_tokens.weight");
  std::vector<float> h(t * d), x(t * d), q(t * heads * hd), k(t * kv * hd), v(t * kv * hd),
      att(t * heads * hd), o(t * d);
  for (int64_t i = 0; i < t; ++i) std::copy_n(embed + ids[i] * d, d, &h[i * d]);
  // SwiGLU MLP on rows of x: out = down(silu(gate x) * up x).
  auto mlp = [&](const float* in, int64_t rows, const std::string& gate, const std::string& up,
                 const std::string& down, int64_t ff, float* out) {
    std::vector<float> g(rows * ff), u(rows * ff);
    be.matmul(in, w.get(gate), g.data(), rows, d, ff);
    be.matmul(in, w.get(up), u.data(), rows, d, ff);
    be.swiglu(g.data(), u.data(), g.data(), rows * ff);
    be.matmul(g.data(), w.get(down), out, rows, ff, d);
  };
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    be.rms_norm(h.data(), w.get(p + "input_layernorm.weight"), x.data(), t, d, eps);
    struct Proj { const char* name; float* out; int64_t n; int64_t heads; };
    for (const Proj& pr : {Proj{"q", q.data(), heads * hd, heads}, Proj{"k", k.data(), kv * hd, kv},
                           Proj{"v", v.data(), kv * hd, kv}}) {
      const std::string base = p + "self_attn." + pr.name;
      be.matmul(x.data(), w.get(base + "_proj.weight"), pr.out, t, d, pr.n);
      if (w.has(base + "_proj.bias")) be.add_bias(pr.out, w.get(base + "_proj.bias"), t, pr.n);
      if (w.has(base + "_norm.weight"))
        be.rms_norm(pr.out, w.get(base + "_norm.weight"), pr.out, t * pr.heads, hd, eps);
    }
    be.rope(q.data(), t, heads, hd, rope);
    be.rope(k.data(), t, kv, hd, rope);
    be.attention({t, t, heads, kv, hd, 1.0f / std::sqrt(static_cast<float>(hd))}, q.data(),
                 k.data(), v.data(), att.data());
    be.matmul(att.data(), w.get(p + "self_attn.o_proj.weight"), o.data(), t, heads * hd, d);
    be.add(h.data(), o.data(), t * d);
    be.rms_norm(h.data(), w.get(p + "post_attention_layernorm.weight"), x.data(), t, d, eps);

    const bool mixtral = w.has(p + "block_sparse_moe.gate.weight");
    if (!mixtral && !w.has(p + "mlp.gate.weight")) {
      mlp(x.data(), t, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight",
          p + "mlp.down_proj.weight", cfg["intermediate_size"], o.data());
    } else {
      const std::string moe = p + (mixtral ? "block_sparse_moe." : "mlp.");
      // transformers 5 writes num_local_experts for both; older configs num_experts.
      const json& n_experts = cfg.contains("num_local_experts") ? cfg["num_local_experts"]
                                                                 : cfg["num_experts"];
      const int64_t experts = n_experts;
      const int top = cfg["num_experts_per_tok"];
      const int64_t ff = mixtral ? cfg["intermediate_size"] : cfg["moe_intermediate_size"];
      const bool renorm = mixtral || cfg.value("norm_topk_prob", false);  // Mixtral always
      std::vector<float> logits(t * experts), weight(t * top), eo(d);
      std::vector<int32_t> sel(t * top);
      be.matmul(x.data(), w.get(moe + "gate.weight"), logits.data(), t, d, experts);
      be.topk_gating(logits.data(), t, experts, top, renorm, sel.data(), weight.data());
      std::fill(o.begin(), o.end(), 0.0f);
      for (int64_t i = 0; i < t; ++i)
        for (int j = 0; j < top; ++j) {
          const std::string e = moe + "experts." + std::to_string(sel[i * top + j]) + ".";
          if (mixtral)
            mlp(&x[i * d], 1, e + "w1.weight", e + "w3.weight", e + "w2.weight", ff, eo.data());
          else
            mlp(&x[i * d], 1, e + "gate_proj.weight", e + "up_proj.weight", e + "down_proj.weight",
                ff, eo.data());
          for (int64_t c = 0; c < d; ++c) o[i * d + c] += weight[i * top + j] * eo[c];
        }
    }
    be.add(h.data(), o.data(), t * d);
  }
  be.rms_norm(h.data(), w.get("model.norm.weight"), x.data(), t, d, eps);
  std::vector<float> logits(t * vocab);
  be.matmul(x.data(), w.has("lm_head.weight") ? w.get("lm_head.weight") : embed, logits.data(), t,
            d, vocab);
  return logits;
}

TEST(ComposedForward, ArchRefsReproduceTransformersLogits) {
  const std::string root = std::string(TAILOR_SHARED_DIR) + "/models/arch-refs/";
  for (const char* arch : {"llama-tied", "llama3-rope-scaling", "mistral", "qwen2", "qwen3",
                           "mixtral", "qwen3_moe"}) {
    const std::string dir = root + arch;
    if (!std::ifstream(dir + "/config.json")) GTEST_SKIP() << "fixtures missing: " << dir;
    const json cfg = json::parse(std::ifstream(dir + "/config.json"));
    const json ref = json::parse(std::ifstream(dir + "/reference_logits.json"));
    const F32Checkpoint weights(dir + "/model.safetensors");
    std::vector<double> want;
    for (const auto& row : ref["logits"])
      for (const auto& value : row) want.push_back(value.get<double>());
    for (GemmImpl g : kImpls) {
      auto got = hf_forward(*cpu(g), weights, cfg, ref["input_ids"].get<std::vector<int64_t>>());
      // Measured ~2e-6 for every backend; transformers' own f32 rounding sets the floor.
      EXPECT_LT(rel_error(got, want), 1e-5) << arch << " " << gemm_name(g);
    }
  }
}

}  // namespace
}  // namespace tailor::engine
