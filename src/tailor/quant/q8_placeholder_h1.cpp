// Temporary stand-in so branch h1 links: Q8_0 is written in q8_codec.cpp on
// another branch. Delete this file when merging that one.
#include "tailor/quant/kernels.h"
#include "tailor/util/error.h"

namespace tailor::quant {

void dequantize_q8_0(const void*, float*, int64_t) { fail("dequantize_q8_0: not implemented yet"); }
void quantize_q8_0(const float*, void*, int64_t, const float*) { fail("quantize_q8_0: not implemented yet"); }

}  // namespace tailor::quant
