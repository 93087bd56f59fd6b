// Hugging Face folder (config.json, safetensors, tokenizer) -> GGUF that
// llama.cpp loads. Streams one output tensor at a time (a merged MoE expert
// tensor holds one layer's experts), so peak memory is one tensor, not the model.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tailor/plan/recipes.h"
#include "tailor/quant/types.h"

namespace tailor {

namespace eval {
class Imatrix;
}

struct ConvertedTensor {
  std::string name;          // GGUF name
  std::vector<int64_t> ne;   // ggml order
  GgmlType type = GgmlType::F32;
  size_t nbytes = 0;
  bool fell_back = false;    // the requested type did not fit the row length
  bool weighted = false;     // quantized with importance values from the imatrix
};

struct ConvertOptions {
  std::string input;                 // HF model folder
  std::string output;                // .gguf path, written atomically
  GgmlType type = GgmlType::F16;     // type of the large matrices
  // Per-tensor types by GGUF name (a recipe's or a strategy's choice); they
  // override `type`. A row that does not fit the named type falls back as
  // llama.cpp does; a name the model does not have, or a quantized type for a
  // tensor that must stay F32, is an error. Named tensors of the lowest-bit
  // types need importance values in `imatrix`.
  std::map<std::string, GgmlType> tensor_types;
  // Tensors already quantized by the caller (e.g. with trained rounding), by
  // GGUF name: rows of GGML blocks of the type tensor_types gives that name,
  // row_size(type, ne[0]) bytes each, in the Hugging Face row order the engine
  // uses (convert applies the llama-family q/k row permutation to them as it
  // does to f32 rows). Written as they are instead of quantizing; the type
  // must fit the rows exactly (no fallback) and needs no importance values.
  std::map<std::string, std::vector<uint8_t>> tensor_blocks;
  // general.file_type; default: llama_file_type(type).
  std::optional<uint32_t> file_type;
  int threads = 0;                   // 0 = all cores
  std::string name;                  // general.name; default: the folder's name
  // Importance values per tensor (entries named as llama-imatrix names them,
  // e.g. blk.0.attn_q.weight; per expert for merged MoE tensors). Quantized
  // tensors without an entry are quantized unweighted and listed in
  // ConvertResult::missing_importance. Not owned; may be null.
  const eval::Imatrix* imatrix = nullptr;
  // Called after each tensor is written (index from 0, of `total`).
  std::function<void(const ConvertedTensor&, size_t index, size_t total)> on_tensor;
};

struct ConvertResult {
  std::string arch;         // GGUF architecture
  std::string vocab_model;  // tokenizer.ggml.model
  std::vector<ConvertedTensor> tensors;
  uint64_t params = 0;
  uint64_t file_size = 0;
  int fallbacks = 0;
  std::vector<std::string> missing_importance;  // quantized without imatrix values
};

ConvertResult convert_hf_to_gguf(const ConvertOptions& opts);

// The tensors a conversion of the HF folder writes (GGUF names, ggml shapes),
// in file order, without reading any weights.
std::vector<TensorDesc> gguf_tensor_layout(const std::string& input);

// The type a tensor gets when `requested` is asked for, following llama.cpp's
// rules for a uniform conversion: 1-D tensors and the MoE router stay F32; for
// quantized requests the output matrix (the token embedding when tied) gets
// Q6_K unless Q8_0 was asked for; rows that do not fit a block fall back
// (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, i-quants -> IQ4_NL, then F16).
GgmlType choose_tensor_type(const std::string& gguf_name, const std::vector<int64_t>& ne,
                            GgmlType requested, bool tied_embeddings, bool* fell_back = nullptr);

}  // namespace tailor
