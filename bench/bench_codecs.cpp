// Quantization (and dequantization) throughput per type, in MB/s of f32 data,
// on a real llama-30m weight. Each type runs scalar and SIMD, on 1 and 2
// threads, in one process; the counters vs_scalar and vs_1thread hold the
// ratios, and tables of them are printed at the end. Types whose kernel is not
// written yet are skipped.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "tailor/quant/codec.h"
#include "tailor/quant/simd.h"
#include "tailor/util/error.h"
#include "tailor/util/fp16.h"

namespace {

using tailor::GgmlType;

struct Matrix {
  std::string source;
  int64_t rows = 0, cols = 0;
  std::vector<float> data;
};

// Minimal safetensors read (8-byte header length, JSON header, raw data) of one
// BF16 tensor; enough for a benchmark input without depending on the reader.
bool read_bf16_tensor(const std::string& file, const std::string& name, Matrix& m) {
  std::ifstream f(file, std::ios::binary);
  uint64_t header_len = 0;
  if (!f.read(reinterpret_cast<char*>(&header_len), 8) || header_len > (64u << 20)) return false;
  std::string header(header_len, '\0');
  if (!f.read(header.data(), static_cast<std::streamsize>(header_len))) return false;
  auto j = nlohmann::json::parse(header, nullptr, false);
  if (j.is_discarded() || !j.contains(name)) return false;
  const auto& t = j[name];
  if (t["dtype"] != "BF16" || t["shape"].size() != 2) return false;
  m.rows = t["shape"][0];
  m.cols = t["shape"][1];
  uint64_t begin = t["data_offsets"][0], end = t["data_offsets"][1];
  if (end - begin != uint64_t(m.rows * m.cols * 2)) return false;
  std::vector<uint16_t> raw(m.rows * m.cols);
  f.seekg(static_cast<std::streamoff>(8 + header_len + begin));
  if (!f.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(end - begin))) return false;
  m.data.resize(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) m.data[i] = tailor::bf16_to_fp32(raw[i]);
  m.source = name;
  return true;
}

const Matrix& input() {
  static const Matrix m = [] {
    Matrix m;
    std::string file = std::string(TAILOR_SHARED_DIR) + "/models/llama-30m/model-00003-of-00005.safetensors";
    if (read_bf16_tensor(file, "model.layers.3.mlp.down_proj.weight", m)) return m;
    // Fallback of the same shape and scale when the fixture is not there.
    m.source = "random normal, sigma 0.02";
    m.rows = 512;
    m.cols = 1280;
    std::mt19937 rng(42);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    m.data.resize(m.rows * m.cols);
    for (auto& x : m.data) x = normal(rng);
    return m;
  }();
  return m;
}

enum class Op { quantize, dequantize };

// MB/s of the last run of each (op, type, threads, simd) case.
std::map<std::tuple<Op, std::string, int, bool>, double> g_rate;

void bench_codec(benchmark::State& state, Op op, GgmlType type, int threads, bool simd) {
  const Matrix& m = input();
  std::vector<uint8_t> packed(tailor::row_size(type, m.cols) * m.rows);
  std::vector<float> importance(m.cols, 1.0f), unpacked(m.data.size());
  tailor::quantize_rows(type, m.data.data(), packed.data(), m.rows, m.cols, nullptr, threads);
  tailor::quant::set_simd_enabled(simd);
  auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    if (op == Op::quantize) {
      tailor::quantize_rows(type, m.data.data(), packed.data(), m.rows, m.cols, importance.data(), threads);
      benchmark::DoNotOptimize(packed.data());
    } else {
      tailor::dequantize_rows(type, packed.data(), unpacked.data(), m.rows, m.cols, threads);
      benchmark::DoNotOptimize(unpacked.data());
    }
    benchmark::ClobberMemory();
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  tailor::quant::set_simd_enabled(true);
  double bytes = double(state.iterations()) * double(m.data.size() * sizeof(float));
  double rate = secs > 0 ? bytes / secs / 1e6 : 0.0;
  std::string name(tailor::type_name(type));
  g_rate[{op, name, threads, simd}] = rate;
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  state.counters["MB/s"] = rate;
  if (simd) {
    auto it = g_rate.find({op, name, threads, false});
    if (it != g_rate.end() && it->second > 0) state.counters["vs_scalar"] = rate / it->second;
  }
  if (threads > 1) {
    auto it = g_rate.find({op, name, 1, simd});
    if (it != g_rate.end() && it->second > 0) state.counters["vs_1thread"] = rate / it->second;
  }
}

// A type is benchmarked for an op when its kernels run on one row of the input
// (dequantizing needs the quantizer too, to make its input).
bool supported(Op op, GgmlType type) {
  const Matrix& m = input();
  if (!tailor::row_fits(type, m.cols)) return false;
  std::vector<uint8_t> packed(tailor::row_size(type, m.cols));
  std::vector<float> out(m.cols);
  try {
    tailor::quantize_row(type, m.data.data(), packed.data(), m.cols, nullptr);
    if (op == Op::dequantize) {
      tailor::quant::set_simd_enabled(false);  // the scalar kernel must exist as well
      tailor::dequantize_row(type, packed.data(), out.data(), m.cols);
      tailor::quant::set_simd_enabled(true);
    }
    return true;
  } catch (const tailor::Error&) {
    tailor::quant::set_simd_enabled(true);
    return false;  // not implemented (yet), or not a quantizable type
  }
}

void print_summary(Op op) {
  std::printf("\n%s, MB/s of f32 data (ratios from the same run)\n",
              op == Op::quantize ? "quantize" : "dequantize");
  std::printf("%-8s %10s %10s %10s %10s %10s %10s %10s\n", "type", "1t scalar", "1t simd", "2t scalar",
              "2t simd", "simd/sc 1t", "simd/sc 2t", "2t/1t simd");
  for (const auto& info : tailor::all_types()) {
    std::string n(info.name);
    auto get = [&](int t, bool s) {
      auto it = g_rate.find({op, n, t, s});
      return it == g_rate.end() ? 0.0 : it->second;
    };
    if (get(1, false) == 0 && get(1, true) == 0) continue;
    auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
    std::printf("%-8s %10.1f %10.1f %10.1f %10.1f %10.2f %10.2f %10.2f\n", n.c_str(), get(1, false),
                get(1, true), get(2, false), get(2, true), ratio(get(1, true), get(1, false)),
                ratio(get(2, true), get(2, false)), ratio(get(2, true), get(1, true)));
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (Op op : {Op::quantize, Op::dequantize})
    for (const auto& info : tailor::all_types()) {
      if (!supported(op, info.type)) continue;
      // Registration order puts each reference (scalar, 1 thread) before its comparisons.
      for (int threads : {1, 2})
        for (bool simd : {false, true}) {
          std::string name = std::string(op == Op::quantize ? "quantize/" : "dequantize/") +
                             std::string(info.name) + "/threads:" + std::to_string(threads) +
                             (simd ? "/simd" : "/scalar");
          benchmark::RegisterBenchmark(name.c_str(), bench_codec, op, info.type, threads, simd)
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        }
    }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::printf("\nInput: %s [%lld x %lld], CPU SIMD level %s\n", input().source.c_str(),
              static_cast<long long>(input().rows), static_cast<long long>(input().cols),
              std::string(tailor::quant::simd_level_name(tailor::quant::cpu_simd_level())).c_str());
  print_summary(Op::quantize);
  print_summary(Op::dequantize);
  return 0;
}
