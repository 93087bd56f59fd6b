// llama.cpp's quantization recipes: every tensor's type for llama-30m and
// moe-26m against tables worked out by hand from llama-quant.cpp's rules,
// the row-length fallbacks and visiting order on synthetic models, the
// imatrix refusal, and `tailor quantize` writing and reopening a file.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "tailor/convert/convert.h"
#include "tailor/formats/gguf.h"
#include "tailor/plan/quantize.h"
#include "tailor/plan/recipes.h"
#include "tailor/util/error.h"

using namespace tailor;
namespace fs = std::filesystem;
using T = GgmlType;

namespace {

const std::string kModels = std::string(TAILOR_SHARED_DIR) + "/models";
const std::string kLlama = kModels + "/llama-30m";
const std::string kMoe = kModels + "/moe-26m";

// A type per role, with per-layer exceptions for attn_v and the FFN roles.
struct Expected {
  T embd, output, q, k, v, o, gate, up, down;
  std::map<int, T> v_at, down_at, gate_up_at;
};

// Expected type of one GGUF tensor under `e`.
T expected_type(const Expected& e, const std::string& name) {
  if (name == "token_embd.weight") return e.embd;
  if (name == "output.weight") return e.output;
  if (name.ends_with("_norm.weight") || name.ends_with("ffn_gate_inp.weight")) return T::F32;
  int layer = -1;
  EXPECT_EQ(std::sscanf(name.c_str(), "blk.%d.", &layer), 1) << name;
  auto at = [&](const std::map<int, T>& m, T dflt) {
    auto it = m.find(layer);
    return it == m.end() ? dflt : it->second;
  };
  if (name.find("attn_q.") != std::string::npos) return e.q;
  if (name.find("attn_k.") != std::string::npos) return e.k;
  if (name.find("attn_v.") != std::string::npos) return at(e.v_at, e.v);
  if (name.find("attn_output.") != std::string::npos) return e.o;
  if (name.find("ffn_gate") != std::string::npos) return at(e.gate_up_at, e.gate);
  if (name.find("ffn_up") != std::string::npos) return at(e.gate_up_at, e.up);
  if (name.find("ffn_down") != std::string::npos) return at(e.down_at, e.down);
  ADD_FAILURE() << "unexpected tensor " << name;
  return T::F32;
}

Expected uniform(T all, T embd, T output) { return {embd, output, all, all, all, all, all, all, all, {}, {}, {}}; }

std::map<int, T> layers(std::initializer_list<int> ls, T t) {
  std::map<int, T> m;
  for (int l : ls) m[l] = t;
  return m;
}

struct Case {
  const char* recipe;
  bool imatrix;
  uint32_t file_type;
  Expected e;
};

// llama-30m: 8 layers, 8 heads over 4 KV heads (GQA 2), untied output, rows
// of 512 and 1280 (all fit 256-blocks). use_more_bits(i, 8) holds for layers
// 0 (< 8/8), 7 (>= 7*8/8) and 3, 6 ((i - 1) % 3 == 2); n/8 = 1, n/16 = 0.
std::vector<Case> llama30m_cases() {
  const auto more = [](T t) { return layers({0, 3, 6, 7}, t); };
  std::vector<Case> c;
  c.push_back({"F32", false, 0, uniform(T::F32, T::F32, T::F32)});
  c.push_back({"F16", false, 1, uniform(T::F16, T::F16, T::F16)});
  c.push_back({"BF16", false, 32, uniform(T::BF16, T::BF16, T::BF16)});
  // Q8_0 keeps the output in Q8_0; every other quantized type gives it Q6_K.
  c.push_back({"Q8_0", false, 7, uniform(T::Q8_0, T::Q8_0, T::Q8_0)});
  c.push_back({"Q4_0", false, 2, uniform(T::Q4_0, T::Q4_0, T::Q6_K)});
  // With an imatrix the first eighth of ffn_down gets the offset variant.
  {
    Case x{"Q4_0", true, 2, uniform(T::Q4_0, T::Q4_0, T::Q6_K)};
    x.e.down_at = layers({0}, T::Q4_1);
    c.push_back(x);
  }
  c.push_back({"Q4_1", false, 3, uniform(T::Q4_1, T::Q4_1, T::Q6_K)});
  c.push_back({"Q5_0", false, 8, uniform(T::Q5_0, T::Q5_0, T::Q6_K)});
  {
    Case x{"Q5_0", true, 8, uniform(T::Q5_0, T::Q5_0, T::Q6_K)};
    x.e.down_at = layers({0}, T::Q5_1);
    c.push_back(x);
  }
  c.push_back({"Q5_1", false, 9, uniform(T::Q5_1, T::Q5_1, T::Q6_K)});
  // Q2_K: attn_v Q3_K (GQA < 4), ffn_down and attn_output Q3_K.
  c.push_back({"Q2_K", false, 10, {T::Q2_K, T::Q6_K, T::Q2_K, T::Q2_K, T::Q3_K, T::Q3_K, T::Q2_K, T::Q2_K, T::Q3_K, {}, {}, {}}});
  {
    Case x{"Q2_K_S", true, 21, uniform(T::Q2_K, T::Q2_K, T::Q6_K)};
    x.e.down_at = layers({0}, T::Q4_K);
    c.push_back(x);
  }
  c.push_back({"Q3_K_S", false, 11, uniform(T::Q3_K, T::Q3_K, T::Q6_K)});
  // Q3_K_M: the first two attn_v Q5_K, the rest Q4_K; ffn_down (n/16 = 0) and attn_output Q4_K.
  c.push_back({"Q3_K_M", false, 12,
               {T::Q3_K, T::Q6_K, T::Q3_K, T::Q3_K, T::Q4_K, T::Q4_K, T::Q3_K, T::Q3_K, T::Q4_K,
                layers({0, 1}, T::Q5_K), {}, {}}});
  c.push_back({"Q3_K_L", false, 13,
               {T::Q3_K, T::Q6_K, T::Q3_K, T::Q3_K, T::Q5_K, T::Q5_K, T::Q3_K, T::Q3_K, T::Q5_K, {}, {}, {}}});
  // Q4_K_S: the first four attn_v and the first eighth of ffn_down Q5_K.
  {
    Case x{"Q4_K_S", false, 14, uniform(T::Q4_K, T::Q4_K, T::Q6_K)};
    x.e.v_at = layers({0, 1, 2, 3}, T::Q5_K);
    x.e.down_at = layers({0}, T::Q5_K);
    c.push_back(x);
  }
  {
    Case x{"Q4_K_M", false, 15, uniform(T::Q4_K, T::Q4_K, T::Q6_K)};
    x.e.v_at = more(T::Q6_K);
    x.e.down_at = more(T::Q6_K);
    c.push_back(x);
  }
  c.push_back({"Q5_K_S", false, 16, uniform(T::Q5_K, T::Q5_K, T::Q6_K)});
  {
    Case x{"Q5_K_M", false, 17, uniform(T::Q5_K, T::Q5_K, T::Q6_K)};
    x.e.v_at = more(T::Q6_K);
    x.e.down_at = more(T::Q6_K);
    c.push_back(x);
  }
  c.push_back({"Q6_K", false, 18, uniform(T::Q6_K, T::Q6_K, T::Q6_K)});
  // The 2-bit-and-below i-quants: output Q5_K; attn_v Q2_K (IQ3_S for
  // IQ2_S/IQ2_M) as GQA < 4 and no experts; the first eighth of ffn_down the same.
  for (auto [name, ft, base] : {std::tuple{"IQ2_XXS", 19u, T::IQ2_XXS}, {"IQ2_XS", 20u, T::IQ2_XS}}) {
    Case x{name, true, ft, uniform(base, T::Q2_K, T::Q5_K)};
    x.e.v = T::Q2_K;
    x.e.down_at = layers({0}, T::Q2_K);
    c.push_back(x);
  }
  for (auto [name, ft, base] : {std::tuple{"IQ2_S", 28u, T::IQ2_XS}, {"IQ2_M", 29u, T::IQ2_S}}) {
    Case x{name, true, ft, uniform(base, T::IQ3_S, T::Q5_K)};
    x.e.v = x.e.o = T::IQ3_S;
    x.e.down_at = layers({0}, T::IQ3_S);
    c.push_back(x);
  }
  for (auto [name, ft, base] : {std::tuple{"IQ1_S", 24u, T::IQ1_S}, {"IQ1_M", 31u, T::IQ1_M}}) {
    Case x{name, true, ft, uniform(base, T::Q2_K, T::Q5_K)};
    x.e.v = T::Q2_K;
    x.e.o = T::IQ2_XXS;
    x.e.down_at = layers({0}, T::Q2_K);
    c.push_back(x);
  }
  // IQ3_XXS with an imatrix: q/k IQ2_S, attn_v stays IQ3_XXS, attn_output IQ3_S.
  c.push_back({"IQ3_XXS", true, 23,
               {T::IQ3_S, T::Q5_K, T::IQ2_S, T::IQ2_S, T::IQ3_XXS, T::IQ3_S, T::IQ3_XXS, T::IQ3_XXS, T::IQ3_XXS,
                {}, {}, {}}});
  // IQ3_XS (base IQ3_S): q/k IQ3_XXS, gate/up IQ3_XXS except the first and last eighth.
  c.push_back({"IQ3_XS", true, 22,
               {T::IQ3_S, T::Q6_K, T::IQ3_XXS, T::IQ3_XXS, T::IQ3_S, T::IQ3_S, T::IQ3_XXS, T::IQ3_XXS, T::IQ3_S,
                {}, {}, layers({0, 7}, T::IQ3_S)}});
  c.push_back({"IQ3_S", false, 26, uniform(T::IQ3_S, T::IQ3_S, T::Q6_K)});
  {
    Case x{"IQ3_M", false, 27, uniform(T::IQ3_S, T::IQ3_S, T::Q6_K)};
    x.e.v = x.e.o = T::Q4_K;
    x.e.down_at = layers({0}, T::Q4_K);
    c.push_back(x);
  }
  // IQ4_NL/IQ4_XS: the first eighth of ffn_down Q5_K, only without an imatrix.
  for (auto [name, ft, base] : {std::tuple{"IQ4_NL", 25u, T::IQ4_NL}, {"IQ4_XS", 30u, T::IQ4_XS}}) {
    Case x{name, false, ft, uniform(base, base, T::Q6_K)};
    x.e.down_at = layers({0}, T::Q5_K);
    c.push_back(x);
    c.push_back({name, true, ft, uniform(base, base, T::Q6_K)});
  }
  c.push_back({"TQ1_0", false, 36, uniform(T::TQ1_0, T::Q4_K, T::Q6_K)});
  c.push_back({"TQ2_0", false, 37, uniform(T::TQ2_0, T::Q4_K, T::Q6_K)});
  return c;
}

void check_plan(const std::string& model, const Case& c, const std::vector<TensorDesc>& layout) {
  SCOPED_TRACE(fmt::format("{} {}{}", model, c.recipe, c.imatrix ? " with imatrix" : ""));
  const RecipePlan plan = apply_recipe(recipe_named(c.recipe), recipe_model(model, c.imatrix), layout);
  EXPECT_EQ(plan.file_type, c.file_type);
  ASSERT_EQ(plan.tensors.size(), layout.size());
  for (size_t i = 0; i < layout.size(); ++i) {
    EXPECT_EQ(plan.tensors[i].name, layout[i].name);
    EXPECT_EQ(type_name(plan.tensors[i].type), type_name(expected_type(c.e, layout[i].name))) << layout[i].name;
  }
}

TEST(Recipes, Llama30mEveryRecipe) {
  const std::vector<TensorDesc> layout = gguf_tensor_layout(kLlama);
  ASSERT_EQ(layout.size(), 2u + 1u + 8u * 9u);
  std::set<std::string> covered;
  for (const Case& c : llama30m_cases()) {
    check_plan(kLlama, c, layout);
    covered.insert(c.recipe);
  }
  // Every recipe the catalog offers has a hand-written table.
  for (const Recipe& r : all_recipes()) EXPECT_TRUE(covered.count(std::string(r.name))) << r.name;
}

// moe-26m: 4 layers, 4 experts, GQA 2, tied embeddings (the embedding takes
// the output's rule). ffn_down_exps layers come from the name; n/8 = n/16 = 0;
// use_more_bits(i, 4) holds for layers 2 ((i - 0) % 3 == 2) and 3 (>= 7*4/8).
TEST(Recipes, Moe26m) {
  const std::vector<TensorDesc> layout = gguf_tensor_layout(kMoe);
  ASSERT_TRUE(std::any_of(layout.begin(), layout.end(), [](auto& t) { return t.name == "blk.0.ffn_down_exps.weight"; }));
  ASSERT_TRUE(std::none_of(layout.begin(), layout.end(), [](auto& t) { return t.name == "output.weight"; }));
  std::vector<Case> cases;
  {
    Case x{"Q4_K_M", false, 15, uniform(T::Q4_K, T::Q6_K, T::Q6_K)};
    x.e.v_at = layers({2, 3}, T::Q6_K);
    x.e.down_at = layers({2, 3}, T::Q6_K);
    cases.push_back(x);
  }
  cases.push_back({"Q3_K_M", false, 12,
                   {T::Q6_K, T::Q6_K, T::Q3_K, T::Q3_K, T::Q4_K, T::Q4_K, T::Q3_K, T::Q3_K, T::Q4_K,
                    layers({0, 1}, T::Q5_K), {}, {}}});
  cases.push_back({"Q2_K", false, 10,
                   {T::Q6_K, T::Q6_K, T::Q2_K, T::Q2_K, T::Q3_K, T::Q3_K, T::Q2_K, T::Q2_K, T::Q3_K, {}, {}, {}}});
  cases.push_back({"Q8_0", false, 7, uniform(T::Q8_0, T::Q8_0, T::Q8_0)});
  // 4 or more experts lift attn_v to Q4_K; n_ffn_down / 8 = 0 leaves ffn_down alone.
  {
    Case x{"IQ2_XXS", true, 19, uniform(T::IQ2_XXS, T::Q5_K, T::Q5_K)};
    x.e.v = T::Q4_K;
    cases.push_back(x);
  }
  for (const Case& c : cases) check_plan(kMoe, c, layout);
}

TEST(Recipes, RefusesLowBitWithoutImatrix) {
  const std::vector<TensorDesc> layout = gguf_tensor_layout(kLlama);
  const RecipeModel m = recipe_model(kLlama, false);
  for (const char* r : {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}) {
    SCOPED_TRACE(r);
    try {
      apply_recipe(recipe_named(r), m, layout);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("--imatrix"), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
  // The first offending tensor in llama.cpp's order: IQ3_XXS puts blk.0.attn_k in IQ2_S.
  try {
    apply_recipe(recipe_named("IQ3_XXS"), m, layout);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.attn_k.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("IQ2_S"), std::string::npos) << e.what();
  }
  // Types that merely use importance values do not need them.
  for (const char* r : {"Q4_K_M", "IQ3_S", "IQ3_M", "IQ4_XS", "Q2_K"}) EXPECT_NO_THROW(apply_recipe(recipe_named(r), m, layout)) << r;
}

TEST(Recipes, NamesAndFileTypes) {
  EXPECT_EQ(recipe_named("q4_k_m").file_type, 15u);
  EXPECT_EQ(find_recipe("Q4_K"), nullptr);
  EXPECT_THROW(recipe_named("Q4_K_X"), Error);
  try {
    recipe_named("Q7");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q4_K_M"), std::string::npos);
  }
  // A uniform file's llama_ftype: the recipe of the same name, or the K-quant's _S variant.
  EXPECT_EQ(llama_file_type(T::Q4_K), 14u);
  EXPECT_EQ(llama_file_type(T::Q3_K), 11u);
  EXPECT_EQ(llama_file_type(T::Q2_K), 10u);
  EXPECT_EQ(llama_file_type(T::IQ2_S), 28u);
  EXPECT_EQ(llama_file_type(T::IQ3_S), 26u);
  EXPECT_EQ(llama_file_type(T::TQ2_0), 37u);
  EXPECT_EQ(llama_file_type(T::Q8_K), 1024u);
}

// A synthetic dense model in GGUF names.
std::vector<TensorDesc> synthetic(int n_layer, int64_t hidden, int64_t kv, int64_t ffn, bool tied) {
  std::vector<TensorDesc> t{{"token_embd.weight", {hidden, 1000}}, {"output_norm.weight", {hidden}}};
  if (!tied) t.push_back({"output.weight", {hidden, 1000}});
  for (int l = 0; l < n_layer; ++l) {
    auto n = [&](const char* s) { return fmt::format("blk.{}.{}.weight", l, s); };
    t.push_back({n("attn_norm"), {hidden}});
    t.push_back({n("attn_q"), {hidden, hidden}});
    t.push_back({n("attn_k"), {hidden, kv}});
    t.push_back({n("attn_v"), {hidden, kv}});
    t.push_back({n("attn_output"), {hidden, hidden}});
    t.push_back({n("ffn_norm"), {hidden}});
    t.push_back({n("ffn_gate"), {hidden, ffn}});
    t.push_back({n("ffn_up"), {hidden, ffn}});
    t.push_back({n("ffn_down"), {ffn, hidden}});
  }
  return t;
}

std::map<std::string, TensorChoice> by_name(const RecipePlan& p) {
  std::map<std::string, TensorChoice> m;
  for (const auto& t : p.tensors) m[t.name] = t;
  return m;
}

// Rows of 320 and 864 fit 32-blocks but not 256-blocks; rows of 100 fit neither.
TEST(Recipes, RowFallbacks) {
  RecipeModel m{"llama", 2, 0, 5, 5, false};
  const auto plan = by_name(apply_recipe(recipe_named("Q4_K_M"), m, synthetic(2, 320, 320, 864, false)));
  // The output's row does not fit the base type's block: Q8_0 outright (not counted as a fallback).
  EXPECT_EQ(plan.at("output.weight").type, T::Q8_0);
  EXPECT_FALSE(plan.at("output.weight").fell_back);
  EXPECT_EQ(plan.at("token_embd.weight").type, T::Q5_0);
  EXPECT_TRUE(plan.at("token_embd.weight").fell_back);
  // use_more_bits(i, 2): layer 1 only (>= 7*2/8); Q6_K -> Q8_0, Q4_K -> Q5_0.
  EXPECT_EQ(plan.at("blk.0.attn_v.weight").type, T::Q5_0);
  EXPECT_EQ(plan.at("blk.1.attn_v.weight").type, T::Q8_0);
  EXPECT_EQ(plan.at("blk.0.ffn_down.weight").type, T::Q5_0);
  EXPECT_EQ(plan.at("blk.1.ffn_down.weight").type, T::Q8_0);
  EXPECT_EQ(plan.at("blk.1.ffn_down.weight").fell_back, true);
  EXPECT_EQ(plan.at("blk.0.attn_norm.weight").type, T::F32);

  const auto iq = by_name(apply_recipe(recipe_named("IQ4_XS"), m, synthetic(2, 320, 320, 864, true)));
  EXPECT_EQ(iq.at("blk.0.attn_q.weight").type, T::IQ4_NL);
  EXPECT_EQ(iq.at("blk.0.ffn_down.weight").type, T::IQ4_NL);  // Q5_K (first eighth: none of 2) -> IQ4_NL
  EXPECT_EQ(iq.at("token_embd.weight").type, T::Q8_0);        // tied: the output's rule
  const auto q2 = by_name(apply_recipe(recipe_named("Q2_K"), m, synthetic(2, 320, 320, 864, false)));
  EXPECT_EQ(q2.at("blk.0.attn_q.weight").type, T::Q4_0);
  EXPECT_EQ(q2.at("blk.0.attn_v.weight").type, T::Q4_0);  // Q3_K -> Q4_0
  const auto q5 = by_name(apply_recipe(recipe_named("Q5_K_S"), m, synthetic(2, 320, 320, 864, false)));
  EXPECT_EQ(q5.at("blk.0.attn_q.weight").type, T::Q5_1);

  RecipeModel odd{"llama", 1, 0, 1, 1, false};
  const auto f = by_name(apply_recipe(recipe_named("Q4_K_M"), odd, synthetic(1, 100, 100, 100, false)));
  EXPECT_EQ(f.at("blk.0.attn_q.weight").type, T::F16);
  EXPECT_EQ(f.at("output.weight").type, T::F16);  // Q8_0 does not fit either
  const auto g = by_name(apply_recipe(recipe_named("Q8_0"), odd, synthetic(1, 100, 100, 100, false)));
  EXPECT_EQ(g.at("blk.0.ffn_up.weight").type, T::F16);
  EXPECT_TRUE(g.at("blk.0.ffn_up.weight").fell_back);
}

// The counters follow llama.cpp's order (layer by number, then name), not
// the order given: with 12 layers "blk.10" sorts before "blk.2" as text.
TEST(Recipes, VisitingOrder) {
  RecipeModel m{"llama", 12, 0, 8, 2, false};  // GQA 4
  std::vector<TensorDesc> t = synthetic(12, 512, 128, 1024, false);
  std::shuffle(t.begin(), t.end(), std::mt19937(7));
  const auto q3 = by_name(apply_recipe(recipe_named("Q3_K_M"), m, t));
  for (int l = 0; l < 12; ++l)
    EXPECT_EQ(q3.at(fmt::format("blk.{}.attn_v.weight", l)).type, l < 2 ? T::Q5_K : T::Q4_K) << l;
  // use_more_bits(i, 12): i < 1, i >= 10, (i - 1) % 3 == 2.
  const std::set<int> more = {0, 3, 6, 9, 10, 11};
  const auto q4 = by_name(apply_recipe(recipe_named("Q4_K_M"), m, t));
  for (int l = 0; l < 12; ++l) {
    const T want = more.count(l) ? T::Q6_K : T::Q4_K;
    EXPECT_EQ(q4.at(fmt::format("blk.{}.attn_v.weight", l)).type, want) << l;
    EXPECT_EQ(q4.at(fmt::format("blk.{}.ffn_down.weight", l)).type, want) << l;
  }
  // GQA >= 4 turns on the attn_v rules of Q2_K, IQ3_S and IQ4_XS.
  EXPECT_EQ(by_name(apply_recipe(recipe_named("Q2_K"), m, t)).at("blk.5.attn_v.weight").type, T::Q4_K);
  EXPECT_EQ(by_name(apply_recipe(recipe_named("IQ3_S"), m, t)).at("blk.5.attn_v.weight").type, T::Q4_K);
  EXPECT_EQ(by_name(apply_recipe(recipe_named("IQ4_XS"), m, t)).at("blk.5.attn_v.weight").type, T::Q5_K);
}

// Eight experts and the falcon architecture have rules of their own.
TEST(Recipes, ExpertAndArchRules) {
  std::vector<TensorDesc> t = synthetic(8, 512, 512, 1024, false);
  RecipeModel moe8{"llama", 8, 8, 8, 8, false};
  const auto a = by_name(apply_recipe(recipe_named("Q4_K_M"), moe8, t));
  EXPECT_EQ(a.at("blk.1.attn_v.weight").type, T::Q8_0);
  EXPECT_EQ(a.at("blk.1.attn_k.weight").type, T::Q8_0);
  EXPECT_EQ(a.at("blk.1.attn_output.weight").type, T::Q5_K);
  RecipeModel falcon{"falcon", 8, 0, 8, 8, false};
  const auto f = by_name(apply_recipe(recipe_named("Q4_K_M"), falcon, t));
  EXPECT_EQ(f.at("output.weight").type, T::Q8_0);
  // n/16 = 0; use_more_bits -> Q5_K, otherwise Q4_K.
  EXPECT_EQ(f.at("blk.0.ffn_down.weight").type, T::Q5_K);
  EXPECT_EQ(f.at("blk.1.ffn_down.weight").type, T::Q4_K);
  // A "70B": llama, 80 layers, grouped attention: Q3_K/Q4_K attn_v become Q5_K.
  RecipeModel big{"llama", 80, 0, 64, 8, false};
  const auto b = by_name(apply_recipe(recipe_named("Q3_K_S"), big, synthetic(80, 256, 256, 256, false)));
  EXPECT_EQ(b.at("blk.40.attn_v.weight").type, T::Q5_K);
  EXPECT_EQ(b.at("blk.40.attn_q.weight").type, T::Q3_K);
}

// ---- writing files ----

TEST(QuantizeWrite, MapOfTypes) {
  const std::string out = test::temp_dir() + "/map.gguf";
  QuantizeRequest q;
  q.input = kLlama;
  q.output = out;
  std::map<std::string, GgmlType> types = {{"blk.0.attn_q.weight", T::Q4_K}, {"blk.3.ffn_down.weight", T::Q6_K},
                                           {"output.weight", T::Q8_0}};
  const ConvertResult r = quantize_with_types(q, types, 1234, T::Q8_0);
  const GgufFile f = GgufFile::open(out);
  EXPECT_EQ(f.find("general.file_type")->as_int(), 1234);
  EXPECT_EQ(f.find_tensor("blk.0.attn_q.weight")->type, T::Q4_K);
  EXPECT_EQ(f.find_tensor("blk.3.ffn_down.weight")->type, T::Q6_K);
  EXPECT_EQ(f.find_tensor("blk.1.attn_q.weight")->type, T::Q8_0);  // not named: the fallback type
  EXPECT_EQ(f.find_tensor("blk.1.attn_norm.weight")->type, T::F32);
  EXPECT_EQ(r.tensors.size(), f.tensors().size());
  // Bad maps: a name the model lacks, a quantized norm, a type needing an imatrix.
  EXPECT_THROW(quantize_with_types(q, {{"blk.9.attn_q.weight", T::Q4_K}}, 15), Error);
  EXPECT_THROW(quantize_with_types(q, {{"blk.0.attn_norm.weight", T::Q8_0}}, 15), Error);
  EXPECT_THROW(quantize_with_types(q, {{"blk.0.attn_q.weight", T::IQ2_XXS}}, 15), Error);
}

TEST(QuantizeCli, Q4KMWritesTheRecipe) {
  const std::string out = test::temp_dir() + "/q4km.gguf";
  const auto r = test::run_cli(fmt::format("quantize {} -o {} --type q4_k_m --json -j 2", kLlama, out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["recipe"], "Q4_K_M");
  EXPECT_EQ(j["file_type"], 15);
  const GgufFile f = GgufFile::open(out);
  EXPECT_EQ(f.find("general.file_type")->as_int(), 15);
  EXPECT_EQ(j["file_size"].get<uint64_t>(), fs::file_size(out));
  Case want;
  for (const Case& c : llama30m_cases())
    if (std::string(c.recipe) == "Q4_K_M") want = c;
  ASSERT_EQ(f.tensors().size(), j["tensors"].size());
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const GgufTensorInfo& t = f.tensors()[i];
    EXPECT_EQ(type_name(t.type), type_name(expected_type(want.e, t.name))) << t.name;
    EXPECT_EQ(j["tensors"][i]["name"], t.name);
    EXPECT_EQ(j["tensors"][i]["type"], std::string(type_name(t.type)));
  }
  // The per-type summary adds up to the tensors.
  uint64_t bytes = 0;
  for (auto& [k, v] : j["types"].items()) bytes += v["bytes"].get<uint64_t>();
  uint64_t sum = 0;
  for (auto& t : j["tensors"]) sum += t["bytes"].get<uint64_t>();
  EXPECT_EQ(bytes, sum);
  EXPECT_LT(sum, j["file_size"].get<uint64_t>());

  const auto text = test::run_cli(fmt::format("quantize {} -o {} --type Q4_K_M -j 2", kLlama, out));
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("Q6_K"), std::string::npos);
  EXPECT_NE(text.out.find("bits per weight"), std::string::npos);
}

TEST(QuantizeCli, BadInput) {
  const std::string out = test::temp_dir() + "/bad.gguf";
  auto r = test::run_cli(fmt::format("quantize {} -o {} --type Q4_K_Z", kLlama, out));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("unknown quantization type 'Q4_K_Z'"), std::string::npos) << r.err;
  r = test::run_cli(fmt::format("quantize {} -o {} --type IQ2_XXS", kLlama, out));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("--imatrix"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  r = test::run_cli(fmt::format("quantize {}/no-such-model -o {} --type Q4_K_M", kModels, out));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
  EXPECT_FALSE(fs::exists(out));
}

TEST(QuantizeCli, DryRunListsTypes) {
  const auto r = test::run_cli(fmt::format("quantize {} --type Q3_K_M --dry-run --json", kMoe));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["file_type"], 12);
  std::map<std::string, std::string> types;
  for (auto& t : j["tensors"]) types[t["name"]] = t["type"];
  EXPECT_EQ(types["blk.1.attn_v.weight"], "Q5_K");
  EXPECT_EQ(types["blk.2.attn_v.weight"], "Q4_K");
  EXPECT_EQ(types["token_embd.weight"], "Q6_K");
  EXPECT_EQ(types["blk.0.ffn_gate_inp.weight"], "F32");
}

}  // namespace
