// Forward-pass throughput of llama-30m (windows of 512 tokens of the
// validation ids, a batch of 4 per forward) with 1 and 2 threads, and the
// 2-thread speed-up measured in the same run. The same run measures the GEMM
// peak: the engine's sgemm over the forward's own linear shapes (T = 4 * 512
// rows, same thread count), and prints the forward's achieved GFLOP/s (all
// matmuls plus causal attention) as a fraction of that peak. Each figure is
// the median of several repetitions, since the machine may be shared. `--ppl` also evaluates the full
// HF-style perplexity of llama-30m and moe-26m (128 windows of 512) and
// prints each figure with its time.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "tailor/engine/gemm.h"

#include "tailor/engine/model.h"
#include "tailor/eval/run_eval.h"

namespace {

using namespace tailor::engine;

const std::string kModels = std::string(TAILOR_SHARED_DIR) + "/models";
constexpr int64_t kWindow = 512, kBatch = 4, kRows = kWindow * kBatch;

// llama-30m's shapes (config.json): every linear of a block as (in, out),
// the block count, the output head and the attention geometry.
struct LinearShape {
  int64_t in, out;
};
constexpr LinearShape kBlockLinears[] = {
    {512, 512}, {512, 256}, {512, 256}, {512, 512},  // q k v o
    {512, 1280}, {512, 1280}, {1280, 512},           // gate up down
};
constexpr LinearShape kOutput{512, 8192};
constexpr int64_t kLayers = 8, kHeads = 8, kHeadDim = 64;

// FLOPs of one forward over kBatch windows: 2 per multiply-add of every
// linear, plus Q K^T and P V over the causal (visible) keys only.
double linear_flops() {
  double per_token = 2.0 * kOutput.in * kOutput.out;
  for (const LinearShape& l : kBlockLinears) per_token += 2.0 * kLayers * l.in * l.out;
  return per_token * kRows;
}
double attention_flops() {
  const double visible = kWindow * (kWindow + 1) / 2.0;  // key rows summed over queries
  return kBatch * kLayers * kHeads * visible * kHeadDim * 2.0 * 2.0;
}

// The GEMM peak: per iteration, every linear GEMM of one forward (each block
// shape kLayers times, then the output head) with the engine's default sgemm.
void run_gemm_peak(benchmark::State& state, int threads) {
  const tailor::engine::GemmImpl impl = tailor::engine::default_gemm();
  // GEMM time does not depend on the values (none are denormal).
  std::vector<float> x(kRows * 1280, 0.25f), w(8192 * 512, -0.5f);
  std::vector<float> y(static_cast<size_t>(kRows * 8192));
  auto gemm = [&](const LinearShape& l) {
    tailor::engine::sgemm(impl, true, kRows, l.out, l.in, x.data(), l.in, w.data(), l.in, 0.0f,
                          y.data(), l.out, threads);
  };
  for (auto _ : state) {
    for (int64_t layer = 0; layer < kLayers; ++layer)
      for (const LinearShape& l : kBlockLinears) gemm(l);
    gemm(kOutput);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(linear_flops() * state.iterations() / 1e9,
                                                 benchmark::Counter::kIsRate);
}

void run_forward(benchmark::State& state, int threads) {
  LoadOptions opt;
  opt.cpu.threads = threads;
  Model m = Model::load(kModels + "/llama-30m", opt);
  const std::vector<int32_t> ids = tailor::eval::read_token_ids(kModels + "/llama-30m/val_ids_first64k.txt");
  Sequences seqs;
  for (int64_t b = 0; b < kBatch; ++b)
    seqs.emplace_back(ids.begin() + b * kWindow, ids.begin() + (b + 1) * kWindow);
  double checksum = 0;
  for (auto _ : state) {
    m.forward(seqs, [&](size_t, const float* logits, int64_t, int64_t) { checksum += logits[0]; });
    benchmark::DoNotOptimize(checksum);
  }
  state.counters["tokens/s"] = benchmark::Counter(
      static_cast<double>(kBatch * kWindow * state.iterations()), benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(
      (linear_flops() + attention_flops()) * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

class RatioReporter : public benchmark::ConsoleReporter {
 public:
  // By thread count; with repetitions the median stands for the benchmark.
  std::map<int, double> tokens_per_s, forward_gflops, peak_gflops;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name != "median") continue;
      const std::string name = r.benchmark_name();
      const auto at = name.find("threads:");
      if (at == std::string::npos) continue;
      const int threads = std::stoi(name.substr(at + 8));
      const bool peak = name.rfind("gemm_peak", 0) == 0;
      if (auto it = r.counters.find("tokens/s"); it != r.counters.end())
        tokens_per_s[threads] = it->second.value;
      if (auto it = r.counters.find("GFLOP/s"); it != r.counters.end())
        (peak ? peak_gflops : forward_gflops)[threads] = it->second.value;
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

void full_perplexity(const std::string& name, bool bf16_freqs) {
  LoadOptions opt;
  opt.bf16_rope_freqs = bf16_freqs;
  Model m = Model::load(kModels + "/" + name, opt);
  const std::vector<int32_t> ids = tailor::eval::read_token_ids(kModels + "/" + name + "/val_ids_first64k.txt");
  const auto t0 = std::chrono::steady_clock::now();
  tailor::eval::EvalOptions eo;
  eo.ppl.method = tailor::eval::PplMethod::HuggingFace;
  eo.ppl.n_ctx = kWindow;
  eo.batch = kBatch;
  const tailor::eval::EvalResult r = tailor::eval::run_eval(m, ids, eo);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("perplexity %-10s %-16s %lld windows x %lld: PPL %.4f over %lld positions, %.1f s\n",
              name.c_str(), bf16_freqs ? "bf16 rope freqs" : "exact rope freqs",
              static_cast<long long>(r.n_windows), static_cast<long long>(kWindow), r.ppl.ppl,
              static_cast<long long>(r.ppl.n_scored), secs);
}

}  // namespace

int main(int argc, char** argv) {
  bool ppl = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--ppl") == 0) ppl = true;
    else args.push_back(argv[i]);
  }
  int n = static_cast<int>(args.size());
  for (int threads : {1, 2})
    benchmark::RegisterBenchmark(
        ("gemm_peak/llama-30m-linears/T=2048/threads:" + std::to_string(threads)).c_str(),
        run_gemm_peak, threads)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Repetitions(5)
        ->ReportAggregatesOnly(true);
  for (int threads : {1, 2})
    benchmark::RegisterBenchmark(
        ("forward/llama-30m/B=4/T=512/threads:" + std::to_string(threads)).c_str(), run_forward,
        threads)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Repetitions(5)
        ->ReportAggregatesOnly(true);
  benchmark::Initialize(&n, args.data());
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  if (reporter.tokens_per_s.count(1) && reporter.tokens_per_s.count(2))
    std::printf("forward llama-30m: %.0f tokens/s at 1 thread, %.0f at 2, speed-up %.2fx\n",
                reporter.tokens_per_s[1], reporter.tokens_per_s[2],
                reporter.tokens_per_s[2] / reporter.tokens_per_s[1]);
  for (int threads : {1, 2})
    if (reporter.forward_gflops.count(threads) && reporter.peak_gflops.count(threads))
      std::printf("forward llama-30m, %d thread(s): %.1f GFLOP/s of a %.1f GFLOP/s GEMM peak "
                  "(median of 5): %.0f%%\n",
                  threads, reporter.forward_gflops[threads], reporter.peak_gflops[threads],
                  100.0 * reporter.forward_gflops[threads] / reporter.peak_gflops[threads]);
  if (ppl)
    for (const char* name : {"llama-30m", "moe-26m"})
      for (bool bf16 : {false, true}) full_perplexity(name, bf16);
  benchmark::Shutdown();
  return 0;
}
