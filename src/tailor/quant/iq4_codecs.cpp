// Placeholder: kernels not written yet. Every call reports that clearly.
#include "tailor/quant/kernels.h"
#include "tailor/util/error.h"

namespace tailor::quant {

void dequantize_iq4_nl(const void*, float*, int64_t) { fail("dequantize_iq4_nl: not implemented yet"); }
void quantize_iq4_nl(const float*, void*, int64_t, const float*) { fail("quantize_iq4_nl: not implemented yet"); }
void dequantize_iq4_xs(const void*, float*, int64_t) { fail("dequantize_iq4_xs: not implemented yet"); }
void quantize_iq4_xs(const float*, void*, int64_t, const float*) { fail("quantize_iq4_xs: not implemented yet"); }

}  // namespace tailor::quant
