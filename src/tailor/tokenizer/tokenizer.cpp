#include "tailor/tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>

#include "tailor/tokenizer/text.h"
#include "tailor/util/error.h"

namespace tailor {
namespace tokdetail {

size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp, min_cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2, cp = c & 0x1F, min_cp = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min_cp = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4, cp = c & 0x07, min_cp = 0x10000;
    } else {
      return i;
    }
    if (n - i < len) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
}  // namespace

void SpecialSplitter::add(std::string_view text, int32_t id, bool always, bool lstrip,
                          bool rstrip) {
  if (text.empty()) return;  // an empty token would match everywhere
  uint32_t at = 0;
  for (char c : text) {
    const auto b = static_cast<uint8_t>(c);
    auto& kids = nodes_[at].children;
    auto it = std::lower_bound(kids.begin(), kids.end(), std::pair<uint8_t, uint32_t>{b, 0});
    if (it != kids.end() && it->first == b) {
      at = it->second;
    } else {
      const auto fresh = static_cast<uint32_t>(nodes_.size());
      kids.insert(it, {b, fresh});
      nodes_.emplace_back();  // may move `kids`; not used after this
      at = fresh;
    }
  }
  nodes_[at].entry = static_cast<int32_t>(entries_.size());
  entries_.push_back({static_cast<uint32_t>(text.size()), id, always, lstrip, rstrip});
}

const SpecialSplitter::Node* SpecialSplitter::child(const Node& n, uint8_t b) const {
  auto it = std::lower_bound(n.children.begin(), n.children.end(), std::pair<uint8_t, uint32_t>{b, 0});
  return it != n.children.end() && it->first == b ? &nodes_[it->second] : nullptr;
}

std::vector<Fragment> SpecialSplitter::split(std::string_view text, bool parse_special) const {
  std::vector<Fragment> out;
  size_t start = 0, i = 0;
  while (i < text.size()) {
    // Longest token that starts at i and may be used.
    const Entry* hit = nullptr;
    const Node* n = &nodes_[0];
    for (size_t k = i; k < text.size() && (n = child(*n, static_cast<uint8_t>(text[k]))); ++k) {
      if (n->entry >= 0 && (entries_[n->entry].always || parse_special)) hit = &entries_[n->entry];
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t end = i;
    if (hit->lstrip)
      while (end > start && is_space(text[end - 1])) --end;
    if (end > start) out.push_back({text.substr(start, end - start), -1});
    out.push_back({text.substr(i, hit->len), hit->id});
    i += hit->len;
    if (hit->rstrip)
      while (i < text.size() && is_space(text[i])) ++i;
    start = i;
  }
  if (start < text.size()) out.push_back({text.substr(start), -1});
  return out;
}

bool WordCache::lookup(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() > kMaxWordBytes) return false;
  std::lock_guard lock(mutex_);
  auto it = map_.find(word);
  if (it == map_.end()) return false;
  out.insert(out.end(), it->second.begin(), it->second.end());
  return true;
}

void WordCache::store(std::string_view word, std::span<const int32_t> ids) const {
  if (word.size() > kMaxWordBytes) return;
  std::lock_guard lock(mutex_);
  if (map_.size() >= kMaxEntries) map_.clear();
  map_.emplace(std::string(word), std::vector<int32_t>(ids.begin(), ids.end()));
}

}  // namespace tokdetail

Tokenizer::Tokenizer(std::string name, std::vector<std::string> tokens,
                     std::vector<TokenType> types, SpecialTokens special)
    : name_(std::move(name)),
      tokens_(std::move(tokens)),
      types_(std::move(types)),
      special_(special) {
  if (tokens_.empty()) fail("{}: vocabulary is empty", name_);
  if (tokens_.size() > (1u << 24)) fail("{}: vocabulary of {} tokens is implausible", name_, tokens_.size());
  if (types_.empty()) types_.assign(tokens_.size(), TokenType::normal);
  if (types_.size() != tokens_.size())
    fail("{}: {} token types for {} tokens", name_, types_.size(), tokens_.size());
  for (auto t : types_)
    if (static_cast<int32_t>(t) < 1 || static_cast<int32_t>(t) > 6)
      fail("{}: token type {} is not one of 1..6", name_, static_cast<int32_t>(t));
  const std::pair<const char*, int32_t*> ids[] = {
      {"bos", &special_.bos}, {"eos", &special_.eos}, {"unk", &special_.unk}, {"pad", &special_.pad}};
  for (auto [what, id] : ids) {
    if (*id < -1 || *id >= vocab_size())
      fail("{}: {} token id {} outside the vocabulary of {}", name_, what, *id, vocab_size());
  }
  if (special_.bos < 0) special_.add_bos = false;
  if (special_.eos < 0) special_.add_eos = false;
  index_.reserve(tokens_.size());
  for (int32_t i = 0; i < vocab_size(); ++i) index_.emplace(tokens_[i], i);
}

Tokenizer::~Tokenizer() = default;

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    fail("{}: token id {} outside the vocabulary of {}", name_, id, vocab_size());
}

const std::string& Tokenizer::token_text(int32_t id) const {
  check_id(id);
  return tokens_[id];
}

TokenType Tokenizer::token_type(int32_t id) const {
  check_id(id);
  return types_[id];
}

int32_t Tokenizer::find_token(std::string_view text) const {
  auto it = index_.find(text);
  return it == index_.end() ? -1 : it->second;
}

void Tokenizer::index_special_tokens(const std::vector<std::pair<bool, bool>>& strip) {
  splitter_ = std::make_unique<tokdetail::SpecialSplitter>();
  for (int32_t id = 0; id < vocab_size(); ++id) {
    const TokenType t = types_[id];
    if (t != TokenType::control && t != TokenType::user_defined && t != TokenType::unknown) continue;
    const auto [l, r] = strip.empty() ? std::pair{false, false} : strip[id];
    splitter_->add(tokens_[id], id, t == TokenType::user_defined, l, r);
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  if (size_t bad = tokdetail::find_invalid_utf8(text); bad != std::string_view::npos)
    fail("{}: text to encode is not valid UTF-8 (byte {})", name_, bad);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_special && special_.add_bos) out.push_back(special_.bos);
  if (!splitter_ || splitter_->empty()) {
    if (!text.empty()) encode_text(text, true, out);
  } else {
    bool at_start = true;
    for (const auto& f : splitter_->split(text, parse_special)) {
      if (f.id >= 0) {
        out.push_back(f.id);
        at_start = true;
      } else {
        encode_text(f.text, at_start, out);
        at_start = false;
      }
    }
  }
  if (add_special && special_.add_eos) out.push_back(special_.eos);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool special) const {
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    check_id(id);
    const bool control = types_[id] == TokenType::control;
    if (control && !special) continue;
    const std::string& p = pieces_[id];
    if (first && !control && strip_leading_space_ && !p.empty() && p[0] == ' ')
      out.append(p, 1);
    else
      out += p;
    if (!control && !p.empty()) first = false;
  }
  return out;
}

const std::string& Tokenizer::token_to_piece(int32_t id) const {
  check_id(id);
  return pieces_[id];
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path dir(path);
    if (fs::exists(dir / "tokenizer.json", ec)) return load_hf_tokenizer((dir / "tokenizer.json").string());
    if (fs::exists(dir / "tokenizer.model", ec)) return load_sentencepiece((dir / "tokenizer.model").string());
    fail("{}: no tokenizer.json or tokenizer.model in this folder", path);
  }
  if (path.ends_with(".json")) return load_hf_tokenizer(path);
  if (path.ends_with(".model")) return load_sentencepiece(path);
  fail("{}: not a tokenizer (expected a folder, tokenizer.json or tokenizer.model)", path);
}

}  // namespace tailor
