// Encode throughput on the evaluation text. The byte-level BPE word cache is warm after
// the first iteration, as it is when a long text is tokenized.
#include <benchmark/benchmark.h>

#include <fstream>
#include <iterator>

#include "tailor/tokenizer/tokenizer.h"

namespace {

const std::string& eval_text() {
  static const std::string text = [] {
    std::ifstream in(std::string(TAILOR_SHARED_DIR) + "/text/eval.txt", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  return text;
}

void run_encode(benchmark::State& state, const std::string& path) {
  const auto tok = tailor::load_tokenizer(std::string(TAILOR_SHARED_DIR) + path);
  const std::string& text = eval_text();
  size_t tokens = 0;
  for (auto _ : state) {
    auto ids = tok->encode(text, false);
    tokens += ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}

// First encode with an empty word cache (tokenizer load not timed).
void run_encode_cold(benchmark::State& state, const std::string& path) {
  const std::string& text = eval_text();
  size_t tokens = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto tok = tailor::load_tokenizer(std::string(TAILOR_SHARED_DIR) + path);
    state.ResumeTiming();
    tokens += tok->encode(text, false).size();
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}

void run_decode(benchmark::State& state, const std::string& path) {
  const auto tok = tailor::load_tokenizer(std::string(TAILOR_SHARED_DIR) + path);
  const auto ids = tok->encode(eval_text(), false);
  for (auto _ : state) benchmark::DoNotOptimize(tok->decode(ids));
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(state.iterations() * ids.size()),
                                                  benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK_CAPTURE(run_encode, llama3, "/tokenizers/llama3/tokenizer.json")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(run_encode, qwen3, "/tokenizers/qwen3/tokenizer.json")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(run_encode, llama2_spm, "/tokenizers/llama2-spm/tokenizer.model")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(run_encode, llama30m_spm, "/models/llama-30m/tokenizer.model")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(run_encode_cold, llama3, "/tokenizers/llama3/tokenizer.json")->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK_CAPTURE(run_encode_cold, llama30m_spm, "/models/llama-30m/tokenizer.model")->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK_CAPTURE(run_decode, llama3, "/tokenizers/llama3/tokenizer.json")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(run_encode_cold, llama3, "/tokenizers/llama3/tokenizer.json")->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK_CAPTURE(run_encode_cold, llama30m_spm, "/models/llama-30m/tokenizer.model")->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK_CAPTURE(run_decode, llama30m_spm, "/models/llama-30m/tokenizer.model")->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
