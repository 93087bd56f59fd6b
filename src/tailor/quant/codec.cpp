#include "tailor/quant/codec.h"

#include "tailor/quant/kernels.h"
#include "tailor/quant/simd_kquants.h"
#include "tailor/util/error.h"
#include "tailor/util/parallel.h"

namespace tailor {
namespace {

struct Kernels {
  quant::DequantizeFn dequantize = nullptr;
  quant::QuantizeFn quantize = nullptr;
};

quant::DequantizeFn or_scalar(quant::DequantizeFn simd, quant::DequantizeFn scalar) {
  return simd != nullptr ? simd : scalar;
}

Kernels kernels_for(GgmlType t) {
  using namespace quant;
  switch (t) {
    case GgmlType::F32: return {dequantize_f32, quantize_f32};
    case GgmlType::F16: return {dequantize_f16, quantize_f16};
    case GgmlType::BF16: return {dequantize_bf16, quantize_bf16};
    case GgmlType::Q4_0: return {dequantize_q4_0, quantize_q4_0};
    case GgmlType::Q4_1: return {dequantize_q4_1, quantize_q4_1};
    case GgmlType::Q5_0: return {dequantize_q5_0, quantize_q5_0};
    case GgmlType::Q5_1: return {dequantize_q5_1, quantize_q5_1};
    case GgmlType::Q8_0: return {dequantize_q8_0, quantize_q8_0};
    case GgmlType::Q2_K: return {dequantize_q2_k, quantize_q2_k};
    case GgmlType::Q3_K: return {dequantize_q3_k, quantize_q3_k};
    case GgmlType::Q4_K: return {or_scalar(simd_dequantize_q4_k(), dequantize_q4_k), quantize_q4_k};
    case GgmlType::Q5_K: return {dequantize_q5_k, quantize_q5_k};
    case GgmlType::Q6_K: return {or_scalar(simd_dequantize_q6_k(), dequantize_q6_k), quantize_q6_k};
    case GgmlType::IQ4_NL: return {dequantize_iq4_nl, quantize_iq4_nl};
    case GgmlType::IQ4_XS: return {dequantize_iq4_xs, quantize_iq4_xs};
    case GgmlType::TQ1_0: return {dequantize_tq1_0, quantize_tq1_0};
    case GgmlType::TQ2_0: return {dequantize_tq2_0, quantize_tq2_0};
    case GgmlType::IQ2_XXS: return {dequantize_iq2_xxs, nullptr};
    case GgmlType::IQ2_XS: return {dequantize_iq2_xs, nullptr};
    case GgmlType::IQ2_S: return {dequantize_iq2_s, nullptr};
    case GgmlType::IQ3_XXS: return {dequantize_iq3_xxs, nullptr};
    case GgmlType::IQ3_S: return {dequantize_iq3_s, nullptr};
    case GgmlType::IQ1_S: return {dequantize_iq1_s, nullptr};
    case GgmlType::IQ1_M: return {dequantize_iq1_m, nullptr};
    default: return {};
  }
}

void check_row(GgmlType t, int64_t n) {
  const TypeInfo& info = type_info(t);
  if (n <= 0 || n % info.block_size != 0)
    fail("a row of {} elements does not fit {} (blocks of {})", n, info.name, info.block_size);
}

}  // namespace

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  check_row(t, n);
  Kernels k = kernels_for(t);
  if (k.dequantize == nullptr) fail("cannot dequantize type {}", type_name(t));
  k.dequantize(src, dst, n);
}

void quantize_row(GgmlType t, const float* src, void* dst, int64_t n, const float* importance) {
  check_row(t, n);
  Kernels k = kernels_for(t);
  if (k.quantize == nullptr) fail("cannot quantize to type {}", type_name(t));
  k.quantize(src, dst, n, importance);
}

void dequantize_rows(GgmlType t, const void* src, float* dst, int64_t rows, int64_t cols,
                     int threads) {
  check_row(t, cols);
  Kernels k = kernels_for(t);
  if (k.dequantize == nullptr) fail("cannot dequantize type {}", type_name(t));
  size_t rs = row_size(t, cols);
  parallel_for(rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      k.dequantize(static_cast<const uint8_t*>(src) + r * rs, dst + r * cols, cols);
  }, threads);
}

void quantize_rows(GgmlType t, const float* src, void* dst, int64_t rows, int64_t cols,
                   const float* importance, int threads) {
  check_row(t, cols);
  Kernels k = kernels_for(t);
  if (k.quantize == nullptr) fail("cannot quantize to type {}", type_name(t));
  size_t rs = row_size(t, cols);
  parallel_for(rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      k.quantize(src + r * cols, static_cast<uint8_t*>(dst) + r * rs, cols, importance);
  }, threads);
}

}  // namespace tailor
