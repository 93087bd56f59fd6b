// LoadOptions::emulate_ggml_activations: a linear layer of a GGUF weight must
// give what llama.cpp's CPU backend computes, i.e. the block dot products of
// the weight's integers with the activations quantized to the weight type's
// vec_dot_type. The reference below is written from ggml's definition of
// those dot products (integer sums per block, then the block scales), from the
// raw bytes of the GGUF file, independently of the engine's rounding code.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "format_test_util.h"
#include "tailor/convert/convert.h"
#include "tailor/engine/model.h"
#include "tailor/formats/gguf.h"
#include "tailor/quant/activations.h"
#include "tailor/quant/codec.h"
#include "tailor/quant/simd.h"
#include "tailor/util/error.h"
#include "tailor/util/fp16.h"

namespace tailor::engine {
namespace {

namespace fs = std::filesystem;
const std::string kArchRefs = std::string(TAILOR_SHARED_DIR) + "/models/arch-refs/";

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_fp32(h);
}

// One block of activations as ggml's x86 from_float makes it: integers, the
// scale the dot product multiplies by, and (Q8_1) the fp16 block sum d * sum(q).
struct ActBlock {
  std::vector<int> q;
  double d = 0;
  double s = 0;         // Q8_1: fp16(d_f32 * sum q), as ggml stores it
  double s_exact = 0;   // fp16(d) * sum q, what a GEMM over d * q adds up to
};

ActBlock quantize_act_32(const float* x) {
  ActBlock b;
  float amax = 0;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = amax == 0.0f ? 0.0f : 127.0f / amax;
  int sum = 0;
  for (int i = 0; i < 32; ++i) {
    const float v = x[i] * id;
    b.q.push_back(static_cast<int>(std::nearbyint(v)));  // default mode: ties to even
    sum += b.q.back();
  }
  b.d = fp16_to_fp32(fp32_to_fp16(d));
  b.s = fp16_to_fp32(fp32_to_fp16(d * static_cast<float>(sum)));
  b.s_exact = b.d * sum;
  return b;
}

ActBlock quantize_act_q8k(const float* x) {
  ActBlock b;
  b.q.assign(256, 0);
  int at = 0;
  for (int i = 1; i < 256; ++i)
    if (std::fabs(x[i]) > std::fabs(x[at])) at = i;
  if (x[at] == 0.0f) return b;
  const float iscale = -127.0f / x[at];
  for (int i = 0; i < 256; ++i) {
    const float v = iscale * x[i];
    b.q[i] = std::min(127, static_cast<int>(std::nearbyint(v)));
  }
  b.d = 1.0f / iscale;
  return b;
}

// ggml's dot product of one stored weight row with one activation row;
// `known` receives the part of it a float GEMM over d * q cannot reproduce
// (Q4_1's min times Q8_1's fp16-rounded block sum instead of the exact one).
double ggml_dot(GgmlType t, const uint8_t* w, const float* x, int64_t n, double& known) {
  double sum = 0;
  known = 0;
  switch (t) {
    case GgmlType::Q8_0:
      for (int64_t b = 0; b < n / 32; ++b, w += 34) {
        const ActBlock a = quantize_act_32(x + b * 32);
        int64_t dot = 0;
        for (int i = 0; i < 32; ++i) dot += int64_t{static_cast<int8_t>(w[2 + i])} * a.q[i];
        sum += double(half_at(w)) * a.d * double(dot);
      }
      return sum;
    case GgmlType::Q4_1:
      for (int64_t b = 0; b < n / 32; ++b, w += 20) {
        const ActBlock a = quantize_act_32(x + b * 32);
        int64_t dot = 0;
        for (int i = 0; i < 16; ++i) {
          dot += int64_t{w[4 + i] & 0xF} * a.q[i];
          dot += int64_t{w[4 + i] >> 4} * a.q[16 + i];
        }
        const double m = half_at(w + 2);
        sum += double(half_at(w)) * a.d * double(dot) + m * a.s;
        known += m * (a.s - a.s_exact);
      }
      return sum;
    case GgmlType::Q4_K:
      for (int64_t b = 0; b < n / 256; ++b, w += 144) {
        const ActBlock a = quantize_act_q8k(x + b * 256);
        const uint8_t* sc = w + 4;
        const uint8_t* qs = w + 16;
        int64_t scaled = 0, mins = 0;
        for (int j = 0; j < 8; ++j) {
          // 6-bit scale and min of sub-block j, packed in 12 bytes.
          const int s = j < 4 ? sc[j] & 63 : (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
          const int m = j < 4 ? sc[j + 4] & 63 : (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
          int64_t dot = 0, asum = 0;
          for (int i = 0; i < 32; ++i) {
            const uint8_t byte = qs[(j / 2) * 32 + i];
            const int q = j % 2 == 0 ? byte & 0xF : byte >> 4;
            dot += int64_t{q} * a.q[j * 32 + i];
            asum += a.q[j * 32 + i];
          }
          scaled += s * dot;
          mins += m * asum;
        }
        sum += a.d * (double(half_at(w)) * double(scaled) - double(half_at(w + 2)) * double(mins));
      }
      return sum;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i)
        sum += double(half_at(w + 2 * i)) * double(fp16_to_fp32(fp32_to_fp16(x[i])));
      return sum;
    default:
      ADD_FAILURE() << "no reference dot product for " << type_name(t);
      return 0;
  }
}

struct Call {
  std::string name;
  int64_t expert, rows, in, out;
  std::vector<float> x, y;
};

std::vector<Call> run_and_capture(const std::string& path, bool emulate,
                                  std::vector<float>* logits = nullptr) {
  LoadOptions o;
  o.emulate_ggml_activations = emulate;
  Model m = Model::load(path, o);
  std::vector<Call> calls;
  m.set_linear_hook([&](const LinearCall& c) {
    calls.push_back({c.name, c.expert, c.rows, c.in, c.out,
                     std::vector<float>(c.input, c.input + c.rows * c.in),
                     std::vector<float>(c.output, c.output + c.rows * c.out)});
  });
  std::vector<int32_t> ids;
  for (int i = 0; i < 48; ++i) ids.push_back((i * 37 + 11) % 512);
  std::vector<float> l = m.forward(ids, 1, static_cast<int64_t>(ids.size()));
  if (logits) *logits = std::move(l);
  return calls;
}

// Worst |engine - ggml| over the outputs of every call to a non-F32 tensor,
// relative to sum |w| |x| of the dot product, per stored type; the part a
// float GEMM cannot reproduce (Q8_1's block sum) is taken off ggml's value.
std::map<GgmlType, double> worst_error(const GgufFile& g, const std::vector<Call>& calls) {
  std::map<GgmlType, double> worst;
  std::vector<float> wrow;
  for (const Call& c : calls) {
    // q/k rows are permuted in the file; the others are in the engine's order.
    if (c.name.find("attn_q") != std::string::npos || c.name.find("attn_k") != std::string::npos) continue;
    const GgufTensorInfo* t = g.find_tensor(c.name);
    if (t == nullptr) {
      ADD_FAILURE() << "no tensor " << c.name;
      continue;
    }
    if (t->type == GgmlType::F32) continue;
    const size_t rb = row_size(t->type, c.in);
    const int64_t first = c.expert < 0 ? 0 : c.expert * c.out;
    wrow.resize(static_cast<size_t>(c.in));
    double& w = worst[t->type];
    for (int64_t o = 0; o < c.out; ++o) {
      const uint8_t* wq = t->data + (first + o) * rb;
      dequantize_row(t->type, wq, wrow.data(), c.in);
      for (int64_t r = 0; r < c.rows; ++r) {
        const float* x = c.x.data() + r * c.in;
        double known = 0, mag = 0;
        const double ref = ggml_dot(t->type, wq, x, c.in, known);
        for (int64_t i = 0; i < c.in; ++i) mag += std::fabs(double(wrow[i]) * x[i]);
        if (mag == 0) continue;
        w = std::max(w, std::fabs(double(c.y[r * c.out + o]) - (ref - known)) / mag);
      }
    }
  }
  return worst;
}

std::string convert(const std::string& model, const fs::path& dir,
                    std::map<std::string, GgmlType> types, GgmlType rest = GgmlType::F32) {
  ConvertOptions o;
  o.input = kArchRefs + model;
  o.output = (dir / (model + ".gguf")).string();
  o.type = rest;
  o.tensor_types = std::move(types);
  convert_hf_to_gguf(o);
  return o.output;
}

// Float rounding of the dequantized values and of the sum of a few hundred
// products, relative to sum |w| |x| (measured: up to 3.3e-7).
constexpr double kFloatTol = 2e-6;

void expect_matches_ggml(const std::string& path, std::vector<GgmlType> want) {
  const GgufFile g = GgufFile::open(path);
  const auto emulated = worst_error(g, run_and_capture(path, true));
  const auto exact = worst_error(g, run_and_capture(path, false));
  for (GgmlType t : want) {
    ASSERT_TRUE(emulated.count(t)) << type_name(t) << " was never multiplied";
    EXPECT_LE(emulated.at(t), kFloatTol) << type_name(t);
    // Without the rounding the same layers are visibly off ggml's result, so
    // the comparison above can tell the two apart.
    EXPECT_GE(exact.at(t), 20 * kFloatTol) << type_name(t);
    std::printf("%-5s worst |engine - ggml| / sum|w x|: emulated %.2e, exact activations %.2e\n",
                std::string(type_name(t)).c_str(), emulated.at(t), exact.at(t));
  }
}

// The mix of types also covers the reuse of one rounding by layers that
// share an input (q/k/v, gate/up): reused when the types agree, redone when not.
TEST(GgmlActivations, DenseLayersMatchGgmlBlockDotProducts) {
  const fs::path tmp = test::scratch_dir("tailor_ggml_act");
  const std::string path = convert("llama-tied", tmp,
                                   {{"blk.0.ffn_down.weight", GgmlType::Q4_K},
                                    {"blk.0.ffn_up.weight", GgmlType::Q8_0},
                                    {"blk.0.ffn_gate.weight", GgmlType::Q4_1},
                                    {"blk.0.attn_k.weight", GgmlType::Q4_K},
                                    {"blk.0.attn_v.weight", GgmlType::Q8_0},
                                    {"blk.1.attn_v.weight", GgmlType::Q4_K},
                                    {"blk.1.ffn_gate.weight", GgmlType::F16},
                                    {"blk.1.ffn_up.weight", GgmlType::F16},
                                    {"token_embd.weight", GgmlType::Q8_0}});  // tied: the output too
  expect_matches_ggml(path, {GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::F16});
  fs::remove_all(tmp);
}

TEST(GgmlActivations, ExpertsMatchGgmlBlockDotProducts) {
  const fs::path tmp = test::scratch_dir("tailor_ggml_act_moe");
  const std::string path = convert("mixtral", tmp,
                                   {{"blk.0.ffn_up_exps.weight", GgmlType::Q4_K},
                                    {"blk.1.ffn_down_exps.weight", GgmlType::Q8_0},
                                    {"blk.1.ffn_gate_exps.weight", GgmlType::Q4_1},
                                    {"blk.1.ffn_up_exps.weight", GgmlType::Q4_1}});
  expect_matches_ggml(path, {GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q4_1});
  fs::remove_all(tmp);
}

TEST(GgmlActivations, F32GgufIsUnaffected) {
  const fs::path tmp = test::scratch_dir("tailor_ggml_act_f32");
  const std::string path = convert("qwen2", tmp, {});
  std::vector<float> on, off;
  run_and_capture(path, true, &on);
  run_and_capture(path, false, &off);
  fs::remove_all(tmp);
  ASSERT_EQ(on.size(), off.size());
  EXPECT_EQ(std::memcmp(on.data(), off.data(), on.size() * sizeof(float)), 0);
}

// Both kernels (scalar, SIMD) against the test's own reading of ggml's rule
// (Q8_K with the signed max, Q8_0 / Q8_1 with 127 / amax), bit for bit, on
// rows with ties, zero blocks, a tied +-max, tiny and large values.
TEST(GgmlActivations, KernelsFollowGgmlRuleBitForBit) {
  constexpr int64_t n = 1024;
  std::vector<float> x(n);
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  for (int64_t i = 0; i < 32; ++i) x[i] = 0.0f;          // a zero Q8_0 block
  for (int64_t i = 256; i < 512; ++i) x[i] *= 1e-30f;    // tiny values
  x[300] = -2.0f;                                        // first of a tied +-max
  x[301] = 2.0f;
  for (int64_t i = 512; i < 768; ++i) x[i] = 0.0f;       // a zero Q8_K block
  for (int64_t i = 768; i < n; ++i) x[i] = static_cast<float>(i % 9 - 4) * 0.5f + 0.25f;  // ties
  x[800] = 127.0f * 0.5f;                                // makes the Q8_0 scale exact
  x[1000] = 3e4f;

  std::vector<float> want_k(n), want_32(n);
  for (int64_t b = 0; b < n; b += 256) {
    const ActBlock a = quantize_act_q8k(x.data() + b);
    for (int i = 0; i < 256; ++i) want_k[b + i] = static_cast<float>(a.d) * static_cast<float>(a.q[i]);
  }
  for (int64_t b = 0; b < n; b += 32) {
    const ActBlock a = quantize_act_32(x.data() + b);
    for (int i = 0; i < 32; ++i) want_32[b + i] = static_cast<float>(a.d) * static_cast<float>(a.q[i]);
  }
  std::vector<float> want_h(n);
  for (int64_t i = 0; i < n; ++i) want_h[i] = fp16_to_fp32(fp32_to_fp16(x[i]));

  const quant::SimdLevel cpu = quant::cpu_simd_level();
  for (bool simd : {false, true}) {
    quant::set_simd_enabled(simd);
    std::vector<float> y(n);
    auto same = [&](const std::vector<float>& want) {
      for (int64_t i = 0; i < n; ++i)
        if (std::fabs(y[i]) != std::fabs(want[i]) || (y[i] != 0 && y[i] != want[i])) return i;
      return int64_t{-1};
    };
    round_activations(GgmlType::Q8_K, x.data(), y.data(), n);
    EXPECT_EQ(same(want_k), -1) << "Q8_K simd " << simd;
    round_activations(GgmlType::Q8_0, x.data(), y.data(), n);
    EXPECT_EQ(same(want_32), -1) << "Q8_0 simd " << simd;
    round_activations(GgmlType::Q8_1, x.data(), y.data(), n);
    EXPECT_EQ(same(want_32), -1) << "Q8_1 simd " << simd;
    round_activations(GgmlType::F16, x.data(), y.data(), n);
    EXPECT_EQ(same(want_h), -1) << "F16 simd " << simd;
  }
  quant::set_simd_enabled(true);
  if (cpu == quant::SimdLevel::scalar) GTEST_SKIP() << "no SIMD on this CPU: only the scalar kernels ran";
}

// The rounding itself on hand-made rows: ties go to even, Q8_K keeps the sign
// of the first largest value and clamps at 127, zero blocks stay zero.
TEST(GgmlActivations, RoundingRules) {
  EXPECT_EQ(ggml_vec_dot_type(GgmlType::Q4_K), GgmlType::Q8_K);
  EXPECT_EQ(ggml_vec_dot_type(GgmlType::IQ4_NL), GgmlType::Q8_0);
  EXPECT_EQ(ggml_vec_dot_type(GgmlType::Q5_1), GgmlType::Q8_1);
  EXPECT_EQ(ggml_vec_dot_type(GgmlType::BF16), GgmlType::BF16);
  EXPECT_EQ(ggml_vec_dot_type(GgmlType::F32), GgmlType::F32);

  // amax 127 makes the scale 1: x * 1 = 2.5 -> 2 and 3.5 -> 4 (ties to even).
  std::vector<float> x(32, 0.0f), y(32);
  x[0] = 127.0f;
  x[1] = 2.5f;
  x[2] = 3.5f;
  x[3] = -2.5f;
  round_activations(GgmlType::Q8_0, x.data(), y.data(), 32);
  EXPECT_EQ(y[1], 2.0f);
  EXPECT_EQ(y[2], 4.0f);
  EXPECT_EQ(y[3], -2.0f);
  EXPECT_EQ(y[0], 127.0f);

  std::vector<float> k(256, 0.0f), ky(256);
  round_activations(GgmlType::Q8_K, k.data(), ky.data(), 256);
  EXPECT_TRUE(std::all_of(ky.begin(), ky.end(), [](float v) { return v == 0.0f; }));
  for (int i = 0; i < 256; ++i) k[i] = 0.01f * static_cast<float>(i % 50) - 0.2f;
  k[7] = -1.0f;  // the signed max: iscale = 127
  k[9] = 1.0f;
  round_activations(GgmlType::Q8_K, k.data(), ky.data(), 256);
  const ActBlock a = quantize_act_q8k(k.data());
  EXPECT_EQ(a.q[7], -127);
  EXPECT_EQ(a.q[9], 127);
  for (int i = 0; i < 256; ++i)
    EXPECT_EQ(ky[i], static_cast<float>(a.d) * static_cast<float>(a.q[i])) << i;

  std::vector<float> h = {1.0f + 1.0f / 4096, 65504.0f, 1e-8f};
  round_activations(GgmlType::F16, h.data(), h.data(), 3);
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], 65504.0f);
  EXPECT_THROW(round_activations(GgmlType::Q8_K, k.data(), ky.data(), 100), Error);
  EXPECT_THROW(round_activations(GgmlType::Q4_K, k.data(), ky.data(), 256), Error);
}

}  // namespace
}  // namespace tailor::engine
