// Placeholder: kernels not written yet. Every call reports that clearly.
#include "tailor/quant/kernels.h"
#include "tailor/util/error.h"

namespace tailor::quant {

void dequantize_q4_0(const void*, float*, int64_t) { fail("dequantize_q4_0: not implemented yet"); }
void quantize_q4_0(const float*, void*, int64_t, const float*) { fail("quantize_q4_0: not implemented yet"); }
void dequantize_q4_1(const void*, float*, int64_t) { fail("dequantize_q4_1: not implemented yet"); }
void quantize_q4_1(const float*, void*, int64_t, const float*) { fail("quantize_q4_1: not implemented yet"); }
void dequantize_q5_0(const void*, float*, int64_t) { fail("dequantize_q5_0: not implemented yet"); }
void quantize_q5_0(const float*, void*, int64_t, const float*) { fail("quantize_q5_0: not implemented yet"); }
void dequantize_q5_1(const void*, float*, int64_t) { fail("dequantize_q5_1: not implemented yet"); }
void quantize_q5_1(const float*, void*, int64_t, const float*) { fail("quantize_q5_1: not implemented yet"); }

}  // namespace tailor::quant
