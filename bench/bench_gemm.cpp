// GFLOP/s of the engine's matmul (Y[T,N] = X[T,K] * W^T) at llama-30m shapes
// for every GEMM implementation and thread count, then each one's speed-up
// over the naive loops measured in the same run (ratios survive a noisy,
// shared machine better than absolute figures).
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <benchmark/benchmark.h>
#include <cblas.h>

#include "tailor/engine/gemm.h"

namespace {

using tailor::engine::GemmImpl;
constexpr int64_t kT = 512, kK = 512;

std::vector<float> random_values(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

void run_matmul(benchmark::State& state, GemmImpl impl, int64_t n, int threads) {
  std::vector<float> x = random_values(kT * kK, 1), w = random_values(n * kK, 2), y(kT * n);
  for (auto _ : state) {
    tailor::engine::sgemm(impl, true, kT, n, kK, x.data(), kK, w.data(), kK, 0.0f, y.data(), n,
                          threads);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * kT * n * kK * state.iterations() / 1e9,
                                                 benchmark::Counter::kIsRate);
}

// Keeps every run's GFLOP/s so main() can print ratios after the console table.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, double> gflops;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      // With repetitions, the median stands for the benchmark.
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name != "median") continue;
      auto it = r.counters.find("GFLOP/s");
      // Drop the "/real_time" suffix so names match bench_name().
      std::string name = r.benchmark_name();
      if (auto cut = name.find("/real_time"); cut != std::string::npos) name.resize(cut);
      if (it != r.counters.end()) gflops[name] = it->second.value;
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

std::string bench_name(GemmImpl impl, int64_t n, int threads) {
  return "matmul/" + std::string(tailor::engine::gemm_name(impl)) + "/T=512/K=512/N=" +
         std::to_string(n) + "/threads:" + std::to_string(threads);
}

}  // namespace

int main(int argc, char** argv) {
  const GemmImpl impls[] = {GemmImpl::Dnnl, GemmImpl::OpenBlas, GemmImpl::Naive};
  const int64_t ns[] = {512, 1280, 8192};
  const int thread_counts[] = {1, 2};
  for (int64_t n : ns)
    for (int threads : thread_counts)
      for (GemmImpl impl : impls)
        benchmark::RegisterBenchmark(bench_name(impl, n, threads).c_str(), run_matmul, impl, n,
                                     threads)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
  // OpenBLAS picks its kernels when it loads (OPENBLAS_CORETYPE overrides);
  // an AVX2 pick on an AVX-512 CPU costs ~1.5x, so say which one ran.
  benchmark::AddCustomContext("openblas_core", openblas_get_corename());
  // The machine is shared: by default repeat each run and keep medians.
  // Flags given on the command line come later and win.
  std::vector<char*> args(argv, argv + argc);
  char reps[] = "--benchmark_repetitions=3", aggregates[] = "--benchmark_report_aggregates_only=true";
  args.insert(args.begin() + 1, {reps, aggregates});
  int n_args = static_cast<int>(args.size());
  benchmark::Initialize(&n_args, args.data());
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);

  std::printf("\nspeed-up over naive (same run, same N and threads):\n");
  for (int64_t n : ns)
    for (int threads : thread_counts) {
      auto base = reporter.gflops.find(bench_name(GemmImpl::Naive, n, threads));
      if (base == reporter.gflops.end() || base->second <= 0) continue;
      std::printf("  N=%-5lld threads=%d  naive %7.1f GFLOP/s", static_cast<long long>(n),
                  threads, base->second);
      for (GemmImpl impl : {GemmImpl::Dnnl, GemmImpl::OpenBlas}) {
        auto it = reporter.gflops.find(bench_name(impl, n, threads));
        if (it != reporter.gflops.end())
          std::printf("  %s %7.1f (%5.1fx)", std::string(tailor::engine::gemm_name(impl)).c_str(),
                      it->second, it->second / base->second);
      }
      std::printf("\n");
    }
  benchmark::Shutdown();
  return 0;
}
