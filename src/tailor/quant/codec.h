// Quantize and dequantize rows of GGML blocks. Rows are independent; every
// quantizer minimises squared error weighted by an optional importance vector
// (one weight per column, e.g. an imatrix row; nullptr = unweighted).
#pragma once
#include <cstdint>

#include "tailor/quant/types.h"

namespace tailor {

// Dequantize one row of n elements. Bit-exact with ggml's to_float.
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);
// Quantize one row of n elements into row_size(t, n) bytes at dst.
void quantize_row(GgmlType t, const float* src, void* dst, int64_t n, const float* importance);

// Whole matrices [rows][cols], rows spread over threads (0 = all cores).
void dequantize_rows(GgmlType t, const void* src, float* dst, int64_t rows, int64_t cols,
                     int threads = 0);
void quantize_rows(GgmlType t, const float* src, void* dst, int64_t rows, int64_t cols,
                   const float* importance, int threads = 0);

}  // namespace tailor
