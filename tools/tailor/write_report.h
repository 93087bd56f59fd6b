// What convert and quantize both print while and after writing a GGUF file.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tailor/convert/convert.h"

namespace tailor::cli {

// A progress line per tensor on stderr; it rewrites itself, so it is shown
// only when `wanted` and stderr is a terminal.
std::function<void(const ConvertedTensor&, size_t, size_t)> tensor_progress(bool wanted);
// llama-quantize warns the same way: those tensors were quantized unweighted.
void warn_missing_importance(const std::vector<std::string>& names, const std::string& imatrix_path);
// One JSON object per written tensor: name, ne, type, bytes, fallback, imatrix.
nlohmann::json tensors_json(const std::vector<ConvertedTensor>& tensors);

}  // namespace tailor::cli
