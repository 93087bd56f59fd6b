#include "tailor/eval/softmax.h"

#include <cmath>

#include "tailor/util/error.h"

namespace tailor::eval {

RowSoftmax row_softmax(std::span<const float> logits) {
  if (logits.empty()) fail("logits row: empty");
  RowSoftmax r;
  r.max_logit = logits[0];
  for (size_t i = 0; i < logits.size(); ++i) {
    const float v = logits[i];
    if (!std::isfinite(v)) fail("logits row: non-finite value {} at index {}", v, i);
    if (v > r.max_logit) {
      r.max_logit = v;
      r.argmax = static_cast<int32_t>(i);
    }
  }
  double sum = 0;
  for (const float v : logits) sum += std::exp(double(v) - double(r.max_logit));
  r.log_sum_exp = std::log(sum);
  return r;
}

}  // namespace tailor::eval
