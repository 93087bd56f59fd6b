#include "tailor/quant/types.h"

#include <algorithm>
#include <array>
#include <cctype>

#include "tailor/util/error.h"

namespace tailor {
namespace {

using T = GgmlType;
// type, name, block, bytes, quantize, dequantize, uses_imatrix, requires_imatrix
constexpr std::array kTypes = {
    TypeInfo{T::F32, "F32", 1, 4, true, true, false, false},
    TypeInfo{T::F16, "F16", 1, 2, true, true, false, false},
    TypeInfo{T::BF16, "BF16", 1, 2, true, true, false, false},
    TypeInfo{T::Q8_0, "Q8_0", 32, 34, true, true, false, false},
    TypeInfo{T::Q4_0, "Q4_0", 32, 18, true, true, true, false},
    TypeInfo{T::Q4_1, "Q4_1", 32, 20, true, true, true, false},
    TypeInfo{T::Q5_0, "Q5_0", 32, 22, true, true, true, false},
    TypeInfo{T::Q5_1, "Q5_1", 32, 24, true, true, true, false},
    TypeInfo{T::Q2_K, "Q2_K", 256, 84, true, true, true, false},
    TypeInfo{T::Q3_K, "Q3_K", 256, 110, true, true, true, false},
    TypeInfo{T::Q4_K, "Q4_K", 256, 144, true, true, true, false},
    TypeInfo{T::Q5_K, "Q5_K", 256, 176, true, true, true, false},
    TypeInfo{T::Q6_K, "Q6_K", 256, 210, true, true, true, false},
    TypeInfo{T::IQ4_NL, "IQ4_NL", 32, 18, true, true, true, false},
    TypeInfo{T::IQ4_XS, "IQ4_XS", 256, 136, true, true, true, false},
    TypeInfo{T::TQ1_0, "TQ1_0", 256, 54, true, true, false, false},
    TypeInfo{T::TQ2_0, "TQ2_0", 256, 66, true, true, false, false},
    TypeInfo{T::IQ2_XXS, "IQ2_XXS", 256, 66, true, true, true, true},
    TypeInfo{T::IQ2_XS, "IQ2_XS", 256, 74, true, true, true, true},
    TypeInfo{T::IQ2_S, "IQ2_S", 256, 82, true, true, true, false},
    TypeInfo{T::IQ3_XXS, "IQ3_XXS", 256, 98, true, true, true, false},
    TypeInfo{T::IQ3_S, "IQ3_S", 256, 110, true, true, true, false},
    TypeInfo{T::IQ1_S, "IQ1_S", 256, 50, true, true, true, true},
    TypeInfo{T::IQ1_M, "IQ1_M", 256, 56, true, true, true, false},
    // Types Tailor recognises in files but cannot convert.
    TypeInfo{T::Q8_1, "Q8_1", 32, 36, false, false, false, false},
    TypeInfo{T::Q8_K, "Q8_K", 256, 292, false, false, false, false},
    TypeInfo{T::I8, "I8", 1, 1, false, false, false, false},
    TypeInfo{T::I16, "I16", 1, 2, false, false, false, false},
    TypeInfo{T::I32, "I32", 1, 4, false, false, false, false},
    TypeInfo{T::I64, "I64", 1, 8, false, false, false, false},
    TypeInfo{T::F64, "F64", 1, 8, false, false, false, false},
    TypeInfo{T::MXFP4, "MXFP4", 32, 17, false, false, false, false},
};

bool iequal(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::toupper(static_cast<unsigned char>(x)) ==
                  std::toupper(static_cast<unsigned char>(y));
         });
}

}  // namespace

const TypeInfo* find_type(uint32_t id) {
  for (const auto& t : kTypes)
    if (static_cast<uint32_t>(t.type) == id) return &t;
  return nullptr;
}

const TypeInfo* find_type(std::string_view name) {
  for (const auto& t : kTypes)
    if (iequal(t.name, name)) return &t;
  return nullptr;
}

const TypeInfo& type_info(GgmlType t) {
  const TypeInfo* info = find_type(static_cast<uint32_t>(t));
  if (info == nullptr) fail("unknown ggml type id {}", static_cast<uint32_t>(t));
  return *info;
}

std::span<const TypeInfo> all_types() { return kTypes; }

bool row_fits(GgmlType t, int64_t n) {
  const TypeInfo& info = type_info(t);
  return n > 0 && n % info.block_size == 0;
}

size_t row_size(GgmlType t, int64_t n) {
  const TypeInfo& info = type_info(t);
  if (n < 0 || n % info.block_size != 0)
    fail("row of {} elements does not fit type {} (block size {})", n, info.name, info.block_size);
  return static_cast<size_t>(n / info.block_size) * info.bytes_per_block;
}

GgmlType type_named(std::string_view name) {
  const TypeInfo* t = find_type(name);
  if (t == nullptr) fail("unknown type '{}'", name);
  return t->type;
}

}  // namespace tailor
