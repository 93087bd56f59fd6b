// Internal helpers shared by the tokenizers: UTF-8 checks and the splitting of
// special tokens out of text before any model sees it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tailor/tokenizer/tokenizer.h"

namespace tailor::tokdetail {

// Length of the UTF-8 sequence that starts with `lead` (1 for stray bytes, so a
// walk over unchecked text still advances).
inline size_t utf8_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

// Offset of the first byte that is not part of well-formed UTF-8 (no overlong forms,
// no surrogates, nothing above U+10FFFF), or npos when the text is valid.
size_t find_invalid_utf8(std::string_view s);

// Appends the UTF-8 encoding of code point `cp`.
void append_utf8(std::string& out, uint32_t cp);

// GGUF / sentencepiece type numbers as TokenType (the Tokenizer constructor checks range).
inline std::vector<TokenType> to_token_types(const std::vector<int32_t>& raw) {
  std::vector<TokenType> t(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) t[i] = static_cast<TokenType>(raw[i]);
  return t;
}

// A run of text or one special token (id >= 0) cut out of the input.
struct Fragment {
  std::string_view text;
  int32_t id = -1;
};

// Finds special tokens in text, leftmost first and longest at each position, which is
// how Hugging Face's added-vocabulary matcher and llama.cpp's partition behave.
class SpecialSplitter {
 public:
  // always: match even without parse_special (user-defined tokens). lstrip/rstrip:
  // the token swallows the whitespace on that side, as HF added tokens may ask.
  // A later token with the same text replaces the earlier one.
  void add(std::string_view text, int32_t id, bool always, bool lstrip, bool rstrip);
  bool empty() const { return entries_.empty(); }
  std::vector<Fragment> split(std::string_view text, bool parse_special) const;

 private:
  struct Entry {
    uint32_t len;
    int32_t id;
    bool always, lstrip, rstrip;
  };
  // A byte trie, so finding the longest token at a position costs at most its length
  // even with thousands of tokens sharing a first byte ("<unused123>").
  struct Node {
    std::vector<std::pair<uint8_t, uint32_t>> children;  // sorted by byte
    int32_t entry = -1;
  };
  const Node* child(const Node& n, uint8_t b) const;
  std::vector<Entry> entries_;
  std::vector<Node> nodes_{1};
};

// Ids of words seen before. Text repeats words constantly, so this skips most merge
// work; shared by all callers of a const tokenizer, hence the lock. Bounded: it is
// emptied when full.
class WordCache {
 public:
  bool lookup(std::string_view word, std::vector<int32_t>& out) const;
  void store(std::string_view word, std::span<const int32_t> ids) const;
  static constexpr size_t kMaxWordBytes = 256;

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  static constexpr size_t kMaxEntries = 1 << 16;  // a few MB at most
  mutable std::mutex mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> map_;
};

}  // namespace tailor::tokdetail
