// Text <-> token ids for the two vocabulary families llama.cpp knows:
// SentencePiece-style BPE (merge by piece score, byte fallback) and GPT-2-style
// byte-level BPE (merge by rank after a regex pre-tokenizer). Both can be built
// from their native files or from the plain arrays a GGUF stores.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tailor {

// Token kinds, numbered as in sentencepiece and GGUF's tokenizer.ggml.token_type.
enum class TokenType : int32_t {
  normal = 1,
  unknown = 2,
  control = 3,       // <s>, <|begin_of_text|>: split out of text only with parse_special
  user_defined = 4,  // always split out of text, never broken by BPE
  unused = 5,
  byte = 6,          // <0xAB>: byte fallback pieces
};

// Special ids; -1 means the vocabulary has none.
struct SpecialTokens {
  int32_t bos = -1;
  int32_t eos = -1;
  int32_t unk = -1;
  int32_t pad = -1;
  bool add_bos = false;
  bool add_eos = false;
};

namespace tokdetail {
class SpecialSplitter;
}

class Tokenizer {
 public:
  virtual ~Tokenizer();

  // add_special: prepend BOS / append EOS where the vocabulary asks for them.
  // parse_special: control tokens written literally in the text ("<|begin_of_text|>")
  // become their ids; without it they are tokenized as ordinary text, as llama.cpp
  // does by default. User-defined tokens are always split out.
  // Throws Error when the text is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool add_special = true,
                              bool parse_special = false) const;

  // special=false drops control tokens instead of writing their text.
  // Throws Error on an id outside the vocabulary.
  std::string decode(std::span<const int32_t> ids, bool special = true) const;

  // The bytes one token stands for (for streaming output); control tokens give their text.
  const std::string& token_to_piece(int32_t id) const;

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  // The token as stored in the vocabulary ("▁the", "Ġthe", "<0x0A>").
  const std::string& token_text(int32_t id) const;
  TokenType token_type(int32_t id) const;
  // First id whose stored text equals `text`, or -1.
  int32_t find_token(std::string_view text) const;

  int32_t bos_id() const { return special_.bos; }
  int32_t eos_id() const { return special_.eos; }
  int32_t unk_id() const { return special_.unk; }
  int32_t pad_id() const { return special_.pad; }
  bool add_bos() const { return special_.add_bos; }
  bool add_eos() const { return special_.add_eos; }
  // What the tokenizer was loaded from, used as the subject of error messages.
  const std::string& name() const { return name_; }

 protected:
  // Validates lengths and special ids (Error naming `name`), indexes the tokens.
  Tokenizer(std::string name, std::vector<std::string> tokens, std::vector<TokenType> types,
            SpecialTokens special);
  void check_id(int32_t id) const;
  // Registers every control / user-defined token with the splitter; call once `pieces_`
  // is filled. `lstrip`/`rstrip` per id may be empty.
  void index_special_tokens(const std::vector<std::pair<bool, bool>>& strip = {});

  // Tokenizes one run of plain text (no special tokens inside). `at_start` is true for
  // the first run and for runs right after a special token.
  virtual void encode_text(std::string_view text, bool at_start,
                           std::vector<int32_t>& out) const = 0;

  std::string name_;
  std::vector<std::string> tokens_;
  std::vector<TokenType> types_;
  SpecialTokens special_;
  // Decoded bytes of each token, filled by the subclass.
  std::vector<std::string> pieces_;
  // Strip one leading space from decoded text (sentencepiece's dummy prefix).
  bool strip_leading_space_ = false;

 private:
  std::unordered_map<std::string_view, int32_t> index_;
  std::unique_ptr<tokdetail::SpecialSplitter> splitter_;
};

// --- SentencePiece-style BPE -----------------------------------------------------

// The vocabulary of a sentencepiece BPE model. From a GGUF (tokenizer.ggml.model =
// "llama"): tokens / scores / token_type; special from bos_token_id, eos_token_id,
// unknown_token_id, padding_token_id, add_bos_token, add_eos_token; add_space_prefix
// from tokenizer.ggml.add_space_prefix (true when absent, as llama.cpp assumes).
struct SpmVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;  // TokenType values; empty means all normal
  SpecialTokens special{.bos = 1, .eos = 2, .unk = 0, .pad = -1, .add_bos = true};
  bool add_space_prefix = true;          // sentencepiece add_dummy_prefix
  bool remove_extra_whitespaces = false;  // sentencepiece normalizer option
};

// Reads a sentencepiece `tokenizer.model` (protobuf). Only BPE models with the identity
// normalizer are accepted; anything else, or a corrupt file, throws Error naming `path`.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path);
// The same file as the arrays a GGUF stores (for writing tokenizer.ggml.*).
SpmVocab read_sentencepiece_vocab(const std::string& path);
// `name` is used in error messages (e.g. the GGUF path).
std::unique_ptr<Tokenizer> make_spm_tokenizer(SpmVocab vocab, std::string name);

// --- byte-level BPE ---------------------------------------------------------------

// GGUF tokenizer.ggml.model = "gpt2": tokens in byte-to-unicode form ("Ġthe"), merges as
// "left right" strings in rank order, and tokenizer.ggml.pre naming the pre-tokenizer
// ("llama-bpe", "qwen2", "default", ...). Control and user-defined tokens hold raw text.
// llama.cpp turns add_bos on for "llama-bpe" when the GGUF has no add_bos_token key;
// the caller decides that, this struct takes `special` as given.
struct BpeVocab {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;  // TokenType values; empty means all normal
  std::vector<std::string> merges;
  std::string pre = "default";
  SpecialTokens special;
};

// Reads a Hugging Face `tokenizer.json` (model BPE over a ByteLevel pre-tokenizer), plus
// the `tokenizer_config.json` beside it when present (bos/eos/pad, add_bos_token).
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path);
// The same file as GGUF arrays; `pre` is "llama-bpe", "qwen2" or "default" when the
// pre-tokenizer is one of those, else empty (which make_bpe_tokenizer refuses).
BpeVocab read_hf_bpe_vocab(const std::string& path);
// Throws Error for an unknown `pre`.
std::unique_ptr<Tokenizer> make_bpe_tokenizer(BpeVocab vocab, std::string name);

// A model folder (tokenizer.json preferred over tokenizer.model) or one of those files.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace tailor
