#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>

#include "tailor/tokenizer/tokenizer.h"
#include "tailor/util/error.h"

using namespace tailor;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kShared = TAILOR_SHARED_DIR;

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

struct Case {
  std::string text;
  std::vector<int32_t> ids;
};
std::vector<Case> reference_cases(const std::string& path) {
  std::vector<Case> out;
  const json doc = read_json(path);
  for (const auto& c : doc["cases"])
    out.push_back({c["text"].get<std::string>(), c["ids"].get<std::vector<int32_t>>()});
  return out;
}

// Every reference case must give exactly the reference ids and decode back to its text.
// parse_special: the references made by HF-style tokenizers split special tokens out of
// the text; the sentencepiece library never does.
void expect_reference(const Tokenizer& tok, const std::string& ref_path, bool parse_special) {
  const auto cases = reference_cases(ref_path);
  ASSERT_EQ(cases.size(), 60u) << ref_path;
  int exact = 0, round_trip = 0;
  for (const auto& c : cases) {
    const auto ids = tok.encode(c.text, /*add_special=*/false, parse_special);
    if (ids == c.ids) ++exact;
    else ADD_FAILURE() << ref_path << ": ids differ for " << json(c.text).dump().substr(0, 80);
    const std::string back = tok.decode(c.ids);
    if (back == c.text) ++round_trip;
    else ADD_FAILURE() << ref_path << ": decode differs for " << json(c.text).dump().substr(0, 80);
  }
  std::cout << "[ref] " << ref_path << ": " << exact << "/" << cases.size() << " exact, " << round_trip
            << "/" << cases.size() << " round trip\n";
}

const Tokenizer& llama3() {
  static auto t = load_hf_tokenizer(kShared + "/tokenizers/llama3/tokenizer.json");
  return *t;
}
const Tokenizer& qwen3() {
  static auto t = load_hf_tokenizer(kShared + "/tokenizers/qwen3/tokenizer.json");
  return *t;
}
const Tokenizer& llama2() {
  static auto t = load_sentencepiece(kShared + "/tokenizers/llama2-spm/tokenizer.model");
  return *t;
}
const Tokenizer& llama30m() {
  static auto t = load_tokenizer(kShared + "/models/llama-30m");
  return *t;
}

// The arrays a GGUF "gpt2" vocabulary holds, rebuilt from a tokenizer.json the way
// llama.cpp's converter writes them (added tokens as control / user-defined).
BpeVocab gguf_arrays(const std::string& path, const std::string& pre) {
  const json j = read_json(path);
  BpeVocab v;
  size_t n = j["model"]["vocab"].size();
  for (const auto& a : j["added_tokens"]) n = std::max<size_t>(n, a["id"].get<size_t>() + 1);
  v.tokens.resize(n);
  v.types.assign(n, static_cast<int32_t>(TokenType::normal));
  for (const auto& [text, id] : j["model"]["vocab"].items()) v.tokens[id.get<size_t>()] = text;
  for (const auto& a : j["added_tokens"]) {
    v.tokens[a["id"].get<size_t>()] = a["content"].get<std::string>();
    v.types[a["id"].get<size_t>()] =
        static_cast<int32_t>(a["special"].get<bool>() ? TokenType::control : TokenType::user_defined);
  }
  for (const auto& m : j["model"]["merges"])
    v.merges.push_back(m.is_string() ? m.get<std::string>()
                                     : m[0].get<std::string>() + " " + m[1].get<std::string>());
  v.pre = pre;
  return v;
}

// Error must be one line and name the subject.
template <typename F>
void expect_error(F&& f, const std::string& subject) {
  try {
    f();
    ADD_FAILURE() << "no Error for " << subject;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(subject), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("tailor_tok_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
             std::to_string(reinterpret_cast<uintptr_t>(this)));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string write(const std::string& name, std::string_view bytes) const {
    const auto p = (path_ / name).string();
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
  }

 private:
  fs::path path_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

// ---- reference encodings -----------------------------------------------------------

TEST(TokenizerReference, Llama3TokenizerJson) {
  expect_reference(llama3(), kShared + "/tokenizers/llama3/reference_encodings.json", true);
}

TEST(TokenizerReference, Qwen3TokenizerJson) {
  expect_reference(qwen3(), kShared + "/tokenizers/qwen3/reference_encodings.json", true);
}

TEST(TokenizerReference, Llama2SentencePiece) {
  expect_reference(llama2(), kShared + "/tokenizers/llama2-spm/reference_encodings.json", false);
}

TEST(TokenizerReference, Llama30mSentencePiece) {
  expect_reference(llama30m(), kShared + "/models/llama-30m/reference_encodings.json", false);
}

TEST(TokenizerReference, Llama3FromGgufArrays) {
  const std::string dir = kShared + "/tokenizers/llama3";
  auto tok = make_bpe_tokenizer(gguf_arrays(dir + "/tokenizer.json", "llama-bpe"), "llama3.gguf");
  expect_reference(*tok, dir + "/reference_encodings.json", true);
}

TEST(TokenizerReference, Qwen3FromGgufArrays) {
  const std::string dir = kShared + "/tokenizers/qwen3";
  auto tok = make_bpe_tokenizer(gguf_arrays(dir + "/tokenizer.json", "qwen2"), "qwen3.gguf");
  expect_reference(*tok, dir + "/reference_encodings.json", true);
}

TEST(TokenizerReference, SentencePieceFromGgufArrays) {
  // The arrays a GGUF "llama" vocabulary holds, read from tokenizer.model, then built
  // through the constructor a GGUF loader uses.
  for (const char* dir : {"/models/llama-30m", "/tokenizers/llama2-spm"}) {
    SpmVocab v = read_sentencepiece_vocab(kShared + dir + "/tokenizer.model");
    ASSERT_EQ(v.tokens.size(), v.scores.size());
    ASSERT_EQ(v.tokens.size(), v.types.size());
    EXPECT_EQ(v.tokens[1], "<s>");
    EXPECT_EQ(v.types[3], static_cast<int32_t>(TokenType::byte));
    EXPECT_TRUE(v.add_space_prefix);
    EXPECT_FALSE(v.remove_extra_whitespaces);
    auto tok = make_spm_tokenizer(std::move(v), "spm.gguf");
    expect_reference(*tok, kShared + dir + "/reference_encodings.json", false);
  }
}

TEST(TokenizerReference, SentencePieceWholeTextPathAgrees) {
  // A piece that glues a character to a following space mark turns off the
  // word-at-a-time shortcut; on text without that piece the ids must not change.
  SpmVocab v = read_sentencepiece_vocab(kShared + "/models/llama-30m/tokenizer.model");
  v.tokens.push_back("\x01\xE2\x96\x81\x01");
  v.scores.push_back(-1e9f);
  v.types.push_back(static_cast<int32_t>(TokenType::normal));
  auto whole = make_spm_tokenizer(std::move(v), "whole");
  const std::string text = read_bytes(kShared + "/text/eval.txt").substr(0, 100000);
  EXPECT_EQ(whole->encode(text), llama30m().encode(text));
}

TEST(TokenizerReference, HfVocabExportMatchesLoader) {
  for (auto [dir, pre] : {std::pair{"llama3", "llama-bpe"}, std::pair{"qwen3", "qwen2"}}) {
    const std::string path = kShared + "/tokenizers/" + dir + "/tokenizer.json";
    BpeVocab v = read_hf_bpe_vocab(path);
    EXPECT_EQ(v.pre, pre);
    const BpeVocab independent = gguf_arrays(path, pre);
    EXPECT_EQ(v.tokens, independent.tokens);
    EXPECT_EQ(v.types, independent.types);
    EXPECT_EQ(v.merges, independent.merges);
  }
}

// The sentencepiece library itself on the whole evaluation text (about 1 MB): the
// strongest check of merge order, byte fallback and the word-at-a-time shortcut.
TEST(TokenizerReference, SentencePieceLibraryAgreesOnEvalText) {
  const std::string text = read_bytes(kShared + "/text/eval.txt");
  for (const Tokenizer* tok : {&llama2(), &llama30m()}) {
    sentencepiece::SentencePieceProcessor sp;
    const std::string model = tok == &llama2() ? kShared + "/tokenizers/llama2-spm/tokenizer.model"
                                               : kShared + "/models/llama-30m/tokenizer.model";
    ASSERT_TRUE(sp.Load(model).ok());
    std::vector<int> want;
    ASSERT_TRUE(sp.Encode(text, &want).ok());
    const auto got = tok->encode(text, false);
    ASSERT_EQ(got.size(), want.size()) << model;
    size_t mismatches = 0;
    for (size_t i = 0; i < got.size(); ++i) mismatches += got[i] != want[i];
    EXPECT_EQ(mismatches, 0u) << model;
    std::cout << "[ref] " << model << ": eval.txt " << got.size() << " ids, " << mismatches
              << " differ from libsentencepiece\n";
  }
}

// ---- special tokens and flags ------------------------------------------------------

TEST(Tokenizer, SpecialIdsAndBos) {
  EXPECT_EQ(llama30m().vocab_size(), 8192);
  EXPECT_EQ(llama30m().bos_id(), 1);
  EXPECT_EQ(llama30m().eos_id(), 2);
  EXPECT_EQ(llama30m().unk_id(), 0);
  EXPECT_TRUE(llama30m().add_bos());
  const auto with = llama30m().encode("Hello world");
  const auto without = llama30m().encode("Hello world", false);
  ASSERT_EQ(with.size(), without.size() + 1);
  EXPECT_EQ(with[0], 1);
  EXPECT_EQ(llama30m().decode(with, false), "Hello world");

  EXPECT_EQ(llama2().vocab_size(), 32000);
  EXPECT_EQ(llama3().vocab_size(), 128256);
  EXPECT_EQ(llama3().bos_id(), 128000);
  EXPECT_EQ(llama3().eos_id(), 128001);
  EXPECT_EQ(qwen3().bos_id(), -1);
  EXPECT_EQ(qwen3().eos_id(), qwen3().find_token("<|im_end|>"));
  EXPECT_EQ(qwen3().pad_id(), qwen3().find_token("<|endoftext|>"));
  EXPECT_FALSE(qwen3().add_bos());
}

TEST(Tokenizer, ParseSpecialOnlyWhenAsked) {
  const std::string text = "<|begin_of_text|>Hi";
  const auto parsed = llama3().encode(text, false, true);
  ASSERT_FALSE(parsed.empty());
  EXPECT_EQ(parsed[0], 128000);
  const auto plain = llama3().encode(text, false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 128000), 0);
  EXPECT_EQ(llama3().decode(plain), text);
  EXPECT_EQ(llama3().decode(parsed, /*special=*/false), "Hi");
  // Qwen's <think> is a user-defined (non-special) added token: split out always.
  const int32_t think = qwen3().find_token("<think>");
  ASSERT_GE(think, 0);
  const auto q = qwen3().encode("a<think>b", false, false);
  EXPECT_EQ(std::count(q.begin(), q.end(), think), 1);
  // sentencepiece control tokens likewise.
  const auto s = llama2().encode("<s>x", false, true);
  ASSERT_FALSE(s.empty());
  EXPECT_EQ(s[0], 1);
}

TEST(Tokenizer, PiecesConcatenateToText) {
  for (const Tokenizer* tok : {&llama3(), &qwen3(), &llama30m()}) {
    const std::string text = "The quick brown fox, 1234 times.\n";
    const auto ids = tok->encode(text, false);
    std::string joined;
    for (int32_t id : ids) joined += tok->token_to_piece(id);
    if (tok == &llama30m()) joined.erase(0, 1);  // sentencepiece's dummy prefix space
    EXPECT_EQ(joined, text) << tok->name();
  }
}

TEST(Tokenizer, EvalTextRoundTrips) {
  const std::string text = read_bytes(kShared + "/text/eval.txt").substr(0, 200000);
  for (const Tokenizer* tok : {&llama3(), &qwen3(), &llama2(), &llama30m()}) {
    const auto ids = tok->encode(text, false);
    EXPECT_GT(ids.size(), text.size() / 8) << tok->name();
    EXPECT_EQ(tok->decode(ids), text) << tok->name();
  }
}

// ---- hostile input -------------------------------------------------------------------

TEST(TokenizerHostile, InvalidUtf8Text) {
  for (const char* bad : {"\xff", "abc\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ok\x80ok"}) {
    for (const Tokenizer* tok : {&llama3(), &qwen3(), &llama2(), &llama30m()})
      expect_error([&] { tok->encode(bad); }, tok->name());
  }
}

TEST(TokenizerHostile, BadIdsInDecode) {
  const std::vector<int32_t> ids = {1, -1};
  expect_error([&] { llama3().decode(ids); }, llama3().name());
  const std::vector<int32_t> big = {32000};
  expect_error([&] { llama2().decode(big); }, llama2().name());
  expect_error([&] { llama2().token_to_piece(99999); }, llama2().name());
}

TEST(TokenizerHostile, TruncatedOrCorruptSentencePiece) {
  TempDir dir;
  const std::string good = read_bytes(kShared + "/models/llama-30m/tokenizer.model");
  ASSERT_GT(good.size(), 1000u);
  for (size_t cut : {size_t(0), size_t(1), size_t(7), size_t(100), good.size() / 2, good.size() - 1}) {
    const std::string p = dir.write("cut" + std::to_string(cut) + ".model", good.substr(0, cut));
    expect_error([&] { load_sentencepiece(p); }, p);
  }
  std::string flipped = good;
  flipped[0] = '\x0f';  // field 1 with wire type 7
  expect_error([&] { load_sentencepiece(dir.write("flip.model", flipped)); }, "flip.model");
  const std::string json_text = read_bytes(kShared + "/tokenizers/qwen3/tokenizer_config.json");
  expect_error([&] { load_sentencepiece(dir.write("json.model", json_text)); }, "json.model");
  expect_error([&] { load_sentencepiece("/nonexistent/missing.model"); }, "missing.model");
  expect_error([&] { load_tokenizer(dir.write("model.gguf", "GGUF")); }, "model.gguf");
  expect_error([&] { load_tokenizer(kShared + "/text"); }, "/text");
}

// Deterministic mini-fuzz: damaged models either load or throw Error, and whatever
// loads still encodes and decodes without crashing.
TEST(TokenizerHostile, MutatedSentencePieceModels) {
  TempDir dir;
  const std::string good = read_bytes(kShared + "/models/llama-30m/tokenizer.model");
  std::mt19937 rng(1234);
  int loaded = 0, refused = 0;
  for (int round = 0; round < 300; ++round) {
    std::string bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    const std::string p = dir.write("m.model", bytes);
    try {
      auto tok = load_sentencepiece(p);
      const auto ids = tok->encode("Hello world, 123 \xF0\x9F\x98\x80!", true, true);
      (void)tok->decode(ids);
      ++loaded;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
      ++refused;
    }
  }
  EXPECT_EQ(loaded + refused, 300);
  std::cout << "[fuzz] mutated tokenizer.model: " << loaded << " loaded, " << refused << " refused\n";
}

TEST(TokenizerHostile, RandomBytesAsText) {
  std::mt19937 rng(99);
  int valid = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string text(rng() % 24, '\0');
    for (char& c : text) c = static_cast<char>(rng() % 4 == 0 ? rng() : 0x20 + rng() % 0x60);
    for (const Tokenizer* tok : {&llama3(), &qwen3(), &llama30m()}) {
      try {
        const auto ids = tok->encode(text, false, true);
        EXPECT_EQ(tok->decode(ids), text) << tok->name();
        if (tok == &llama3()) ++valid;
      } catch (const Error&) {
      }
    }
  }
  EXPECT_GT(valid, 100);
}

namespace {

// A small valid byte-level tokenizer.json: qwen3's 256 byte tokens, "he", "hel" and the
// two merges that make them. Tests break one thing at a time.
json tiny_tokenizer_json() {
  static const json qwen = read_json(kShared + "/tokenizers/qwen3/tokenizer.json");
  json vocab = json::object();
  for (const auto& [text, id] : qwen["model"]["vocab"].items())
    if (id.get<int>() < 256) vocab[text] = id;
  vocab["he"] = 256;
  vocab["hel"] = 257;
  return json{{"version", "1.0"},
              {"added_tokens", json::array({json{{"id", 258}, {"content", "<|end|>"}, {"special", true}}})},
              {"normalizer", nullptr},
              {"pre_tokenizer", qwen["pre_tokenizer"]},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"h e", "he l"})}}}};
}

}  // namespace

TEST(TokenizerHostile, TinyTokenizerJsonWorks) {
  TempDir dir;
  auto tok = load_hf_tokenizer(dir.write("tokenizer.json", tiny_tokenizer_json().dump()));
  EXPECT_EQ(tok->vocab_size(), 259);
  const auto ids = tok->encode("hello<|end|>", false, true);
  ASSERT_EQ(ids.size(), 4u);  // hel l o <|end|>
  EXPECT_EQ(ids[0], 257);
  EXPECT_EQ(ids[3], 258);
  EXPECT_EQ(tok->decode(ids), "hello<|end|>");
}

TEST(TokenizerHostile, AddedTokensLongestMatchAndStrip) {
  json j = tiny_tokenizer_json();
  auto add = [&](int id, const char* text, bool special, bool lstrip, bool rstrip) {
    j["added_tokens"].push_back(
        {{"id", id}, {"content", text}, {"special", special}, {"lstrip", lstrip}, {"rstrip", rstrip}});
  };
  add(259, "ab", false, false, false);
  add(260, "abc", false, false, true);
  add(261, "<x>", true, true, false);
  TempDir dir;
  auto tok = load_hf_tokenizer(dir.write("tokenizer.json", j.dump()));
  const int32_t d = tok->find_token("d"), sp = tok->find_token("\xC4\xA0");  // "Ġ"
  ASSERT_GE(d, 0);
  ASSERT_GE(sp, 0);
  EXPECT_EQ(tok->encode("abcd", false), (std::vector<int32_t>{260, d}));
  EXPECT_EQ(tok->encode("abd", false), (std::vector<int32_t>{259, d}));
  EXPECT_EQ(tok->encode("abc   d", false), (std::vector<int32_t>{260, d}));  // rstrip
  EXPECT_EQ(tok->encode("d <x>", false, true), (std::vector<int32_t>{d, 261}));  // lstrip
  EXPECT_EQ(tok->encode("d <x>", false, false).size(), 5u);  // d Ġ < x >
}

TEST(TokenizerHostile, BrokenTokenizerJson) {
  TempDir dir;
  std::vector<std::pair<std::string, json>> bad;
  auto variant = [&](const std::string& what, auto&& edit) {
    json j = tiny_tokenizer_json();
    edit(j);
    bad.emplace_back(what, std::move(j));
  };
  variant("no model", [](json& j) { j.erase("model"); });
  variant("model not object", [](json& j) { j["model"] = 3; });
  variant("no vocab", [](json& j) { j["model"].erase("vocab"); });
  variant("vocab array", [](json& j) { j["model"]["vocab"] = json::array({1, 2}); });
  variant("vocab id string", [](json& j) { j["model"]["vocab"]["he"] = "256"; });
  variant("vocab id negative", [](json& j) { j["model"]["vocab"]["he"] = -5; });
  variant("vocab id huge", [](json& j) { j["model"]["vocab"]["he"] = 1LL << 40; });
  variant("no merges", [](json& j) { j["model"].erase("merges"); });
  variant("merge number", [](json& j) { j["model"]["merges"][0] = 7; });
  variant("merge one part", [](json& j) { j["model"]["merges"][0] = "he"; });
  variant("merge unknown", [](json& j) { j["model"]["merges"][0] = "x q"; });
  variant("merge pair short", [](json& j) { j["model"]["merges"][0] = json::array({"h"}); });
  variant("unigram", [](json& j) { j["model"]["type"] = "Unigram"; });
  variant("no pre_tokenizer", [](json& j) { j.erase("pre_tokenizer"); });
  variant("pre not byte level", [](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; });
  variant("bad regex", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; });
  variant("regex number", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = 5; });
  variant("split removed", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; });
  variant("added id missing", [](json& j) { j["added_tokens"][0].erase("id"); });
  variant("added content number", [](json& j) { j["added_tokens"][0]["content"] = 1; });
  variant("added not array", [](json& j) { j["added_tokens"] = "x"; });
  variant("byte token missing", [](json& j) { j["model"]["vocab"].erase("a"); });
  variant("normalizer nfkc", [](json& j) { j["normalizer"] = {{"type", "NFKC"}}; });
  variant("root array", [](json& j) { j = json::array(); });
  int i = 0;
  for (const auto& [what, j] : bad) {
    SCOPED_TRACE(what);
    const std::string p = dir.write("bad" + std::to_string(i++) + ".json", j.dump());
    expect_error([&] { load_hf_tokenizer(p); }, p);
  }
  const std::string truncated = dir.write("truncated.json", tiny_tokenizer_json().dump().substr(0, 500));
  expect_error([&] { load_hf_tokenizer(truncated); }, truncated);
  expect_error([&] { load_hf_tokenizer(dir.write("empty.json", "")); }, "empty.json");
}

TEST(TokenizerHostile, BadGgufArrays) {
  BpeVocab v = gguf_arrays(kShared + "/tokenizers/qwen3/tokenizer.json", "qwen2");
  {
    BpeVocab w = v;
    w.pre = "no-such-pre";
    expect_error([&] { make_bpe_tokenizer(std::move(w), "x.gguf"); }, "x.gguf");
  }
  {
    BpeVocab w = v;
    w.types.pop_back();
    expect_error([&] { make_bpe_tokenizer(std::move(w), "x.gguf"); }, "x.gguf");
  }
  {
    BpeVocab w = v;
    w.types[5] = 9;
    expect_error([&] { make_bpe_tokenizer(std::move(w), "x.gguf"); }, "x.gguf");
  }
  {
    BpeVocab w = v;
    w.special.bos = 1 << 30;
    expect_error([&] { make_bpe_tokenizer(std::move(w), "x.gguf"); }, "x.gguf");
  }
  {
    BpeVocab w = v;
    w.merges.push_back("nonexistent merge");
    expect_error([&] { make_bpe_tokenizer(std::move(w), "x.gguf"); }, "x.gguf");
  }
  {
    BpeVocab w = v;
    w.merges[0] = "nospace";
    expect_error([&] { make_bpe_tokenizer(std::move(w), "x.gguf"); }, "x.gguf");
  }
  SpmVocab s = read_sentencepiece_vocab(kShared + "/models/llama-30m/tokenizer.model");
  {
    SpmVocab w = s;
    w.scores.pop_back();
    expect_error([&] { make_spm_tokenizer(std::move(w), "s.gguf"); }, "s.gguf");
  }
  {
    SpmVocab w = s;
    w.tokens[3] = "<0xZZ>";
    expect_error([&] { make_spm_tokenizer(std::move(w), "s.gguf"); }, "s.gguf");
  }
  {
    SpmVocab w;
    expect_error([&] { make_spm_tokenizer(std::move(w), "s.gguf"); }, "s.gguf");
  }
}
