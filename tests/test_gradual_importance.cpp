// Importance analysis on the trained llama-30m: every method gives finite
// positive scores, the fast block-disable KLD equals a naive forward pass
// with the block skipped, RTN KLD falls with more bits, the combination and
// the budgets follow their definitions, JSON round-trips, and the weights are
// byte-identical afterwards (also when the analysis is interrupted).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>

#include "tailor/eval/kld.h"
#include "tailor/gradual/importance.h"
#include "tailor/tokenizer/tokenizer.h"
#include "tailor/util/error.h"

namespace tailor::gradual {
namespace {

const std::string kModel = std::string(TAILOR_SHARED_DIR) + "/models/llama-30m";
const std::string kCalib = std::string(TAILOR_SHARED_DIR) + "/text/calibration.txt";

// The start of the calibration text (plenty for the windows used here), cut at a line end.
std::vector<int32_t> calibration_tokens() {
  std::ifstream f(kCalib, std::ios::binary);
  std::string text(64 * 1024, '\0');
  f.read(text.data(), std::streamsize(text.size()));
  text.resize(size_t(f.gcount()));
  text.resize(text.rfind('\n') + 1);
  return load_tokenizer(kModel)->encode(text);
}

using Snapshot = std::map<std::string, engine::Weight>;

Snapshot snapshot(const engine::Model& m) {
  Snapshot s;
  for (const std::string& n : m.weight_names()) s.emplace(n, m.weight(n));
  return s;
}

void expect_identical(const engine::Model& m, const Snapshot& s) {
  ASSERT_EQ(m.weight_names().size(), s.size());
  for (const auto& [name, w] : s) {
    const engine::Weight& now = m.weight(name);
    ASSERT_EQ(now.shape, w.shape) << name;
    ASSERT_EQ(now.type, w.type) << name;
    ASSERT_EQ(now.source, w.source) << name;
    ASSERT_EQ(now.f32.size(), w.f32.size()) << name;
    ASSERT_EQ(now.blocks, w.blocks) << name;
    ASSERT_EQ(std::memcmp(now.f32.data(), w.f32.data(), w.f32.size() * sizeof(float)), 0) << name << " changed";
  }
}

class Importance_ : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = std::make_unique<engine::Model>(engine::Model::load(kModel));
    tokens_ = calibration_tokens();
    before_ = std::make_unique<Snapshot>(snapshot(*model_));
    opt_.n_ctx = 128;
    opt_.windows = 2;
    opt_.top_k = model_->vocab_size();  // full distributions: the cached KLD is exact
    imp_ = std::make_unique<Importance>(analyze_importance(*model_, tokens_, opt_));
  }
  static void TearDownTestSuite() {
    model_.reset(), imp_.reset(), before_.reset();
  }
  static std::unique_ptr<engine::Model> model_;
  static std::vector<int32_t> tokens_;
  static std::unique_ptr<Snapshot> before_;
  static ImportanceOptions opt_;
  static std::unique_ptr<Importance> imp_;
};
std::unique_ptr<engine::Model> Importance_::model_;
std::vector<int32_t> Importance_::tokens_;
std::unique_ptr<Snapshot> Importance_::before_;
ImportanceOptions Importance_::opt_;
std::unique_ptr<Importance> Importance_::imp_;

TEST_F(Importance_, WeightsAreRestoredByteForByte) { expect_identical(*model_, *before_); }

TEST_F(Importance_, ScoresAreFiniteAndPositive) {
  ASSERT_EQ(int64_t(imp_->blocks.size()), model_->num_layers());
  ASSERT_EQ(imp_->layers.size(), size_t(7 * model_->num_layers()));
  EXPECT_GT(imp_->baseline4_kld, 0);
  const auto check = [](const MethodScores& raw, const MethodScores& s, const std::string& what) {
    for (double v : {raw.noise, raw.rtn, raw.disable, s.noise, s.rtn, s.disable, s.upgrade, s.combined}) {
      EXPECT_TRUE(std::isfinite(v)) << what;
      EXPECT_GT(v, 0) << what;
    }
    EXPECT_TRUE(std::isfinite(raw.upgrade)) << what;
  };
  for (const BlockImportance& b : imp_->blocks) {
    check(b.raw, b.s, "block " + std::to_string(b.block));
    // A whole block back at full precision always removes part of the Q4_K damage.
    EXPECT_GT(b.raw.upgrade, 0) << "block " << b.block;
    EXPECT_LT(b.raw.upgrade, imp_->baseline4_kld) << "block " << b.block;
    EXPECT_GT(b.gain, 0);
  }
  for (const LayerImportance& l : imp_->layers) check(l.raw, l.s, l.name);
  // The layers of block 3 in name order.
  std::vector<std::string> names;
  for (const LayerImportance& l : imp_->layers)
    if (l.block == 3) names.push_back(l.name);
  EXPECT_EQ(names, (std::vector<std::string>{"blk.3.attn_k.weight", "blk.3.attn_output.weight", "blk.3.attn_q.weight",
                                             "blk.3.attn_v.weight", "blk.3.ffn_down.weight", "blk.3.ffn_gate.weight",
                                             "blk.3.ffn_up.weight"}));
}

// Mean KL(full model || model with block `skip` skipped) from scratch: full
// forward passes for the reference, the pieces of the forward pass for the
// skipped model, full-vocabulary reference rows.
double naive_disable_kld(engine::Model& m, const std::vector<int32_t>& tokens, int64_t n_ctx, int64_t windows,
                         int64_t skip) {
  engine::Sequences seqs;
  for (int64_t w = 0; w < windows; ++w) seqs.emplace_back(tokens.begin() + w * n_ctx, tokens.begin() + (w + 1) * n_ctx);
  std::vector<std::vector<float>> ref(seqs.size());
  m.forward(seqs, [&](size_t s, const float* logits, int64_t length, int64_t vocab) {
    ref[s].assign(logits, logits + length * vocab);
  });
  engine::Hidden h = m.embed(seqs);
  for (int64_t i = 0; i < m.num_layers(); ++i)
    if (i != skip) m.run_block(i, h);
  eval::KldAccumulator acc;
  m.final_logits(h, [&](size_t s, const float* logits, int64_t length, int64_t vocab) {
    for (int64_t r = 0; r + 1 < length; ++r) {
      const float* row = ref[s].data() + r * vocab;
      double mx = -INFINITY, z = 0;
      for (int64_t v = 0; v < vocab; ++v) mx = std::max(mx, double(row[v]));
      for (int64_t v = 0; v < vocab; ++v) z += std::exp(double(row[v]) - mx);
      std::vector<float> lp(static_cast<size_t>(vocab));
      for (int64_t v = 0; v < vocab; ++v) lp[size_t(v)] = float(double(row[v]) - mx - std::log(z));
      std::vector<int32_t> ids(static_cast<size_t>(vocab));
      std::iota(ids.begin(), ids.end(), 0);
      std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return lp[size_t(a)] > lp[size_t(b)]; });
      std::vector<float> sorted(static_cast<size_t>(vocab));
      for (int64_t v = 0; v < vocab; ++v) sorted[size_t(v)] = lp[size_t(ids[size_t(v)])];
      eval::RefRow rr;
      rr.target = seqs[s][size_t(r + 1)];
      rr.target_logprob = lp[size_t(rr.target)];
      rr.ids = ids;
      rr.logprobs = sorted;
      rr.tail_logprob = -INFINITY;
      acc.add(std::span<const float>(logits + r * vocab, size_t(vocab)), rr);
    }
  });
  return acc.report().kld.value;
}

TEST_F(Importance_, DisableMatchesNaiveForwardWithBlockSkipped) {
  for (int64_t b : {int64_t(0), int64_t(3), model_->num_layers() - 1}) {
    const double naive = naive_disable_kld(*model_, tokens_, opt_.n_ctx, opt_.windows, b);
    const double fast = imp_->blocks[size_t(b)].raw.disable;
    EXPECT_NEAR(fast, naive, 1e-6 * std::max(1.0, naive)) << "block " << b;
  }
}

TEST_F(Importance_, RtnKldFallsWithMoreBits) {
  for (const BlockImportance& b : imp_->blocks) {
    ASSERT_EQ(b.rtn_kld.size(), 3u);
    ASSERT_EQ(b.rtn_err.size(), 3u);
    EXPECT_GT(b.rtn_kld.at(2), b.rtn_kld.at(4)) << "block " << b.block;
    EXPECT_GT(b.rtn_kld.at(4), b.rtn_kld.at(8)) << "block " << b.block;
    EXPECT_GT(b.rtn_err.at(2), b.rtn_err.at(4)) << "block " << b.block;
    EXPECT_GT(b.rtn_err.at(4), b.rtn_err.at(8)) << "block " << b.block;
    EXPECT_GT(b.rtn_err.at(8), 0) << "block " << b.block;
    EXPECT_NEAR(b.raw.rtn, (b.rtn_kld.at(2) + b.rtn_kld.at(4) + b.rtn_kld.at(8)) / 3, 1e-12);
    // The gain is one of the per-level ratios (the median of three).
    std::vector<double> r;
    for (int bits : {2, 4, 8}) r.push_back(b.rtn_kld.at(bits) / b.rtn_err.at(bits));
    std::sort(r.begin(), r.end());
    EXPECT_DOUBLE_EQ(b.gain, r[1]) << "block " << b.block;
  }
}

// Each method's shares: raw / sum(raw) when every raw score is positive.
void expect_normalized(const std::vector<const MethodScores*>& raw, const std::vector<const MethodScores*>& s,
                       double MethodScores::*field, bool all_positive) {
  double sum_raw = 0, sum_s = 0;
  for (const MethodScores* r : raw) sum_raw += r->*field;
  for (const MethodScores* x : s) sum_s += x->*field;
  EXPECT_NEAR(sum_s, 1.0, 1e-12);
  if (!all_positive) return;
  for (size_t i = 0; i < raw.size(); ++i) EXPECT_NEAR(s[i]->*field, raw[i]->*field / sum_raw, 1e-12);
}

TEST_F(Importance_, CombinedFollowsTheWeights) {
  std::vector<const MethodScores*> raw, s;
  for (const BlockImportance& b : imp_->blocks) raw.push_back(&b.raw), s.push_back(&b.s);
  for (auto f : {&MethodScores::noise, &MethodScores::rtn, &MethodScores::disable, &MethodScores::upgrade})
    expect_normalized(raw, s, f, true);
  double sum = 0;
  for (const BlockImportance& b : imp_->blocks) {
    EXPECT_NEAR(b.s.combined, 0.40 * b.s.rtn + 0.25 * b.s.upgrade + 0.20 * b.s.disable + 0.15 * b.s.noise, 1e-12);
    sum += b.s.combined;
  }
  EXPECT_NEAR(sum, 1.0, 1e-12);
  raw.clear(), s.clear();
  for (const LayerImportance& l : imp_->layers) raw.push_back(&l.raw), s.push_back(&l.s);
  for (auto f : {&MethodScores::noise, &MethodScores::rtn, &MethodScores::disable})
    expect_normalized(raw, s, f, true);
  expect_normalized(raw, s, &MethodScores::upgrade, false);  // a layer's upgrade may measure <= 0
  for (const LayerImportance& l : imp_->layers)
    EXPECT_NEAR(l.s.combined, 0.40 * l.s.rtn + 0.25 * l.s.upgrade + 0.20 * l.s.disable + 0.15 * l.s.noise, 1e-12);

  // Re-weighted: only disable counts.
  Importance only = *imp_;
  only.options.w_rtn = only.options.w_upgrade = only.options.w_noise = 0;
  only.options.w_disable = 3;
  combine_scores(only);
  for (const BlockImportance& b : only.blocks) EXPECT_NEAR(b.s.combined, b.s.disable, 1e-12);
}

TEST_F(Importance_, JsonRoundTrips) {
  const nlohmann::json j = imp_->to_json();
  const Importance back = Importance::from_json(nlohmann::json::parse(j.dump()));
  EXPECT_EQ(back.to_json(), j);
  ASSERT_EQ(back.blocks.size(), imp_->blocks.size());
  EXPECT_EQ(back.blocks[5].rtn_err, imp_->blocks[5].rtn_err);
  EXPECT_EQ(back.blocks[5].s.combined, imp_->blocks[5].s.combined);
  EXPECT_EQ(back.layers.back().name, imp_->layers.back().name);
  EXPECT_EQ(back.options.top_k, opt_.top_k);

  nlohmann::json bad = j;
  bad["blocks"][0]["raw"].erase("noise");
  EXPECT_THROW(Importance::from_json(bad), Error);
  bad = j;
  bad["blocks"][1]["rtn_kld"]["x4"] = 0.1;
  EXPECT_THROW(Importance::from_json(bad), Error);
  bad = j;
  bad["version"] = 2;
  EXPECT_THROW(Importance::from_json(bad), Error);
}

TEST_F(Importance_, BudgetsShareTheTotalInverselyToImportance) {
  const double total = 0.05, safety = 2.0;
  const std::vector<double> kld = block_kld_budgets(*imp_, total, safety);
  const std::vector<double> thr = block_thresholds(*imp_, total, safety);
  ASSERT_EQ(kld.size(), imp_->blocks.size());
  ASSERT_EQ(thr.size(), imp_->blocks.size());
  EXPECT_NEAR(std::accumulate(kld.begin(), kld.end(), 0.0), total / safety, 1e-12);
  for (size_t i = 0; i < kld.size(); ++i) {
    EXPECT_NEAR(thr[i], kld[i] / imp_->blocks[i].gain, 1e-15);
    EXPECT_GT(thr[i], 0);
    // budget * importance is the same constant for every block
    EXPECT_NEAR(kld[i] * imp_->blocks[i].s.combined, kld[0] * imp_->blocks[0].s.combined, 1e-12);
    for (size_t k = 0; k < kld.size(); ++k) {
      if (imp_->blocks[i].s.combined > imp_->blocks[k].s.combined) {
        EXPECT_LT(kld[i], kld[k]);
      }
    }
  }
  EXPECT_THROW(block_thresholds(*imp_, 0.0), Error);
  EXPECT_THROW(block_thresholds(*imp_, 0.1, -1.0), Error);
  EXPECT_THROW(block_thresholds(Importance{}, 0.1), Error);
}

TEST_F(Importance_, InterruptedAnalysisRestoresWeights) {
  ImportanceOptions o;
  o.n_ctx = 64;
  o.windows = 1;
  o.layers = false;
  int64_t calls = 0;
  // Stop inside the upgrade phase, while the Q4_K baseline is swapped in.
  EXPECT_THROW(analyze_importance(*model_, tokens_, o,
                                  [&](const std::string& step, int64_t done, int64_t total) {
                                    ++calls;
                                    if (step == "upgrade" && done == total - 2) fail("stop at {}", done);
                                  }),
               Error);
  EXPECT_GT(calls, 40);
  expect_identical(*model_, *before_);
}

TEST_F(Importance_, BadOptionsAreRefused) {
  ImportanceOptions o = opt_;
  o.noise_sigma = -1;
  EXPECT_THROW(analyze_importance(*model_, tokens_, o), Error);
  o = opt_;
  o.w_rtn = o.w_upgrade = o.w_disable = o.w_noise = 0;
  EXPECT_THROW(analyze_importance(*model_, tokens_, o), Error);
  EXPECT_THROW(analyze_importance(*model_, std::vector<int32_t>(10, 1), opt_), Error);
}

// The figure for the report: 8 windows of 256 tokens, blocks and layers.
// TAILOR_IMPORTANCE_FULL=1 to run it (minutes on two cores).
TEST_F(Importance_, FullRunFigures) {
  if (!std::getenv("TAILOR_IMPORTANCE_FULL")) GTEST_SKIP() << "set TAILOR_IMPORTANCE_FULL=1";
  ImportanceOptions o;
  const Importance full = analyze_importance(*model_, tokens_, o, [](const std::string& step, int64_t done, int64_t total) {
    if (done % 50 == 0) fprintf(stderr, "%s %ld/%ld\n", step.c_str(), long(done), long(total));
  });
  printf("wall %.1f s, windows %ld x %ld, baseline Q4_K KLD %.5f\n", full.seconds, long(full.options.windows),
         long(full.options.n_ctx), full.baseline4_kld);
  printf("blk  combined  noise    rtn      disable  upgrade | kld8     kld4     kld2     err8     err4     err2     gain\n");
  for (const BlockImportance& b : full.blocks)
    printf("%3ld  %.4f    %.4f   %.4f   %.4f   %.4f  | %.2e %.2e %.2e %.2e %.2e %.2e %.3g\n", long(b.block),
           b.s.combined, b.s.noise, b.s.rtn, b.s.disable, b.s.upgrade, b.rtn_kld.at(8), b.rtn_kld.at(4),
           b.rtn_kld.at(2), b.rtn_err.at(8), b.rtn_err.at(4), b.rtn_err.at(2), b.gain);
  const std::vector<double> thr = block_thresholds(full, 0.05);
  for (size_t i = 0; i < thr.size(); ++i) printf("threshold(0.05) blk %zu: %.3e\n", i, thr[i]);
  std::ofstream(std::string(::testing::TempDir()) + "/importance-llama30m.json") << full.to_json().dump(1);
  expect_identical(*model_, *before_);
}

}  // namespace
}  // namespace tailor::gradual
