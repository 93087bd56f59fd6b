// The tokenizer part of a GGUF header (tokenizer.ggml.*), built from a Hugging
// Face folder: a sentencepiece tokenizer.model becomes llama.cpp's "llama"
// (SPM) vocabulary, a byte-level BPE tokenizer.json its "gpt2" vocabulary.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tailor {

struct ModelConfig;

// llama.cpp's token types (same numbering as sentencepiece's).
enum class TokenType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct Vocab {
  std::string model;  // "llama", "gpt2", or "none" when the folder has no tokenizer
  std::string pre;    // tokenizer.ggml.pre ("default", "llama-bpe", "qwen2", ...)
  std::vector<std::string> tokens;
  std::vector<float> scores;          // SPM only
  std::vector<int32_t> token_types;
  std::vector<std::string> merges;    // BPE only, "left right"
  std::optional<int64_t> bos, eos, unk, pad;
  std::optional<bool> add_bos, add_eos, add_space_prefix;
};

// Parses a sentencepiece model (protobuf) file. Throws Error naming the file
// when it is not a well-formed sentencepiece model.
Vocab read_spm_file_vocab(const std::string& path);
// Parses a Hugging Face tokenizer.json with a byte-level BPE model.
Vocab read_bpe_vocab(const std::string& tokenizer_json, const std::string& family_hint = "");

// Loads the folder's tokenizer (tokenizer.model preferred, as llama.cpp's
// converter does, else tokenizer.json), pads it to the model's vocab size,
// and fills special ids and add_* flags from tokenizer_config.json and the
// config. A folder without a tokenizer yields model "none".
Vocab load_vocab(const std::string& folder, const ModelConfig& c);

}  // namespace tailor
