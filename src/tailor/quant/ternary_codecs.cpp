// Placeholder: kernels not written yet. Every call reports that clearly.
#include "tailor/quant/kernels.h"
#include "tailor/util/error.h"

namespace tailor::quant {

void dequantize_tq1_0(const void*, float*, int64_t) { fail("dequantize_tq1_0: not implemented yet"); }
void quantize_tq1_0(const float*, void*, int64_t, const float*) { fail("quantize_tq1_0: not implemented yet"); }
void dequantize_tq2_0(const void*, float*, int64_t) { fail("dequantize_tq2_0: not implemented yet"); }
void quantize_tq2_0(const float*, void*, int64_t, const float*) { fail("quantize_tq2_0: not implemented yet"); }

}  // namespace tailor::quant
