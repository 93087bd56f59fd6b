// Builds byte-level BPE tokenizers from a Hugging Face tokenizer.json (+ the
// tokenizer_config.json beside it) or from the arrays of a GGUF "gpt2" vocabulary.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "tailor/tokenizer/bpe_internal.h"
#include "tailor/util/error.h"
#include "tailor/util/mapped_file.h"

namespace tailor {
namespace {

using nlohmann::json;
using tokdetail::BpeSpec;

// The pre-tokenizer patterns of the families we know (as their tokenizer.json spell them).
constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string type_name(const json& j) { return j.type_name(); }

// "left right" -> {left, right}; tokens never hold a plain space in byte-level BPE.
std::pair<std::string, std::string> split_merge(const std::string& s, size_t rank, const std::string& where) {
  const size_t sp = s.find(' ', 1);
  if (sp == std::string::npos || sp + 1 == s.size() || s.find(' ', sp + 1) != std::string::npos)
    fail("{}: merge {} '{}' is not two tokens separated by a space", where, rank, s);
  return {s.substr(0, sp), s.substr(sp + 1)};
}

// Field access that turns every missing or mistyped field into one line naming it.
class JsonFile {
 public:
  explicit JsonFile(const std::string& path) : path_(path) {
    MappedFile f(path);
    try {
      root_ = json::parse(f.data(), f.data() + f.size());
    } catch (const json::exception& e) {
      fail("{}: not valid JSON ({})", path, e.what());
    }
  }
  const json& root() const { return root_; }
  const std::string& path() const { return path_; }

  const json& get(const json& obj, const char* key, json::value_t want, const std::string& where) const {
    if (!obj.is_object()) fail("{}: {} is a {}, not an object", path_, where, type_name(obj));
    auto it = obj.find(key);
    if (it == obj.end()) fail("{}: {}.{} is missing", path_, where, key);
    check(*it, want, where + "." + key);
    return *it;
  }
  // Optional field: nullptr when absent or null.
  const json* find(const json& obj, const char* key, json::value_t want, const std::string& where) const {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return nullptr;
    check(*it, want, where + "." + key);
    return &*it;
  }
  bool flag(const json& obj, const char* key, bool dflt, const std::string& where) const {
    const json* v = find(obj, key, json::value_t::boolean, where);
    return v ? v->get<bool>() : dflt;
  }
  void check(const json& v, json::value_t want, const std::string& what) const {
    const bool ok = want == json::value_t::number_integer ? v.is_number_integer() : v.type() == want;
    if (!ok) fail("{}: {} is a {}, expected {}", path_, what, type_name(v), type_name(json(want)));
  }

 private:
  std::string path_;
  json root_;
};

// Walks the pre_tokenizer tree, collecting the regex splits in order.
void read_pre_tokenizer(const JsonFile& f, const json& node, const std::string& where, BpeSpec& spec,
                        bool& byte_level) {
  const std::string type = f.get(node, "type", json::value_t::string, where).get<std::string>();
  if (type == "Sequence") {
    const json& list = f.get(node, "pretokenizers", json::value_t::array, where);
    for (size_t i = 0; i < list.size(); ++i)
      read_pre_tokenizer(f, list[i], where + ".pretokenizers[" + std::to_string(i) + "]", spec, byte_level);
  } else if (type == "Split") {
    const json& pattern = f.get(node, "pattern", json::value_t::object, where);
    if (const json* re = f.find(pattern, "Regex", json::value_t::string, where + ".pattern")) {
      spec.regexes.push_back(re->get<std::string>());
    } else if (const json* lit = f.find(pattern, "String", json::value_t::string, where + ".pattern")) {
      std::string quoted;  // PCRE2 literal: escape every non-alphanumeric byte
      for (char c : lit->get<std::string>()) {
        if (!std::isalnum(static_cast<unsigned char>(c)) && static_cast<unsigned char>(c) < 0x80) quoted += '\\';
        quoted += c;
      }
      spec.regexes.push_back(quoted);
    } else {
      fail("{}: {}.pattern has neither Regex nor String", f.path(), where);
    }
    const std::string behavior = f.get(node, "behavior", json::value_t::string, where).get<std::string>();
    if (behavior != "Isolated" || f.flag(node, "invert", false, where))
      fail("{}: {}: Split with behavior {} is not supported (only Isolated, not inverted)", f.path(),
           where, behavior);
  } else if (type == "ByteLevel") {
    byte_level = true;
    if (f.flag(node, "add_prefix_space", false, where)) spec.add_prefix_space = true;
    if (f.flag(node, "use_regex", true, where)) spec.regexes.push_back(kGpt2Regex);
  } else if (type == "Digits") {
    spec.regexes.push_back(f.flag(node, "individual_digits", false, where) ? R"(\p{N})" : R"(\p{N}+)");
  } else {
    fail("{}: {}: pre-tokenizer {} is not supported", f.path(), where, type);
  }
}

void read_normalizer(const JsonFile& f, const json& node, const std::string& where, BpeSpec& spec) {
  if (node.is_null()) return;
  const std::string type = f.get(node, "type", json::value_t::string, where).get<std::string>();
  if (type == "NFC") {
    spec.nfc = true;
  } else if (type == "Sequence") {
    const json& list = f.get(node, "normalizers", json::value_t::array, where);
    for (size_t i = 0; i < list.size(); ++i)
      read_normalizer(f, list[i], where + ".normalizers[" + std::to_string(i) + "]", spec);
  } else {
    fail("{}: {}: normalizer {} is not supported (only NFC)", f.path(), where, type);
  }
}

// A token named in tokenizer_config.json: a string or {"content": ...}.
// Id of a token named by its text: added tokens first (they override the vocabulary),
// then the vocabulary. Only a handful of names are looked up, so a scan is enough.
int32_t token_named(const BpeSpec& spec, std::string_view text) {
  for (int pass = 0; pass < 2; ++pass)
    for (size_t id = 0; id < spec.tokens.size(); ++id) {
      const bool added = spec.types[id] == static_cast<int32_t>(TokenType::control) ||
                         spec.types[id] == static_cast<int32_t>(TokenType::user_defined);
      if (added == (pass == 0) && spec.tokens[id] == text) return static_cast<int32_t>(id);
    }
  return -1;
}

int32_t config_token(const json& cfg, const char* key, const BpeSpec& spec) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return -2;  // not mentioned
  std::string text;
  if (it->is_string()) text = it->get<std::string>();
  else if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    text = (*it)["content"].get<std::string>();
  else return -1;
  return token_named(spec, text);
}

void read_specials(const JsonFile& f, BpeSpec& spec) {
  // post_processor TemplateProcessing: a special token before/after $A means BOS/EOS.
  const json& root = f.root();
  const json* post = f.find(root, "post_processor", json::value_t::object, "tokenizer");
  if (post && post->value("type", "") == "TemplateProcessing") {
    const json* single = f.find(*post, "single", json::value_t::array, "post_processor");
    if (single && !single->empty()) {
      auto special_of = [&](const json& item) -> int32_t {
        if (!item.is_object() || !item.contains("SpecialToken")) return -1;
        const json& st = item["SpecialToken"];
        if (!st.is_object() || !st.contains("id") || !st["id"].is_string()) return -1;
        return token_named(spec, st["id"].get<std::string>());
      };
      if (int32_t b = special_of(single->front()); b >= 0) spec.special.bos = b, spec.special.add_bos = true;
      if (single->size() > 1)
        if (int32_t e = special_of(single->back()); e >= 0) spec.special.eos = e, spec.special.add_eos = true;
    }
  }
  const auto cfg_path = std::filesystem::path(f.path()).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(cfg_path, ec)) return;
  JsonFile cfg_file(cfg_path.string());
  const json& cfg = cfg_file.root();
  if (!cfg.is_object()) fail("{}: not a JSON object", cfg_path.string());
  const std::pair<const char*, int32_t*> keys[] = {{"bos_token", &spec.special.bos},
                                                   {"eos_token", &spec.special.eos},
                                                   {"unk_token", &spec.special.unk},
                                                   {"pad_token", &spec.special.pad}};
  for (auto [key, slot] : keys)
    if (int32_t id = config_token(cfg, key, spec); id != -2) *slot = id;
  spec.special.add_bos = cfg_file.flag(cfg, "add_bos_token", spec.special.add_bos, "tokenizer_config");
  spec.special.add_eos = cfg_file.flag(cfg, "add_eos_token", spec.special.add_eos, "tokenizer_config");
}

// Everything a tokenizer.json says that the byte-level BPE tokenizer needs.
BpeSpec read_hf_spec(const std::string& path) {
  const JsonFile f(path);
  const json& root = f.root();
  const json& model = f.get(root, "model", json::value_t::object, "tokenizer");
  if (const json* t = f.find(model, "type", json::value_t::string, "model"); t && *t != "BPE")
    fail("{}: model type {} is not supported (only BPE)", path, t->get<std::string>());
  if (f.flag(model, "byte_fallback", false, "model"))
    fail("{}: BPE with byte_fallback is not supported (only byte-level BPE)", path);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (const json* s = f.find(model, key, json::value_t::string, "model"); s && !s->get<std::string>().empty())
      fail("{}: model.{} is not supported", path, key);

  BpeSpec spec;
  spec.ignore_merges = f.flag(model, "ignore_merges", false, "model");
  bool byte_level = false;
  const json& pre = f.get(root, "pre_tokenizer", json::value_t::object, "tokenizer");
  read_pre_tokenizer(f, pre, "pre_tokenizer", spec, byte_level);
  if (!byte_level) fail("{}: pre_tokenizer has no ByteLevel step (not a byte-level BPE)", path);
  if (auto it = root.find("normalizer"); it != root.end()) read_normalizer(f, *it, "normalizer", spec);

  // Vocabulary: model.vocab plus added_tokens, which may extend or override it.
  constexpr int64_t kMaxId = 1 << 24;
  const json& vocab = f.get(model, "vocab", json::value_t::object, "model");
  const json* added = f.find(root, "added_tokens", json::value_t::array, "tokenizer");
  int64_t max_id = -1;
  auto take_id = [&](const json& v, const std::string& what) {
    f.check(v, json::value_t::number_integer, what);
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= kMaxId) fail("{}: {} has id {} outside 0..{}", path, what, id, kMaxId - 1);
    max_id = std::max(max_id, id);
    return static_cast<int32_t>(id);
  };
  std::vector<std::pair<int32_t, std::string>> entries;
  entries.reserve(vocab.size());
  for (const auto& [text, id] : vocab.items()) entries.emplace_back(take_id(id, "model.vocab[" + text + "]"), text);
  struct Added {
    int32_t id;
    std::string text;
    bool special, lstrip, rstrip;
  };
  std::vector<Added> extra;
  if (added) {
    for (size_t i = 0; i < added->size(); ++i) {
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      const json& a = (*added)[i];
      const int32_t id = take_id(f.get(a, "id", json::value_t::number_integer, where), where + ".id");
      extra.push_back({id, f.get(a, "content", json::value_t::string, where).get<std::string>(),
                       f.flag(a, "special", false, where), f.flag(a, "lstrip", false, where),
                       f.flag(a, "rstrip", false, where)});
    }
  }
  if (max_id < 0) fail("{}: model.vocab is empty", path);
  const auto n = static_cast<size_t>(max_id + 1);
  spec.tokens.resize(n);
  spec.types.assign(n, static_cast<int32_t>(TokenType::unused));  // holes stay unused
  for (auto& [id, text] : entries) {
    spec.tokens[id] = std::move(text);
    spec.types[id] = static_cast<int32_t>(TokenType::normal);
  }
  spec.strip.assign(n, {false, false});
  for (auto& a : extra) {
    spec.tokens[a.id] = a.text;
    spec.types[a.id] = static_cast<int32_t>(a.special ? TokenType::control : TokenType::user_defined);
    spec.strip[a.id] = {a.lstrip, a.rstrip};
  }

  const json& merges = f.get(model, "merges", json::value_t::array, "model");
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    if (m.is_string()) {
      spec.merges.push_back(split_merge(m.get<std::string>(), i, path));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      fail("{}: model.merges[{}] is neither \"a b\" nor [\"a\", \"b\"]", path, i);
    }
  }
  read_specials(f, spec);
  return spec;
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) {
  return tokdetail::make_bpe_from_spec(read_hf_spec(path), path);
}

BpeVocab read_hf_bpe_vocab(const std::string& path) {
  BpeSpec spec = read_hf_spec(path);
  BpeVocab v;
  const auto& re = spec.regexes;
  if (re.size() == 1 && !spec.add_prefix_space) {
    if (re[0] == kLlama3Regex && spec.ignore_merges && !spec.nfc) v.pre = "llama-bpe";
    else if (re[0] == kQwen2Regex && !spec.ignore_merges) v.pre = "qwen2";
    else if (re[0] == kGpt2Regex && !spec.ignore_merges && !spec.nfc) v.pre = "default";
  }
  v.tokens = std::move(spec.tokens);
  v.types = std::move(spec.types);
  v.merges.reserve(spec.merges.size());
  for (const auto& [a, b] : spec.merges) v.merges.push_back(a + " " + b);
  v.special = spec.special;
  return v;
}

std::unique_ptr<Tokenizer> make_bpe_tokenizer(BpeVocab vocab, std::string name) {
  BpeSpec spec;
  const std::string& pre = vocab.pre;
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe") {
    spec.regexes = {kLlama3Regex};
    spec.ignore_merges = true;
  } else if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
    spec.regexes = {kQwen2Regex};
    spec.nfc = true;  // Qwen's tokenizer.json normalizes to NFC
  } else if (pre == "default" || pre == "gpt-2" || pre == "gpt2") {
    spec.regexes = {kGpt2Regex};
  } else {
    fail("{}: pre-tokenizer '{}' is not supported (llama-bpe, qwen2, default)", name, pre);
  }
  spec.merges.reserve(vocab.merges.size());
  for (size_t i = 0; i < vocab.merges.size(); ++i) spec.merges.push_back(split_merge(vocab.merges[i], i, name));
  spec.tokens = std::move(vocab.tokens);
  spec.types = std::move(vocab.types);
  spec.special = vocab.special;
  return tokdetail::make_bpe_from_spec(std::move(spec), std::move(name));
}

}  // namespace tailor
