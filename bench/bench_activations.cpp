// Throughput of the activation rounding that emulates llama.cpp's matmul
// input conversion (quant/activations.h), per vec_dot_type, on one thread:
// it runs once per linear-layer input in `tailor eval` of a GGUF, so its cost
// beside the GEMM is what the emulation adds to an evaluation.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "tailor/quant/activations.h"

namespace {

using tailor::GgmlType;

void BM_RoundActivations(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  constexpr int64_t kRows = 256, kCols = 1280;
  std::vector<float> x(kRows * kCols), y(x.size());
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  for (auto _ : state) {
    tailor::round_activation_rows(type, x.data(), y.data(), kRows, kCols, 1);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations() * kRows * kCols);
  state.SetLabel(std::string(tailor::type_name(type)));
}
BENCHMARK(BM_RoundActivations)
    ->Arg(static_cast<int>(GgmlType::Q8_K))
    ->Arg(static_cast<int>(GgmlType::Q8_0))
    ->Arg(static_cast<int>(GgmlType::F16))
    ->Arg(static_cast<int>(GgmlType::BF16));

}  // namespace

BENCHMARK_MAIN();
