// Placeholder: kernels not written yet. Every call reports that clearly.
#include "tailor/quant/kernels.h"
#include "tailor/util/error.h"

namespace tailor::quant {

void dequantize_iq2_xxs(const void*, float*, int64_t) { fail("dequantize_iq2_xxs: not implemented yet"); }
void dequantize_iq2_xs(const void*, float*, int64_t) { fail("dequantize_iq2_xs: not implemented yet"); }
void dequantize_iq2_s(const void*, float*, int64_t) { fail("dequantize_iq2_s: not implemented yet"); }
void dequantize_iq3_xxs(const void*, float*, int64_t) { fail("dequantize_iq3_xxs: not implemented yet"); }
void dequantize_iq3_s(const void*, float*, int64_t) { fail("dequantize_iq3_s: not implemented yet"); }
void dequantize_iq1_s(const void*, float*, int64_t) { fail("dequantize_iq1_s: not implemented yet"); }
void dequantize_iq1_m(const void*, float*, int64_t) { fail("dequantize_iq1_m: not implemented yet"); }

}  // namespace tailor::quant
