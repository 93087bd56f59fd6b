// Trainable rounding for GGUF block formats (AutoRound-style): a matrix is
// kept as its plain quantization plus learnable parameters, per-weight
// rounding offsets v in [-0.5, 0.5] and per-sub-block multipliers of the scale
// (and of the min, for affine formats). Every parameter setting materializes
// into ordinary GGUF blocks, so whatever training reaches can be written as is.
//
// Materialization: the sub-block scale/min are the initial quantizer's values
// times the multipliers, re-encoded on the format's own grid (fp16 block
// scales; K-quants: small integer sub-scales under an fp16 super-scale, which
// only grows when an adjusted sub-scale no longer fits); the levels are then
// q = clamp(round((w + min) / scale + v + c)) with the encoded scale/min; for
// codebook formats (IQ4) (w + min) / scale is first mapped to a fractional
// codebook index, piecewise linearly between the entries. The per-weight
// constant c is zero except where the initial quantizer chose a level other
// than plain rounding against its stored scale (its search uses an unrounded
// scale); there c pins the initial level, so untouched parameters reproduce
// quantize_rows byte for byte.
#pragma once
#include <cstdint>
#include <vector>

#include "tailor/quant/types.h"

namespace tailor::gradual {

// Lattice types (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S) choose
// whole groups of levels from a grid codebook, so there the offsets shift the
// weights the quantizer sees instead: W_hat = dequant(quantize(w + v * unit)),
// unit ~ one level spacing of the weight's 32-group (sqrt(12) x its RMS
// rounding error), with the straight-through gradient dW_hat/dv = unit and no
// multipliers (the quantizer chooses the scales). Steps re-quantize every
// RoundingOptions::requant_every.
//
// Types TrainableMatrix accepts: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K,
// IQ4_NL and IQ4_XS (there the offsets act on the codebook index), and the
// lattice types above.
bool rounding_trainable(GgmlType t);

struct RoundingFormat;  // rounding.cpp: block geometry and bit layout of a type

struct RoundingOptions {
  float scale_range = 0.5f;  // multipliers are clamped to [1 - r, 1 + r], 0 <= r < 1
  int threads = 0;           // 0 = default_threads()
  // Lattice types: steps per re-quantization. save() and weights() reflect
  // the offsets of the last re-quantization.
  int requant_every = 4;
};

class TrainableMatrix {
 public:
  // Quantizes w [rows][cols] with quantize_rows(t, w, importance) (importance
  // may be null) and starts training from that result.
  TrainableMatrix(GgmlType t, const float* w, int64_t rows, int64_t cols, const float* importance,
                  RoundingOptions o = {});

  GgmlType type() const { return type_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  // Decode of blocks() [rows][cols], equal to dequantize_rows(blocks()) bit for bit.
  const std::vector<float>& weights() const { return weights_; }
  // GGUF rows of the current parameters.
  const std::vector<uint8_t>& blocks() const { return blocks_; }

  // The learnable parameters. offsets: one per weight; scale_mult/min_mult:
  // one per sub-block, row-major (min_mult is empty for symmetric formats).
  struct Params {
    std::vector<float> offsets, scale_mult, min_mult;
  };
  Params save() const { return params_; }
  // Sets the parameters (clamped to their ranges) and re-materializes.
  void restore(const Params& p);

  // Gradients of a loss w.r.t. the parameters, from grad_w = dLoss/dW_hat,
  // through the straight-through estimator (round() passes gradients as the
  // identity, clamp() does not; the scale-grid encoding is ignored). They are
  // the exact derivatives of relaxed_weights() at the current parameters.
  Params gradients(const float* grad_w) const;
  // One signed-gradient step: v -= lr * sign(g_v), multipliers -= lr_scale *
  // sign(g), clamped to their ranges, then re-materialized. Measured on a
  // layer-output loss (tests/test_gradual_rounding.cpp): lr ~ 0.5 / iters with
  // linear decay; lr_scale <= lr / 10 (the multipliers' STE gradient leans
  // toward shrinking the scale, and each change of an encoded sub-scale
  // re-rounds its sub-block), 0 is a safe choice for K-quants. Keep the best
  // parameters seen (save/restore): the loss is not monotone.
  void step(const float* grad_w, float lr, float lr_scale);

  // The differentiable stand-in that gradients() follows, evaluated at p: the
  // current levels move continuously with v and the multipliers (rounding
  // residuals and clamped levels held fixed), scales are not re-encoded.
  // At p == save() it equals weights() up to float rounding.
  std::vector<float> relaxed_weights(const Params& p) const;

  // Sum over weights of importance[col] * (W_hat - w)^2 against the original
  // w (importance 1 when none was given).
  double weighted_error() const;

 private:
  void materialize();
  void init_requantized();

  GgmlType type_;
  int64_t rows_, cols_;
  const RoundingFormat* fmt_;
  RoundingOptions opt_;
  std::vector<float> w_, importance_;
  // Per super-block (legacy formats: per block) initial fp16 scales, and per
  // sub-block initial integer sub-scales; per weight the correction c.
  std::vector<float> d0_, dmin0_;
  std::vector<int16_t> ls0_, lm0_;
  std::vector<float> pin_;
  // The current state: encoded per-sub-block scale and min, levels, blocks.
  std::vector<float> scale_, min_;
  std::vector<int8_t> level_;
  std::vector<uint8_t> blocks_;
  std::vector<float> weights_;
  Params params_;
  // Lattice types: offset unit per 32 weights; offsets not yet re-quantized.
  std::vector<float> unit_, pending_;
  int pending_steps_ = 0;
};

}  // namespace tailor::gradual
