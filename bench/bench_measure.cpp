// Cost of measuring what quantizing one tensor alone does to llama-30m's KL
// divergence: the naive method (a full forward pass per tensor per type over
// every window) against the cached block inputs (re-run blocks i..L only) on
// the same windows, and against the cache with adaptive sample size, all in
// one run so the ratios compare like with like. Quantization is done once
// beforehand and is not timed (both methods need it).
//
// BM_MeasureLevels times whole `tailor measure` jobs (full, kld, proxy) against
// the naive method's estimated cost of the same sweep.
//
// TAILOR_BENCH_WINDOWS / TAILOR_BENCH_CTX override the 16 windows of 512.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <unistd.h>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "tailor/analysis/block_cache.h"
#include "tailor/analysis/local_error.h"
#include "tailor/eval/run_eval.h"
#include "tailor/measure/measure.h"

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

// The whole `tailor measure` job at each level (58 matrices x 7 types), and
// the naive method's cost for the same sweep: a full forward pass over every
// window per unit, timed on one unit per type and scaled to all units.
void BM_MeasureLevels(benchmark::State& state) {
  const int64_t windows = env_int("TAILOR_BENCH_WINDOWS", 16), ctx = env_int("TAILOR_BENCH_CTX", 512);
  const std::string db = "/tmp/tailor-bench-measure-" + std::to_string(::getpid()) + ".db";
  measure::Settings s;
  s.text = std::string(TAILOR_SHARED_DIR) + "/text/calibration.txt";
  s.eval = std::string(TAILOR_SHARED_DIR) + "/text/eval.txt";
  s.n_ctx = ctx;
  s.windows = windows;
  for (auto _ : state) {
    std::filesystem::remove(db);
    jobs::JobStore store(db);
    std::map<std::string, double> secs;
    int64_t units = 0, e2e_tokens_full = 0;
    for (measure::Level lv : {measure::Level::Full, measure::Level::Kld, measure::Level::Proxy}) {
      s.level = lv;
      const measure::RunResult r = measure::run_measure(store, kModel, s);
      secs[measure::level_name(lv)] = r.seconds;
      units = r.units_run;
      if (lv == measure::Level::Full) {
        const nlohmann::json all = store.export_json(r.job_id);  // named: the loop must not outlive it
        for (const auto& u : all["units"]) e2e_tokens_full += u["metrics"].value("tokens", int64_t(0));
      }
    }
    // Naive: one unit per type, spread over the depth.
    engine::Model model = engine::Model::load(kModel);
    const auto tok = eval::load_model_tokenizer(kModel);
    BlockCache cache(model, eval::tokenize_text_file(*tok, s.eval), {.n_ctx = ctx, .max_windows = windows});
    const std::vector<GgmlType> types = measure::default_types();
    const std::vector<std::string> tensors = {"blk.0.attn_q.weight", "blk.1.ffn_down.weight", "blk.3.attn_v.weight",
                                              "blk.4.ffn_gate.weight", "blk.6.attn_output.weight",
                                              "blk.7.ffn_up.weight", "output.weight"};
    double naive = 0;
    for (size_t i = 0; i < types.size(); ++i) {
      engine::Weight q = quantize_weight(model.weight(tensors[i]), types[i], {});
      const auto t0 = std::chrono::steady_clock::now();
      cache.measure_naive(tensors[i], std::move(q), cache.windows());
      naive += seconds(t0);
    }
    const double naive_total = naive / double(types.size()) * double(units);
    state.counters["units"] = double(units);
    state.counters["full_s"] = secs["full"];
    state.counters["kld_s"] = secs["kld"];
    state.counters["proxy_s"] = secs["proxy"];
    state.counters["naive_s_est"] = naive_total;
    state.counters["naive_over_full"] = naive_total / secs["full"];
    state.counters["full_over_kld"] = secs["full"] / secs["kld"];
    state.counters["full_s_per_unit"] = secs["full"] / double(units);
    state.counters["kld_s_per_unit"] = secs["kld"] / double(units);
    state.counters["full_e2e_tok/s"] = double(e2e_tokens_full) / secs["full"];
    std::filesystem::remove(db);
  }
}
BENCHMARK(BM_MeasureLevels)->Iterations(1)->Unit(benchmark::kSecond);

}  // namespace

BENCHMARK_MAIN();
