// Perplexity, KL divergence and the reference-logits stores, checked against
// independent double-precision computations on synthetic models (a bigram
// table stands in for a network so every expected value is computable here).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <vector>

#include "format_test_util.h"
#include "tailor/eval/kld.h"
#include "tailor/eval/logit_store.h"
#include "tailor/eval/perplexity.h"
#include "tailor/eval/softmax.h"
#include "tailor/util/error.h"

namespace fs = std::filesystem;
using namespace tailor;
using namespace tailor::eval;
using test::expect_error;

namespace {

fs::path temp_dir() {
  static fs::path dir = test::scratch_dir("tailor_test_eval");
  return dir;
}

// Plain double log-softmax, written independently of row_softmax.
std::vector<double> ref_log_softmax(const float* l, size_t n) {
  double m = -INFINITY;
  for (size_t i = 0; i < n; ++i) m = std::max(m, double(l[i]));
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += std::exp(double(l[i]) - m);
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = double(l[i]) - m - std::log(s);
  return out;
}

double exact_kld(const float* p_logits, const float* q_logits, size_t n) {
  const auto lp = ref_log_softmax(p_logits, n), lq = ref_log_softmax(q_logits, n);
  double k = 0;
  for (size_t i = 0; i < n; ++i) k += std::exp(lp[i]) * (lp[i] - lq[i]);
  return k;
}

// A bigram "model": the logits after token t are row t of a random table.
struct Bigram {
  int64_t vocab;
  std::vector<float> table;
  Bigram(int64_t v, uint32_t seed, float sigma = 2.0f) : vocab(v), table(size_t(v * v)) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, sigma);
    for (auto& x : table) x = nd(rng);
  }
  const float* row(int32_t prev) const { return table.data() + size_t(prev) * size_t(vocab); }
  LogitsFn fn() const {
    return [this](std::span<const int32_t> win, int64_t first_row, int64_t n_rows, std::span<float> out) {
      ASSERT_EQ(out.size(), size_t(n_rows * vocab));
      for (int64_t r = 0; r < n_rows; ++r)
        std::copy_n(row(win[size_t(first_row + r)]), vocab, out.begin() + r * vocab);
    };
  }
};

std::vector<int32_t> random_tokens(size_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, int32_t(vocab - 1));
  std::vector<int32_t> t(n);
  for (auto& x : t) x = d(rng);
  return t;
}

struct Expected {
  double ppl, err;
  int64_t n;
};
Expected expected_ppl(const std::vector<double>& nll) {
  double s = 0, s2 = 0;
  for (double v : nll) s += v, s2 += v * v;
  const double n = double(nll.size()), m = s / n;
  return {std::exp(m), std::exp(m) * std::sqrt((s2 / n - m * m) / (n - 1)), int64_t(nll.size())};
}

}  // namespace

TEST(Softmax, UniformAndShifted) {
  std::vector<float> l(1000, 3.5f);
  const RowSoftmax s = row_softmax(l);
  EXPECT_NEAR(s.logprob(l[7]), -std::log(1000.0), 1e-12);
  EXPECT_EQ(s.argmax, 0);
  l[421] = 1e4f;  // huge logit: still exact, no overflow
  const RowSoftmax t = row_softmax(l);
  EXPECT_EQ(t.argmax, 421);
  EXPECT_NEAR(t.logprob(l[421]), 0.0, 1e-12);
  l[5] = NAN;
  expect_error([&] { row_softmax(l); }, "logits row", "non-finite");
  expect_error([&] { row_softmax({}); }, "logits row", "empty");
}

TEST(Perplexity, WindowPlans) {
  PplOptions o;
  o.n_ctx = 256;
  auto w = plan_windows(1100, o);
  ASSERT_EQ(w.size(), 4u);  // floor(1100/256), the 76-token remainder is dropped as llama.cpp does
  for (size_t i = 0; i < w.size(); ++i) {
    EXPECT_EQ(w[i].start, int64_t(i) * 256);
    EXPECT_EQ(w[i].first_row, 128);
    EXPECT_EQ(w[i].n_scored(), 127);  // n_ctx - 1 - n_ctx/2
  }
  o.n_ctx = 255;  // odd context: first = 127, 127 scored
  EXPECT_EQ(plan_windows(1100, o)[0].n_scored(), 127);
  o.n_ctx = 256;
  expect_error([&] { plan_windows(511, o); }, "perplexity", "need at least 512");
  PplOptions two;
  two.n_ctx = 2;
  expect_error([&] { plan_windows(100, two); }, "perplexity", "scores no token");
  o.max_windows = 2;
  EXPECT_EQ(plan_windows(1100, o).size(), 2u);

  PplOptions h;
  h.method = PplMethod::HuggingFace;
  h.n_ctx = 256;
  w = plan_windows(1100, h);
  ASSERT_EQ(w.size(), 5u);
  EXPECT_EQ(w[4].start, 1024);
  EXPECT_EQ(w[4].length, 76);
  EXPECT_EQ(w[4].n_scored(), 75);
  EXPECT_EQ(w[0].n_scored(), 255);
  EXPECT_EQ(plan_windows(513, h).size(), 2u);  // a 1-token remainder has nothing to score
  expect_error([&] { plan_windows(1, h); }, "perplexity", "need at least 2");
}

TEST(Perplexity, UniformLogitsGiveVocabularySize) {
  const int64_t V = 50;
  const auto tokens = random_tokens(600, V, 1);
  LogitsFn uniform = [](std::span<const int32_t>, int64_t, int64_t, std::span<float> out) {
    std::fill(out.begin(), out.end(), 0.25f);
  };
  for (auto method : {PplMethod::LlamaCpp, PplMethod::HuggingFace}) {
    PplOptions o;
    o.method = method;
    o.n_ctx = 64;
    const PplResult r = evaluate_perplexity(tokens, V, o, uniform);
    EXPECT_NEAR(r.ppl, 50.0, 1e-9);
    EXPECT_EQ(r.ppl_error, 0.0);
    for (double p : r.running_ppl) EXPECT_NEAR(p, 50.0, 1e-9);
  }
}

// llama.cpp protocol on a bigram model: the expected value walks the token
// stream itself (BOS before each window's second token, second half only).
TEST(Perplexity, LlamaCppIndexingMatchesIndependentWalk) {
  const int64_t V = 40, ctx = 32;
  const Bigram m(V, 7);
  const auto tokens = random_tokens(5 * ctx + 9, V, 2);
  PplOptions o;
  o.n_ctx = ctx;
  o.bos = 3;
  std::vector<double> nll;
  for (int64_t w = 0; w < 5; ++w)
    for (int64_t j = ctx / 2 + 1; j < ctx; ++j) {
      const int64_t pos = w * ctx + j;
      nll.push_back(-ref_log_softmax(m.row(tokens[size_t(pos - 1)]), size_t(V))[size_t(tokens[size_t(pos)])]);
    }
  const Expected e = expected_ppl(nll);
  const PplResult r = evaluate_perplexity(tokens, V, o, m.fn());
  EXPECT_EQ(r.n_scored, e.n);
  EXPECT_EQ(r.n_scored, 5 * (ctx - 1 - ctx / 2));
  EXPECT_NEAR(r.ppl, e.ppl, 1e-9 * e.ppl);
  EXPECT_NEAR(r.ppl_error, e.err, 1e-7 * e.err);
  EXPECT_EQ(r.running_ppl.size(), 5u);
  EXPECT_NEAR(r.running_error.back(), r.ppl_error, 1e-12);
}

// The model sees each window with its first token replaced by BOS; targets
// still come from the original stream.
TEST(Perplexity, BosReplacesFirstTokenOfEachWindow) {
  const int64_t V = 10;
  const Bigram m(V, 9);
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  PplOptions o;
  o.n_ctx = 3;  // first = 1, scores row 1 predicting token 2 of each window
  o.bos = 9;
  std::vector<std::vector<int32_t>> seen;
  LogitsFn spy = [&](std::span<const int32_t> win, int64_t first_row, int64_t n_rows, std::span<float> out) {
    seen.emplace_back(win.begin(), win.end());
    EXPECT_EQ(first_row, 1);
    EXPECT_EQ(n_rows, 1);
    m.fn()(win, first_row, n_rows, out);
  };
  const PplResult r = evaluate_perplexity(tokens, V, o, spy);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], (std::vector<int32_t>{9, 2, 3}));
  EXPECT_EQ(seen[1], (std::vector<int32_t>{9, 5, 6}));
  const double n1 = -ref_log_softmax(m.row(2), V)[3], n2 = -ref_log_softmax(m.row(5), V)[6];
  EXPECT_NEAR(r.ppl, std::exp((n1 + n2) / 2), 1e-9);
}

TEST(Perplexity, HuggingFaceScoresEveryPositionAfterTheFirst) {
  const int64_t V = 30, ctx = 16;
  const Bigram m(V, 11);
  const auto tokens = random_tokens(100, V, 3);
  std::vector<double> nll;
  for (size_t i = 1; i < tokens.size(); ++i)
    if (i % size_t(ctx) != 0) nll.push_back(-ref_log_softmax(m.row(tokens[i - 1]), V)[size_t(tokens[i])]);
  const Expected e = expected_ppl(nll);
  PplOptions o;
  o.method = PplMethod::HuggingFace;
  o.n_ctx = ctx;
  o.bos = 0;  // ignored by this protocol
  const PplResult r = evaluate_perplexity(tokens, V, o, m.fn());
  EXPECT_EQ(r.n_scored, e.n);
  EXPECT_NEAR(r.ppl, e.ppl, 1e-9 * e.ppl);
  EXPECT_NEAR(r.ppl_error, e.err, 1e-7 * e.err);
}

TEST(Perplexity, BadInputs) {
  const Bigram m(8, 1);
  const std::vector<int32_t> bad = {1, 2, 3, 99, 4, 5, 6, 7};
  PplOptions o;
  o.n_ctx = 4;
  expect_error([&] { evaluate_perplexity(bad, 8, o, m.fn()); }, "perplexity", "outside vocabulary");
  o.bos = 8;
  expect_error([&] { evaluate_perplexity(bad, 8, o, m.fn()); }, "perplexity", "BOS id 8");
}

TEST(Kld, PercentilesMatchSortedReference) {
  const std::vector<float> v = {1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(percentile_sorted(v, 0.5), 2.5);
  EXPECT_DOUBLE_EQ(percentile_sorted(v, 0.0), 1);
  EXPECT_DOUBLE_EQ(percentile_sorted(v, 1.0), 4);
  EXPECT_DOUBLE_EQ(median_sorted(v), 2.5);
  EXPECT_DOUBLE_EQ(median_sorted(std::vector<float>{1, 5, 9}), 5);

  // 1000 values 0..999 in random order: the report sorts them itself.
  std::vector<int> order(1000);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(5));
  KldAccumulator acc;
  for (int i : order) {
    KldPoint p;
    p.kld = i;
    p.p_diff = (i - 500) / 1000.0;
    acc.add(p);
  }
  const KldReport r = acc.report();
  EXPECT_DOUBLE_EQ(r.kld_max, 999);
  EXPECT_DOUBLE_EQ(r.kld_min, 0);
  EXPECT_NEAR(r.kld_median, 499.5, 1e-9);
  EXPECT_NEAR(r.kld_p90, 0.90 * 999, 1e-9);
  EXPECT_NEAR(r.kld_p99, 0.99 * 999, 1e-9);
  EXPECT_NEAR(r.kld_p999, 0.999 * 999, 1e-6);
  EXPECT_NEAR(r.kld.value, 499.5, 1e-9);
  // Standard error of the mean of 0..999: sqrt(var_pop / (n-1)).
  const double var = (1000.0 * 1000.0 - 1) / 12.0;
  EXPECT_NEAR(r.kld.error, std::sqrt(var / 999.0), 1e-9);
  EXPECT_NEAR(r.p_diff_p25, (0.25 * 999 - 500) / 1000.0, 1e-6);
  EXPECT_NEAR(r.p_diff.value, -0.0005, 1e-9);
  expect_error([] { KldAccumulator().report(); }, "kl-divergence", "no scored tokens");
}

TEST(Kld, PerplexityRatioAndDifference) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(0.5, 4.0);
  KldAccumulator same, shifted;
  double s = 0;
  const int n = 500;
  for (int i = 0; i < n; ++i) {
    KldPoint p;
    p.nll = p.nll_base = u(rng);
    s += p.nll;
    p.same_top = i % 4 != 0;
    same.add(p);
    p.nll += 0.1;  // Q is uniformly 0.1 nats worse
    shifted.add(p);
  }
  const KldReport a = same.report();
  EXPECT_NEAR(a.ppl.value, std::exp(s / n), 1e-9);
  EXPECT_NEAR(a.ln_ppl_ratio.value, 0, 1e-12);
  EXPECT_NEAR(a.ln_ppl_ratio.error, 0, 1e-6);  // perfectly correlated
  EXPECT_NEAR(a.ppl_diff.value, 0, 1e-12);
  EXPECT_NEAR(a.ln_ppl_correlation, 1, 1e-9);
  EXPECT_NEAR(a.same_top.value, 0.75, 1e-12);
  EXPECT_NEAR(a.same_top.error, std::sqrt(0.75 * 0.25 / (n - 1)), 1e-12);
  const KldReport b = shifted.report();
  EXPECT_NEAR(b.ln_ppl_ratio.value, 0.1, 1e-9);
  EXPECT_NEAR(b.ppl_ratio.value, std::exp(0.1), 1e-9);
  EXPECT_NEAR(b.ppl_diff.value, std::exp(s / n) * (std::exp(0.1) - 1), 1e-9);
  EXPECT_NEAR(b.ppl_diff.error, b.ppl.error - b.ppl_base.error, 1e-6);  // correlation one
}

TEST(Kld, IdenticalDistributionsGiveZero) {
  const int64_t V = 200;
  const Bigram m(V, 4);
  const std::vector<int32_t> targets = {5, 17, 199, 0};
  std::vector<float> logits;
  for (int32_t t : {1, 2, 3, 4}) logits.insert(logits.end(), m.row(t), m.row(t) + V);
  const auto path = temp_dir() / "identical.tlp";
  TopKLogitsWriter w(path.string(), V, 8, 3, TopKOptions{V, V, 1.0});
  w.add_window(0, targets, logits);
  w.commit();
  LogitStore s = LogitStore::open(path.string());
  for (int64_t r = 0; r < 4; ++r) {
    const KldPoint p = kld_point(std::span(logits).subspan(size_t(r * V), size_t(V)), s.row(0, r));
    EXPECT_NEAR(p.kld, 0.0, 1e-6);
    EXPECT_TRUE(p.same_top);
    EXPECT_NEAR(p.p_diff, 0.0, 1e-6);
    EXPECT_NEAR(p.nll, p.nll_base, 1e-5);
  }
}

// Known pairs: P and Q differ by noise; sparse rows with k = V and dense rows
// must both equal the exact double sum.
TEST(Kld, KnownPairsMatchDoublePrecision) {
  const int64_t V = 300;
  std::mt19937 rng(8);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> p(V), q(V);
    for (int64_t i = 0; i < V; ++i) {
      p[size_t(i)] = 3 * nd(rng);
      q[size_t(i)] = p[size_t(i)] + 0.5f * nd(rng);
    }
    const double exact = exact_kld(p.data(), q.data(), V);
    const auto lp = ref_log_softmax(p.data(), V);
    std::vector<float> lpf(lp.begin(), lp.end());
    std::vector<int32_t> ids(V);
    std::iota(ids.begin(), ids.end(), 0);
    std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return lp[size_t(a)] > lp[size_t(b)]; });
    std::vector<float> sorted_lp(V);
    for (int64_t i = 0; i < V; ++i) sorted_lp[size_t(i)] = float(lp[size_t(ids[size_t(i)])]);
    RefRow sparse;
    sparse.target = 7;
    sparse.target_logprob = float(lp[7]);
    sparse.ids = ids;
    sparse.logprobs = sorted_lp;
    sparse.tail_logprob = -INFINITY;
    const KldPoint a = kld_point(q, sparse);
    EXPECT_NEAR(a.kld, exact, 2e-6 * std::max(1.0, exact));
    // Dense rows skip p < e^-16 as llama.cpp does; with this spread that mass is negligible.
    RefRow dense;
    dense.target = 7;
    dense.target_logprob = float(lp[7]);
    dense.logprobs = lpf;
    const KldPoint b = kld_point(q, dense);
    EXPECT_NEAR(b.kld, exact, 1e-5 * std::max(1.0, exact));
    EXPECT_EQ(a.same_top, ids[0] == int32_t(std::max_element(q.begin(), q.end()) - q.begin()));
    EXPECT_EQ(a.same_top, b.same_top);
    const auto lq = ref_log_softmax(q.data(), V);
    EXPECT_NEAR(a.nll, -lq[7], 1e-9);
    EXPECT_NEAR(a.p_diff, std::exp(lq[7]) - std::exp(lp[7]), 1e-6);
  }
}

// Bucketing the tail never raises the divergence, and on peaked (LM-like)
// distributions the gap is small. Figures are printed for the report.
TEST(Kld, TopKTruncationErrorAgainstFullVocabulary) {
  const int64_t V = 32000;
  std::mt19937 rng(21);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Family {
    const char* name;
    float zipf, noise, q_noise;  // logit = -zipf*ln(rank) + noise*N(0,1); Q adds q_noise*N(0,1)
  };
  for (const Family fam : {Family{"zipf s=1.5 +N(0,0.5), Q +N(0,0.3)", 1.5f, 0.5f, 0.3f},
                           Family{"zipf s=1.5 +N(0,0.5), Q +N(0,1.0)", 1.5f, 0.5f, 1.0f},
                           Family{"zipf s=1.1 +N(0,0.5), Q +N(0,0.3)", 1.1f, 0.5f, 0.3f},
                           Family{"flat N(0,2), Q +N(0,0.3) (worst case)", 0.0f, 2.0f, 0.3f}}) {
    struct Keep {
      const char* label;
      TopKOptions opt;
    };
    for (const Keep keep : {Keep{"k=8", {8, 8, 1.0}}, Keep{"k=32", {32, 32, 1.0}}, Keep{"k=128", {128, 128, 1.0}},
                            Keep{"cover 0.99", {32, 2048, 0.99}}, Keep{"cover 0.999 (default)", TopKOptions{}}}) {
      double sum_exact = 0, sum_err = 0, max_rel = 0, sum_tail = 0, sum_kept = 0;
      const int rows = 16;
      std::vector<int32_t> perm(V);
      for (int r = 0; r < rows; ++r) {
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        std::vector<float> p(V), q(V);
        for (int64_t i = 0; i < V; ++i) {
          p[size_t(perm[size_t(i)])] = -fam.zipf * std::log(float(i + 1)) + fam.noise * nd(rng);
        }
        for (int64_t i = 0; i < V; ++i) q[size_t(i)] = p[size_t(i)] + fam.q_noise * nd(rng);
        const auto path = temp_dir() / "trunc.tlp";
        TopKLogitsWriter w(path.string(), V, 2, 0, keep.opt);
        const std::vector<int32_t> target = {perm[3]};
        w.add_window(0, target, p);
        w.commit();
        LogitStore s = LogitStore::open(path.string());
        const RefRow row = s.row(0, 0);
        const double exact = exact_kld(p.data(), q.data(), V);
        const double bucket = kld_point(q, row).kld;
        EXPECT_LE(bucket, exact + 1e-6) << fam.name << " " << keep.label;
        sum_kept += double(row.ids.size());
        sum_exact += exact;
        sum_err += exact - bucket;
        sum_tail += std::exp(double(row.tail_logprob));
        max_rel = std::max(max_rel, (exact - bucket) / exact);
      }
      std::printf("truncation %-38s %-22s mean kept %6.0f: mean KLD %.5f, error %.2e (%.2f%%), max row %.2f%%, "
                  "tail mass %.4f\n",
                  fam.name, keep.label, sum_kept / rows, sum_exact / rows, sum_err / rows, 100 * sum_err / sum_exact,
                  100 * max_rel, sum_tail / rows);
      // Peaked distributions with the default coverage: the bound is tight.
      if (fam.zipf > 1.2f && keep.opt.coverage == 0.999) {
        EXPECT_LT(sum_err / sum_exact, 0.03) << fam.name;
      }
    }
    // The same rows through llama.cpp's 16-bit full-vocabulary layout.
    double sum_exact = 0, sum_err = 0;
    const int rows = 16;
    for (int r = 0; r < rows; ++r) {
      std::vector<float> p(V), q(V);
      std::vector<int32_t> perm(V);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int64_t i = 0; i < V; ++i)
        p[size_t(perm[size_t(i)])] = -fam.zipf * std::log(float(i + 1)) + fam.noise * nd(rng);
      for (int64_t i = 0; i < V; ++i) q[size_t(i)] = p[size_t(i)] + fam.q_noise * nd(rng);
      const auto path = temp_dir() / "trunc.kld";
      const std::vector<int32_t> toks = {0, 1, 2};
      LlamaLogitsWriter w(path.string(), V, 3, toks);
      w.add_window(p);
      w.commit();
      LogitStore s = LogitStore::open(path.string());
      const double exact = exact_kld(p.data(), q.data(), V);
      sum_exact += exact;
      sum_err += std::abs(exact - kld_point(q, s.row(0, 0)).kld);
    }
    std::printf("truncation %-38s %-22s %17s: mean KLD %.5f, |error| %.2e (%.2f%%)\n", fam.name,
                "llama.cpp 16-bit", "", sum_exact / rows, sum_err / rows, 100 * sum_err / sum_exact);
  }
}

TEST(LogitStore, TopKRoundTrip) {
  const int64_t V = 64, K = 5;
  const Bigram m(V, 12);
  const auto path = temp_dir() / "roundtrip.tlp";
  TopKLogitsWriter w(path.string(), V, 16, 8, TopKOptions{K, K, 1.0});
  std::vector<std::vector<float>> all;
  std::vector<std::vector<int32_t>> all_targets;
  for (int win = 0; win < 3; ++win) {
    const int rows = 7 - win;  // windows may differ in length
    std::vector<float> logits;
    std::vector<int32_t> targets;
    for (int r = 0; r < rows; ++r) {
      logits.insert(logits.end(), m.row(win * 10 + r), m.row(win * 10 + r) + V);
      targets.push_back((win * 7 + r * 3) % V);
    }
    w.add_window(win * 16, targets, logits);
    all.push_back(logits);
    all_targets.push_back(targets);
  }
  EXPECT_FALSE(fs::exists(path));  // atomic: nothing under the final name before commit
  w.commit();
  EXPECT_EQ(fs::file_size(path), 32u + 3 * 16 + (7 + 6 + 5) * (16 + 8 * K) + 24);
  LogitStore s = LogitStore::open(path.string());
  EXPECT_FALSE(s.is_llama());
  EXPECT_EQ(s.n_vocab(), V);
  EXPECT_EQ(s.max_k(), K);
  EXPECT_EQ(s.min_k(), K);
  EXPECT_EQ(s.n_ctx(), 16);
  EXPECT_EQ(s.first_row(), 8);
  ASSERT_EQ(s.n_windows(), 3);
  EXPECT_EQ(s.total_rows(), 18);
  for (int win = 0; win < 3; ++win) {
    EXPECT_EQ(s.window_start(win), win * 16);
    ASSERT_EQ(s.n_rows(win), 7 - win);
    for (int r = 0; r < 7 - win; ++r) {
      const auto lp = ref_log_softmax(all[size_t(win)].data() + r * V, V);
      std::vector<int32_t> ids(V);
      std::iota(ids.begin(), ids.end(), 0);
      std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return lp[size_t(a)] > lp[size_t(b)]; });
      const RefRow row = s.row(win, r);
      EXPECT_EQ(row.target, all_targets[size_t(win)][size_t(r)]);
      EXPECT_NEAR(row.target_logprob, lp[size_t(row.target)], 1e-5);
      double tail = 0;
      for (int64_t i = K; i < V; ++i) tail += std::exp(lp[size_t(ids[size_t(i)])]);
      EXPECT_NEAR(row.tail_logprob, std::log(tail), 1e-5);
      for (int64_t i = 0; i < K; ++i) {
        EXPECT_EQ(row.ids[size_t(i)], ids[size_t(i)]);
        EXPECT_NEAR(row.logprobs[size_t(i)], lp[size_t(ids[size_t(i)])], 1e-5);
      }
    }
  }
  expect_error([&] { s.row(3, 0); }, path.string(), "window 3 of 3");
  expect_error([&] { s.row(2, 5); }, path.string(), "row 5 of window 2");
}

TEST(LogitStore, LlamaLayoutRoundTripAndBytes) {
  const int64_t V = 33, ctx = 8;  // odd vocabulary: records are padded to an even count
  const Bigram m(V, 13, 4.0f);
  const auto tokens = random_tokens(size_t(2 * ctx), V, 4);
  const auto path = temp_dir() / "llama.kld";
  const int64_t rows = ctx - 1 - ctx / 2;
  std::vector<std::vector<float>> wins;
  {
    LlamaLogitsWriter w(path.string(), V, ctx, tokens);
    for (int c = 0; c < 2; ++c) {
      std::vector<float> logits;
      for (int64_t r = 0; r < rows; ++r) {
        const int32_t prev = tokens[size_t(c * ctx + ctx / 2 + r)];
        logits.insert(logits.end(), m.row(prev), m.row(prev) + V);
      }
      w.add_window(logits);
      wins.push_back(logits);
    }
    w.commit();
  }
  // Byte layout written out by hand from llama.cpp's description.
  const auto bytes = test::read_bytes(path);
  const size_t nv = 2 * ((V + 1) / 2) + 4;
  ASSERT_EQ(bytes.size(), 20 + 4 * tokens.size() + 2 * rows * nv * 2);
  EXPECT_EQ(std::memcmp(bytes.data(), "_logits_", 8), 0);
  uint32_t hdr[3];
  std::memcpy(hdr, bytes.data() + 8, 12);
  EXPECT_EQ(hdr[0], uint32_t(ctx));
  EXPECT_EQ(hdr[1], uint32_t(V));
  EXPECT_EQ(hdr[2], 2u);
  EXPECT_EQ(std::memcmp(bytes.data() + 20, tokens.data(), tokens.size() * 4), 0);

  LogitStore s = LogitStore::open(path.string());
  EXPECT_TRUE(s.is_llama());
  EXPECT_EQ(s.max_k(), 0);
  EXPECT_EQ(s.first_row(), ctx / 2);
  ASSERT_EQ(s.n_windows(), 2);
  EXPECT_EQ(std::vector<int32_t>(s.tokens().begin(), s.tokens().end()), tokens);
  for (int c = 0; c < 2; ++c)
    for (int64_t r = 0; r < rows; ++r) {
      const float* l = wins[size_t(c)].data() + r * V;
      const auto lp = ref_log_softmax(l, V);
      const float mx = *std::max_element(l, l + V);
      const double step = 16.0 / 65535;  // codes span at most 16 nats
      const RefRow row = s.row(c, r);
      ASSERT_TRUE(row.dense());
      EXPECT_EQ(row.target, tokens[size_t(c * ctx + ctx / 2 + r + 1)]);
      for (int64_t i = 0; i < V; ++i) {
        if (l[i] > mx - 16) {
          EXPECT_NEAR(row.logprobs[size_t(i)], lp[size_t(i)], step) << i;
        } else {
          EXPECT_GE(row.logprobs[size_t(i)] + step, lp[size_t(i)]);  // raised to the floor
        }
      }
      EXPECT_EQ(row.target_logprob, row.logprobs[size_t(row.target)]);
    }
  LlamaLogitsWriter short_w((temp_dir() / "short.kld").string(), V, ctx, tokens);
  expect_error([&] { short_w.commit(); }, "short.kld", "0 of 2 chunks");
  expect_error([&] { short_w.add_window(std::vector<float>(5)); }, "short.kld", "window needs 3 rows");
}

// Every truncation of a valid file, and targeted corruptions, give one-line
// errors (never a crash or a silent success).
TEST(LogitStore, HostileFiles) {
  const int64_t V = 16, K = 4;
  const Bigram m(V, 14);
  const auto good = temp_dir() / "good.tlp";
  {
    TopKLogitsWriter w(good.string(), V, 8, 4, TopKOptions{K, K, 1.0});
    const std::vector<int32_t> t = {1, 2, 3};
    std::vector<float> l(m.table.begin(), m.table.begin() + 3 * V);
    w.add_window(0, t, l);
    w.add_window(8, t, l);
    w.commit();
  }
  const auto bytes = test::read_bytes(good);
  const auto bad = temp_dir() / "bad.tlp";
  for (size_t n = 0; n < bytes.size(); ++n) {
    test::write_bytes(bad, bytes.data(), n);
    EXPECT_THROW(LogitStore::open(bad.string()), Error) << "prefix " << n;
  }
  auto corrupt = [&](size_t off, const void* v, size_t len, const std::string& problem, bool at_row = false) {
    auto b = bytes;
    std::memcpy(b.data() + off, v, len);
    test::write_bytes(bad, b.data(), b.size());
    if (at_row) {
      LogitStore s = LogitStore::open(bad.string());
      expect_error([&] { s.row(0, 0); }, bad.string(), problem);
    } else {
      expect_error([&] { LogitStore::open(bad.string()); }, bad.string(), problem);
    }
  };
  const uint32_t big = 0xFFFFFFF0u, two = 2, k_big = 999;
  const int32_t neg = -1, huge_id = 16;
  const float pos = 0.5f, nan = NAN;
  corrupt(0, "XXXX", 4, "not a reference logits file");
  corrupt(8, &two, 4, "unsupported version");
  corrupt(12, &big, 4, "vocabulary size");
  corrupt(16, &k_big, 4, "kept-token range");
  corrupt(28, &k_big, 4, "kept-token range");
  corrupt(32, &two, 4, "bad window tag");
  corrupt(36, &big, 4, "rows, context is 8");
  corrupt(36, &two, 4, "");  // rows disagree with layout: caught by tag or trailer
  const size_t rec = 32 + 16;  // first record
  corrupt(rec, &neg, 4, "target token outside vocabulary", true);
  corrupt(rec + 4, &pos, 4, "target log-prob", true);
  corrupt(rec + 8, &nan, 4, "tail log-mass", true);
  corrupt(rec + 12, &big, 4, "keeps 4294967280 tokens, limit 4");
  const uint32_t zero = 0;
  corrupt(rec + 12, &zero, 4, "keeps 0 tokens");
  corrupt(rec + 16, &huge_id, 4, "token id outside vocabulary", true);
  corrupt(rec + 16 + 4 * K, &pos, 4, "not a log-probability", true);
  const float lower = -30.0f;
  corrupt(rec + 16 + 4 * K, &lower, 4, "descending order", true);
  const uint64_t wrong = 5;
  corrupt(bytes.size() - 16, &wrong, 8, "trailer counts");
  corrupt(bytes.size() - 24, "XXXXXXXX", 8, "missing trailer");

  // llama.cpp layout: size must match the header exactly.
  std::vector<uint8_t> l(20, 0);
  std::memcpy(l.data(), "_logits_", 8);
  const uint32_t ctx = 8;
  const int32_t vocab = 16, chunks = 1000000;
  std::memcpy(l.data() + 8, &ctx, 4);
  std::memcpy(l.data() + 12, &vocab, 4);
  std::memcpy(l.data() + 16, &chunks, 4);
  test::write_bytes(bad, l.data(), l.size());
  expect_error([&] { LogitStore::open(bad.string()); }, bad.string(), "does not match 1000000 chunks");
  const int32_t vneg = -5;
  std::memcpy(l.data() + 12, &vneg, 4);
  test::write_bytes(bad, l.data(), l.size());
  expect_error([&] { LogitStore::open(bad.string()); }, bad.string(), "vocabulary size -5");
}

// The streaming path end to end: a base run saves its windows, a perturbed
// model is compared against the store; PPL(base) from the store equals the
// base run's own PPL and PPL(Q) equals the perturbed run's.
TEST(Kld, StreamingBaseThenQuantized) {
  const int64_t V = 50, ctx = 32;
  const Bigram base(V, 15);
  Bigram quant = base;
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  for (auto& x : quant.table) x += nd(rng);
  const auto tokens = random_tokens(size_t(ctx * 6), V, 6);
  PplOptions o;
  o.n_ctx = ctx;
  o.bos = 1;
  const auto path = temp_dir() / "stream.tlp";
  TopKLogitsWriter w(path.string(), V, ctx, ctx / 2, TopKOptions{16, 16, 1.0});
  const PplResult rb = evaluate_perplexity(tokens, V, o, base.fn(), [&](const ScoredWindow& sw) {
    w.add_window(sw.window->start, sw.targets, sw.logits);
  });
  w.commit();
  LogitStore s = LogitStore::open(path.string());
  KldAccumulator acc, acc_rows;
  double exact_sum = 0;
  const PplResult rq = evaluate_perplexity(tokens, V, o, quant.fn(), [&](const ScoredWindow& sw) {
    ASSERT_EQ(s.window_start(sw.index), sw.window->start);
    std::vector<RefRow> refs;
    for (size_t r = 0; r < sw.targets.size(); ++r) refs.push_back(s.row(sw.index, int64_t(r)));
    acc_rows.add_rows(sw.logits, refs);  // top-k rows are views into the file: safe to keep
    for (size_t r = 0; r < sw.targets.size(); ++r) {
      const RefRow row = s.row(sw.index, int64_t(r));
      ASSERT_EQ(row.target, sw.targets[r]);
      const auto ql = sw.logits.subspan(r * V, V);
      acc.add(ql, row);
      const int32_t prev = tokens[size_t(sw.window->start + sw.window->first_row + int64_t(r))];
      exact_sum += exact_kld(base.row(prev), ql.data(), V);
    }
  });
  const KldReport k = acc.report();
  const KldReport kr = acc_rows.report();
  EXPECT_EQ(kr.kld.value, k.kld.value);  // parallel rows, same order of summation
  EXPECT_EQ(kr.kld_p99, k.kld_p99);
  EXPECT_EQ(kr.ppl.value, k.ppl.value);
  EXPECT_EQ(k.count, rb.n_scored);
  EXPECT_NEAR(k.ppl_base.value, rb.ppl, 1e-5 * rb.ppl);
  EXPECT_NEAR(k.ppl.value, rq.ppl, 1e-9 * rq.ppl);
  EXPECT_NEAR(k.ppl_base.error, rb.ppl_error, 1e-4 * rb.ppl_error);
  EXPECT_LE(k.kld.value, exact_sum / double(k.count) + 1e-6);
  EXPECT_GT(k.kld.value, 0.7 * exact_sum / double(k.count));
  EXPECT_GT(k.kld.error, 0);
  EXPECT_GT(k.same_top.value, 0.5);
  EXPECT_GT(k.mean_ref_tail, 0.0);  // 16 of 50 tokens kept
  EXPECT_LT(k.mean_ref_tail, 0.5);
  const std::string text = format_kld_report(k);
  EXPECT_NE(text.find(fmt::format("Mean    KLD: {:10.6f} ± {:10.6f}", k.kld.value, k.kld.error)), std::string::npos)
      << text;
  EXPECT_NE(text.find("Same top p:"), std::string::npos);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 40);  // 7 + 1 + 14 + 1 + 17 lines
}
