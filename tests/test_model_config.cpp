// config.json parsing against every fixture model, and clear errors for bad fields.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tailor/model/config.h"
#include "tailor/util/error.h"

using namespace tailor;
namespace fs = std::filesystem;

static const std::string kModels = std::string(TAILOR_SHARED_DIR) + "/models";

TEST(ModelConfig, Llama30m) {
  ModelConfig c = load_model_config(kModels + "/llama-30m");
  EXPECT_EQ(c.family, ModelFamily::Llama);
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.intermediate_size, 1280);
  EXPECT_EQ(c.num_layers, 8);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_TRUE(c.head_dim_explicit);
  EXPECT_EQ(c.vocab_size, 8192);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);  // from rope_parameters
  EXPECT_EQ(c.rope_scaling.type, "none");
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.max_positions, 1024);
  EXPECT_EQ(c.bos_token_id, 1);
  ASSERT_EQ(c.eos_token_ids.size(), 1u);
  EXPECT_EQ(c.eos_token_ids[0], 2);
  EXPECT_FALSE(c.is_moe());
}

TEST(ModelConfig, Moe26m) {
  ModelConfig c = load_model_config(kModels + "/moe-26m");
  EXPECT_EQ(c.family, ModelFamily::Mixtral);
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.num_experts_used, 2);
  EXPECT_EQ(c.expert_ffn_size(), 768);
  EXPECT_EQ(c.head_dim, 64);  // head_dim null -> hidden / heads
  EXPECT_FALSE(c.head_dim_explicit);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.layer_is_moe(0));
  EXPECT_TRUE(c.layer_is_moe(3));
}

TEST(ModelConfig, EveryArchRef) {
  struct Want {
    const char* dir;
    ModelFamily family;
    bool moe, qk_norm, bias, tied;
  } wants[] = {
      {"llama-tied", ModelFamily::Llama, false, false, false, true},
      {"llama3-rope-scaling", ModelFamily::Llama, false, false, false, false},
      {"mistral", ModelFamily::Mistral, false, false, false, false},
      {"mixtral", ModelFamily::Mixtral, true, false, false, false},
      {"qwen2", ModelFamily::Qwen2, false, false, true, false},
      {"qwen2_moe", ModelFamily::Qwen2Moe, true, false, true, false},
      {"qwen3", ModelFamily::Qwen3, false, true, false, true},
      {"qwen3_moe", ModelFamily::Qwen3Moe, true, true, false, false},
  };
  for (const auto& w : wants) {
    SCOPED_TRACE(w.dir);
    ModelConfig c = load_model_config(kModels + "/arch-refs/" + w.dir);
    EXPECT_EQ(c.family, w.family);
    EXPECT_EQ(c.is_moe(), w.moe);
    EXPECT_EQ(c.qk_norm, w.qk_norm);
    EXPECT_EQ(c.attention_bias, w.bias);
    EXPECT_EQ(c.tie_word_embeddings, w.tied);
    EXPECT_EQ(c.hidden_size, 256);
    EXPECT_EQ(c.num_layers, 2);
    EXPECT_EQ(c.num_heads, 4);
    EXPECT_EQ(c.num_kv_heads, 2);
    EXPECT_EQ(c.head_dim, 64);
    EXPECT_EQ(c.vocab_size, 512);
    if (w.moe) {
      EXPECT_EQ(c.num_experts, 4);
      EXPECT_EQ(c.num_experts_used, 2);
    }
  }
  ModelConfig q2 = load_model_config(kModels + "/arch-refs/qwen2_moe");
  EXPECT_EQ(q2.moe_intermediate_size, 256);
  EXPECT_EQ(q2.shared_expert_intermediate_size, 512);
  EXPECT_FALSE(q2.norm_topk_prob);
  ModelConfig q3 = load_model_config(kModels + "/arch-refs/qwen3_moe");
  EXPECT_TRUE(q3.norm_topk_prob);
  EXPECT_EQ(q3.expert_ffn_size(), 256);
  ModelConfig mx = load_model_config(kModels + "/arch-refs/mixtral");
  EXPECT_DOUBLE_EQ(mx.rope_theta, 1e6);
  EXPECT_EQ(mx.expert_ffn_size(), 512);
}

TEST(ModelConfig, Llama3RopeScalingFromRopeParameters) {
  ModelConfig c = load_model_config(kModels + "/arch-refs/llama3-rope-scaling");
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_positions, 64);
}

// The pre-transformers-5 spelling: top-level rope_theta and rope_scaling.
TEST(ModelConfig, LegacyRopeFields) {
  nlohmann::json j = nlohmann::json::parse(R"({
    "model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 512, "intermediate_size": 512,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
    "rope_scaling": {"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "eos_token_id": [128001, 128008]})");
  ModelConfig c = parse_model_config(j, "x/config.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.rope_scaling.original_max_positions, 8192);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008}));

  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}};
  c = parse_model_config(j, "x/config.json");
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_EQ(c.rope_scaling.original_max_positions, 32768);
  j["rope_scaling"] = nullptr;
  EXPECT_EQ(parse_model_config(j, "x/config.json").rope_scaling.type, "none");
}

static std::string error_of(const nlohmann::json& j) {
  try {
    parse_model_config(j, "m/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, BadFieldsNameFileAndField) {
  nlohmann::json good = nlohmann::json::parse(
      std::ifstream(kModels + "/arch-refs/qwen3/config.json"));
  ASSERT_EQ(error_of(good), "");
  auto expect_err = [&](nlohmann::json j, const std::string& field) {
    std::string e = error_of(j);
    EXPECT_NE(e.find("m/config.json"), std::string::npos) << e;
    EXPECT_NE(e.find(field), std::string::npos) << e;
  };
  { auto j = good; j.erase("hidden_size"); expect_err(j, "hidden_size"); }
  { auto j = good; j["num_hidden_layers"] = "two"; expect_err(j, "num_hidden_layers"); }
  { auto j = good; j["num_key_value_heads"] = 3; expect_err(j, "num_key_value_heads"); }
  { auto j = good; j["vocab_size"] = -5; expect_err(j, "vocab_size"); }
  { auto j = good; j["model_type"] = "gpt_neox"; expect_err(j, "gpt_neox"); }
  { auto j = good; j["rms_norm_eps"] = 0; expect_err(j, "rms_norm_eps"); }
  { auto j = good; j["rope_parameters"]["rope_type"] = "weird"; expect_err(j, "rope_type"); }
  { auto j = good; j.erase("head_dim"); j["num_attention_heads"] = 3; j["num_key_value_heads"] = 3;
    expect_err(j, "head_dim"); }
  { auto j = good; j["tie_word_embeddings"] = 1; expect_err(j, "tie_word_embeddings"); }
  auto moe = nlohmann::json::parse(std::ifstream(kModels + "/arch-refs/qwen3_moe/config.json"));
  { auto j = moe; j.erase("num_local_experts"); expect_err(j, "num_local_experts"); }
  { auto j = moe; j["num_experts_per_tok"] = 9; expect_err(j, "num_experts_per_tok"); }
  { auto j = moe; j["mlp_only_layers"] = {7}; expect_err(j, "mlp_only_layers"); }
  EXPECT_THROW(load_model_config("/nonexistent/folder"), Error);
}

TEST(ModelConfig, SparseStepAndDenseLayers) {
  auto j = nlohmann::json::parse(std::ifstream(kModels + "/arch-refs/qwen2_moe/config.json"));
  j["num_hidden_layers"] = 4;
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  ModelConfig c = parse_model_config(j, "c.json");
  EXPECT_FALSE(c.layer_is_moe(0));
  EXPECT_TRUE(c.layer_is_moe(1));
  EXPECT_FALSE(c.layer_is_moe(2));
  EXPECT_FALSE(c.layer_is_moe(3));
}
