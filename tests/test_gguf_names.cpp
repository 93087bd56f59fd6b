// HF <-> GGUF tensor names for every fixture model, the llama q/k row
// permutation, hyperparameter keys and llama3 rope factors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "tailor/model/config.h"
#include "tailor/model/gguf_names.h"

using namespace tailor;
namespace fs = std::filesystem;

static const std::string kModels = std::string(TAILOR_SHARED_DIR) + "/models";

// Tensor names and shapes straight from the safetensors headers (8-byte
// length + JSON), kept independent of the library's reader.
static std::map<std::string, std::vector<int64_t>> hf_tensor_shapes(const std::string& dir) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    std::ifstream in(e.path(), std::ios::binary);
    uint64_t n = 0;
    in.read(reinterpret_cast<char*>(&n), 8);
    std::string header(n, '\0');
    in.read(header.data(), static_cast<std::streamsize>(n));
    auto j = nlohmann::json::parse(header);
    for (auto it = j.begin(); it != j.end(); ++it)
      if (it.key() != "__metadata__") shapes[it.key()] = it.value()["shape"].get<std::vector<int64_t>>();
  }
  return shapes;
}

static std::vector<std::string> hf_tensor_names(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& [name, shape] : hf_tensor_shapes(dir)) names.push_back(name);
  return names;
}

static std::vector<std::string> fixture_dirs() {
  std::vector<std::string> dirs = {kModels + "/llama-30m", kModels + "/moe-26m"};
  for (const auto& e : fs::directory_iterator(kModels + "/arch-refs")) dirs.push_back(e.path().string());
  return dirs;
}

TEST(GgufNames, EveryFixtureTensorMapsAndBack) {
  for (const std::string& dir : fixture_dirs()) {
    SCOPED_TRACE(dir);
    ModelConfig c = load_model_config(dir);
    auto names = hf_tensor_names(dir);
    ASSERT_FALSE(names.empty());
    std::map<std::string, std::set<int64_t>> experts;
    std::set<std::string> plain;
    for (const auto& hf : names) {
      auto m = map_hf_tensor(hf, c);
      ASSERT_TRUE(m.has_value()) << hf;
      EXPECT_EQ(gguf_to_hf_name(m->name, c, m->expert), hf);
      if (m->expert >= 0) {
        EXPECT_TRUE(is_merged_experts(m->name)) << m->name;
        EXPECT_TRUE(experts[m->name].insert(m->expert).second) << hf;
      } else {
        EXPECT_FALSE(is_merged_experts(m->name)) << m->name;
        EXPECT_TRUE(plain.insert(m->name).second) << "two HF tensors map to " << m->name;
      }
    }
    for (const auto& [name, set] : experts) EXPECT_EQ(static_cast<int64_t>(set.size()), c.num_experts) << name;
    if (c.is_moe()) {
      EXPECT_EQ(static_cast<int64_t>(experts.size()), 3 * c.num_layers);
    }
    if (dir.ends_with("llama-30m")) EXPECT_EQ(plain.size(), 75u);
  }
}

// Every fixture tensor has the shape llama.cpp expects for its GGUF name
// (HF shapes reversed; one expert is a slice of the merged tensor).
TEST(GgufNames, ExpectedShapesMatchFixtures) {
  for (const std::string& dir : fixture_dirs()) {
    SCOPED_TRACE(dir);
    ModelConfig c = load_model_config(dir);
    for (const auto& [hf, shape] : hf_tensor_shapes(dir)) {
      auto m = map_hf_tensor(hf, c);
      ASSERT_TRUE(m) << hf;
      auto want = expected_gguf_shape(m->name, c);
      ASSERT_TRUE(want) << m->name;
      std::vector<int64_t> ne(shape.rbegin(), shape.rend());
      if (m->expert >= 0) ne.push_back(c.num_experts);
      if (m->name.ends_with("ffn_gate_inp_shexp.weight") && ne.size() == 2 && ne[1] == 1) ne.pop_back();
      EXPECT_EQ(ne, *want) << hf;
    }
  }
  ModelConfig l3 = load_model_config(kModels + "/arch-refs/llama3-rope-scaling");
  EXPECT_EQ(expected_gguf_shape("rope_freqs.weight", l3), (std::vector<int64_t>{32}));
  EXPECT_FALSE(expected_gguf_shape("blk.2.attn_q.weight", l3));
  EXPECT_FALSE(expected_gguf_shape("blk.0.nonsense.weight", l3));
}

TEST(GgufNames, SpecificNames) {
  ModelConfig llama = load_model_config(kModels + "/llama-30m");
  auto q = map_hf_tensor("model.layers.3.self_attn.q_proj.weight", llama);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->name, "blk.3.attn_q.weight");
  EXPECT_EQ(q->permute, QkPermute::Q);
  EXPECT_EQ(map_hf_tensor("model.layers.3.self_attn.k_proj.weight", llama)->permute, QkPermute::K);
  EXPECT_EQ(map_hf_tensor("model.layers.3.self_attn.v_proj.weight", llama)->permute, QkPermute::None);
  EXPECT_EQ(map_hf_tensor("lm_head.weight", llama)->name, "output.weight");
  EXPECT_EQ(map_hf_tensor("model.embed_tokens.weight", llama)->name, "token_embd.weight");
  EXPECT_EQ(map_hf_tensor("model.norm.weight", llama)->name, "output_norm.weight");
  EXPECT_EQ(map_hf_tensor("model.layers.0.post_attention_layernorm.weight", llama)->name, "blk.0.ffn_norm.weight");
  EXPECT_FALSE(map_hf_tensor("model.layers.8.self_attn.q_proj.weight", llama));  // only 8 layers
  EXPECT_FALSE(map_hf_tensor("model.layers.-1.self_attn.q_proj.weight", llama));
  EXPECT_FALSE(map_hf_tensor("model.layers.x.self_attn.q_proj.weight", llama));
  EXPECT_FALSE(map_hf_tensor("model.layers.0.mlp.gate.weight", llama));
  EXPECT_FALSE(map_hf_tensor("model.layers.0", llama));
  EXPECT_TRUE(is_ignored_hf_tensor("model.layers.0.self_attn.rotary_emb.inv_freq"));

  ModelConfig qwen2 = load_model_config(kModels + "/arch-refs/qwen2");
  auto qb = map_hf_tensor("model.layers.1.self_attn.q_proj.bias", qwen2);
  ASSERT_TRUE(qb);
  EXPECT_EQ(qb->name, "blk.1.attn_q.bias");
  EXPECT_EQ(qb->permute, QkPermute::None);  // NeoX rope: Qwen keeps HF row order

  ModelConfig mix = load_model_config(kModels + "/arch-refs/mixtral");
  auto e = map_hf_tensor("model.layers.1.block_sparse_moe.experts.2.w2.weight", mix);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->name, "blk.1.ffn_down_exps.weight");
  EXPECT_EQ(e->expert, 2);
  EXPECT_EQ(map_hf_tensor("model.layers.1.block_sparse_moe.experts.0.w1.weight", mix)->name, "blk.1.ffn_gate_exps.weight");
  EXPECT_EQ(map_hf_tensor("model.layers.1.block_sparse_moe.experts.0.w3.weight", mix)->name, "blk.1.ffn_up_exps.weight");
  EXPECT_EQ(map_hf_tensor("model.layers.1.block_sparse_moe.gate.weight", mix)->name, "blk.1.ffn_gate_inp.weight");
  EXPECT_FALSE(map_hf_tensor("model.layers.1.block_sparse_moe.experts.4.w1.weight", mix));  // 4 experts
  EXPECT_EQ(map_hf_tensor("model.layers.0.self_attn.q_proj.weight", mix)->permute, QkPermute::Q);

  ModelConfig q2m = load_model_config(kModels + "/arch-refs/qwen2_moe");
  EXPECT_EQ(map_hf_tensor("model.layers.0.mlp.shared_expert_gate.weight", q2m)->name, "blk.0.ffn_gate_inp_shexp.weight");
  EXPECT_EQ(map_hf_tensor("model.layers.0.mlp.shared_expert.down_proj.weight", q2m)->name, "blk.0.ffn_down_shexp.weight");
  EXPECT_EQ(map_hf_tensor("model.layers.0.mlp.experts.3.up_proj.weight", q2m)->name, "blk.0.ffn_up_exps.weight");
  EXPECT_EQ(map_hf_tensor("model.layers.0.mlp.gate.weight", q2m)->name, "blk.0.ffn_gate_inp.weight");

  ModelConfig q3 = load_model_config(kModels + "/arch-refs/qwen3");
  EXPECT_EQ(map_hf_tensor("model.layers.0.self_attn.k_norm.weight", q3)->name, "blk.0.attn_k_norm.weight");

  EXPECT_STREQ(gguf_arch_name(ModelFamily::Mistral), "llama");
  EXPECT_STREQ(gguf_arch_name(ModelFamily::Mixtral), "llama");
  EXPECT_STREQ(gguf_arch_name(ModelFamily::Qwen2Moe), "qwen2moe");
  EXPECT_STREQ(gguf_arch_name(ModelFamily::Qwen3Moe), "qwen3moe");
  EXPECT_STREQ(gguf_arch_name(ModelFamily::Qwen3), "qwen3");
}

TEST(GgufNames, PermutationInverts) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (auto [heads, hd, cols] : {std::tuple{8, 64, 16}, std::tuple{4, 64, 1}, std::tuple{2, 8, 3}}) {
    std::vector<float> a(static_cast<size_t>(heads * hd * cols));
    for (float& x : a) x = nd(rng);
    auto b = a;
    permute_qk_rows(b.data(), heads * hd, cols, heads);
    EXPECT_NE(a, b);
    unpermute_qk_rows(b.data(), heads * hd, cols, heads);
    EXPECT_EQ(a, b);
  }
  std::vector<float> bad(30);
  EXPECT_ANY_THROW(permute_qk_rows(bad.data(), 30, 1, 4));
}

// The reason for the permutation: rotating HF's halves-paired vector (NeoX
// style) and then reordering must equal reordering first and rotating
// adjacent pairs (llama.cpp's llama rope).
TEST(GgufNames, PermutationTurnsNeoxRopeIntoAdjacentPairs) {
  const int heads = 2, hd = 8, half = hd / 2;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> q(heads * hd);
  for (float& x : q) x = nd(rng);
  const double pos = 5;
  auto angle = [&](int i) { return pos * std::pow(10000.0, -2.0 * i / hd); };
  std::vector<float> neox = q;
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < half; ++i) {
      double a = angle(i), x0 = q[h * hd + i], x1 = q[h * hd + i + half];
      neox[h * hd + i] = static_cast<float>(x0 * std::cos(a) - x1 * std::sin(a));
      neox[h * hd + i + half] = static_cast<float>(x0 * std::sin(a) + x1 * std::cos(a));
    }
  std::vector<float> p = q;
  permute_qk_rows(p.data(), heads * hd, 1, heads);
  std::vector<float> gptj = p;
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < half; ++i) {
      double a = angle(i), x0 = p[h * hd + 2 * i], x1 = p[h * hd + 2 * i + 1];
      gptj[h * hd + 2 * i] = static_cast<float>(x0 * std::cos(a) - x1 * std::sin(a));
      gptj[h * hd + 2 * i + 1] = static_cast<float>(x0 * std::sin(a) + x1 * std::cos(a));
    }
  permute_qk_rows(neox.data(), heads * hd, 1, heads);
  for (size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(neox[i], gptj[i], 1e-5) << i;
}

static std::map<std::string, HParam> hparams_of(const ModelConfig& c) {
  std::map<std::string, HParam> m;
  for (auto& h : gguf_hparams(c)) m[h.key] = h;
  return m;
}

TEST(GgufNames, Hparams) {
  auto l = hparams_of(load_model_config(kModels + "/llama-30m"));
  EXPECT_EQ(l.at("llama.block_count").u, 8u);
  EXPECT_EQ(l.at("llama.embedding_length").u, 512u);
  EXPECT_EQ(l.at("llama.feed_forward_length").u, 1280u);
  EXPECT_EQ(l.at("llama.attention.head_count").u, 8u);
  EXPECT_EQ(l.at("llama.attention.head_count_kv").u, 4u);
  EXPECT_EQ(l.at("llama.context_length").u, 1024u);
  EXPECT_EQ(l.at("llama.vocab_size").u, 8192u);
  EXPECT_EQ(l.at("llama.rope.dimension_count").u, 64u);
  EXPECT_FLOAT_EQ(l.at("llama.rope.freq_base").f, 10000.0f);
  EXPECT_FLOAT_EQ(l.at("llama.attention.layer_norm_rms_epsilon").f, 1e-5f);
  EXPECT_EQ(l.count("llama.expert_count"), 0u);

  auto mx = hparams_of(load_model_config(kModels + "/moe-26m"));
  EXPECT_EQ(mx.at("llama.expert_count").u, 4u);
  EXPECT_EQ(mx.at("llama.expert_used_count").u, 2u);
  EXPECT_EQ(mx.at("llama.feed_forward_length").u, 768u);
  EXPECT_EQ(mx.count("llama.attention.key_length"), 0u);  // head_dim not given

  auto q2 = hparams_of(load_model_config(kModels + "/arch-refs/qwen2_moe"));
  EXPECT_EQ(q2.at("qwen2moe.expert_feed_forward_length").u, 256u);
  EXPECT_EQ(q2.at("qwen2moe.expert_shared_feed_forward_length").u, 512u);
  EXPECT_FLOAT_EQ(q2.at("qwen2moe.attention.layer_norm_rms_epsilon").f, 1e-6f);
  auto q3 = hparams_of(load_model_config(kModels + "/arch-refs/qwen3_moe"));
  EXPECT_EQ(q3.at("qwen3moe.expert_count").u, 4u);
  EXPECT_EQ(q3.at("qwen3moe.attention.key_length").u, 64u);

  ModelConfig yarn = load_model_config(kModels + "/arch-refs/qwen3");
  yarn.rope_scaling.type = "yarn";
  yarn.rope_scaling.factor = 4;
  yarn.rope_scaling.original_max_positions = 32768;
  auto y = hparams_of(yarn);
  EXPECT_EQ(y.at("qwen3.rope.scaling.type").s, "yarn");
  EXPECT_FLOAT_EQ(y.at("qwen3.rope.scaling.factor").f, 4.0f);
  EXPECT_EQ(y.at("qwen3.rope.scaling.original_context_length").u, 32768u);
}

TEST(GgufNames, Llama3RopeFactors) {
  ModelConfig c = load_model_config(kModels + "/arch-refs/llama3-rope-scaling");
  auto f = llama3_rope_factors(c);
  ASSERT_EQ(f.size(), 32u);
  // High frequencies (short wavelengths) are untouched, low ones divided by the factor,
  // the band between interpolated smoothly and monotonically.
  EXPECT_FLOAT_EQ(f.front(), 1.0f);
  EXPECT_FLOAT_EQ(f.back(), 8.0f);
  int between = 0;
  for (size_t i = 1; i < f.size(); ++i) {
    EXPECT_GE(f[i], f[i - 1]);
    if (f[i] > 1.0f && f[i] < 8.0f) ++between;
  }
  EXPECT_GT(between, 0);
  // i = 6: wavelength 2*pi*500000^(6/64) = 21.5 lies between 64/4 and 64/1.
  double wl = 2 * M_PI * std::pow(500000.0, 6.0 / 64);
  double smooth = (64.0 / wl - 1.0) / (4.0 - 1.0);
  EXPECT_NEAR(f[3], 1.0 / ((1 - smooth) / 8.0 + smooth), 1e-4);
  EXPECT_TRUE(llama3_rope_factors(load_model_config(kModels + "/llama-30m")).empty());
}
