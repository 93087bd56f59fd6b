// Internal: AVX2 dequantizers for Q4_K and Q6_K (the types most tensors end up
// in, so dequantizing them dominates evaluation). They only read ggml's block
// layout and give the same bits as the scalar kernels in kquant_codecs.cpp.
#pragma once
#include "tailor/quant/kernels.h"

namespace tailor::quant {

// The SIMD kernel for the current simd_level(), or nullptr: then use the scalar one.
DequantizeFn simd_dequantize_q4_k();
DequantizeFn simd_dequantize_q6_k();

}  // namespace tailor::quant
