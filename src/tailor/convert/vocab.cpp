#include "tailor/convert/vocab.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include <nlohmann/json.hpp>

#include "tailor/model/config.h"
#include "tailor/util/error.h"
#include "tailor/util/mapped_file.h"

namespace tailor {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// A bounds-checked reader of protobuf wire format, enough for sentencepiece's ModelProto.
class Proto {
 public:
  Proto(const uint8_t* p, size_t n, const std::string& file) : p_(p), end_(p + n), file_(file) {}
  bool done() const { return p_ >= end_; }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) corrupt("truncated varint");
      uint8_t b = *p_++;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    corrupt("varint longer than 10 bytes");
  }
  // Reads a field key; returns the field number, sets wire type.
  uint32_t key(uint32_t& wire) {
    uint64_t k = varint();
    wire = static_cast<uint32_t>(k & 7);
    if ((k >> 3) == 0 || (k >> 3) > 0x1fffffff) corrupt("invalid field number");
    return static_cast<uint32_t>(k >> 3);
  }
  Proto sub() {
    uint64_t n = varint();
    if (n > static_cast<uint64_t>(end_ - p_)) corrupt("length-delimited field runs past the end");
    Proto s(p_, static_cast<size_t>(n), file_);
    p_ += n;
    return s;
  }
  float fixed32_float() {
    if (end_ - p_ < 4) corrupt("truncated 32-bit field");
    float f;
    std::memcpy(&f, p_, 4);
    p_ += 4;
    return f;
  }
  std::string bytes() {
    Proto s = sub();
    return std::string(reinterpret_cast<const char*>(s.p_), static_cast<size_t>(s.end_ - s.p_));
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1:
        if (end_ - p_ < 8) corrupt("truncated 64-bit field");
        p_ += 8;
        break;
      case 2: sub(); break;
      case 5: fixed32_float(); break;
      default: corrupt("unsupported wire type " + std::to_string(wire));
    }
  }
  [[noreturn]] void corrupt(const std::string& why) const {
    fail("{}: not a valid sentencepiece model ({})", file_, why);
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
  const std::string& file_;
};

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", path, e.what());
  }
}

// A special token in tokenizer_config.json is a string or {"content": ...}.
std::optional<std::string> token_text(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return std::nullopt;
}

void pad_to(Vocab& v, int64_t n, float score) {
  const bool with_scores = !v.scores.empty() || v.model == "llama";
  for (int64_t i = static_cast<int64_t>(v.tokens.size()); i < n; ++i) {
    v.tokens.push_back("[PAD" + std::to_string(i) + "]");
    v.token_types.push_back(static_cast<int32_t>(TokenType::Unused));
    if (with_scores) v.scores.push_back(score);
  }
}

// Applies tokenizer_config.json's added_tokens_decoder (as llama.cpp's converter
// does for sentencepiece vocabularies) and returns the file's JSON (or null).
void apply_added_tokens_decoder(Vocab& v, const json& cfg, const std::string& file) {
  auto atd = cfg.find("added_tokens_decoder");
  if (atd == cfg.end() || !atd->is_object()) return;
  for (auto it = atd->begin(); it != atd->end(); ++it) {
    int64_t id = -1;
    try {
      id = std::stoll(it.key());
    } catch (...) {
      fail("{}: added_tokens_decoder key '{}' is not a token id", file, it.key());
    }
    if (id < 0 || id >= static_cast<int64_t>(v.tokens.size())) continue;
    const json& d = it.value();
    if (!d.is_object() || !d.contains("content") || !d["content"].is_string())
      fail("{}: added_tokens_decoder entry {} has no string 'content'", file, id);
    std::string content = d["content"].get<std::string>();
    bool special = d.value("special", false);
    v.tokens[id] = content;
    v.token_types[id] = static_cast<int32_t>(special ? TokenType::Control : TokenType::UserDefined);
    if (!v.scores.empty()) v.scores[id] = -1000.0f;
  }
}

std::optional<int64_t> find_token(const Vocab& v, const std::string& text) {
  for (size_t i = 0; i < v.tokens.size(); ++i)
    if (v.tokens[i] == text) return static_cast<int64_t>(i);
  return std::nullopt;
}

// Byte-level BPE vocabularies differ in their pre-tokenizer split regex; the
// digit rule tells the Llama-3 family (runs of up to 3 digits) from Qwen2 (single digits).
std::string detect_bpe_pre(const json& tok, const std::string& family_hint) {
  std::string regexes;
  std::function<void(const json&)> collect = [&](const json& n) {
    if (n.is_object()) {
      if (auto p = n.find("pattern"); p != n.end() && p->is_object() && p->contains("Regex") &&
                                      (*p)["Regex"].is_string())
        regexes += (*p)["Regex"].get<std::string>() + "\n";
      for (auto it = n.begin(); it != n.end(); ++it) collect(it.value());
    } else if (n.is_array()) {
      for (const auto& e : n) collect(e);
    }
  };
  if (auto pt = tok.find("pre_tokenizer"); pt != tok.end()) collect(*pt);
  const std::string llama3_digits = "\\p{N}{1,3}";
  const std::string qwen_digits = "|\\p{N}|";
  if (regexes.find(llama3_digits) != std::string::npos &&
      regexes.find("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+") != std::string::npos)
    return "llama-bpe";
  if (regexes.find(qwen_digits) != std::string::npos &&
      regexes.find("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+") != std::string::npos)
    return "qwen2";
  if (family_hint.starts_with("qwen")) return "qwen2";
  if (family_hint == "llama") return "llama-bpe";
  return "default";
}

}  // namespace

Vocab read_spm_file_vocab(const std::string& path) {
  MappedFile f(path);
  Vocab v;
  v.model = "llama";
  v.pre = "default";
  Proto top(f.data(), f.size(), path);
  bool add_dummy_prefix = true;
  while (!top.done()) {
    uint32_t wire;
    uint32_t field = top.key(wire);
    if (field == 1 && wire == 2) {
      Proto piece = top.sub();
      std::string text;
      float score = 0;
      int32_t type = 1;
      bool has_text = false;
      while (!piece.done()) {
        uint32_t w;
        uint32_t pf = piece.key(w);
        if (pf == 1 && w == 2) {
          text = piece.bytes();
          has_text = true;
        } else if (pf == 2 && w == 5) {
          score = piece.fixed32_float();
        } else if (pf == 3 && w == 0) {
          uint64_t t = piece.varint();
          if (t < 1 || t > 6) top.corrupt("piece " + std::to_string(v.tokens.size()) + " has unknown type " + std::to_string(t));
          type = static_cast<int32_t>(t);
        } else {
          piece.skip(w);
        }
      }
      if (!has_text) top.corrupt("piece " + std::to_string(v.tokens.size()) + " has no text");
      // llama.cpp's converter treats user-defined pieces as normal ones.
      if (type == static_cast<int32_t>(TokenType::UserDefined)) type = static_cast<int32_t>(TokenType::Normal);
      v.tokens.push_back(std::move(text));
      v.scores.push_back(score);
      v.token_types.push_back(type);
      if (v.tokens.size() > (1u << 24)) top.corrupt("more than 16M pieces");
    } else if (field == 2 && wire == 2) {
      Proto trainer = top.sub();
      while (!trainer.done()) {
        uint32_t w;
        uint32_t tf = trainer.key(w);
        if (w == 0 && tf >= 40 && tf <= 43) {
          // unk_id / bos_id / eos_id / pad_id; -1 (encoded as a huge varint) means none.
          auto id = static_cast<int64_t>(static_cast<int32_t>(trainer.varint()));
          std::optional<int64_t>& slot = tf == 40 ? v.unk : tf == 41 ? v.bos : tf == 42 ? v.eos : v.pad;
          if (id >= 0) slot = id; else slot.reset();
        } else {
          trainer.skip(w);
        }
      }
    } else if (field == 3 && wire == 2) {
      Proto norm = top.sub();
      while (!norm.done()) {
        uint32_t w;
        uint32_t nf = norm.key(w);
        if (nf == 3 && w == 0) add_dummy_prefix = norm.varint() != 0;
        else norm.skip(w);
      }
    } else {
      top.skip(wire);
    }
  }
  if (v.tokens.empty()) top.corrupt("no pieces");
  // sentencepiece defaults when the trainer spec does not say: unk 0, bos 1, eos 2.
  if (!v.unk && v.tokens.size() > 0) v.unk = 0;
  if (!v.bos && v.tokens.size() > 1) v.bos = 1;
  if (!v.eos && v.tokens.size() > 2) v.eos = 2;
  const auto n = static_cast<int64_t>(v.tokens.size());
  for (auto* id : {&v.unk, &v.bos, &v.eos, &v.pad})
    if (*id && **id >= n) id->reset();
  v.add_space_prefix = add_dummy_prefix;
  return v;
}

Vocab read_bpe_vocab(const std::string& path, const std::string& family_hint) {
  json tok = read_json(path);
  auto model = tok.find("model");
  if (model == tok.end() || !model->is_object()) fail("{}: missing 'model'", path);
  std::string type = model->value("type", "");
  if (type != "BPE") fail("{}: tokenizer model type '{}' is not supported (only BPE)", path, type);
  auto vocab = model->find("vocab");
  if (vocab == model->end() || !vocab->is_object() || vocab->empty())
    fail("{}: missing or empty 'model.vocab'", path);

  Vocab v;
  v.model = "gpt2";
  v.pre = detect_bpe_pre(tok, family_hint);
  std::map<int64_t, std::pair<std::string, TokenType>> by_id;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() >= (int64_t{1} << 24))
      fail("{}: token '{}' has an invalid id", path, it.key());
    by_id[it.value().get<int64_t>()] = {it.key(), TokenType::Normal};
  }
  if (auto added = tok.find("added_tokens"); added != tok.end() && added->is_array()) {
    for (const auto& a : *added) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string())
        fail("{}: malformed entry in 'added_tokens'", path);
      int64_t id = a["id"].get<int64_t>();
      if (id < 0 || id >= (int64_t{1} << 24)) fail("{}: added token id {} is out of range", path, id);
      by_id[id] = {a["content"].get<std::string>(),
                   a.value("special", false) ? TokenType::Control : TokenType::UserDefined};
    }
  }
  const int64_t n = by_id.rbegin()->first + 1;
  v.tokens.resize(static_cast<size_t>(n));
  v.token_types.assign(static_cast<size_t>(n), static_cast<int32_t>(TokenType::Unused));
  for (int64_t i = 0; i < n; ++i) v.tokens[i] = "[PAD" + std::to_string(i) + "]";
  for (auto& [id, t] : by_id) {
    v.tokens[id] = t.first;
    v.token_types[id] = static_cast<int32_t>(t.second);
  }
  auto merges = model->find("merges");
  if (merges == model->end() || !merges->is_array()) fail("{}: missing 'model.merges'", path);
  v.merges.reserve(merges->size());
  for (const auto& m : *merges) {
    if (m.is_string()) {
      v.merges.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      v.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
    } else {
      fail("{}: malformed merge {}", path, m.dump());
    }
  }
  return v;
}

Vocab load_vocab(const std::string& folder, const ModelConfig& c) {
  const fs::path dir(folder);
  Vocab v;
  const fs::path spm = dir / "tokenizer.model", bpe = dir / "tokenizer.json";
  if (fs::is_regular_file(spm)) {
    v = read_spm_file_vocab(spm.string());
    if (static_cast<int64_t>(v.tokens.size()) > c.vocab_size)
      fail("{}: {} pieces but the model's vocab_size is {}", spm.string(), v.tokens.size(), c.vocab_size);
    pad_to(v, c.vocab_size, -10000.0f);
  } else if (fs::is_regular_file(bpe)) {
    v = read_bpe_vocab(bpe.string(), family_name(c.family));
    if (static_cast<int64_t>(v.tokens.size()) > c.vocab_size)
      fail("{}: token ids reach {} but the model's vocab_size is {}", bpe.string(), v.tokens.size() - 1, c.vocab_size);
    pad_to(v, c.vocab_size, 0.0f);
  } else {
    v.model = "none";
    if (c.bos_token_id) v.bos = c.bos_token_id;
    if (!c.eos_token_ids.empty()) v.eos = c.eos_token_ids[0];
    return v;
  }

  const fs::path tc = dir / "tokenizer_config.json";
  if (fs::is_regular_file(tc)) {
    json cfg = read_json(tc.string());
    if (!cfg.is_object()) fail("{}: expected a JSON object", tc.string());
    if (v.model == "llama") apply_added_tokens_decoder(v, cfg, tc.string());
    auto set_from = [&](const char* key, std::optional<int64_t>& slot) {
      if (auto text = token_text(cfg, key)) {
        if (auto id = find_token(v, *text)) slot = id;
      }
    };
    set_from("bos_token", v.bos);
    set_from("eos_token", v.eos);
    set_from("unk_token", v.unk);
    set_from("pad_token", v.pad);
    if (auto it = cfg.find("add_bos_token"); it != cfg.end() && it->is_boolean()) v.add_bos = it->get<bool>();
    if (auto it = cfg.find("add_eos_token"); it != cfg.end() && it->is_boolean()) v.add_eos = it->get<bool>();
    if (auto it = cfg.find("add_prefix_space"); it != cfg.end() && it->is_boolean())
      v.add_space_prefix = it->get<bool>();
  }
  // config.json ids fill what the tokenizer files left open.
  if (!v.bos && c.bos_token_id) v.bos = c.bos_token_id;
  if (!v.eos && !c.eos_token_ids.empty()) v.eos = c.eos_token_ids[0];
  if (!v.pad && c.pad_token_id) v.pad = c.pad_token_id;
  const auto n = static_cast<int64_t>(v.tokens.size());
  for (auto* id : {&v.unk, &v.bos, &v.eos, &v.pad})
    if (*id && (**id < 0 || **id >= n)) id->reset();
  return v;
}

}  // namespace tailor
