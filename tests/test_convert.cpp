// HF folder -> GGUF: type policy, and converted files read back: names,
// shapes, permuted q/k rows, merged experts in order, generated rope_freqs,
// tokenizer keys, errors for bad input and the CLI.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "tailor/convert/convert.h"
#include "tailor/engine/model.h"
#include "tailor/formats/gguf.h"
#include "tailor/formats/safetensors.h"
#include "tailor/model/config.h"
#include "tailor/model/gguf_names.h"
#include "tailor/quant/codec.h"
#include "tailor/util/error.h"

using namespace tailor;
namespace fs = std::filesystem;

static const std::string kModels = std::string(TAILOR_SHARED_DIR) + "/models";

TEST(ConvertPolicy, ChooseTensorType) {
  bool fb = false;
  EXPECT_EQ(choose_tensor_type("blk.0.attn_norm.weight", {512}, GgmlType::Q4_K, false), GgmlType::F32);
  EXPECT_EQ(choose_tensor_type("blk.0.attn_q.bias", {512}, GgmlType::F16, false), GgmlType::F32);
  EXPECT_EQ(choose_tensor_type("blk.0.attn_q.weight", {512, 512}, GgmlType::Q4_K, false, &fb), GgmlType::Q4_K);
  EXPECT_FALSE(fb);
  EXPECT_EQ(choose_tensor_type("blk.0.ffn_down.weight", {320, 512}, GgmlType::Q4_K, false, &fb), GgmlType::Q5_0);
  EXPECT_TRUE(fb);
  EXPECT_EQ(choose_tensor_type("blk.0.ffn_down.weight", {320, 512}, GgmlType::Q5_K, false), GgmlType::Q5_1);
  EXPECT_EQ(choose_tensor_type("blk.0.ffn_down.weight", {320, 512}, GgmlType::Q6_K, false), GgmlType::Q8_0);
  EXPECT_EQ(choose_tensor_type("blk.0.ffn_down.weight", {320, 512}, GgmlType::Q3_K, false), GgmlType::Q4_0);
  EXPECT_EQ(choose_tensor_type("blk.0.ffn_down.weight", {320, 512}, GgmlType::IQ2_XS, false), GgmlType::IQ4_NL);
  EXPECT_EQ(choose_tensor_type("blk.0.ffn_down.weight", {100, 512}, GgmlType::Q4_K, false), GgmlType::F16);
  EXPECT_EQ(choose_tensor_type("blk.0.ffn_down.weight", {100, 512}, GgmlType::Q8_0, false), GgmlType::F16);
  EXPECT_EQ(choose_tensor_type("blk.0.ffn_down.weight", {100, 512}, GgmlType::BF16, false), GgmlType::BF16);
  // The output matrix gets Q6_K for quantized requests other than Q8_0 (as llama.cpp does).
  EXPECT_EQ(choose_tensor_type("output.weight", {512, 8192}, GgmlType::Q4_K, false), GgmlType::Q6_K);
  EXPECT_EQ(choose_tensor_type("output.weight", {512, 8192}, GgmlType::Q4_0, false), GgmlType::Q6_K);
  EXPECT_EQ(choose_tensor_type("output.weight", {512, 8192}, GgmlType::Q8_0, false), GgmlType::Q8_0);
  EXPECT_EQ(choose_tensor_type("output.weight", {512, 8192}, GgmlType::F16, false), GgmlType::F16);
  EXPECT_EQ(choose_tensor_type("output.weight", {320, 8192}, GgmlType::Q4_K, false), GgmlType::Q8_0);
  EXPECT_EQ(choose_tensor_type("token_embd.weight", {512, 8192}, GgmlType::Q4_K, true), GgmlType::Q6_K);
  EXPECT_EQ(choose_tensor_type("token_embd.weight", {512, 8192}, GgmlType::Q4_K, false), GgmlType::Q4_K);
  EXPECT_EQ(choose_tensor_type("blk.1.ffn_gate_inp.weight", {512, 4}, GgmlType::Q8_0, false), GgmlType::F32);
  EXPECT_EQ(choose_tensor_type("blk.1.ffn_gate_exps.weight", {512, 768, 4}, GgmlType::Q4_K, false), GgmlType::Q4_K);
  EXPECT_EQ(llama_file_type(GgmlType::Q8_0), 7u);
  EXPECT_EQ(llama_file_type(GgmlType::F32), 0u);
  EXPECT_EQ(llama_file_type(GgmlType::BF16), 32u);
}

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("tailor_convert_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static inline int counter = 0;
};

std::vector<float> gguf_floats(const GgufTensorInfo& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  dequantize_rows(t.type, t.data, v.data(), t.rows(), t.ne[0], 1);
  return v;
}

std::vector<float> st_floats(const Safetensors& st, const std::string& name) {
  const StTensor* t = st.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (!t) return {};
  std::vector<float> v(static_cast<size_t>(t->numel()));
  Safetensors::to_f32(*t, v.data());
  return v;
}

ConvertResult convert_to(const std::string& in, const std::string& out, GgmlType t) {
  ConvertOptions o;
  o.input = in;
  o.output = out;
  o.type = t;
  return convert_hf_to_gguf(o);
}

}  // namespace

TEST(Convert, MixtralExpertsMergeInOrderAndQkPermuted) {
  TempDir tmp;
  const std::string dir = kModels + "/arch-refs/mixtral", out = (tmp.path / "m.gguf").string();
  ConvertResult r = convert_to(dir, out, GgmlType::F32);
  EXPECT_EQ(r.arch, "llama");
  GgufFile g = GgufFile::open(out);
  EXPECT_EQ(g.find("general.architecture")->as_string(), "llama");
  EXPECT_EQ(g.find("llama.expert_count")->as_int(), 4);
  EXPECT_EQ(g.find("llama.expert_used_count")->as_int(), 2);
  EXPECT_EQ(g.find("general.quantization_version")->as_int(), 2);
  EXPECT_EQ(g.find("tokenizer.ggml.model")->as_string(), "none");
  Safetensors st = Safetensors::open(dir);
  ModelConfig c = load_model_config(dir);
  for (const char* w : {"w1", "w2", "w3"}) {
    const std::string gname = std::string("blk.1.") +
                              (w[1] == '1' ? "ffn_gate_exps" : w[1] == '2' ? "ffn_down_exps" : "ffn_up_exps") + ".weight";
    const GgufTensorInfo* t = g.find_tensor(gname);
    ASSERT_NE(t, nullptr) << gname;
    ASSERT_EQ(t->ne.size(), 3u);
    EXPECT_EQ(t->ne[2], 4);
    auto all = gguf_floats(*t);
    const size_t per = static_cast<size_t>(t->ne[0] * t->ne[1]);
    for (int e = 0; e < 4; ++e) {
      auto hf = st_floats(st, fmt::format("model.layers.1.block_sparse_moe.experts.{}.{}.weight", e, w));
      ASSERT_EQ(hf.size(), per);
      EXPECT_TRUE(std::equal(hf.begin(), hf.end(), all.begin() + e * per)) << gname << " expert " << e;
    }
  }
  for (auto [hf, gg, heads] : {std::tuple{"model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", c.num_heads},
                               std::tuple{"model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", c.num_kv_heads}}) {
    const GgufTensorInfo* t = g.find_tensor(gg);
    ASSERT_NE(t, nullptr);
    auto v = gguf_floats(*t);
    auto ref = st_floats(st, hf);
    EXPECT_NE(v, ref);  // rows were reordered
    unpermute_qk_rows(v.data(), t->ne[1], t->ne[0], heads);
    EXPECT_EQ(v, ref) << gg;
  }
  EXPECT_EQ(g.find_tensor("blk.0.ffn_gate_inp.weight")->type, GgmlType::F32);
  EXPECT_EQ(g.tensors().size(), r.tensors.size());
}

TEST(Convert, Qwen2MoeSharedExpertAndBiases) {
  TempDir tmp;
  const std::string dir = kModels + "/arch-refs/qwen2_moe", out = (tmp.path / "q.gguf").string();
  convert_to(dir, out, GgmlType::F16);
  GgufFile g = GgufFile::open(out);
  EXPECT_EQ(g.find("general.architecture")->as_string(), "qwen2moe");
  EXPECT_EQ(g.find("qwen2moe.expert_shared_feed_forward_length")->as_int(), 512);
  EXPECT_EQ(g.find("general.file_type")->as_int(), 1);
  const GgufTensorInfo* sg = g.find_tensor("blk.0.ffn_gate_inp_shexp.weight");
  ASSERT_NE(sg, nullptr);
  EXPECT_EQ(sg->ne, (std::vector<int64_t>{256}));
  EXPECT_EQ(sg->type, GgmlType::F32);
  Safetensors st = Safetensors::open(dir);
  const GgufTensorInfo* qb = g.find_tensor("blk.1.attn_q.bias");
  ASSERT_NE(qb, nullptr);
  EXPECT_EQ(qb->type, GgmlType::F32);
  EXPECT_EQ(gguf_floats(*qb), st_floats(st, "model.layers.1.self_attn.q_proj.bias"));  // not permuted
  EXPECT_EQ(g.find_tensor("blk.1.ffn_up_shexp.weight")->type, GgmlType::F16);
  EXPECT_EQ(g.find_tensor("blk.1.ffn_down_exps.weight")->ne, (std::vector<int64_t>{256, 256, 4}));
}

TEST(Convert, Llama3RopeFreqsAndTiedQwen3) {
  TempDir tmp;
  std::string out = (tmp.path / "l3.gguf").string();
  convert_to(kModels + "/arch-refs/llama3-rope-scaling", out, GgmlType::F32);
  {
    GgufFile g = GgufFile::open(out);
    const GgufTensorInfo* rf = g.find_tensor("rope_freqs.weight");
    ASSERT_NE(rf, nullptr);
    EXPECT_EQ(gguf_floats(*rf), llama3_rope_factors(load_model_config(kModels + "/arch-refs/llama3-rope-scaling")));
    EXPECT_FLOAT_EQ(static_cast<float>(g.find("llama.rope.freq_base")->as_float()), 500000.0f);
  }
  out = (tmp.path / "q3.gguf").string();
  convert_to(kModels + "/arch-refs/qwen3", out, GgmlType::Q8_0);
  GgufFile g = GgufFile::open(out);
  EXPECT_EQ(g.find_tensor("output.weight"), nullptr);
  EXPECT_EQ(g.find_tensor("token_embd.weight")->type, GgmlType::Q8_0);
  EXPECT_EQ(g.find_tensor("blk.0.attn_q_norm.weight")->type, GgmlType::F32);
  EXPECT_EQ(g.find("qwen3.attention.key_length")->as_int(), 64);
}

TEST(Convert, Llama30mQ8) {
  TempDir tmp;
  const std::string out = (tmp.path / "l.gguf").string();
  ConvertResult r = convert_to(kModels + "/llama-30m", out, GgmlType::Q8_0);
  EXPECT_EQ(r.tensors.size(), 75u);
  EXPECT_EQ(r.params, 30417408u);
  GgufFile g = GgufFile::open(out);
  EXPECT_EQ(g.find("general.file_type")->as_int(), 7);
  EXPECT_EQ(g.find("tokenizer.ggml.model")->as_string(), "llama");
  EXPECT_EQ(g.find("tokenizer.ggml.tokens")->arr.size(), 8192u);
  EXPECT_EQ(g.find("tokenizer.ggml.bos_token_id")->as_int(), 1);
  EXPECT_TRUE(g.find("tokenizer.ggml.add_bos_token")->as_bool());
  for (const auto& t : g.tensors())
    EXPECT_EQ(t.type, t.ne.size() == 1 ? GgmlType::F32 : GgmlType::Q8_0) << t.name;
  // Q8_0 of the bf16 weights stays close: relative RMS error of a matrix well under 1%.
  Safetensors st = Safetensors::open(kModels + "/llama-30m");
  auto ref = st_floats(st, "model.layers.2.mlp.down_proj.weight");
  auto got = gguf_floats(*g.find_tensor("blk.2.ffn_down.weight"));
  double err = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    err += (got[i] - ref[i]) * (got[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  EXPECT_LT(std::sqrt(err / norm), 0.01);
}

// Tensors quantized by the caller (here from halved weights, so they cannot
// be what convert would make itself) are written as given: the engine reads
// back exactly their dequantized values in HF row order, which for q and k
// proves the block rows were permuted like f32 rows; the rest is untouched.
TEST(Convert, PreQuantizedBlocksAreWrittenAsGiven) {
  TempDir tmp;
  const std::string dir = kModels + "/llama-30m", out = (tmp.path / "b.gguf").string();
  Safetensors st = Safetensors::open(dir);
  struct Pick {
    std::string gguf, hf;
    GgmlType type;
  };
  const std::vector<Pick> picks = {{"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", GgmlType::Q4_K},
                                   {"blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", GgmlType::Q5_0},
                                   {"blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight", GgmlType::IQ4_XS}};
  ConvertOptions o;
  o.input = dir;
  o.output = out;
  o.type = GgmlType::F32;
  std::map<std::string, std::vector<float>> expected;
  for (const Pick& p : picks) {
    std::vector<float> f = st_floats(st, p.hf);
    for (float& x : f) x *= 0.5f;
    const int64_t rows = st.find(p.hf)->shape[0], cols = st.find(p.hf)->shape[1];
    std::vector<uint8_t> blocks(row_size(p.type, cols) * size_t(rows));
    quantize_rows(p.type, f.data(), blocks.data(), rows, cols, nullptr);
    auto& e = expected[p.gguf];
    e.resize(f.size());
    dequantize_rows(p.type, blocks.data(), e.data(), rows, cols);
    o.tensor_types[p.gguf] = p.type;
    o.tensor_blocks[p.gguf] = std::move(blocks);
  }
  const ConvertResult r = convert_hf_to_gguf(o);
  EXPECT_EQ(r.tensors.size(), 75u);
  {
    GgufFile g = GgufFile::open(out);
    for (const Pick& p : picks) EXPECT_EQ(g.find_tensor(p.gguf)->type, p.type) << p.gguf;
  }
  engine::Model m = engine::Model::load_gguf(out);
  engine::Model ref = engine::Model::load_hf(dir);
  for (const Pick& p : picks) {
    const engine::Weight& w = m.weight(p.gguf);
    EXPECT_EQ(w.source, p.type) << p.gguf;
    EXPECT_TRUE(w.f32 == expected[p.gguf]) << p.gguf << " differs from the dequantized blocks";
  }
  size_t others = 0;
  for (const std::string& n : ref.weight_names()) {
    if (expected.count(n)) continue;
    ++others;
    EXPECT_TRUE(m.weight(n).f32 == ref.weight(n).f32) << n;
  }
  EXPECT_EQ(others, 72u);
}

TEST(Convert, PreQuantizedBlocksAreChecked) {
  TempDir tmp;
  const std::string out = (tmp.path / "b.gguf").string();
  auto error = [&](const std::string& name, std::optional<GgmlType> type, size_t bytes) {
    ConvertOptions o;
    o.input = kModels + "/llama-30m";
    o.output = out;
    if (type) o.tensor_types[name] = *type;
    o.tensor_blocks[name] = std::vector<uint8_t>(bytes);
    try {
      convert_hf_to_gguf(o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const size_t q4k = row_size(GgmlType::Q4_K, 512) * 512;
  std::string e = error("blk.0.attn_q.weight", GgmlType::Q4_K, q4k - 1);
  EXPECT_NE(e.find("blk.0.attn_q.weight"), std::string::npos) << e;
  EXPECT_NE(e.find(std::to_string(q4k)), std::string::npos) << e;
  e = error("blk.0.attn_q.weight", std::nullopt, q4k);
  EXPECT_NE(e.find("without a type"), std::string::npos) << e;
  e = error("blk.9.attn_q.weight", GgmlType::Q4_K, q4k);
  EXPECT_NE(e.find("no tensor 'blk.9.attn_q.weight'"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(out));
}

static std::string convert_error(const std::string& in, const std::string& out) {
  try {
    convert_to(in, out, GgmlType::F16);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Convert, BadInputIsAClearErrorAndLeavesNoFile) {
  TempDir tmp;
  const std::string out = (tmp.path / "x.gguf").string();
  std::string e = convert_error((tmp.path / "missing").string(), out);
  EXPECT_NE(e.find("missing"), std::string::npos) << e;

  fs::path d = tmp.path / "model";
  fs::create_directories(d);
  e = convert_error(d.string(), out);
  EXPECT_NE(e.find("config.json"), std::string::npos) << e;

  // A checkpoint with a tensor the family does not have.
  fs::copy_file(kModels + "/arch-refs/qwen3/config.json", d / "config.json");
  std::vector<float> w(256 * 4, 0.5f);
  write_safetensors((d / "model.safetensors").string(),
                    {{"model.layers.0.mlp.gate.weight", "F32", {4, 256}, w.data(), w.size() * 4}});
  e = convert_error(d.string(), out);
  EXPECT_NE(e.find("model.layers.0.mlp.gate.weight"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(out));

  // A tensor whose shape disagrees with config.json.
  write_safetensors((d / "model.safetensors").string(),
                    {{"model.norm.weight", "F32", {255}, w.data(), 255 * 4}});
  e = convert_error(d.string(), out);
  EXPECT_NE(e.find("model.norm.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("shape"), std::string::npos) << e;

  // A complete-looking checkpoint that lacks a block's tensors.
  write_safetensors((d / "model.safetensors").string(),
                    {{"model.embed_tokens.weight", "F32", {512, 256}, std::vector<float>(512 * 256).data(), 512 * 256 * 4}});
  e = convert_error(d.string(), out);
  EXPECT_NE(e.find("output_norm"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(out));
  for (const auto& f : fs::directory_iterator(tmp.path)) EXPECT_FALSE(f.path().string().ends_with(".tmp")) << f.path();
}

TEST(Convert, CliReportsErrorsAndJson) {
  TempDir tmp;
  const std::string cli = TAILOR_CLI_PATH;
  std::string cmd = cli + " convert " + (tmp.path / "nope").string() + " -o " + (tmp.path / "o.gguf").string() + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string text;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) text += buf;
  int rc = pclose(p);
  EXPECT_NE(rc, 0);
  EXPECT_NE(text.find("tailor: error:"), std::string::npos) << text;

  cmd = cli + " convert " + kModels + "/arch-refs/qwen3 -o " + (tmp.path / "o.gguf").string() + " --type BF16 --json";
  p = popen(cmd.c_str(), "r");
  text.clear();
  while (fgets(buf, sizeof buf, p)) text += buf;
  EXPECT_EQ(pclose(p), 0);
  auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["architecture"], "qwen3");
  EXPECT_EQ(j["tensor_count"], 2 * 11 + 2);
  EXPECT_EQ(j["tensor_types"]["BF16"], 2 * 7 + 1);

  cmd = cli + " convert " + kModels + "/arch-refs/qwen3 -o " + (tmp.path / "o.gguf").string() + " --type Q9_9 2>&1";
  p = popen(cmd.c_str(), "r");
  text.clear();
  while (fgets(buf, sizeof buf, p)) text += buf;
  EXPECT_NE(pclose(p), 0);
  EXPECT_NE(text.find("Q9_9"), std::string::npos) << text;
}
