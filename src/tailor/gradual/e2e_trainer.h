// End-to-end training of a whole quantized model's rounding on the KL
// divergence of its next-token distribution from the unquantized model's.
//
// Block-wise training imitates each block's output, a proxy: on llama-30m it
// cut the blocks' weighted error by 20-35% but the model's KL by only 2-14%.
// Here every trainable matrix of every block, and the output matrix, steps by
// the gradient of the KL itself, back-propagated through the output norm and
// all blocks (BlockTape::backward with dx chains them), so each matrix's
// rounding is judged by what the model finally predicts. The best iterate by
// the KL on held-out calibration sequences is kept. From plain rounding it
// lowered llama-30m's eval KLD by 21%; from the block-wise result it found
// nothing better (gradual.h).
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <vector>

#include "tailor/gradual/block_grad.h"
#include "tailor/gradual/output_trainer.h"
#include "tailor/gradual/rounding.h"
#include "tailor/gradual/trainer.h"

namespace tailor::gradual {

// The quantized model being trained.
struct QuantModel {
  BlockDims dims;
  // Per block: norms from the float model; w[i] is used for matrix i when
  // train[b][i] is null (a type without trainable rounding).
  std::vector<BlockParams> blocks;
  std::vector<std::array<TrainableMatrix*, kNumLin>> train;
  // The output head: head.norm, head.w_ref, dims and eps; head.x_ref holds the
  // unquantized model's final hidden states for every calibration row.
  OutputData head;
  TrainableMatrix* output = nullptr;      // trainable output matrix, or
  const float* output_fixed = nullptr;    // its fixed quantized weights

  // The RMS norm weights, trained too when E2EOptions::norm_lr > 0: they stay
  // F32 in the GGUF, so any value can be written, and rescaling channels is
  // what low-bit rounding most often gets wrong. train_end_to_end fills these
  // copies (per block: attention, MLP) and points blocks / head.norm at them.
  std::vector<std::array<std::vector<float>, 2>> norms;
  std::vector<float> output_norm;

  // The token embedding, trained when set: the row of block 0's input for
  // token id t at calibration row r is x0[r] + (embedding row t - embedding_ref
  // row t), so x0 holds the unquantized embeddings. Only rows of tokens in a
  // batch get a gradient; the others keep their rounding.
  TrainableMatrix* embedding = nullptr;
  const float* embedding_ref = nullptr;  // [vocab][dim] unquantized
  const int32_t* tokens = nullptr;       // [seqs][n_ctx] token ids of x0's rows
};

struct E2EOptions {
  int epochs = 2;
  float lr = 5e-4f;               // signed step of the rounding offsets
  float scale_lr_factor = 0.1f;   // multipliers step this times lr
  float norm_lr = 1e-3f;          // norm weights: w -= norm_lr * |w| * sign(g) (0: frozen)
  // Signs are taken of a running average of the weight gradients, m = b m +
  // (1 - b) g (0: of each batch's own). Measured on llama-30m from the
  // block-trained state, 0.9 made things worse than none: consistent signs
  // push more roundings over their boundaries.
  float momentum = 0.0f;
  int64_t batch = 8;              // sequences per step
  int64_t eval_sequences = 32;    // held out: the first ones, never trained on
  int evals_per_epoch = 4;        // best-iterate checks per epoch
  bool decay = false;             // lr falls linearly to 0 over the run (signed steps settle)
  const std::atomic<bool>* stop = nullptr;  // checked between steps: returns the best so far
  std::function<void(int64_t step, int64_t steps, double kl)> progress;
};

struct E2EReport {
  double before = 0, after = 0;  // mean KL per token on the held-out sequences
  int64_t steps = 0;
  double seconds = 0;
  bool stopped = false;  // opt.stop was raised
  std::vector<std::pair<int64_t, double>> checks;  // (step, held-out KL) at each check
  nlohmann::json to_json() const;
};

// x0: [seqs][n_ctx][dim] inputs of block 0 (the quantized model's
// embeddings); head.x_ref has the same rows. Trains, then leaves every
// trainable matrix at the best iterate.
E2EReport train_end_to_end(QuantModel& m, const float* x0, int64_t seqs, int64_t n_ctx,
                           const E2EOptions& o);

// Mean KL per token over sequences [first, first + n).
double model_kl(QuantModel& m, const float* x0, int64_t first, int64_t n, int64_t n_ctx, int64_t batch = 8);

}  // namespace tailor::gradual
