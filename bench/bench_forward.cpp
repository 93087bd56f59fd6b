// Forward-pass throughput of llama-30m (windows of 512 tokens of the
// validation ids, a batch of 4 per forward) with 1 and 2 threads, and the
// 2-thread speed-up measured in the same run. `--ppl` also evaluates the full
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

#include "tailor/engine/model.h"
#include "tailor/eval/run_eval.h"

namespace {

using namespace tailor::engine;

const std::string kModels = std::string(TAILOR_SHARED_DIR) + "/models";
constexpr int64_t kWindow = 512, kBatch = 4;

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
}

class RatioReporter : public benchmark::ConsoleReporter {
 public:
  std::map<int, double> tokens_per_s;  // by thread count
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name != "median") continue;
      auto it = r.counters.find("tokens/s");
      const std::string name = r.benchmark_name();
      const auto at = name.find("threads:");
      if (it != r.counters.end() && at != std::string::npos)
        tokens_per_s[std::stoi(name.substr(at + 8))] = it->second.value;
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
        ("forward/llama-30m/B=4/T=512/threads:" + std::to_string(threads)).c_str(), run_forward,
        threads)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  benchmark::Initialize(&n, args.data());
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  if (reporter.tokens_per_s.count(1) && reporter.tokens_per_s.count(2))
    std::printf("forward llama-30m: %.0f tokens/s at 1 thread, %.0f at 2, speed-up %.2fx\n",
                reporter.tokens_per_s[1], reporter.tokens_per_s[2],
                reporter.tokens_per_s[2] / reporter.tokens_per_s[1]);
  if (ppl)
    for (const char* name : {"llama-30m", "moe-26m"})
      for (bool bf16 : {false, true}) full_perplexity(name, bf16);
  benchmark::Shutdown();
  return 0;
}
