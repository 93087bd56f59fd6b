// What a whole type assignment really does to a model: every tensor of the
// assignment quantized (and decoded back) in memory, the model run over the
// eval windows, its predictions compared with the unquantized model's. The
// planner's verification and `tailor compare` both use it, so a plan and a
// llama.cpp recipe are measured the same way.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tailor/analysis/block_cache.h"
#include "tailor/engine/model.h"
#include "tailor/eval/imatrix.h"
#include "tailor/eval/kld.h"
#include "tailor/quant/types.h"

namespace tailor::plan {

using TypeMap = std::map<std::string, GgmlType>;

struct AssignmentResult {
  eval::KldReport report;    // KLD, its percentiles, same-top, PPL and ΔPPL
  int64_t bytes = 0;         // all weights: assigned types, everything else F32
  int64_t n_elements = 0;
  double bpw = 0;
  double seconds = 0;
};

// Bytes of the model's weights with `types` (tensors not named stay F32).
int64_t assignment_bytes(const engine::Model& model, const TypeMap& types, int64_t* n_elements = nullptr);

class AssignmentEvaluator {
 public:
  // Runs the unquantized model once over `windows` windows of `n_ctx` tokens.
  // `imatrix` (not owned, may be null) weighs the quantizers as llama-quantize would.
  AssignmentEvaluator(engine::Model& model, const std::vector<int32_t>& eval_tokens, int64_t n_ctx,
                      int64_t windows, const eval::Imatrix* imatrix);

  // Blocks made elsewhere (trained rounding): GGUF name -> rows of GGML
  // blocks of the type `types` names, used instead of quantizing; for F32
  // the raw values replace the model's (trained norm weights).
  using Prequantized = std::map<std::string, std::vector<uint8_t>>;
  // Quantizes the named tensors, measures, and restores the model (also on error).
  AssignmentResult evaluate(const TypeMap& types, const Prequantized* blocks = nullptr);
  int64_t windows() const { return cache_.windows(); }

 private:
  engine::Model& model_;
  const eval::Imatrix* imatrix_;
  analysis::BlockCache cache_;
};

}  // namespace tailor::plan
