// HF folder -> mixed-type GGUF: by one of llama.cpp's recipes, or by an
// explicit type per tensor (what a strategy produces).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "tailor/convert/convert.h"
#include "tailor/plan/recipes.h"

namespace tailor {

struct QuantizeRequest {
  std::string input;   // HF model folder
  std::string output;  // .gguf, written atomically
  const eval::Imatrix* imatrix = nullptr;  // not owned; may be null
  int threads = 0;
  std::string name;    // general.name; default: the folder's name
  std::function<void(const ConvertedTensor&, size_t index, size_t total)> on_tensor;
};

// What a recipe's rules need to know about the model in `input`.
RecipeModel recipe_model(const std::string& input, bool has_imatrix);

// The recipe's type for every tensor of the model, in file order, without writing anything.
RecipePlan plan_recipe(const std::string& input, const Recipe& recipe, bool has_imatrix);

// Writes the model with `types` (GGUF name -> type; matrices not named get
// `fallback`, vectors F32) and general.file_type = `file_type`.
ConvertResult quantize_with_types(const QuantizeRequest& req, const std::map<std::string, GgmlType>& types,
                                  uint32_t file_type, GgmlType fallback = GgmlType::F16);

// general.file_type of a mixed file: the llama_ftype of the type holding the
// most bytes among `types` (tensors of `input` it does not name are ignored).
uint32_t dominant_file_type(const std::string& input, const std::map<std::string, GgmlType>& types);

// Writes the model as llama-quantize would with `recipe`. Tensors the recipe
// gives a type that needs importance values must have them in req.imatrix.
ConvertResult quantize_with_recipe(const QuantizeRequest& req, const Recipe& recipe);

}  // namespace tailor
