// Placeholder: kernels not written yet. Every call reports that clearly.
#include "tailor/quant/kernels.h"
#include "tailor/util/error.h"

namespace tailor::quant {

void dequantize_q2_k(const void*, float*, int64_t) { fail("dequantize_q2_k: not implemented yet"); }
void quantize_q2_k(const float*, void*, int64_t, const float*) { fail("quantize_q2_k: not implemented yet"); }
void dequantize_q3_k(const void*, float*, int64_t) { fail("dequantize_q3_k: not implemented yet"); }
void quantize_q3_k(const float*, void*, int64_t, const float*) { fail("quantize_q3_k: not implemented yet"); }
void dequantize_q4_k(const void*, float*, int64_t) { fail("dequantize_q4_k: not implemented yet"); }
void quantize_q4_k(const float*, void*, int64_t, const float*) { fail("quantize_q4_k: not implemented yet"); }
void dequantize_q5_k(const void*, float*, int64_t) { fail("dequantize_q5_k: not implemented yet"); }
void quantize_q5_k(const float*, void*, int64_t, const float*) { fail("quantize_q5_k: not implemented yet"); }
void dequantize_q6_k(const void*, float*, int64_t) { fail("dequantize_q6_k: not implemented yet"); }
void quantize_q6_k(const float*, void*, int64_t, const float*) { fail("quantize_q6_k: not implemented yet"); }

}  // namespace tailor::quant
