// GPT-2-style byte-level BPE (Llama 3, Qwen 2/3, ...): text is cut into words by the
// pre-tokenizer regexes, each word's bytes are spelled with GPT-2's byte-to-unicode
// alphabet, and the pair of lowest merge rank is merged until none is left.
#include <array>
#include <queue>
#include <unordered_map>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include "tailor/tokenizer/bpe_internal.h"
#include "tailor/tokenizer/text.h"
#include "tailor/util/error.h"

namespace tailor::tokdetail {
namespace {

// GPT-2's alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes
// are moved to U+0100.. in byte order, so every byte is a visible character.
struct ByteAlphabet {
  std::array<std::string, 256> spelled;  // byte -> UTF-8 of its character
  std::array<int16_t, 324> byte_of{};    // code point -> byte, -1 when not in the alphabet
  ByteAlphabet() {
    byte_of.fill(-1);
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      const uint32_t cp = printable ? b : 256 + extra++;
      append_utf8(spelled[b], cp);
      byte_of[cp] = static_cast<int16_t>(b);
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

// Decodes a byte-level token back to bytes; characters outside the alphabet are kept.
std::string unspell(std::string_view token) {
  std::string out;
  for (size_t i = 0; i < token.size();) {
    const size_t len = std::min(utf8_len(static_cast<unsigned char>(token[i])), token.size() - i);
    uint32_t cp = static_cast<unsigned char>(token[i]);
    if (len == 2) cp = ((cp & 0x1F) << 6) | (static_cast<unsigned char>(token[i + 1]) & 0x3F);
    if (len <= 2 && cp < alphabet().byte_of.size() && alphabet().byte_of[cp] >= 0)
      out += static_cast<char>(alphabet().byte_of[cp]);
    else
      out.append(token, i, len);
    i += len;
  }
  return out;
}

struct RegexDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(BpeSpec spec, std::string name)
      : Tokenizer(std::move(name), std::move(spec.tokens), to_token_types(spec.types), spec.special),
        ignore_merges_(spec.ignore_merges),
        nfc_(spec.nfc),
        add_prefix_space_(spec.add_prefix_space) {
    // Ordinary vocabulary: what merges may produce and words may map to.
    std::unordered_map<std::string_view, int32_t> words;
    words.reserve(tokens_.size());
    pieces_.resize(tokens_.size());
    for (int32_t id = 0; id < vocab_size(); ++id) {
      const TokenType t = types_[id];
      if (t == TokenType::control || t == TokenType::user_defined) {
        pieces_[id] = tokens_[id];
      } else {
        pieces_[id] = unspell(tokens_[id]);
        words.emplace(tokens_[id], id);
      }
    }
    for (int b = 0; b < 256; ++b) {
      auto it = words.find(alphabet().spelled[b]);
      if (it == words.end()) fail("{}: byte-level vocabulary lacks the token for byte 0x{:02X}", name_, b);
      byte_ids_[b] = it->second;
    }
    merges_.reserve(spec.merges.size());
    std::string joined;
    for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
      const auto& [a, b] = spec.merges[rank];
      joined = a + b;
      auto ia = words.find(a), ib = words.find(b), ij = words.find(joined);
      if (ia == words.end() || ib == words.end() || ij == words.end())
        fail("{}: merge {} '{} {}' names a token that is not in the vocabulary", name_, rank, a, b);
      merges_.emplace(pair_key(ia->second, ib->second), Merge{static_cast<int32_t>(rank), ij->second});
    }
    if (ignore_merges_) words_ = std::move(words);
    for (const auto& pattern : spec.regexes) {
      int err = 0;
      PCRE2_SIZE at = 0;
      pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                       PCRE2_UTF | PCRE2_UCP, &err, &at, nullptr);
      if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        fail("{}: pre-tokenizer regex does not compile ({} at offset {})", name_,
             reinterpret_cast<const char*>(msg), at);
      }
      pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is missing
      regexes_.emplace_back(code);
    }
    index_special_tokens(spec.strip);
  }

 private:
  struct Merge {
    int32_t rank, result;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
  }

  void encode_text(std::string_view text, bool at_start, std::vector<int32_t>& out) const override {
    std::string buffer;
    if (nfc_) text = to_nfc(text, buffer);
    if (add_prefix_space_ && !text.starts_with(' ')) {
      std::string spaced = " ";
      spaced += text;  // text may point into buffer, so build aside first
      buffer = std::move(spaced);
      text = buffer;
    }
    std::vector<std::string_view> words{text}, next;
    for (const auto& re : regexes_) {
      next.clear();
      std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(
          pcre2_match_data_create_from_pattern(re.get(), nullptr));
      for (std::string_view w : words) split(re.get(), md.get(), w, next);
      words.swap(next);
    }
    for (std::string_view w : words) encode_word(w, out);
  }

  std::string_view to_nfc(std::string_view text, std::string& buffer) const {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
    if (U_FAILURE(status)) fail("{}: ICU NFC normalizer unavailable: {}", name_, u_errorName(status));
    const icu::StringPiece sp(text.data(), static_cast<int32_t>(text.size()));
    if (nfc->isNormalizedUTF8(sp, status) && U_SUCCESS(status)) return text;
    status = U_ZERO_ERROR;
    buffer.clear();
    icu::StringByteSink<std::string> sink(&buffer);
    nfc->normalizeUTF8(0, sp, sink, nullptr, status);
    if (U_FAILURE(status)) fail("{}: NFC normalization failed: {}", name_, u_errorName(status));
    return buffer;
  }

  // Split with behavior "Isolated": matches and the text between them are all words.
  void split(const pcre2_code* re, pcre2_match_data* md, std::string_view s,
             std::vector<std::string_view>& out) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t last = 0, offset = 0;
    while (offset < s.size()) {
      const int rc = pcre2_match(re, subject, s.size(), offset, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) fail("{}: pre-tokenizer regex failed (PCRE2 error {})", name_, rc);
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t begin = ov[0], end = ov[1];
      if (end == begin) {  // empty match: step over one character
        offset = begin + utf8_len(static_cast<unsigned char>(s[begin]));
        continue;
      }
      if (begin > last) out.push_back(s.substr(last, begin - last));
      out.push_back(s.substr(begin, end - begin));
      last = offset = end;
    }
    if (last < s.size()) out.push_back(s.substr(last));
  }

  void encode_word(std::string_view word, std::vector<int32_t>& out) const {
    if (word.size() == 1) {
      out.push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
      return;
    }
    if (cache_.lookup(word, out)) return;
    const size_t first = out.size();
    if (ignore_merges_) {
      // Llama 3: a word that is itself a token is taken whole, whatever the merges say.
      std::string spelled;
      for (char c : word) spelled += alphabet().spelled[static_cast<unsigned char>(c)];
      if (auto it = words_.find(spelled); it != words_.end()) out.push_back(it->second);
    }
    if (out.size() == first) merge_word(word, out);
    cache_.store(word, std::span(out).subspan(first));
  }

  void merge_word(std::string_view word, std::vector<int32_t>& out) const {
    struct Symbol {
      int32_t id, prev, next;
    };
    struct Candidate {
      int32_t rank, left, right, left_id, right_id, result;
      bool operator<(const Candidate& o) const {
        // priority_queue pops the largest: lowest rank, then the leftmost pair.
        return rank != o.rank ? rank > o.rank : left > o.left;
      }
    };
    const auto n = static_cast<int32_t>(word.size());
    std::vector<Symbol> sym(n);
    for (int32_t i = 0; i < n; ++i)
      sym[i] = {byte_ids_[static_cast<unsigned char>(word[i])], i - 1, i + 1 < n ? i + 1 : -1};
    std::priority_queue<Candidate> queue;
    auto consider = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0) return;
      auto it = merges_.find(pair_key(sym[l].id, sym[r].id));
      if (it != merges_.end()) queue.push({it->second.rank, l, r, sym[l].id, sym[r].id, it->second.result});
    };
    for (int32_t i = 0; i + 1 < n; ++i) consider(i, i + 1);
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      Symbol& l = sym[c.left];
      Symbol& r = sym[c.right];
      // Stale: either side changed since the pair was queued.
      if (l.id != c.left_id || r.id != c.right_id || l.next != c.right) continue;
      l.id = c.result;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = c.left;
      r.id = -1;
      consider(l.prev, c.left);
      consider(c.left, l.next);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
  }

  bool ignore_merges_, nfc_, add_prefix_space_;
  std::array<int32_t, 256> byte_ids_{};
  std::unordered_map<uint64_t, Merge> merges_;
  std::unordered_map<std::string_view, int32_t> words_;  // only with ignore_merges
  std::vector<std::unique_ptr<pcre2_code, RegexDeleter>> regexes_;

  WordCache cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_from_spec(BpeSpec spec, std::string name) {
  return std::make_unique<BpeTokenizer>(std::move(spec), std::move(name));
}

}  // namespace tailor::tokdetail
