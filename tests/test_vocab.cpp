// Tokenizer metadata: sentencepiece models checked piece by piece against the
// sentencepiece library, byte-level BPE tokenizer.json files, special ids,
// and clear errors for corrupt inputs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <sentencepiece_processor.h>

#include "tailor/convert/vocab.h"
#include "tailor/model/config.h"
#include "tailor/util/error.h"

using namespace tailor;
namespace fs = std::filesystem;

static const std::string kShared = TAILOR_SHARED_DIR;

static void expect_matches_library(const std::string& path) {
  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.Load(path).ok());
  Vocab v = read_spm_file_vocab(path);
  ASSERT_EQ(static_cast<int>(v.tokens.size()), sp.GetPieceSize());
  ASSERT_EQ(v.scores.size(), v.tokens.size());
  ASSERT_EQ(v.token_types.size(), v.tokens.size());
  for (int i = 0; i < sp.GetPieceSize(); ++i) {
    ASSERT_EQ(v.tokens[i], sp.IdToPiece(i)) << i;
    ASSERT_EQ(v.scores[i], sp.GetScore(i)) << i;
    TokenType want = sp.IsUnknown(i) ? TokenType::Unknown
                     : sp.IsControl(i) ? TokenType::Control
                     : sp.IsUnused(i)  ? TokenType::Unused
                     : sp.IsByte(i)    ? TokenType::Byte
                                       : TokenType::Normal;
    ASSERT_EQ(v.token_types[i], static_cast<int32_t>(want)) << i;
  }
  EXPECT_EQ(v.unk, sp.unk_id());
  EXPECT_EQ(v.bos, sp.bos_id());
  EXPECT_EQ(v.eos, sp.eos_id());
  EXPECT_EQ(v.model, "llama");
}

TEST(Vocab, SentencepieceMatchesLibrary) {
  expect_matches_library(kShared + "/models/llama-30m/tokenizer.model");
  expect_matches_library(kShared + "/tokenizers/llama2-spm/tokenizer.model");
}

TEST(Vocab, Llama30mFolder) {
  ModelConfig c = load_model_config(kShared + "/models/llama-30m");
  Vocab v = load_vocab(kShared + "/models/llama-30m", c);
  EXPECT_EQ(v.model, "llama");
  EXPECT_EQ(v.tokens.size(), 8192u);
  EXPECT_EQ(v.bos, 1);
  EXPECT_EQ(v.eos, 2);
  EXPECT_EQ(v.unk, 0);
  EXPECT_EQ(v.add_bos, true);
  EXPECT_EQ(v.add_eos, false);
}

TEST(Vocab, FolderWithoutTokenizer) {
  ModelConfig c = load_model_config(kShared + "/models/arch-refs/qwen3");
  Vocab v = load_vocab(kShared + "/models/arch-refs/qwen3", c);
  EXPECT_EQ(v.model, "none");
  EXPECT_TRUE(v.tokens.empty());
}

TEST(Vocab, Llama3Bpe) {
  Vocab v = read_bpe_vocab(kShared + "/tokenizers/llama3/tokenizer.json");
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "llama-bpe");
  ASSERT_EQ(v.tokens.size(), 128256u);
  EXPECT_EQ(v.tokens[128000], "<|begin_of_text|>");
  EXPECT_EQ(v.token_types[128000], static_cast<int32_t>(TokenType::Control));
  EXPECT_EQ(v.token_types[1000], static_cast<int32_t>(TokenType::Normal));
  EXPECT_EQ(v.merges.size(), 280147u);
  EXPECT_EQ(v.merges[0], "Ġ Ġ");
}

TEST(Vocab, Qwen3BpeListMerges) {
  Vocab v = read_bpe_vocab(kShared + "/tokenizers/qwen3/tokenizer.json");
  EXPECT_EQ(v.pre, "qwen2");
  EXPECT_EQ(v.tokens[151643], "<|endoftext|>");
  EXPECT_EQ(v.token_types[151643], static_cast<int32_t>(TokenType::Control));
  EXPECT_EQ(v.merges.size(), 151387u);
  EXPECT_EQ(v.merges[1], "ĠĠ ĠĠ");  // [a, b] pairs are joined with a space
}

static std::string write_temp(const std::string& name, const std::string& bytes) {
  fs::path p = fs::temp_directory_path() / ("tailor_vocab_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(p, std::ios::binary) << bytes;
  return p.string();
}

static std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Vocab, CorruptSentencepieceIsAnError) {
  std::ifstream in(kShared + "/models/llama-30m/tokenizer.model", std::ios::binary);
  std::string good((std::istreambuf_iterator<char>(in)), {});
  std::vector<std::string> bad = {
      "",                                   // no pieces
      good.substr(0, good.size() / 2),      // truncated mid-field
      std::string("\x0a\xff\xff\xff\xff\x0f", 6),  // length past the end
      std::string("\x0b\x01", 2),           // group wire type
      "this is not a protobuf at all",
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    std::string path = write_temp("bad" + std::to_string(i), bad[i]);
    std::string e = error_of([&] { read_spm_file_vocab(path); });
    EXPECT_NE(e.find(path), std::string::npos) << i << ": " << e;
    EXPECT_NE(e.find("sentencepiece"), std::string::npos) << i << ": " << e;
    fs::remove(path);
  }
  EXPECT_THROW(read_spm_file_vocab("/nonexistent/tokenizer.model"), Error);
}

TEST(Vocab, CorruptTokenizerJsonIsAnError) {
  std::vector<std::string> bad = {
      "{not json",
      R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})",
      R"({"model": {"type": "BPE", "vocab": {}}})",
      R"({"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})",
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [5]}})",
      R"({"model": {"type": "BPE", "vocab": {"a": 0}}})",
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    std::string path = write_temp("bad" + std::to_string(i) + ".json", bad[i]);
    std::string e = error_of([&] { read_bpe_vocab(path); });
    EXPECT_NE(e.find(path), std::string::npos) << i << ": " << e;
    fs::remove(path);
  }
}

// A model whose embedding has more rows than the tokenizer has tokens gets
// [PADn] placeholders (as llama.cpp's converter writes them); fewer rows is an error.
TEST(Vocab, PaddingAndTooSmallVocab) {
  fs::path dir = fs::temp_directory_path() / ("tailor_vocab_pad_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::create_symlink(kShared + "/models/llama-30m/tokenizer.model", dir / "tokenizer.model");
  ModelConfig c = load_model_config(kShared + "/models/llama-30m");
  c.vocab_size = 8200;
  Vocab v = load_vocab(dir.string(), c);
  ASSERT_EQ(v.tokens.size(), 8200u);
  EXPECT_EQ(v.tokens[8199], "[PAD8199]");
  EXPECT_EQ(v.token_types[8195], static_cast<int32_t>(TokenType::Unused));
  EXPECT_EQ(v.scores.size(), 8200u);
  EXPECT_EQ(v.bos, 1);  // no tokenizer_config.json: ids from the sentencepiece model
  c.vocab_size = 8000;
  std::string e = error_of([&] { load_vocab(dir.string(), c); });
  EXPECT_NE(e.find("vocab_size"), std::string::npos) << e;

  fs::remove(dir / "tokenizer.model");
  fs::create_symlink(kShared + "/tokenizers/qwen3/tokenizer.json", dir / "tokenizer.json");
  c.family = ModelFamily::Qwen3;
  c.vocab_size = 151936;  // Qwen3 checkpoints pad the embedding past the tokenizer
  v = load_vocab(dir.string(), c);
  ASSERT_EQ(v.tokens.size(), 151936u);
  EXPECT_EQ(v.token_types[151700], static_cast<int32_t>(TokenType::Unused));
  EXPECT_TRUE(v.scores.empty());
  fs::remove_all(dir);
}

// Truncated or bit-flipped sentencepiece models either parse or raise
// tailor::Error; nothing else escapes (run under -DTAILOR_SANITIZE=ON for memory errors).
TEST(Vocab, MangledSentencepieceNeverCrashes) {
  std::ifstream in(kShared + "/models/llama-30m/tokenizer.model", std::ios::binary);
  std::string good((std::istreambuf_iterator<char>(in)), {});
  std::mt19937 rng(11);
  int errors = 0;
  for (int i = 0; i < 120; ++i) {
    std::string bad = good;
    if (i % 2 == 0) {
      bad.resize(rng() % good.size());
    } else {
      for (int k = 0; k < 8; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    }
    std::string path = write_temp("mangled", bad);
    try {
      read_spm_file_vocab(path);
    } catch (const Error&) {
      ++errors;
    }
    fs::remove(path);
  }
  EXPECT_GT(errors, 0);
}
