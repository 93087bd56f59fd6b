// Trainable rounding: untouched parameters reproduce our quantizer byte for
// byte, every parameter setting decodes exactly, the STE gradients are the
// derivatives of the relaxed map, and training beats plain rounding on a
// layer-output objective.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <vector>

#include "ggml_vectors.h"
#include "tailor/engine/gemm.h"
#include "tailor/gradual/rounding.h"
#include "tailor/quant/codec.h"
#include "tailor/util/error.h"

namespace tailor::gradual {
namespace {

const GgmlType kTypes[] = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                           GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K,
                           GgmlType::IQ4_NL, GgmlType::IQ4_XS,
                           // lattice types, trained through their quantizer
                           GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ2_S, GgmlType::IQ3_XXS,
                           GgmlType::IQ3_S, GgmlType::IQ1_S, GgmlType::IQ1_M};

std::string type_param_name(const ::testing::TestParamInfo<GgmlType>& info) {
  return std::string(type_name(info.param));
}

std::vector<float> normal(size_t n, float sigma, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Number of floats whose bit patterns differ.
int64_t bit_mismatches(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return -1;
  int64_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], 4) != 0;
  return n;
}

std::vector<float> decode(const TrainableMatrix& m) {
  std::vector<float> out(m.rows() * m.cols());
  dequantize_rows(m.type(), m.blocks().data(), out.data(), m.rows(), m.cols(), 1);
  return out;
}

class Rounding : public ::testing::TestWithParam<GgmlType> {};

TEST_P(Rounding, UntouchedIsPlainQuantizationAndStepsDecodeExactly) {
  const GgmlType t = GetParam();
  ASSERT_TRUE(rounding_trainable(t));
  for (const char* set : {"real512", "real1280", "synth512"}) {
    test::VectorSet s = test::load_set(set);
    for (bool weighted : {false, true}) {
      if (!weighted && type_info(t).requires_imatrix) continue;  // its quantizer refuses
      SCOPED_TRACE(std::string(set) + (weighted ? " imatrix" : " plain"));
      const float* imp = weighted ? s.imatrix.data() : nullptr;
      std::vector<uint8_t> plain(row_size(t, s.cols) * s.rows);
      quantize_rows(t, s.input.data(), plain.data(), s.rows, s.cols, imp, 1);

      TrainableMatrix m(t, s.input.data(), s.rows, s.cols, imp, RoundingOptions{0.5f, 2});
      ASSERT_EQ(m.blocks().size(), plain.size());
      EXPECT_TRUE(m.blocks() == plain) << "untouched parameters changed the blocks";
      EXPECT_EQ(bit_mismatches(m.weights(), decode(m)), 0);
      double err = 0.0;
      for (int64_t i = 0; i < s.rows * s.cols; ++i) {
        const double d = double(m.weights()[i]) - s.input[i];
        err += (imp ? imp[i % s.cols] : 1.0) * d * d;
      }
      EXPECT_NEAR(m.weighted_error(), err, 1e-9 * err + 1e-30);

      // Random steps move offsets and multipliers; the result must stay an exact decode.
      const auto start = m.save();
      for (uint32_t k = 0; k < 4; ++k) {
        auto g = normal(s.input.size(), 1.0f, 17 + k);
        m.step(g.data(), 0.2f, 0.06f);
      }
      EXPECT_FALSE(m.blocks() == plain) << "steps changed nothing";
      EXPECT_EQ(bit_mismatches(m.weights(), decode(m)), 0);
      for (float x : m.weights()) ASSERT_TRUE(std::isfinite(x));

      m.restore(start);
      EXPECT_TRUE(m.blocks() == plain) << "restore did not return to the initial blocks";
      EXPECT_EQ(bit_mismatches(m.weights(), decode(m)), 0);
    }
  }
}

// The gradients are the exact derivatives of relaxed_weights (round() as the
// identity with its residual frozen, clamped levels fixed), checked by central
// differences of L(p) = sum G * relaxed(p) at a point away from the start.
TEST_P(Rounding, GradientsMatchFiniteDifferencesOfTheRelaxedMap) {
  const GgmlType t = GetParam();
  test::VectorSet s = test::load_set("real512");
  TrainableMatrix m(t, s.input.data(), s.rows, s.cols, s.imatrix.data(), RoundingOptions{0.5f, 2});
  for (uint32_t k = 0; k < 3; ++k) {
    auto g = normal(s.input.size(), 1.0f, 5 + k);
    m.step(g.data(), 0.2f, 0.05f);
  }
  const auto G = normal(s.input.size(), 1.0f, 99);
  const auto grad = m.gradients(G.data());
  const auto p = m.save();

  // At the current parameters the relaxed map is the decode itself.
  const auto here = m.relaxed_weights(p);
  ASSERT_EQ(here.size(), m.weights().size());
  for (size_t i = 0; i < here.size(); ++i)
    ASSERT_NEAR(here[i], m.weights()[i], 1e-6 * (std::fabs(m.weights()[i]) + 1e-3)) << i;

  auto loss = [&](const TrainableMatrix::Params& q) {
    const auto w = m.relaxed_weights(q);
    double sum = 0.0;
    for (size_t i = 0; i < w.size(); ++i) sum += double(G[i]) * w[i];
    return sum;
  };
  auto check = [&](std::vector<float> TrainableMatrix::Params::*member, const std::vector<float>& g,
                   size_t stride, float h, const char* what) {
    double gmax = 0.0;
    for (float x : g) gmax = std::max(gmax, double(std::fabs(x)));
    ASSERT_GT(gmax, 0.0) << what << ": all gradients are zero";
    int nonzero = 0;
    for (size_t i = 0; i < g.size(); i += stride) {
      auto plus = p, minus = p;
      (plus.*member)[i] += h;
      (minus.*member)[i] -= h;
      const double fd = (loss(plus) - loss(minus)) / (2.0 * h);
      EXPECT_NEAR(fd, g[i], 2e-3 * gmax) << what << " " << i;
      nonzero += g[i] != 0.0f;
    }
    EXPECT_GT(nonzero, 0) << what;
  };
  if (!grad.scale_mult.empty()) check(&TrainableMatrix::Params::scale_mult, grad.scale_mult, 3, 0.02f, "scale multiplier");
  if (!grad.min_mult.empty()) check(&TrainableMatrix::Params::min_mult, grad.min_mult, 3, 0.02f, "min multiplier");
  check(&TrainableMatrix::Params::offsets, grad.offsets, 97, 0.05f, "offset");
}

// NaN, infinities and extreme magnitudes must neither crash nor break the
// exact-decode promise, before and after steps.
TEST_P(Rounding, SurvivesHostileWeights) {
  const GgmlType t = GetParam();
  const int64_t rows = 2, cols = 512;
  std::vector<float> w(rows * cols);
  for (int64_t j = 0; j < rows * cols; ++j) w[j] = 0.01f * float(j % 17) - 0.08f;
  w[3] = std::numeric_limits<float>::quiet_NaN();
  w[40] = std::numeric_limits<float>::infinity();
  w[41] = -std::numeric_limits<float>::infinity();
  w[300] = 3e38f;
  w[301] = 1e-40f;
  w[600] = -3e38f;
  std::vector<float> imp(cols, 1.0f);
  imp[5] = 0.0f;
  TrainableMatrix m(t, w.data(), rows, cols, imp.data(), RoundingOptions{0.5f, 2});
  auto g = normal(w.size(), 1.0f, 3);
  g[7] = std::numeric_limits<float>::quiet_NaN();
  for (int k = 0; k < 3; ++k) m.step(g.data(), 0.3f, 0.2f);
  EXPECT_EQ(bit_mismatches(m.weights(), decode(m)), 0);
  (void)m.relaxed_weights(m.save());
  (void)m.weighted_error();
}

INSTANTIATE_TEST_SUITE_P(Types, Rounding, ::testing::ValuesIn(kTypes), type_param_name);

TEST(Rounding, RejectsWhatItCannotTrain) {
  std::vector<float> w(256, 0.5f);
  EXPECT_FALSE(rounding_trainable(GgmlType::F16));
  EXPECT_FALSE(rounding_trainable(GgmlType::BF16));
  EXPECT_THROW(TrainableMatrix(GgmlType::F16, w.data(), 1, 256, nullptr), Error);
  EXPECT_THROW(TrainableMatrix(GgmlType::IQ2_XXS, w.data(), 2, 128, nullptr), Error);
  EXPECT_THROW(TrainableMatrix(GgmlType::Q4_K, w.data(), 2, 128, nullptr), Error);
  EXPECT_THROW(TrainableMatrix(GgmlType::Q4_0, w.data(), 0, 32, nullptr), Error);
  EXPECT_THROW(TrainableMatrix(GgmlType::Q4_0, w.data(), 1, 32, nullptr, RoundingOptions{1.0f}), Error);
  TrainableMatrix m(GgmlType::Q4_0, w.data(), 1, 256, nullptr);
  auto p = m.save();
  p.offsets.pop_back();
  EXPECT_THROW(m.restore(p), Error);
}

// Layer-output objective: ||X W_hat^T - X W^T||^2 for a random W [256 out][256
// in] and a fixed batch X [512][256] of correlated channels with unequal
// scales, as real activations are. (With i.i.d. X the STE gradient of each
// weight is dominated by its own term, which always points at the rounding
// boundary, and training gains about 1%.) 200 signed-gradient steps, lr
// decaying linearly from 0.0025, must beat plain (imatrix) rounding.
double train_ratio(GgmlType t, int iters, float scale_lr_factor) {
  const int64_t out = 256, in = 256, batch = 512;
  auto W = normal(out * in, 0.02f, 1);
  // Activations are strongly correlated across channels: a rank-32 signal
  // plus a little isotropic noise, with channel scales spread over ~10x.
  const int64_t rank = 32;
  const auto Z = normal(batch * rank, 1.0f, 2), B = normal(rank * in, 1.0f, 3);
  auto X = normal(batch * in, 0.1f, 4);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t k = 0; k < rank; ++k)
      for (int64_t i = 0; i < in; ++i) X[b * in + i] += Z[b * rank + k] * B[k * in + i];
  auto col_scale = normal(in, 0.7f, 5);
  for (auto& c : col_scale) c = std::exp(c);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < in; ++i) X[b * in + i] *= col_scale[i];
  std::vector<float> importance(in, 0.0f);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < in; ++i) importance[i] += X[b * in + i] * X[b * in + i] / batch;

  TrainableMatrix m(t, W.data(), out, in, importance.data(), RoundingOptions{0.5f, 2});
  const auto gemm = engine::default_gemm();
  std::vector<float> E(out * in), RT(out * batch), G(out * in);
  // Loss and dLoss/dW_hat = 2 (X E^T)^T X with E = W_hat - W.
  auto evaluate = [&](bool want_grad) {
    for (size_t i = 0; i < E.size(); ++i) E[i] = m.weights()[i] - W[i];
    engine::sgemm(gemm, true, out, batch, in, E.data(), in, X.data(), in, 0.0f, RT.data(), batch, 2);
    double loss = 0.0;
    for (float r : RT) loss += double(r) * r;
    if (want_grad) {
      engine::sgemm(gemm, false, out, in, batch, RT.data(), batch, X.data(), in, 0.0f, G.data(), in, 2);
      for (float& g : G) g *= 2.0f;
    }
    return loss;
  };
  const double plain = evaluate(false);
  double best = plain;
  auto best_params = m.save();
  for (int it = 0; it < iters; ++it) {
    const double loss = evaluate(true);
    if (loss < best) {
      best = loss;
      best_params = m.save();
    }
    const float lr = 0.5f / iters * (1.0f - float(it) / iters);
    m.step(G.data(), lr, lr * scale_lr_factor);
  }
  if (evaluate(false) < best) best = evaluate(false);
  else m.restore(best_params);
  EXPECT_NEAR(evaluate(false), best, 1e-9 * best) << "restore did not bring back the best parameters";
  const double ratio = best / plain;
  std::cout << type_name(t) << ": output error after " << iters << " steps (lr_scale = lr * " << scale_lr_factor
            << ") / plain rounding = " << ratio << "\n";
  return ratio;
}

// Offsets alone, and offsets with scale multipliers at a tenth of their rate:
// the multipliers' STE gradient leans toward shrinking the scale and every
// change of an encoded scale re-rounds its whole sub-block, so they need a far
// smaller rate than the offsets (measured: a rate close to lr makes it worse).
TEST(RoundingTraining, BeatsPlainRoundingOnLayerOutput) {
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q2_K, GgmlType::Q3_K}) {
    EXPECT_LT(train_ratio(t, 200, 0.0f), 0.9) << type_name(t);
    EXPECT_LT(train_ratio(t, 200, 0.1f), 0.9) << type_name(t);
  }
}

TEST(RoundingTraining, TrainsOtherFamiliesToo) {
  for (GgmlType t : {GgmlType::Q4_1, GgmlType::IQ4_XS, GgmlType::Q6_K})
    EXPECT_LT(train_ratio(t, 200, 0.1f), 0.9) << type_name(t);
}

// Lattice types train through their quantizer (straight-through offsets).
TEST(RoundingTraining, TrainsLatticeTypes) {
  for (GgmlType t : {GgmlType::IQ2_XXS, GgmlType::IQ3_XXS, GgmlType::IQ2_S})
    EXPECT_LT(train_ratio(t, 200, 0.0f), 0.9) << type_name(t);
}

// Prints (does not assert) the time of one step: lattice types re-quantize.
TEST(RoundingTraining, StepTime1280x512TwoThreads) {
  const int64_t rows = 1280, cols = 512;
  auto W = normal(rows * cols, 0.02f, 7);
  auto G = normal(rows * cols, 1.0f, 8);
  std::vector<float> imp(cols, 1.0f);
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::IQ2_XXS, GgmlType::IQ3_XXS, GgmlType::IQ3_S}) {
    TrainableMatrix m(t, W.data(), rows, cols, imp.data(), RoundingOptions{0.5f, 2});
    m.step(G.data(), 0.01f, 0.01f);
    const int n = 3;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) m.step(G.data(), 0.01f, 0.01f);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / n;
    std::cout << type_name(t) << " 1280x512 step() on 2 threads: " << ms << " ms\n";
    RecordProperty(std::string(type_name(t)) + "_step_ms", std::to_string(ms));
    EXPECT_EQ(bit_mismatches(m.weights(), decode(m)), 0);
  }
}

}  // namespace
}  // namespace tailor::gradual
