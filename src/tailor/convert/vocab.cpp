#include "tailor/convert/vocab.h"

#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "tailor/model/config.h"
#include "tailor/util/error.h"

namespace tailor {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

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
    v.token_types.push_back(static_cast<int32_t>(TokenType::unused));
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
    v.token_types[id] = static_cast<int32_t>(special ? TokenType::control : TokenType::user_defined);
    if (!v.scores.empty()) v.scores[id] = -1000.0f;
  }
}

std::optional<int64_t> find_token(const Vocab& v, const std::string& text) {
  for (size_t i = 0; i < v.tokens.size(); ++i)
    if (v.tokens[i] == text) return static_cast<int64_t>(i);
  return std::nullopt;
}

}  // namespace

static std::optional<int64_t> special_id(int32_t id) {
  return id >= 0 ? std::optional<int64_t>(id) : std::nullopt;
}

Vocab spm_vocab_from_file(const std::string& path) {
  SpmVocab s = read_sentencepiece_vocab(path);
  Vocab v;
  v.model = "llama";
  v.pre = "default";
  v.tokens = std::move(s.tokens);
  v.scores = std::move(s.scores);
  v.token_types = std::move(s.types);
  if (v.token_types.empty()) v.token_types.assign(v.tokens.size(), int32_t(TokenType::normal));
  // llama.cpp's converter writes user-defined pieces as normal ones.
  for (auto& t : v.token_types)
    if (t == int32_t(TokenType::user_defined)) t = int32_t(TokenType::normal);
  v.bos = special_id(s.special.bos);
  v.eos = special_id(s.special.eos);
  v.unk = special_id(s.special.unk);
  v.pad = special_id(s.special.pad);
  v.add_space_prefix = s.add_space_prefix;
  return v;
}

Vocab bpe_vocab_from_file(const std::string& path, const std::string& family_hint) {
  BpeVocab b = read_hf_bpe_vocab(path);
  Vocab v;
  v.model = "gpt2";
  // A pre-tokenizer the tokenizer module does not recognise: name the family's.
  v.pre = !b.pre.empty() ? b.pre : family_hint.starts_with("qwen") ? "qwen2" : "default";
  v.tokens = std::move(b.tokens);
  v.token_types = std::move(b.types);
  if (v.token_types.empty()) v.token_types.assign(v.tokens.size(), int32_t(TokenType::normal));
  v.merges = std::move(b.merges);
  v.bos = special_id(b.special.bos);
  v.eos = special_id(b.special.eos);
  v.unk = special_id(b.special.unk);
  v.pad = special_id(b.special.pad);
  return v;
}

Vocab load_vocab(const std::string& folder, const ModelConfig& c) {
  const fs::path dir(folder);
  Vocab v;
  const fs::path spm = dir / "tokenizer.model", bpe = dir / "tokenizer.json";
  if (fs::is_regular_file(spm)) {
    v = spm_vocab_from_file(spm.string());
    if (static_cast<int64_t>(v.tokens.size()) > c.vocab_size)
      fail("{}: {} pieces but the model's vocab_size is {}", spm.string(), v.tokens.size(), c.vocab_size);
    pad_to(v, c.vocab_size, -10000.0f);
  } else if (fs::is_regular_file(bpe)) {
    v = bpe_vocab_from_file(bpe.string(), family_name(c.family));
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
