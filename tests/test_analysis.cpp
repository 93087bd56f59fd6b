// Sensitivity measurement kernels on the trained llama-30m: local errors
// against a direct computation, their ordering by bits, the fast end-to-end
// KL divergence against a full forward pass with the swapped tensor, and the
// adaptive sample size.
#include <cmath>
#include <cstring>
#include <memory>
#include <random>

#include <gtest/gtest.h>

#include "tailor/analysis/block_cache.h"
#include "tailor/analysis/local_error.h"
#include "tailor/eval/run_eval.h"
#include "tailor/quant/codec.h"
#include "tailor/util/error.h"

namespace tailor::analysis {
namespace {

const std::string kModel = std::string(TAILOR_SHARED_DIR) + "/models/llama-30m";

class Analysis : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = std::make_unique<engine::Model>(engine::Model::load(kModel));
    tokens_ = eval::read_token_ids(kModel + "/val_ids_first64k.txt");
    tokens_.resize(8 * 128);
  }
  static void TearDownTestSuite() { model_.reset(); }
  static std::unique_ptr<engine::Model> model_;
  static std::vector<int32_t> tokens_;
};
std::unique_ptr<engine::Model> Analysis::model_;
std::vector<int32_t> Analysis::tokens_;

// Importance from the sample itself: mean squared input per column.
std::vector<float> importance_from(const ActivationSample& s) {
  std::vector<float> imp(size_t(s.cols), 0.0f);
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t j = 0; j < s.cols; ++j) imp[size_t(j)] += s.x[size_t(r * s.cols + j)] * s.x[size_t(r * s.cols + j)];
  for (float& v : imp) v /= float(s.rows);
  return imp;
}

TEST_F(Analysis, LocalErrorsMatchDirectComputation) {
  const std::string name = "blk.2.ffn_down.weight";
  const engine::Sequences seqs{std::vector<int32_t>(tokens_.begin(), tokens_.begin() + 128)};
  const ActivationSamples acts = sample_activations(*model_, seqs, {.max_rows = 40, .stride = 3});
  ASSERT_EQ(acts.at(name).size(), 1u);
  const ActivationSample& x = acts.at(name)[0];
  ASSERT_EQ(x.rows, 40);  // 128 rows offered, every third kept, capped at 40
  const std::vector<float> imp = importance_from(x);
  const engine::Weight& w = model_->weight(name);
  const LocalError e = measure_local(name, w, GgmlType::Q4_K, imp, &acts.at(name));
  ASSERT_TRUE(e.applicable) << e.reason;

  // Direct: quantize with the codec, then every sum in double with plain loops.
  const int64_t out = w.rows(), in = w.cols();
  std::vector<uint8_t> blocks(row_size(GgmlType::Q4_K, in) * size_t(out));
  quantize_rows(GgmlType::Q4_K, w.f32.data(), blocks.data(), out, in, imp.data(), 1);
  std::vector<float> q(size_t(out * in));
  dequantize_rows(GgmlType::Q4_K, blocks.data(), q.data(), out, in, 1);
  double se = 0, sw = 0, mx = 0, we = 0, ww = 0;
  for (int64_t i = 0; i < out * in; ++i) {
    const double d = double(w.f32[i]) - q[i], v = w.f32[i], m = imp[size_t(i % in)];
    se += d * d, sw += v * v, we += m * d * d, ww += m * v * v, mx = std::max(mx, std::abs(d));
  }
  double oe = 0, ow = 0;
  for (int64_t r = 0; r < x.rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double yd = 0, yw = 0;
      for (int64_t j = 0; j < in; ++j) {
        const double xv = x.x[size_t(r * in + j)];
        yd += (double(w.f32[o * in + j]) - q[o * in + j]) * xv;
        yw += double(w.f32[o * in + j]) * xv;
      }
      oe += yd * yd, ow += yw * yw;
    }
  EXPECT_EQ(e.bytes, int64_t(blocks.size()));
  EXPECT_DOUBLE_EQ(e.bits_per_weight, 4.5);
  EXPECT_NEAR(e.total.rmse, std::sqrt(se / double(out * in)), 1e-9 * e.total.rmse + 1e-12);
  EXPECT_DOUBLE_EQ(e.total.max_abs, mx);
  EXPECT_NEAR(e.total.rel_frobenius, std::sqrt(se / sw), 1e-9);
  EXPECT_NEAR(e.total.rel_weighted, we / ww, 1e-9 * we / ww);
  EXPECT_NEAR(e.total.rel_output, std::sqrt(oe / ow), 1e-4 * std::sqrt(oe / ow));
  EXPECT_EQ(e.total.activation_rows, 40);
  EXPECT_TRUE(e.experts.empty());
}

TEST_F(Analysis, ErrorsDecreaseWithBits) {
  const std::string name = "blk.0.attn_q.weight";
  const engine::Weight& w = model_->weight(name);
  double last = INFINITY;
  for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K,
                     GgmlType::Q8_0}) {
    const LocalError e = measure_local(name, w, t, {}, nullptr);
    ASSERT_TRUE(e.applicable) << e.reason;
    EXPECT_LT(e.total.rmse, last) << type_name(t);
    EXPECT_LT(e.total.rel_frobenius, 1.0) << type_name(t);
    EXPECT_EQ(e.total.rel_output, -1);  // no activations given
    last = e.total.rmse;
  }
}

TEST(AnalysisLocal, NotApplicableAndExperts) {
  engine::Weight odd;
  odd.shape = {4, 96};
  odd.f32.assign(4 * 96, 0.5f);
  const LocalError na = measure_local("odd", odd, GgmlType::Q4_K, {}, nullptr);
  EXPECT_FALSE(na.applicable);
  EXPECT_NE(na.reason.find("rows of 96 cannot be stored in Q4_K"), std::string::npos) << na.reason;
  EXPECT_THROW(quantize_weight(odd, GgmlType::Q4_K, {}), Error);

  // Two experts, the second with 4x larger weights: same relative error
  // scale, 4x the RMSE; the whole tensor's figures come from the summed squares.
  engine::Weight moe;
  moe.shape = {2, 8, 256};
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t i = 0; i < 2 * 8 * 256; ++i) moe.f32.push_back(nd(rng) * (i < 8 * 256 ? 1.0f : 4.0f));
  std::vector<ActivationSample> acts(2);
  for (auto& a : acts) {
    a.rows = 5, a.cols = 256;
    for (int i = 0; i < 5 * 256; ++i) a.x.push_back(nd(rng));
  }
  const LocalError e = measure_local("moe", moe, GgmlType::Q4_K, {}, &acts);
  ASSERT_TRUE(e.applicable);
  ASSERT_EQ(e.experts.size(), 2u);
  const double r0 = e.experts[0].rmse, r1 = e.experts[1].rmse;
  EXPECT_NEAR(e.total.rmse, std::sqrt((r0 * r0 + r1 * r1) / 2), 1e-9);
  EXPECT_DOUBLE_EQ(e.total.max_abs, std::max(e.experts[0].max_abs, e.experts[1].max_abs));
  EXPECT_NEAR(r1 / r0, 4.0, 0.4);
  EXPECT_EQ(e.total.activation_rows, 10);
  EXPECT_GT(e.experts[1].rel_output, 0);
}

// Fast (cached block inputs) against naive (full forward) on the same windows.
TEST_F(Analysis, FastKldEqualsNaiveAndRestoresWeights) {
  BlockCache cache(*model_, std::vector<int32_t>(tokens_.begin(), tokens_.begin() + 3 * 128),
                   {.n_ctx = 128, .max_windows = 3, .top_k = 32});
  ASSERT_EQ(cache.windows(), 3);
  for (const std::string name : {"blk.5.attn_v.weight", "output.weight", "token_embd.weight"}) {
    const engine::Weight& w = model_->weight(name);
    const std::vector<float> before = w.f32;
    const engine::Weight q = quantize_weight(w, GgmlType::Q3_K, {});
    const EndToEnd fast = cache.measure(name, q, {.max_rel_error = 0, .noise_floor = 0});
    const EndToEnd naive = cache.measure_naive(name, q, fast.windows);
    EXPECT_EQ(fast.windows, 3) << name;
    EXPECT_EQ(fast.tokens, 3 * 127) << name;
    EXPECT_EQ(fast.tokens, naive.tokens);
    EXPECT_GT(fast.kld.value, 0) << name;
    EXPECT_NEAR(fast.kld.value, naive.kld.value, 1e-5 * naive.kld.value) << name;
    std::printf("%s Q3_K: KLD fast %.9g naive %.9g (rel diff %.2g), dPPL %.5g +/- %.2g, %.3f s vs %.3f s\n",
                name.c_str(), fast.kld.value, naive.kld.value,
                std::abs(fast.kld.value - naive.kld.value) / naive.kld.value, fast.ppl_diff.value,
                fast.ppl_diff.error, fast.seconds, naive.seconds);
    EXPECT_NEAR(fast.ppl_diff.value, naive.ppl_diff.value, 1e-5 * std::abs(naive.ppl) ) << name;
    const engine::Weight& after = model_->weight(name);
    ASSERT_EQ(after.f32.size(), before.size());
    EXPECT_EQ(std::memcmp(after.f32.data(), before.data(), before.size() * 4), 0) << name;
  }
  // The unchanged model re-run from the cache reproduces the reference exactly.
  const EndToEnd same = cache.measure("blk.1.attn_k.weight", model_->weight("blk.1.attn_k.weight"),
                                      {.max_rel_error = 0, .noise_floor = 0});
  EXPECT_LT(std::abs(same.kld.value), 1e-7);
  EXPECT_EQ(cache.entry_block("blk.7.ffn_up.weight"), 7);
  EXPECT_EQ(cache.entry_block("output.weight"), 8);
  EXPECT_EQ(cache.entry_block("token_embd.weight"), -1);
}

TEST_F(Analysis, CacheIsBoundedAndRefusesShortText) {
  const std::vector<int32_t> two(tokens_.begin(), tokens_.begin() + 2 * 128);
  // One window's hidden states (9 x 128 x 512 floats) exceed 1 MiB: keep one.
  BlockCache small(*model_, two, {.n_ctx = 128, .max_windows = 2, .max_cache_bytes = 1 << 20});
  EXPECT_EQ(small.windows(), 1);
  EXPECT_EQ(small.dropped_windows(), 1);
  EXPECT_GE(small.bytes(), 9 * 128 * 512 * 4);
  EXPECT_THROW(BlockCache(*model_, std::vector<int32_t>(100, 1), {.n_ctx = 128}), Error);
  EXPECT_THROW(BlockCache(*model_, two, {.n_ctx = 1}), Error);
  // A replacement of the wrong shape is refused and leaves the model as it was.
  engine::Weight wrong;
  wrong.shape = {3, 3};
  wrong.f32.assign(9, 0.0f);
  EXPECT_THROW(small.measure("blk.0.attn_q.weight", wrong), Error);
  EXPECT_EQ(model_->weight("blk.0.attn_q.weight").shape, (std::vector<int64_t>{512, 512}));
}

TEST_F(Analysis, AdaptiveStopsEarlierForTinyErrors) {
  BlockCache cache(*model_, tokens_, {.n_ctx = 128, .max_windows = 8, .top_k = 32});
  const std::string name = "blk.3.ffn_down.weight";
  const engine::Weight& w = model_->weight(name);
  const AdaptiveOptions opt{.first_batch = 1, .max_rel_error = 0.05, .noise_floor = 2e-4};
  const EndToEnd q8 = cache.measure(name, quantize_weight(w, GgmlType::Q8_0, {}), opt);
  const EndToEnd q2 = cache.measure(name, quantize_weight(w, GgmlType::Q2_K, {}), opt);
  RecordProperty("q8_tokens", std::to_string(q8.tokens));
  RecordProperty("q2_tokens", std::to_string(q2.tokens));
  std::printf("Q8_0: KLD %.3g +/- %.2g, %lld tokens (%s); Q2_K: KLD %.3g +/- %.2g (windows %.2g), "
              "%lld tokens (%s)\n",
              q8.kld.value, q8.kld.error, (long long)q8.tokens, stop_reason_name(q8.stop), q2.kld.value,
              q2.kld.error, q2.kld_window_error, (long long)q2.tokens, stop_reason_name(q2.stop));
  EXPECT_LT(q8.kld.value, q2.kld.value);
  EXPECT_EQ(q8.stop, StopReason::BelowFloor);
  EXPECT_NE(q2.stop, StopReason::BelowFloor);
  // Q8_0 is settled by its first window; Q2_K's 5% needs more of them.
  EXPECT_EQ(q8.windows, 1);
  EXPECT_LT(q8.tokens, q2.tokens);
  EXPECT_GT(q2.kld_window_error, 0);
  if (q2.stop == StopReason::Precise) {
    EXPECT_LT(std::max(q2.kld.error, q2.kld_window_error), 0.05 * q2.kld.value);
  } else {
    EXPECT_EQ(q2.windows, 8);  // ran out of windows before reaching 5%
  }
}

}  // namespace
}  // namespace tailor::analysis
