// One training step's block work for gradual quantization: llama-30m block 0
// on a batch of 8 sequences x 128 tokens (embeddings of calibration-like
// ids), forward alone, forward + backward of every weight gradient,
// forward + backward of the MLP gradients only, and the same with the MLP
// half alone recomputed (forward_mlp). Compare the last two with the
// first for the backward's cost. Then one rounding step per format.
#include <array>
#include <chrono>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "tailor/engine/model.h"
#include "tailor/gradual/block_grad.h"
#include "tailor/gradual/rounding.h"

namespace {

using namespace tailor;

struct Setup {
  engine::Model model = engine::Model::load(std::string(TAILOR_SHARED_DIR) + "/models/llama-30m");
  engine::Hidden h;
  gradual::BlockParams p;
  gradual::BlockDims d;
  std::vector<float> y, dy;
  std::array<std::vector<float>, gradual::kNumLin> grads;

  Setup() {
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> id(3, 8191);
    engine::Sequences seqs(8, std::vector<int32_t>(128));
    for (auto& s : seqs)
      for (int32_t& t : s) t = id(rng);
    h = model.embed(seqs);
    p = gradual::block_params(model, 0);
    d = gradual::block_dims(model);
    y.resize(h.data.size());
    dy.resize(h.data.size());
    std::normal_distribution<float> nd(0.0f, 1e-3f);
    for (float& v : dy) v = nd(rng);
    for (int i = 0; i < gradual::kNumLin; ++i)
      grads[size_t(i)].resize(size_t(d.lin_out(i) * d.lin_in(i)));
  }
};

Setup& setup() {
  static Setup s;
  return s;
}

void BM_BlockForward(benchmark::State& state) {
  Setup& s = setup();
  gradual::BlockTape tape(s.d);
  for (auto _ : state) {
    tape.forward(s.p, s.h.data.data(), s.h.lengths, s.y.data());
    benchmark::DoNotOptimize(s.y.data());
  }
}

void run_step(benchmark::State& state, bool mlp_only) {
  Setup& s = setup();
  gradual::BlockTape tape(s.d);
  std::array<float*, gradual::kNumLin> g{};
  for (int i = 0; i < gradual::kNumLin; ++i)
    if (!mlp_only || i >= gradual::kGate) g[i] = s.grads[size_t(i)].data();
  for (auto _ : state) {
    tape.forward(s.p, s.h.data.data(), s.h.lengths, s.y.data());
    tape.backward(s.p, s.dy.data(), g);
    benchmark::DoNotOptimize(g[gradual::kDown]);
  }
}

// An MLP-only training step as it can run: forward_mlp on the kept attention half.
void BM_BlockMlpStep(benchmark::State& state) {
  Setup& s = setup();
  gradual::BlockTape tape(s.d);
  tape.forward(s.p, s.h.data.data(), s.h.lengths, s.y.data());
  std::array<float*, gradual::kNumLin> g{};
  for (int i = gradual::kGate; i < gradual::kNumLin; ++i) g[i] = s.grads[size_t(i)].data();
  for (auto _ : state) {
    tape.forward_mlp(s.p, s.y.data());
    tape.backward(s.p, s.dy.data(), g);
    benchmark::DoNotOptimize(g[gradual::kDown]);
  }
}
BENCHMARK(BM_BlockMlpStep)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_BlockForwardBackwardAll(benchmark::State& state) { run_step(state, false); }
void BM_BlockForwardBackwardMlp(benchmark::State& state) { run_step(state, true); }

BENCHMARK(BM_BlockForward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BlockForwardBackwardAll)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BlockForwardBackwardMlp)->Unit(benchmark::kMillisecond)->UseRealTime();

// The engine's own block for reference (same batch, in place on a copy).
void BM_EngineRunBlock(benchmark::State& state) {
  Setup& s = setup();
  engine::Hidden h = s.h;
  for (auto _ : state) {
    state.PauseTiming();
    h.data = s.h.data;
    state.ResumeTiming();
    s.model.run_block(0, h);
  }
}
BENCHMARK(BM_EngineRunBlock)->Unit(benchmark::kMillisecond)->UseRealTime();

// One TrainableMatrix::step on block 0's ffn_up [1280][512], against a Q4_K
// step timed in the same run (x_Q4_K). Lattice types re-quantize the matrix
// every `every` steps; the block's forward + backward above is the budget
// these steps share.
double seconds_per_step(gradual::TrainableMatrix& m, const std::vector<float>& g, int n) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) m.step(g.data(), 1e-3f, 0.0f);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / n;
}

void BM_RoundingStep(benchmark::State& state, GgmlType t, int every) {
  const engine::Weight& w = setup().model.weight("blk.0.ffn_up.weight");
  const std::vector<float> imp(size_t(w.cols()), 1.0f);
  std::vector<float> g(size_t(w.numel()));
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (float& v : g) v = nd(rng);
  gradual::TrainableMatrix base(GgmlType::Q4_K, w.f32.data(), w.rows(), w.cols(), imp.data());
  const double base_s = seconds_per_step(base, g, 8);
  gradual::TrainableMatrix m(t, w.f32.data(), w.rows(), w.cols(), imp.data(), {0.5f, 0, every});
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) m.step(g.data(), 1e-3f, 0.0f);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  state.counters["x_Q4_K"] = s / double(state.iterations()) / base_s;
}
BENCHMARK_CAPTURE(BM_RoundingStep, Q4_K, GgmlType::Q4_K, 1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_RoundingStep, IQ2_XXS_every1, GgmlType::IQ2_XXS, 1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_RoundingStep, IQ2_XXS_every4, GgmlType::IQ2_XXS, 4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_RoundingStep, IQ3_XXS_every4, GgmlType::IQ3_XXS, 4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_RoundingStep, IQ3_S_every4, GgmlType::IQ3_S, 4)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
