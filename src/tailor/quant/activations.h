// What llama.cpp's CPU backend does to the activations of a matrix product:
// before multiplying by a weight of type W it converts each input row to W's
// "vec_dot_type" (Q8_K for K-quants and most i-quants, Q8_0 or Q8_1 for the
// 32-element formats, F16 / BF16 for those weights) and runs integer (or
// half-precision) dot products. Rounding a row through that type and back
// reproduces those products with a float GEMM on the dequantized weights,
// up to summation order (and, for Q8_1, the fp16 rounding of its block sum).
#pragma once
#include <cstdint>

#include "tailor/quant/types.h"

namespace tailor {

// The type ggml's CPU backend converts activations to for a weight of type
// `weight`; F32 when the activations stay as they are (F32 weights, types
// ggml cannot multiply).
GgmlType ggml_vec_dot_type(GgmlType weight);

// y = dequantize(quantize(x)) with `vec_dot_type`'s activation quantizer as
// ggml's x86 CPU backend runs it (AVX2: ties to even, 127 / amax). n must be
// a multiple of the type's block size; y may alias x. F32 copies.
void round_activations(GgmlType vec_dot_type, const float* x, float* y, int64_t n);

// The same for rows x cols, rows spread over threads (0 = all cores).
void round_activation_rows(GgmlType vec_dot_type, const float* x, float* y, int64_t rows,
                           int64_t cols, int threads = 0);

}  // namespace tailor
