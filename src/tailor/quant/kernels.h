// Internal: the per-type row kernels behind codec.h. Each family of formats
// lives in its own file; codec.cpp dispatches on the type. `n` is always a
// positive multiple of the type's block size (checked by the dispatcher).
#pragma once
#include <cstdint>

namespace tailor::quant {

using DequantizeFn = void (*)(const void* src, float* dst, int64_t n);
using QuantizeFn = void (*)(const float* src, void* dst, int64_t n, const float* importance);

// float_codecs.cpp
void dequantize_f32(const void*, float*, int64_t);
void quantize_f32(const float*, void*, int64_t, const float*);
void dequantize_f16(const void*, float*, int64_t);
void quantize_f16(const float*, void*, int64_t, const float*);
void dequantize_bf16(const void*, float*, int64_t);
void quantize_bf16(const float*, void*, int64_t, const float*);

// legacy_codecs.cpp: 32-element blocks with one scale (and min)
void dequantize_q4_0(const void*, float*, int64_t);
void quantize_q4_0(const float*, void*, int64_t, const float*);
void dequantize_q4_1(const void*, float*, int64_t);
void quantize_q4_1(const float*, void*, int64_t, const float*);
void dequantize_q5_0(const void*, float*, int64_t);
void quantize_q5_0(const float*, void*, int64_t, const float*);
void dequantize_q5_1(const void*, float*, int64_t);
void quantize_q5_1(const float*, void*, int64_t, const float*);
void dequantize_q8_0(const void*, float*, int64_t);
void quantize_q8_0(const float*, void*, int64_t, const float*);

// kquant_codecs.cpp: 256-element super-blocks
void dequantize_q2_k(const void*, float*, int64_t);
void quantize_q2_k(const float*, void*, int64_t, const float*);
void dequantize_q3_k(const void*, float*, int64_t);
void quantize_q3_k(const float*, void*, int64_t, const float*);
void dequantize_q4_k(const void*, float*, int64_t);
void quantize_q4_k(const float*, void*, int64_t, const float*);
void dequantize_q5_k(const void*, float*, int64_t);
void quantize_q5_k(const float*, void*, int64_t, const float*);
void dequantize_q6_k(const void*, float*, int64_t);
void quantize_q6_k(const float*, void*, int64_t, const float*);

// iq4_codecs.cpp: non-linear 4-bit codebook
void dequantize_iq4_nl(const void*, float*, int64_t);
void quantize_iq4_nl(const float*, void*, int64_t, const float*);
void dequantize_iq4_xs(const void*, float*, int64_t);
void quantize_iq4_xs(const float*, void*, int64_t, const float*);

// ternary_codecs.cpp
void dequantize_tq1_0(const void*, float*, int64_t);
void quantize_tq1_0(const float*, void*, int64_t, const float*);
void dequantize_tq2_0(const void*, float*, int64_t);
void quantize_tq2_0(const float*, void*, int64_t, const float*);

// iq_dequant.cpp / iq_quantize.cpp: lattice/grid i-quants
void dequantize_iq2_xxs(const void*, float*, int64_t);
void dequantize_iq2_xs(const void*, float*, int64_t);
void dequantize_iq2_s(const void*, float*, int64_t);
void dequantize_iq3_xxs(const void*, float*, int64_t);
void dequantize_iq3_s(const void*, float*, int64_t);
void dequantize_iq1_s(const void*, float*, int64_t);
void dequantize_iq1_m(const void*, float*, int64_t);
void quantize_iq2_xxs(const float*, void*, int64_t, const float*);  // needs importance
void quantize_iq2_xs(const float*, void*, int64_t, const float*);   // needs importance
void quantize_iq3_xxs(const float*, void*, int64_t, const float*);
void quantize_iq3_s(const float*, void*, int64_t, const float*);
void quantize_iq2_s(const float*, void*, int64_t, const float*);
// iq1_quantize.cpp
void quantize_iq1_s(const float*, void*, int64_t, const float*);  // needs importance
void quantize_iq1_m(const float*, void*, int64_t, const float*);

}  // namespace tailor::quant
