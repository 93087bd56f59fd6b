// Local error of quantizing one tensor to one type, without running the
// model end to end: weight-space errors (RMSE, max, relative Frobenius,
// importance-weighted) and the layer's output error on real activations,
// ||(W-Q) X|| / ||W X||. These are the cheap predictors the sensitivity
// measurement calibrates against the end-to-end KL divergence.
#pragma once
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "tailor/engine/model.h"
#include "tailor/quant/types.h"

namespace tailor::analysis {

// Rows of a linear layer's real inputs [rows][cols], one sample per expert
// for a merged MoE tensor (index = expert), one entry otherwise.
struct ActivationSample {
  int64_t rows = 0, cols = 0;
  std::vector<float> x;
};
using ActivationSamples = std::map<std::string, std::vector<ActivationSample>>;

struct SampleOptions {
  int64_t max_rows = 256;  // per tensor (per expert for MoE)
  int64_t stride = 3;      // keep every stride-th row the hook sees, to spread over positions
};
// Runs the sequences through the model with a linear hook and keeps a sample
// of every linear layer's inputs (named after its weight tensor).
ActivationSamples sample_activations(engine::Model& model, const engine::Sequences& seqs,
                                     const SampleOptions& opt = {});

struct ErrorStats {
  double rmse = 0, max_abs = 0;
  double rel_frobenius = 0;  // ||W-Q||_F / ||W||_F
  double rel_weighted = 0;   // sum w_j (W-Q)_ij^2 / sum w_j W_ij^2 (importance w; 1 without)
  double rel_output = -1;    // ||(W-Q)X|| / ||WX||; -1 when no activations were given
  int64_t activation_rows = 0;
};

struct LocalError {
  std::string tensor;
  GgmlType type = GgmlType::F32;
  bool applicable = true;
  std::string reason;  // why not applicable
  int64_t bytes = 0;   // the quantized tensor's size
  double bits_per_weight = 0;
  ErrorStats total;                  // over the whole tensor (all experts)
  std::vector<ErrorStats> experts;   // per expert for 3-D tensors, else empty
};

// The dequantized copy of a tensor in `type` (f32 weights of the same shape),
// ready for Model::swap_weight. `importance`: [experts][cols] or [cols], or empty.
engine::Weight quantize_weight(const engine::Weight& w, GgmlType type, std::span<const float> importance);

// f32 values of any weight the codecs decode.
std::vector<float> weight_values(const engine::Weight& w);

// Local errors of quantizing `w` (named `name`) to `type`. importance as
// above; activations: one sample (or one per expert), or nullptr. When
// `dequantized` is given it receives quantize_weight's result (so a caller
// that measures end to end next does not quantize twice).
LocalError measure_local(const std::string& name, const engine::Weight& w, GgmlType type,
                         std::span<const float> importance,
                         const std::vector<ActivationSample>* activations,
                         engine::Weight* dequantized = nullptr);

}  // namespace tailor::analysis
