// Placeholder: kernels not written yet. Every call reports that clearly.
#include "tailor/quant/kernels.h"
#include "tailor/util/error.h"

namespace tailor::quant {

void dequantize_f32(const void*, float*, int64_t) { fail("dequantize_f32: not implemented yet"); }
void quantize_f32(const float*, void*, int64_t, const float*) { fail("quantize_f32: not implemented yet"); }
void dequantize_f16(const void*, float*, int64_t) { fail("dequantize_f16: not implemented yet"); }
void quantize_f16(const float*, void*, int64_t, const float*) { fail("quantize_f16: not implemented yet"); }
void dequantize_bf16(const void*, float*, int64_t) { fail("dequantize_bf16: not implemented yet"); }
void quantize_bf16(const float*, void*, int64_t, const float*) { fail("quantize_bf16: not implemented yet"); }

}  // namespace tailor::quant
