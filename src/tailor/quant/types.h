// The catalog of GGML tensor types: ids as in ggml's enum, block geometry,
// bits per weight, and what Tailor can do with each.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace tailor {

enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21,
  IQ2_S = 22, IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28,
  IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct TypeInfo {
  GgmlType type;
  std::string_view name;     // ggml's upper-case name, e.g. "Q4_K"
  int block_size;            // elements per block (1 for plain scalar types)
  int bytes_per_block;
  bool can_quantize;         // Tailor has a quantizer (f32 -> blocks)
  bool can_dequantize;       // Tailor has a dequantizer (blocks -> f32)
  bool uses_imatrix;         // the quantizer minimises importance-weighted error
  bool requires_imatrix;     // quality without an imatrix is unusable (ggml refuses)
  double bits_per_weight() const { return 8.0 * bytes_per_block / block_size; }
};

// nullptr when the id is not a known ggml type.
const TypeInfo* find_type(uint32_t id);
// Case-insensitive lookup by name ("q4_k", "Q8_0", "bf16"); nullptr if unknown.
const TypeInfo* find_type(std::string_view name);
// Like find_type but throws Error for an unknown type.
const TypeInfo& type_info(GgmlType t);
// find_type by name, throwing Error ("unknown type 'X'") when unknown.
GgmlType type_named(std::string_view name);
std::span<const TypeInfo> all_types();

inline std::string_view type_name(GgmlType t) { return type_info(t).name; }
// A row of n elements can be stored in type t only when n is a multiple of the block size.
bool row_fits(GgmlType t, int64_t n);
// Bytes of one row of n elements (n must fit, see row_fits).
size_t row_size(GgmlType t, int64_t n);

}  // namespace tailor
