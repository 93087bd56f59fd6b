// Throughput of the linear formats: quantize (plain and with importance) and
// dequantize one 256 x 4096 matrix of Gaussian weights, single-threaded.
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <vector>

#include "tailor/quant/codec.h"

using namespace tailor;

namespace {

constexpr int64_t kRows = 256, kCols = 4096;

struct Data {
  std::vector<float> x, importance;
  Data() : x(kRows * kCols), importance(kCols) {
    std::mt19937 gen(7);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (float& v : x) v = normal(gen);
    for (float& v : importance) v = std::exp(normal(gen) * 50.0f);
  }
};

const Data& data() {
  static Data d;
  return d;
}

void BM_Quantize(benchmark::State& state, GgmlType t, bool weighted) {
  const Data& d = data();
  std::vector<uint8_t> q(row_size(t, kCols) * kRows);
  for (auto _ : state) {
    quantize_rows(t, d.x.data(), q.data(), kRows, kCols, weighted ? d.importance.data() : nullptr, 1);
    benchmark::DoNotOptimize(q.data());
  }
  state.SetItemsProcessed(state.iterations() * kRows * kCols);
}

void BM_Dequantize(benchmark::State& state, GgmlType t) {
  const Data& d = data();
  std::vector<uint8_t> q(row_size(t, kCols) * kRows);
  quantize_rows(t, d.x.data(), q.data(), kRows, kCols, nullptr, 1);
  std::vector<float> y(kRows * kCols);
  for (auto _ : state) {
    dequantize_rows(t, q.data(), y.data(), kRows, kCols, 1);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations() * kRows * kCols);
}

#define TAILOR_LINEAR_BENCH(T)                                                  \
  BENCHMARK_CAPTURE(BM_Quantize, T##_plain, GgmlType::T, false)->Unit(benchmark::kMillisecond);   \
  BENCHMARK_CAPTURE(BM_Quantize, T##_imatrix, GgmlType::T, true)->Unit(benchmark::kMillisecond);  \
  BENCHMARK_CAPTURE(BM_Dequantize, T, GgmlType::T)->Unit(benchmark::kMillisecond);

TAILOR_LINEAR_BENCH(Q4_0)
TAILOR_LINEAR_BENCH(Q4_1)
TAILOR_LINEAR_BENCH(Q5_0)
TAILOR_LINEAR_BENCH(Q5_1)
TAILOR_LINEAR_BENCH(Q2_K)
TAILOR_LINEAR_BENCH(Q3_K)
TAILOR_LINEAR_BENCH(Q4_K)
TAILOR_LINEAR_BENCH(Q5_K)
TAILOR_LINEAR_BENCH(Q6_K)

}  // namespace

BENCHMARK_MAIN();
