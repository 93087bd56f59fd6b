// The output matrix's rounding trained on what it decides: the KL divergence
// between the unquantized model's next-token distribution and the quantized
// one, at every calibration position. In a plan the output matrix alone can
// carry a quarter of the predicted damage, and no block training reaches it.
#pragma once
#include <cstdint>
#include <vector>

#include "tailor/gradual/rounding.h"
#include "tailor/gradual/trainer.h"

namespace tailor::gradual {

struct OutputData {
  const float* x_quant = nullptr;  // [rows][dim] final hidden states after the quantized blocks
  const float* x_ref = nullptr;    // [rows][dim] the unquantized model's
  const float* norm = nullptr;     // output norm weight [dim]
  const float* norm_ref = nullptr; // the unquantized model's, when norm is being trained (null: norm)
  const float* w_ref = nullptr;    // unquantized output matrix [vocab][dim]
  int64_t rows = 0, dim = 0, vocab = 0;
  float eps = 1e-5f;
};

// Trains `w` (the output matrix in its type) for `epochs` passes over the rows
// in batches of `batch_rows`, keeping the best iterate by the mean KL over the
// first `eval_rows` rows. before/after: that mean KL.
TrainReport train_output(TrainableMatrix& w, const OutputData& d, int epochs, float lr, float lr_scale,
                         int64_t batch_rows = 1024, int64_t eval_rows = 4096);

// Buffers of head_kl, kept between calls.
struct HeadScratch {
  std::vector<float> xq, xr, lq, lr, dn;
};
// The summed KL(ref || quantized) of the next-token distributions over n
// rows: xq [n][dim] the quantized model's hidden states before the output
// norm, xr the unquantized model's, wq the quantized output matrix. With dw
// ([vocab][dim]), dx ([n][dim], not aliasing xq) or dnorm ([dim]), also the
// gradients of grad_scale * that sum w.r.t. wq, xq and the norm weight.
double head_kl(const OutputData& d, const float* xq, const float* xr, int64_t n, const float* wq,
               HeadScratch& b, float grad_scale = 1.0f, float* dw = nullptr, float* dx = nullptr,
               float* dnorm = nullptr);

// Mean KL(ref || quantized) over rows [first, first + n) with weights `wq`.
double output_kl(const OutputData& d, const float* wq, int64_t first, int64_t n);

}  // namespace tailor::gradual
