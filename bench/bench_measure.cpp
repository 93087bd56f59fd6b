// Cost of measuring what quantizing one tensor alone does to llama-30m's KL
// divergence: the naive method (a full forward pass per tensor per type over
// every window) against the cached block inputs (re-run blocks i..L only) on
// the same windows, and against the cache with adaptive sample size, all in
// one run so the ratios compare like with like. Quantization is done once
// beforehand and is not timed (both methods need it).
//
// TAILOR_BENCH_WINDOWS / TAILOR_BENCH_CTX override the 16 windows of 512.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "tailor/analysis/block_cache.h"
#include "tailor/analysis/local_error.h"
#include "tailor/eval/run_eval.h"

namespace {

using namespace tailor;
using namespace tailor::analysis;

const std::string kModel = std::string(TAILOR_SHARED_DIR) + "/models/llama-30m";

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoll(v) : fallback;
}

double seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Unit {
  std::string tensor;
  GgmlType type;
  engine::Weight q;
};

void BM_MeasureSweep(benchmark::State& state) {
  const int64_t windows = env_int("TAILOR_BENCH_WINDOWS", 16), ctx = env_int("TAILOR_BENCH_CTX", 512);
  engine::Model model = engine::Model::load(kModel);
  std::vector<int32_t> ids = eval::read_token_ids(kModel + "/val_ids_first64k.txt");
  ids.resize(size_t(windows * ctx));
  // A tensor of each kind spread over the depth, and the output layer.
  const std::vector<std::string> tensors = {"blk.0.attn_q.weight", "blk.2.attn_output.weight",
                                            "blk.4.ffn_gate.weight", "blk.6.ffn_down.weight",
                                            "blk.7.attn_v.weight", "output.weight"};
  const std::vector<GgmlType> types = {GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q2_K};
  std::vector<Unit> units;
  for (const auto& t : tensors)
    for (GgmlType ty : types) units.push_back({t, ty, quantize_weight(model.weight(t), ty, {})});

  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    BlockCache cache(model, ids, {.n_ctx = ctx, .max_windows = windows});
    const double cache_s = seconds(t0);
    double naive_s = 0, fast_s = 0, adaptive_s = 0, max_rel_diff = 0;
    int64_t naive_tokens = 0, adaptive_tokens = 0;
    for (const Unit& u : units) {
      t0 = std::chrono::steady_clock::now();
      const EndToEnd naive = cache.measure_naive(u.tensor, u.q, cache.windows());
      naive_s += seconds(t0);
      t0 = std::chrono::steady_clock::now();
      const EndToEnd fast = cache.measure(u.tensor, u.q, {.max_rel_error = 0, .noise_floor = 0});
      fast_s += seconds(t0);
      t0 = std::chrono::steady_clock::now();
      const EndToEnd ad = cache.measure(u.tensor, u.q, {.first_batch = 1});
      adaptive_s += seconds(t0);
      naive_tokens += naive.tokens;
      adaptive_tokens += ad.tokens;
      if (naive.kld.value > 0)
        max_rel_diff = std::max(max_rel_diff, std::abs(fast.kld.value - naive.kld.value) / naive.kld.value);
      std::printf("%-26s %-5s KLD %.3e +/- %.1e (all %lld tok)  adaptive %.3e +/- %.1e (windows %.1e), %lld tok (%s)\n",
                  u.tensor.c_str(), std::string(type_name(u.type)).c_str(), naive.kld.value,
                  naive.kld.error, (long long)naive.tokens, ad.kld.value, ad.kld.error,
                  ad.kld_window_error, (long long)ad.tokens, stop_reason_name(ad.stop));
    }
    const double n = double(units.size());
    state.counters["units"] = n;
    state.counters["cache_s"] = cache_s;
    state.counters["naive_s_per_unit"] = naive_s / n;
    state.counters["fast_s_per_unit"] = fast_s / n;
    state.counters["adaptive_s_per_unit"] = adaptive_s / n;
    state.counters["naive_over_fast"] = naive_s / fast_s;
    state.counters["naive_over_adaptive"] = naive_s / adaptive_s;
    state.counters["naive_over_adaptive_incl_cache"] = naive_s / (adaptive_s + cache_s);
    state.counters["naive_tok/s"] = double(naive_tokens) / naive_s;
    state.counters["fast_tok/s"] = double(naive_tokens) / fast_s;
    state.counters["adaptive_tokens_frac"] = double(adaptive_tokens) / double(naive_tokens);
    state.counters["max_rel_kld_diff"] = max_rel_diff;
  }
}
BENCHMARK(BM_MeasureSweep)->Iterations(1)->Unit(benchmark::kSecond);

}  // namespace

BENCHMARK_MAIN();
