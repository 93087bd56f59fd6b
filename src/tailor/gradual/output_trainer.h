// The output matrix's rounding trained on what it decides: the KL divergence
// between the unquantized model's next-token distribution and the quantized
// one, at every calibration position. In a plan the output matrix alone can
// carry a quarter of the predicted damage, and no block training reaches it.
#pragma once
#include <cstdint>

#include "tailor/gradual/rounding.h"
#include "tailor/gradual/trainer.h"

namespace tailor::gradual {

struct OutputData {
  const float* x_quant = nullptr;  // [rows][dim] final hidden states after the quantized blocks
  const float* x_ref = nullptr;    // [rows][dim] the unquantized model's
  const float* norm = nullptr;     // output norm weight [dim]
  const float* w_ref = nullptr;    // unquantized output matrix [vocab][dim]
  int64_t rows = 0, dim = 0, vocab = 0;
  float eps = 1e-5f;
};

// Trains `w` (the output matrix in its type) for `epochs` passes over the rows
// in batches of `batch_rows`, keeping the best iterate by the mean KL over the
// first `eval_rows` rows. before/after: that mean KL.
TrainReport train_output(TrainableMatrix& w, const OutputData& d, int epochs, float lr, float lr_scale,
                         int64_t batch_rows = 1024, int64_t eval_rows = 4096);

// Mean KL(ref || quantized) over rows [first, first + n) with weights `wq`.
double output_kl(const OutputData& d, const float* wq, int64_t first, int64_t n);

}  // namespace tailor::gradual
