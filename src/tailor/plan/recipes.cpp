#include "tailor/plan/recipes.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <numeric>

#include <fmt/format.h>

#include "tailor/util/error.h"

namespace tailor {
namespace {

using T = GgmlType;

constexpr std::array kRecipes = {
    Recipe{"F32", 0, T::F32},        Recipe{"F16", 1, T::F16},         Recipe{"Q4_0", 2, T::Q4_0},
    Recipe{"Q4_1", 3, T::Q4_1},      Recipe{"Q8_0", 7, T::Q8_0},       Recipe{"Q5_0", 8, T::Q5_0},
    Recipe{"Q5_1", 9, T::Q5_1},      Recipe{"Q2_K", 10, T::Q2_K},      Recipe{"Q3_K_S", 11, T::Q3_K},
    Recipe{"Q3_K_M", 12, T::Q3_K},   Recipe{"Q3_K_L", 13, T::Q3_K},    Recipe{"Q4_K_S", 14, T::Q4_K},
    Recipe{"Q4_K_M", 15, T::Q4_K},   Recipe{"Q5_K_S", 16, T::Q5_K},    Recipe{"Q5_K_M", 17, T::Q5_K},
    Recipe{"Q6_K", 18, T::Q6_K},     Recipe{"IQ2_XXS", 19, T::IQ2_XXS}, Recipe{"IQ2_XS", 20, T::IQ2_XS},
    Recipe{"Q2_K_S", 21, T::Q2_K},   Recipe{"IQ3_XS", 22, T::IQ3_S},   Recipe{"IQ3_XXS", 23, T::IQ3_XXS},
    Recipe{"IQ1_S", 24, T::IQ1_S},   Recipe{"IQ4_NL", 25, T::IQ4_NL},  Recipe{"IQ3_S", 26, T::IQ3_S},
    Recipe{"IQ3_M", 27, T::IQ3_S},   Recipe{"IQ2_S", 28, T::IQ2_XS},   Recipe{"IQ2_M", 29, T::IQ2_S},
    Recipe{"IQ4_XS", 30, T::IQ4_XS}, Recipe{"IQ1_M", 31, T::IQ1_M},    Recipe{"BF16", 32, T::BF16},
    Recipe{"TQ1_0", 36, T::TQ1_0},   Recipe{"TQ2_0", 37, T::TQ2_0},
};

// llama_ftype numbers the rules compare against.
enum Ftype : uint32_t {
  kQ4_0 = 2, kQ5_0 = 8, kQ2_K = 10, kQ3_K_S = 11, kQ3_K_M = 12, kQ3_K_L = 13, kQ4_K_S = 14, kQ4_K_M = 15,
  kQ5_K_M = 17, kIQ2_XXS = 19, kIQ2_XS = 20, kQ2_K_S = 21, kIQ3_XS = 22, kIQ3_XXS = 23, kIQ1_S = 24,
  kIQ4_NL = 25, kIQ3_S = 26, kIQ3_M = 27, kIQ2_S = 28, kIQ2_M = 29, kIQ4_XS = 30, kIQ1_M = 31,
  kTQ1_0 = 36, kTQ2_0 = 37,
};

bool iequal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::toupper(static_cast<unsigned char>(x)) == std::toupper(static_cast<unsigned char>(y));
         });
}

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

// The broad roles the rules distinguish (llama.cpp matches name substrings,
// so merged experts and shared experts fall under the FFN roles too).
enum class Role { Output, TokenEmbd, AttnQkv, AttnKvB, AttnV, AttnK, AttnQ, AttnOutput, FfnUp, FfnGate, FfnDown, Other };

Role role_of(const std::string& name) {
  if (name == "output.weight") return Role::Output;
  if (name == "token_embd.weight" || name == "per_layer_token_embd.weight") return Role::TokenEmbd;
  if (contains(name, "attn_qkv.weight")) return Role::AttnQkv;
  if (contains(name, "attn_kv_b.weight")) return Role::AttnKvB;
  if (contains(name, "attn_v.weight")) return Role::AttnV;
  if (contains(name, "attn_k.weight")) return Role::AttnK;
  if (contains(name, "attn_q.weight")) return Role::AttnQ;
  if (contains(name, "attn_output.weight")) return Role::AttnOutput;
  if (contains(name, "ffn_up")) return Role::FfnUp;
  if (contains(name, "ffn_gate")) return Role::FfnGate;
  if (contains(name, "ffn_down")) return Role::FfnDown;
  return Role::Other;
}

// Value-like projections (V, fused QKV, MLA's kv_b) share one counter and one set of rules.
bool is_value_like(Role r) { return r == Role::AttnV || r == Role::AttnQkv || r == Role::AttnKvB; }

// Layer index of "blk.N.<...>", -1 for tensors outside the blocks.
int64_t layer_of(const std::string& name) {
  if (!name.starts_with("blk.")) return -1;
  int64_t n = -1;
  const char* first = name.data() + 4;
  const char* last = name.data() + name.size();
  auto [p, ec] = std::from_chars(first, last, n);
  if (ec != std::errc() || p == first || p == last || *p != '.') return -1;
  return n;
}

// ggml counts dimensions up to the last one that is not 1.
int n_dims(const std::vector<int64_t>& ne) {
  int n = 1;
  for (size_t i = 0; i < ne.size(); ++i)
    if (ne[i] != 1) n = static_cast<int>(i) + 1;
  return n;
}

bool is_float_type(T t) { return t == T::F32 || t == T::F16 || t == T::BF16; }

// The rule state llama.cpp carries across tensors.
struct Counters {
  int64_t n_value = 0, i_value = 0;
  int64_t i_ffn_down = 0, i_ffn_gate = 0, i_ffn_up = 0;
};

class RuleSet {
 public:
  RuleSet(const Recipe& r, const RecipeModel& m, bool tied) : r_(r), m_(m), tied_(tied) {
    gqa_ = m.n_head_kv > 0 ? m.n_head / m.n_head_kv : 0;
    falcon_ = m.arch == "falcon";
    // llama.cpp treats only llama-architecture models of 80 layers with grouped
    // attention as its "70B" size, the one size a rule asks about.
    is_70b_ = m.arch == "llama" && m.n_layer == 80 && m.n_head != m.n_head_kv;
  }

  T choose(const TensorDesc& t, Counters& c) const;

 private:
  bool ftype_in(std::initializer_list<uint32_t> set) const {
    return std::find(set.begin(), set.end(), r_.file_type) != set.end();
  }
  static bool more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }
  // The (layer, layer count) an FFN rule uses: a running count of the role's
  // tensors for dense models, the layer in the name for MoE models (whose
  // expert tensors need not come in layer order).
  std::pair<int64_t, int64_t> ffn_layer(int64_t counter, const std::string& name) const {
    if (std::max<int64_t>(1, m_.n_expert) == 1) return {counter, m_.n_layer};
    const int64_t l = layer_of(name);
    if (l < 0 || l >= m_.n_layer) fail("{}: cannot tell its layer (of {}) for the {} recipe", name, m_.n_layer, r_.name);
    return {l, m_.n_layer};
  }

  const Recipe& r_;
  const RecipeModel& m_;
  bool tied_;
  int64_t gqa_ = 0;
  bool falcon_ = false, is_70b_ = false;
};

T RuleSet::choose(const TensorDesc& t, Counters& c) const {
  const Role role = role_of(t.name);
  const uint32_t f = r_.file_type;
  T type = r_.base;

  if (role == Role::Output || (tied_ && role == Role::TokenEmbd)) {
    if (falcon_ || t.ne[0] % type_info(type).block_size != 0) return T::Q8_0;
    if (ftype_in({kIQ2_XXS, kIQ2_XS, kIQ3_XXS, kIQ1_S, kIQ2_S, kIQ2_M, kIQ1_M})) return T::Q5_K;
    return type == T::Q8_0 ? type : T::Q6_K;
  }
  if (role == Role::TokenEmbd) {
    if (ftype_in({kIQ2_XXS, kIQ2_XS, kIQ1_S, kIQ1_M})) return T::Q2_K;
    if (ftype_in({kIQ2_S, kIQ2_M, kIQ3_XXS})) return T::IQ3_S;
    if (ftype_in({kTQ1_0, kTQ2_0})) return T::Q4_K;
    return type;
  }

  // The 2-bit-and-below i-quant file types have their own, smaller rule set.
  if (ftype_in({kIQ2_XXS, kIQ2_XS, kIQ1_S, kIQ2_S, kIQ2_M, kIQ1_M})) {
    const bool s_or_m = ftype_in({kIQ2_S, kIQ2_M});
    if (is_value_like(role)) {
      type = gqa_ >= 4 || m_.n_expert >= 4 ? T::Q4_K : s_or_m ? T::IQ3_S : T::Q2_K;
      ++c.i_value;
    } else if (m_.n_expert == 8 && role == Role::AttnK) {
      type = T::Q4_K;
    } else if (role == Role::FfnDown) {
      if (c.i_ffn_down < m_.n_layer / 8) type = s_or_m ? T::IQ3_S : T::Q2_K;
      ++c.i_ffn_down;
    } else if (role == Role::AttnOutput) {
      if (m_.n_expert == 8) type = T::Q5_K;
      else if (ftype_in({kIQ1_S, kIQ1_M})) type = T::IQ2_XXS;
      else if (s_or_m) type = T::IQ3_S;
    }
    return type;
  }

  switch (role) {
    case Role::AttnV: case Role::AttnQkv: case Role::AttnKvB: {
      // llama.cpp also has a fused-QKV rule after this one, but fused QKV
      // tensors always take this branch first, so it never applies.
      if (f == kQ2_K) type = gqa_ >= 4 ? T::Q4_K : T::Q3_K;
      else if (f == kQ2_K_S && gqa_ >= 4) type = T::Q4_K;
      else if (f == kIQ3_XXS) type = gqa_ >= 4 ? T::Q4_K : !m_.has_imatrix ? T::IQ3_S : T::IQ3_XXS;
      else if ((f == kIQ3_XS || f == kIQ3_S) && gqa_ >= 4) type = T::Q4_K;
      else if (f == kIQ3_M) type = T::Q4_K;
      else if (f == kQ3_K_M) type = c.i_value < 2 ? T::Q5_K : T::Q4_K;
      else if (f == kQ3_K_L) type = T::Q5_K;
      else if ((f == kIQ4_NL || f == kIQ4_XS) && gqa_ >= 4) type = T::Q5_K;
      else if ((f == kQ4_K_M || f == kQ5_K_M) && more_bits(c.i_value, c.n_value)) type = T::Q6_K;
      else if (f == kQ4_K_S && c.i_value < 4) type = T::Q5_K;
      if (is_70b_ && (type == T::Q3_K || type == T::Q4_K)) type = T::Q5_K;
      if (m_.n_expert == 8) type = T::Q8_0;
      ++c.i_value;
      break;
    }
    case Role::AttnK:
      if (m_.n_expert == 8) type = T::Q8_0;
      else if (f == kIQ3_XS) type = T::IQ3_XXS;
      else if (f == kIQ3_XXS) type = T::IQ2_S;
      break;
    case Role::AttnQ:
      if (f == kIQ3_XS) type = T::IQ3_XXS;
      else if (f == kIQ3_XXS) type = T::IQ2_S;
      break;
    case Role::FfnDown: {
      const auto [i, n] = ffn_layer(c.i_ffn_down, t.name);
      if (f == kQ2_K) type = T::Q3_K;
      else if (f == kQ2_K_S) { if (i < n / 8) type = T::Q4_K; }
      else if (f == kIQ3_XXS && !m_.has_imatrix) type = i < n / 8 ? T::Q4_K : T::Q3_K;
      else if (f == kQ3_K_M) type = i < n / 16 ? T::Q5_K : !falcon_ || more_bits(i, n) ? T::Q4_K : T::Q3_K;
      else if (f == kIQ3_M && (i < n / 8 || (m_.n_expert == 8 && more_bits(i, n)))) type = T::Q4_K;
      else if (f == kQ3_K_L) type = falcon_ ? T::Q4_K : T::Q5_K;
      else if (f == kQ4_K_M) {
        if (falcon_) type = i < n / 16 ? T::Q6_K : more_bits(i, n) ? T::Q5_K : T::Q4_K;
        else if (more_bits(i, n)) type = T::Q6_K;
      }
      else if (i < n / 8 && (f == kIQ4_NL || f == kIQ4_XS) && !m_.has_imatrix) type = T::Q5_K;
      else if (f == kQ5_K_M && more_bits(i, n)) type = T::Q6_K;
      else if (f == kQ4_K_S && !falcon_ && i < n / 8) type = T::Q5_K;
      // With importance values the first ffn_down layers of Q4_0/Q5_0 files get
      // the offset variants (llama.cpp keeps plain files as they always were).
      else if ((f == kQ4_0 || f == kQ5_0) && m_.has_imatrix && i < n / 8) type = f == kQ4_0 ? T::Q4_1 : T::Q5_1;
      ++c.i_ffn_down;
      break;
    }
    case Role::AttnOutput:
      if (falcon_) {
        if (f == kQ3_K_L) type = T::Q4_K;
      } else if (m_.n_expert == 8) {
        if (ftype_in({kQ2_K, kIQ3_XS, kIQ3_XXS, kQ3_K_S, kQ3_K_M, kIQ4_NL, kQ4_K_S, kQ4_K_M, kIQ3_S, kIQ3_M, kIQ4_XS}))
          type = T::Q5_K;
      } else {
        if (f == kQ2_K) type = T::Q3_K;
        else if (f == kIQ3_XXS) type = T::IQ3_S;
        else if (f == kQ3_K_M) type = T::Q4_K;
        else if (f == kQ3_K_L) type = T::Q5_K;
        else if (f == kIQ3_M) type = T::Q4_K;
      }
      break;
    case Role::FfnGate: case Role::FfnUp: {
      int64_t& counter = role == Role::FfnGate ? c.i_ffn_gate : c.i_ffn_up;
      const auto [i, n] = ffn_layer(counter, t.name);
      if (f == kIQ3_XS && i >= n / 8 && i < 7 * n / 8) type = T::IQ3_XXS;
      ++counter;
      break;
    }
    default:
      break;
  }
  return type;
}

// llama.cpp refuses these without importance values: the i-quants of 3 bits
// and below, and Q2_K inside a Q2_K_S file. The embedding and output are
// exempt (llama-imatrix has no values for them).
bool needs_imatrix(const std::string& name, T t, const Recipe& r) {
  const Role role = role_of(name);
  if (role == Role::Output || role == Role::TokenEmbd) return false;
  switch (t) {
    case T::IQ3_XXS: case T::IQ2_XXS: case T::IQ2_XS: case T::IQ2_S: case T::IQ1_M: case T::IQ1_S:
      return true;
    case T::Q2_K:
      return r.file_type == kQ2_K_S;
    default:
      return false;
  }
}

}  // namespace

std::span<const Recipe> all_recipes() { return kRecipes; }

const Recipe* find_recipe(std::string_view name) {
  for (const Recipe& r : kRecipes)
    if (iequal(r.name, name)) return &r;
  return nullptr;
}

const Recipe& recipe_named(std::string_view name) {
  if (const Recipe* r = find_recipe(name)) return *r;
  std::string known;
  for (const Recipe& r : kRecipes) known += fmt::format("{}{}", known.empty() ? "" : ", ", r.name);
  fail("unknown quantization type '{}' (known: {})", name, known);
}

bool tensor_is_quantizable(const std::string& name, const std::vector<int64_t>& ne) {
  if (n_dims(ne) < 2 || !name.ends_with("weight")) return false;
  // Norms, the MoE router and tables llama.cpp keeps as they are because they are small or lookups.
  static constexpr std::string_view kKept[] = {
      "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
      "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight", "time_mix_first.weight",
      "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight",
      "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
      "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
      "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd",
      ".patch_merger", "a.rvq.codebook", "mm.a.code_embd"};
  for (std::string_view k : kKept)
    if (contains(name, k)) return false;
  return name != "position_embd.weight" && name != "token_types.weight";
}

GgmlType fit_row_type(GgmlType t, int64_t ncols, bool* fell_back) {
  if (fell_back) *fell_back = false;
  if (row_fits(t, ncols)) return t;
  if (fell_back) *fell_back = true;
  switch (t) {
    case T::IQ1_S: case T::IQ1_M: case T::IQ2_XXS: case T::IQ2_XS: case T::IQ2_S: case T::IQ3_XXS: case T::IQ3_S:
    case T::IQ4_XS:
      t = T::IQ4_NL;
      break;
    case T::Q2_K: case T::Q3_K: case T::TQ1_0: case T::TQ2_0: t = T::Q4_0; break;
    case T::Q4_K: t = T::Q5_0; break;
    case T::Q5_K: t = T::Q5_1; break;
    case T::Q6_K: t = T::Q8_0; break;
    default: break;  // a 32-element block type: only F16 is left
  }
  return row_fits(t, ncols) ? t : T::F16;
}

uint32_t llama_file_type(GgmlType t) {
  const std::string_view name = type_name(t);
  if (const Recipe* r = find_recipe(name)) return r->file_type;
  if (const Recipe* r = find_recipe(fmt::format("{}_S", name))) return r->file_type;
  return 1024;  // LLAMA_FTYPE_GUESSED
}

RecipePlan apply_recipe(const Recipe& recipe, const RecipeModel& model, std::span<const TensorDesc> tensors) {
  RecipePlan plan;
  plan.file_type = recipe.file_type;
  plan.tensors.resize(tensors.size());
  // llama.cpp assumes tied embeddings until it sees an output matrix.
  const bool tied = std::none_of(tensors.begin(), tensors.end(), [](const TensorDesc& t) {
    return t.name == "output.weight";
  });
  Counters c;
  for (const TensorDesc& t : tensors) c.n_value += is_value_like(role_of(t.name)) ? 1 : 0;

  // llama.cpp's visiting order: tensors outside the blocks first, then by layer, by name within one.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const int64_t la = layer_of(tensors[a].name), lb = layer_of(tensors[b].name);
    return la != lb ? la < lb : tensors[a].name < tensors[b].name;
  });

  const RuleSet rules(recipe, model, tied);
  const bool quantized_base = !is_float_type(recipe.base);
  for (size_t i : order) {
    const TensorDesc& t = tensors[i];
    TensorChoice& out = plan.tensors[i];
    out.name = t.name;
    if (t.ne.empty() || t.ne[0] <= 0) fail("{}: tensor has an empty shape", t.name);
    if (!tensor_is_quantizable(t.name, t.ne)) {
      out.type = T::F32;
      continue;
    }
    out.type = recipe.base;
    if (quantized_base) out.type = fit_row_type(rules.choose(t, c), t.ne[0], &out.fell_back);
    out.needs_imatrix = needs_imatrix(t.name, out.type, recipe);
    plan.fallbacks += out.fell_back ? 1 : 0;
    if (out.needs_imatrix && !model.has_imatrix)
      fail("{}: the {} recipe makes it {}, which needs an importance matrix; pass --imatrix FILE "
           "(from tailor imatrix or llama-imatrix)",
           t.name, recipe.name, type_name(out.type));
  }
  return plan;
}

}  // namespace tailor
