// Log-softmax of one logits row, computed stably: the maximum is found in
// float, the exponentials of (logit - max) are summed in double, so every
// log-probability is exact to about float precision however large the vocabulary.
#pragma once
#include <cstdint>
#include <span>

namespace tailor::eval {

struct RowSoftmax {
  float max_logit = 0;
  int32_t argmax = 0;      // first index holding the maximum (llama.cpp's tie rule)
  double log_sum_exp = 0;  // log sum_i exp(logit_i - max_logit)

  double logprob(float logit) const { return double(logit) - double(max_logit) - log_sum_exp; }
};

// Throws Error when the row is empty or holds a NaN or infinity (a broken forward pass).
RowSoftmax row_softmax(std::span<const float> logits);

}  // namespace tailor::eval
