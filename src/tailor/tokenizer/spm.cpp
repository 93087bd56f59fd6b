// SentencePiece-style BPE: the text (spaces written as U+2581) starts as one symbol per
// character; the adjacent pair whose concatenation is the highest-scoring piece is
// merged until no pair forms a piece. Characters left without a piece fall back to
// <0xAB> byte tokens. This is the sentencepiece library's BPE encoder for models with
// the identity normalizer (Llama 1/2, Mistral, llama-30m), and llama.cpp's "llama" vocab.
#include <array>
#include <cstring>
#include <queue>
#include <unordered_map>

#include "tailor/tokenizer/text.h"
#include "tailor/tokenizer/tokenizer.h"
#include "tailor/util/error.h"
#include "tailor/util/mapped_file.h"

namespace tailor {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, sentencepiece's space

// "<0x0A>" -> 10, anything else -> -1.
int parse_byte_token(std::string_view s) {
  if (s.size() != 6 || !s.starts_with("<0x") || s[5] != '>') return -1;
  int v = 0;
  for (char c : s.substr(3, 2)) {
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else return -1;
  }
  return v;
}

class SpmTokenizer final : public Tokenizer {
 public:
  SpmTokenizer(SpmVocab v, std::string name)
      : Tokenizer(std::move(name), std::move(v.tokens), tokdetail::to_token_types(v.types), v.special),
        scores_(std::move(v.scores)),
        add_space_prefix_(v.add_space_prefix),
        remove_extra_ws_(v.remove_extra_whitespaces) {
    if (scores_.empty()) scores_.assign(tokens_.size(), 0.0f);
    if (scores_.size() != tokens_.size())
      fail("{}: {} scores for {} tokens", name_, scores_.size(), tokens_.size());
    byte_ids_.fill(-1);
    pieces_.resize(tokens_.size());
    for (int32_t id = 0; id < vocab_size(); ++id) {
      const std::string& t = tokens_[id];
      switch (types_[id]) {
        case TokenType::byte:
          if (int b = parse_byte_token(t); b >= 0) {
            if (byte_ids_[b] < 0) byte_ids_[b] = id;
            pieces_[id] = std::string(1, static_cast<char>(b));
          } else {
            fail("{}: byte token {} is not written <0xAB>", name_, id);
          }
          break;
        case TokenType::control:
          pieces_[id] = t;
          break;
        case TokenType::unknown:
          pieces_[id] = " \xE2\x81\x87 ";  // sentencepiece's " ⁇ "
          break;
        default:
          // sentencepiece lets normal, user-defined and unused pieces take part in merges.
          mergeable_.emplace(t, id);
          for (size_t pos = 0; pos < t.size();) {
            if (t.compare(pos, kSpaceMark.size(), kSpaceMark) == 0) {
              pieces_[id] += ' ';
              pos += kSpaceMark.size();
            } else {
              pieces_[id] += t[pos++];
            }
          }
      }
    }
    // Words (a space mark and what follows up to the next one) can be encoded one at a
    // time, and cached, when no piece glues a space mark to a character before it: then
    // no merge ever crosses a word start, so the merge order inside each word is the same.
    split_words_ = true;
    for (const auto& [piece, id] : mergeable_) {
      for (size_t pos = piece.find(kSpaceMark, 1); pos != std::string_view::npos;
           pos = piece.find(kSpaceMark, pos + 1))
        if (pos < kSpaceMark.size() || piece.substr(pos - kSpaceMark.size(), kSpaceMark.size()) != kSpaceMark)
          split_words_ = false;
    }
    has_byte_fallback_ = false;
    for (int32_t b : byte_ids_) has_byte_fallback_ |= b >= 0;
    strip_leading_space_ = add_space_prefix_;
    index_special_tokens();
  }

 private:
  struct Symbol {
    uint32_t begin, len;
    int32_t prev, next;
  };
  struct Candidate {
    float score;
    int32_t left, right;
    uint32_t len;
    bool operator<(const Candidate& o) const {
      // priority_queue pops the largest: best score, then the leftmost pair.
      return score != o.score ? score < o.score : left > o.left;
    }
  };
  using Splits = std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>>;

  std::string normalize(std::string_view text, bool at_start) const {
    std::string_view t = text;
    std::string collapsed;
    if (remove_extra_ws_) {
      // sentencepiece: drop leading/trailing spaces and squeeze inner runs to one.
      for (char c : t)
        if (c != ' ' || (!collapsed.empty() && collapsed.back() != ' ')) collapsed += c;
      while (!collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
      t = collapsed;
    }
    std::string out;
    if (t.empty()) return out;
    out.reserve(t.size() + t.size() / 4 + 3);
    if (add_space_prefix_ && at_start) out += kSpaceMark;
    for (char c : t) {
      if (c == ' ') out += kSpaceMark;
      else out += c;
    }
    return out;
  }

  void encode_text(std::string_view text, bool at_start, std::vector<int32_t>& out) const override {
    const std::string norm = normalize(text, at_start);
    if (!split_words_) {
      if (!norm.empty()) encode_word(norm, out);
      return;
    }
    // Cut before every space mark that follows something other than a space mark.
    const std::string_view all(norm);
    size_t start = 0;
    for (size_t pos = all.find(kSpaceMark, 1); pos != std::string_view::npos; pos = all.find(kSpaceMark, pos + 1)) {
      if (pos >= kSpaceMark.size() && all.substr(pos - kSpaceMark.size(), kSpaceMark.size()) == kSpaceMark)
        continue;  // inside a run of spaces
      if (pos > start) encode_word(all.substr(start, pos - start), out);
      start = pos;
    }
    if (start < all.size()) encode_word(all.substr(start), out);
  }

  void encode_word(std::string_view norm, std::vector<int32_t>& out) const {
    if (cache_.lookup(norm, out)) return;
    const size_t first = out.size();
    merge_word(norm, out);
    cache_.store(norm, std::span(out).subspan(first));
  }

  void merge_word(std::string_view norm, std::vector<int32_t>& out) const {
    std::vector<Symbol> sym;
    sym.reserve(norm.size());
    for (uint32_t pos = 0; pos < norm.size();) {
      const auto len = static_cast<uint32_t>(
          std::min<size_t>(tokdetail::utf8_len(static_cast<unsigned char>(norm[pos])), norm.size() - pos));
      const auto i = static_cast<int32_t>(sym.size());
      sym.push_back({pos, len, i - 1, i + 1});
      pos += len;
    }
    sym.back().next = -1;

    std::priority_queue<Candidate> queue;
    auto consider = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0) return;
      const uint32_t len = sym[l].len + sym[r].len;
      auto it = mergeable_.find(norm.substr(sym[l].begin, len));
      if (it != mergeable_.end()) queue.push({scores_[it->second], l, r, len});
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) consider(i, i + 1);

    Splits splits;  // only for merges that produced an unused piece
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      Symbol& l = sym[c.left];
      Symbol& r = sym[c.right];
      // Stale: one side was merged away or grew since this pair was queued.
      if (l.len == 0 || r.len == 0 || l.len + r.len != c.len) continue;
      const std::string_view whole = norm.substr(l.begin, c.len);
      if (types_[mergeable_.at(whole)] == TokenType::unused)
        splits.emplace(whole, std::pair{whole.substr(0, l.len), whole.substr(l.len)});
      l.len = c.len;
      r.len = 0;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = c.left;
      consider(l.prev, c.left);
      consider(c.left, l.next);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
      emit(norm.substr(sym[i].begin, sym[i].len), splits, out);
  }

  void emit(std::string_view piece, const Splits& splits, std::vector<int32_t>& out) const {
    if (auto it = mergeable_.find(piece); it != mergeable_.end() && types_[it->second] != TokenType::unused) {
      out.push_back(it->second);
      return;
    }
    if (auto it = splits.find(piece); it != splits.end()) {
      emit(it->second.first, splits, out);
      emit(it->second.second, splits, out);
      return;
    }
    if (has_byte_fallback_) {
      for (char c : piece) {
        const int32_t b = byte_ids_[static_cast<unsigned char>(c)];
        if (b < 0 && special_.unk < 0)
          fail("{}: no piece for byte 0x{:02X} and no unknown token", name_, static_cast<unsigned char>(c));
        out.push_back(b >= 0 ? b : special_.unk);
      }
      return;
    }
    if (special_.unk < 0) fail("{}: text has a character with no piece and there is no unknown token", name_);
    out.push_back(special_.unk);
  }

  std::vector<float> scores_;
  std::unordered_map<std::string_view, int32_t> mergeable_;
  std::array<int32_t, 256> byte_ids_{};
  bool has_byte_fallback_ = false;
  bool split_words_ = false;
  tokdetail::WordCache cache_;
  bool add_space_prefix_;
  bool remove_extra_ws_;
};

// Just enough protobuf to read sentencepiece's ModelProto; every read is bounds-checked.
class ProtoReader {
 public:
  ProtoReader(const uint8_t* p, size_t n, const uint8_t* file_start, const std::string& path)
      : p_(p), end_(p + n), base_(file_start), path_(path) {}
  bool done() const { return p_ >= end_; }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) corrupt("truncated varint");
      const uint8_t b = *p_++;
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    corrupt("varint longer than 10 bytes");
  }
  // Returns (field, wire type).
  std::pair<uint32_t, uint32_t> key() {
    const uint64_t k = varint();
    const auto wire = static_cast<uint32_t>(k & 7);
    if (wire != 0 && wire != 1 && wire != 2 && wire != 5) corrupt(fmt::format("wire type {}", wire));
    if ((k >> 3) == 0 || (k >> 3) > 0x1FFFFFFF) corrupt("field number 0");
    return {static_cast<uint32_t>(k >> 3), wire};
  }
  ProtoReader message() {
    const std::string_view b = bytes();
    return ProtoReader(reinterpret_cast<const uint8_t*>(b.data()), b.size(), base_, path_);
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > static_cast<uint64_t>(end_ - p_)) corrupt(fmt::format("field of {} bytes runs past the end", n));
    std::string_view s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }
  float fixed_float() {
    if (end_ - p_ < 4) corrupt("truncated float");
    float f;
    std::memcpy(&f, p_, 4);
    p_ += 4;
    return f;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1: advance(8); break;
      case 2: bytes(); break;
      default: advance(4); break;
    }
  }
  // Reads the value of a field whose wire type must be `want`.
  void expect(uint32_t wire, uint32_t want) {
    if (wire != want) corrupt(fmt::format("wire type {} where {} belongs", wire, want));
  }
  [[noreturn]] void corrupt(const std::string& what) const {
    fail("{}: corrupt or truncated sentencepiece model ({} at byte {})", path_, what, p_ - base_);
  }

 private:
  void advance(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) corrupt("truncated fixed-size field");
    p_ += n;
  }
  const uint8_t* p_;
  const uint8_t* end_;
  const uint8_t* base_;
  const std::string& path_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_spm_tokenizer(SpmVocab vocab, std::string name) {
  return std::make_unique<SpmTokenizer>(std::move(vocab), std::move(name));
}

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path) {
  return make_spm_tokenizer(read_sentencepiece_vocab(path), path);
}

SpmVocab read_sentencepiece_vocab(const std::string& path) {
  MappedFile file(path);
  ProtoReader top(file.data(), file.size(), file.data(), path);
  SpmVocab v;
  int64_t model_type = 1;  // proto default: UNIGRAM
  int64_t declared_size = -1;
  bool have_trainer = false, have_normalizer = false;
  std::string normalizer = "identity";
  bool has_charsmap = false, escape_ws = true;
  v.remove_extra_whitespaces = true;  // proto defaults
  v.add_space_prefix = true;
  while (!top.done()) {
    auto [field, wire] = top.key();
    if (field == 1) {
      top.expect(wire, 2);
      ProtoReader m = top.message();
      std::string piece;
      float score = 0;
      int64_t type = 1;
      while (!m.done()) {
        auto [f, w] = m.key();
        if (f == 1) m.expect(w, 2), piece = m.bytes();
        else if (f == 2) m.expect(w, 5), score = m.fixed_float();
        else if (f == 3) m.expect(w, 0), type = static_cast<int64_t>(m.varint());
        else m.skip(w);
      }
      if (type < 1 || type > 6) m.corrupt(fmt::format("piece {} has type {}", v.tokens.size(), type));
      if (v.tokens.size() >= (1u << 24)) m.corrupt("more than 16M pieces");
      v.tokens.push_back(std::move(piece));
      v.scores.push_back(score);
      v.types.push_back(static_cast<int32_t>(type));
    } else if (field == 2) {
      top.expect(wire, 2);
      have_trainer = true;
      ProtoReader m = top.message();
      while (!m.done()) {
        auto [f, w] = m.key();
        if (w != 0) {
          m.skip(w);
          continue;
        }
        const auto val = static_cast<int64_t>(m.varint());
        switch (f) {
          case 3: model_type = val; break;
          case 4: declared_size = val; break;
          case 40: v.special.unk = static_cast<int32_t>(val); break;
          case 41: v.special.bos = static_cast<int32_t>(val); break;
          case 42: v.special.eos = static_cast<int32_t>(val); break;
          case 43: v.special.pad = static_cast<int32_t>(val); break;
          default: break;
        }
      }
    } else if (field == 3) {
      top.expect(wire, 2);
      have_normalizer = true;
      ProtoReader m = top.message();
      while (!m.done()) {
        auto [f, w] = m.key();
        if (f == 1) m.expect(w, 2), normalizer = m.bytes();
        else if (f == 2) m.expect(w, 2), has_charsmap = !m.bytes().empty();
        else if (f == 3) m.expect(w, 0), v.add_space_prefix = m.varint() != 0;
        else if (f == 4) m.expect(w, 0), v.remove_extra_whitespaces = m.varint() != 0;
        else if (f == 5) m.expect(w, 0), escape_ws = m.varint() != 0;
        else m.skip(w);
      }
    } else {
      top.skip(wire);
    }
  }
  if (v.tokens.empty()) fail("{}: not a sentencepiece model (no pieces)", path);
  if (!have_trainer || !have_normalizer)
    fail("{}: sentencepiece model lacks its trainer/normalizer spec (truncated?)", path);
  if (declared_size >= 0 && static_cast<size_t>(declared_size) != v.tokens.size())
    fail("{}: sentencepiece model declares {} pieces but holds {} (truncated?)", path, declared_size,
         v.tokens.size());
  if (model_type != 2)
    fail("{}: sentencepiece model type {} is not supported (only BPE, type 2)", path, model_type);
  if (has_charsmap && normalizer != "identity")
    fail("{}: sentencepiece normalizer '{}' is not supported (only identity)", path, normalizer);
  if (!escape_ws) fail("{}: sentencepiece models without escape_whitespaces are not supported", path);
  return v;
}

}  // namespace tailor
