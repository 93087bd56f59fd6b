#include "tailor/plan/quantize.h"

#include "tailor/eval/imatrix.h"
#include "tailor/model/config.h"
#include "tailor/model/gguf_names.h"
#include "tailor/util/error.h"

namespace tailor {

RecipeModel recipe_model(const std::string& input, bool has_imatrix) {
  const ModelConfig c = load_model_config(input);
  RecipeModel m;
  m.arch = gguf_arch_name(c.family);
  m.n_layer = c.num_layers;
  m.n_expert = c.num_experts;
  m.n_head = c.num_heads;
  m.n_head_kv = c.num_kv_heads;
  m.has_imatrix = has_imatrix;
  return m;
}

RecipePlan plan_recipe(const std::string& input, const Recipe& recipe, bool has_imatrix) {
  const std::vector<TensorDesc> layout = gguf_tensor_layout(input);
  return apply_recipe(recipe, recipe_model(input, has_imatrix), layout);
}

ConvertResult quantize_with_types(const QuantizeRequest& req, const std::map<std::string, GgmlType>& types,
                                  uint32_t file_type, GgmlType fallback) {
  ConvertOptions o;
  o.input = req.input;
  o.output = req.output;
  o.type = fallback;
  o.threads = req.threads;
  o.name = req.name;
  o.imatrix = req.imatrix;
  o.on_tensor = req.on_tensor;
  o.tensor_types = types;
  o.file_type = file_type;
  return convert_hf_to_gguf(o);
}

ConvertResult quantize_with_recipe(const QuantizeRequest& req, const Recipe& recipe) {
  const RecipePlan plan = plan_recipe(req.input, recipe, req.imatrix != nullptr);
  std::map<std::string, GgmlType> types;
  for (const TensorChoice& t : plan.tensors) {
    // llama-quantize stops rather than write garbage for these.
    if (t.needs_imatrix && !req.imatrix->find(t.name))
      fail("{}: the imatrix has no values for {}, which the {} recipe makes {}; an imatrix of this model is needed",
           req.input, t.name, recipe.name, type_name(t.type));
    types[t.name] = t.type;
  }
  ConvertResult res = quantize_with_types(req, types, plan.file_type);
  // The writer saw the recipe's final types; the fallbacks happened in the recipe.
  std::map<std::string, bool> fell;
  for (const TensorChoice& t : plan.tensors) fell[t.name] = t.fell_back;
  res.fallbacks = 0;
  for (ConvertedTensor& ct : res.tensors) {
    ct.fell_back = ct.fell_back || fell[ct.name];
    res.fallbacks += ct.fell_back ? 1 : 0;
  }
  return res;
}

uint32_t dominant_file_type(const std::string& input, const std::map<std::string, GgmlType>& types) {
  std::map<GgmlType, double> bytes;
  for (const TensorDesc& d : gguf_tensor_layout(input)) {
    const auto it = types.find(d.name);
    if (it == types.end()) continue;
    double n = 1;
    for (int64_t x : d.ne) n *= double(x);
    bytes[it->second] += n * type_info(it->second).bits_per_weight();
  }
  GgmlType best = GgmlType::F16;
  double most = -1;
  for (const auto& [t, b] : bytes)
    if (b > most) most = b, best = t;
  return llama_file_type(best);
}

}  // namespace tailor
