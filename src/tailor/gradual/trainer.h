// One transformer block quantized to a type per linear layer, with its
// rounding trained to imitate the unquantized block: plain rounding first,
// then signed gradient descent on the rounding parameters (rounding.h) by the
// block's output error on cached calibration activations (block_grad.h),
// attention and MLP layers separately, then jointly. Adaptive training runs
// the schedule on a small sample first, fits the loss curve and stops early
// when the full sample could not reach the budget.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "tailor/engine/model.h"
#include "tailor/eval/imatrix.h"
#include "tailor/gradual/block_grad.h"
#include "tailor/gradual/rounding.h"
#include "tailor/quant/types.h"

namespace tailor::gradual {

using LayerTypes = std::array<GgmlType, kNumLin>;

struct TrainPhase {
  int epochs = 0;
  float lr = 0;  // signed-gradient step of the rounding offsets
};

struct TrainOptions {
  // The seeds' schedule (attention 5 epochs, MLP 3, joint 2, rates 1 : 2 :
  // 0.5). Their rates were for float weights under Adam; rounding offsets
  // live in [-0.5, 0.5] and move by one sign step each, so the same ratios
  // are scaled to sign steps. On llama-30m's block 4 at IQ4_XS (384
  // sequences, 192 steps) the held-out error fell to 0.87 of plain rounding
  // at 5e-3, 0.75 at 1.7e-3, 0.76 at 8e-4 and 0.80 at 5e-4.
  TrainPhase attn{5, 2e-3f}, mlp{3, 4e-3f}, joint{2, 1e-3f};
  float scale_lr_factor = 0.1f;  // scale/min multipliers step this times the offsets' rate (more re-rounds whole sub-blocks and hurts: rounding.h)
  int64_t batch = 8;             // sequences per step
  bool adaptive = true;
  int64_t small_sample = 128;    // sequences of the first, small run
  int64_t eval_sequences = 32;   // sequences the best iterate is chosen on
  // Each phase's rate falls linearly towards 0, as AutoRound's does: at a
  // constant rate the sign steps keep flipping roundings to the end. It pays
  // in long runs: in the job's final training at Q3_K_M's size on llama-30m
  // (64 steps an epoch) it cut block 0's error from 0.00165 to 0.00112 and the
  // model's eval KLD from 0.0203 to 0.0195. In a short run (48 sequences, 6
  // steps an epoch) the constant rate ended lower, so the walk, not measured
  // with decay, keeps its rates constant.
  bool decay = false;
};

// The rate of step `step` of `steps` in epoch `e` of `phase`: phase.lr, or
// with decay falling linearly from it across the phase's steps.
float scheduled_rate(const TrainPhase& phase, bool decay, int e, int64_t step, int64_t steps);

// Calibration activations of one block: inputs and the targets the trained
// block should reproduce, `seqs` sequences of n_ctx tokens, rows of dim.
struct BlockData {
  const float* x = nullptr;
  const float* y = nullptr;
  int64_t seqs = 0, n_ctx = 0, dim = 0;
  // Per channel of the output, how much an error there matters downstream
  // (null: all alike). The residual stream's few huge channels dominate a
  // plain squared error, yet the norms after the block mostly scale them
  // away: without weights, training lowered that error by a third and the
  // model's KL divergence by 2%.
  const float* channel_weight = nullptr;
};

struct TrainReport {
  double before = 0, after = 0;  // relative output error on all sequences
  double small_after = -1;       // after the small run (adaptive)
  double predicted = -1;         // the loss curve's forecast for the full run
  bool stopped_early = false;    // adaptive: the forecast could not meet the budget, or the small run did
  bool full_run = false;         // trained on the full sample
  int64_t steps = 0;
  double seconds = 0;
  nlohmann::json to_json() const;
};

class BlockQuantizer {
 public:
  // `model` holds the unquantized (f32) weights of block `layer`; they are
  // read, never changed. imatrix may be null (unweighted rounding).
  BlockQuantizer(engine::Model& model, int64_t layer, const eval::Imatrix* imatrix,
                 TrainOptions opt = {});
  ~BlockQuantizer();

  // Sets each layer's type, rounding plainly the layers whose type changed
  // (their training is lost); layers that keep their type keep it.
  void set_types(const LayerTypes& types);
  // One layer back to plain rounding at `type`.
  void set_type(int lin, GgmlType type);
  const LayerTypes& types() const { return types_; }

  // ||block_q(x) - y||^2 / ||y||^2 over the first `seqs` sequences (-1: all),
  // both weighted by d.channel_weight.
  double error(const BlockData& d, int64_t seqs = -1);
  // The error with layer `lin` plainly rounded at `type` instead, the block
  // left as it was (trained layers keep their training).
  double probe(int lin, GgmlType type, const BlockData& d, int64_t seqs = -1);
  // Trains the trainable layers; `threshold` (relative error) drives the
  // adaptive early stop. Keeps the best iterate seen.
  TrainReport train(const BlockData& d, double threshold);

  const std::vector<uint8_t>& blocks(int lin) const;
  const std::vector<float>& weights(int lin) const;
  // The layer's trainable rounding, or null for a plain-only type.
  const TrainableMatrix* trainable(int lin) const;
  int64_t bytes() const;  // all seven matrices in their types
  std::string tensor_name(int lin) const;

 private:
  struct Layer;
  void run_schedule(const BlockData& d, int64_t seqs, TrainReport& rep,
                    std::vector<double>* curve_steps, std::vector<double>* curve_loss);
  // One pass over `seqs` sequences of phase epoch `e`.
  void epoch(const BlockData& d, int64_t seqs, const std::vector<int>& lins, const TrainPhase& phase, int e,
             TrainReport& rep, std::vector<double>* curve_steps, std::vector<double>* curve_loss);
  BlockParams params() const;
  // Adds the weighted squared error of y_[0, count) against d.y + off, and
  // the weighted squared target, to num and den.
  void accumulate(const BlockData& d, int64_t off, int64_t count, double& num, double& den) const;

  engine::Model& model_;
  int64_t layer_;
  const eval::Imatrix* imatrix_;
  TrainOptions opt_;
  BlockDims dims_;
  BlockParams fp_;
  LayerTypes types_{};
  std::vector<std::unique_ptr<Layer>> layers_;
  BlockTape tape_;
  std::vector<float> y_, dy_;
  std::array<std::vector<float>, kNumLin> grads_;
};

}  // namespace tailor::gradual
