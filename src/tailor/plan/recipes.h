// llama.cpp's built-in quantization recipes (llama-quantize's file types such
// as Q4_K_M): the type every tensor of a model gets, rule for rule as
// llama_tensor_get_type in llama.cpp's llama-quant.cpp decides it, including
// the per-layer upgrades, the output/embedding rules and the row-length
// fallbacks. The rules depend on the order tensors are visited in (counters
// over attn_v and ffn_down), which is llama.cpp's: by layer, then by name.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tailor/quant/types.h"

namespace tailor {

struct Recipe {
  std::string_view name;  // llama-quantize's name, e.g. "Q4_K_M"
  uint32_t file_type;     // llama_ftype, written as general.file_type
  GgmlType base;          // the type of tensors no rule singles out
};

std::span<const Recipe> all_recipes();
// Case-insensitive ("q4_k_m"); nullptr when unknown.
const Recipe* find_recipe(std::string_view name);
// Like find_recipe, but an unknown name throws an Error listing the known ones.
const Recipe& recipe_named(std::string_view name);

// What the rules read from the model.
struct RecipeModel {
  std::string arch;        // GGUF general.architecture ("llama", "qwen2", "falcon", ...)
  int64_t n_layer = 0;
  int64_t n_expert = 0;    // 0 for dense models
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  bool has_imatrix = false;
};

struct TensorDesc {
  std::string name;         // GGUF name
  std::vector<int64_t> ne;  // ggml order
};

struct TensorChoice {
  std::string name;
  GgmlType type = GgmlType::F32;
  bool fell_back = false;      // the rule's type did not fit the rows
  bool needs_imatrix = false;  // llama.cpp refuses this type here without importance values
};

struct RecipePlan {
  uint32_t file_type = 0;
  std::vector<TensorChoice> tensors;  // in the order given
  int fallbacks = 0;
};

// The type of every tensor under `recipe`. Throws an Error naming the tensor
// when the recipe needs an importance matrix and model.has_imatrix is false,
// as llama-quantize refuses to run.
RecipePlan apply_recipe(const Recipe& recipe, const RecipeModel& model, std::span<const TensorDesc> tensors);

// Whether llama.cpp quantizes this tensor at all (2-D or 3-D weights that are
// not norms, the MoE router or a few small special tables); the rest stay F32.
bool tensor_is_quantizable(const std::string& gguf_name, const std::vector<int64_t>& ne);

// `t` if rows of `ncols` fit its blocks; otherwise llama.cpp's substitute
// (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K/TQ -> Q4_0,
// 256-block i-quants -> IQ4_NL), and F16 when that does not fit either.
GgmlType fit_row_type(GgmlType t, int64_t ncols, bool* fell_back = nullptr);

// llama.cpp's general.file_type (llama_ftype) for a file of type `t`
// throughout: the recipe of that name, or its _S variant for K-quants.
uint32_t llama_file_type(GgmlType t);

}  // namespace tailor
