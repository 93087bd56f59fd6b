// Safetensors reader: the real sharded bf16 fixture, an f32 fixture, the
// writer, other dtypes, and one test per kind of malformed file or index.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tailor/formats/safetensors.h"
#include "format_test_util.h"
#include "tailor/util/error.h"
#include "tailor/util/fp16.h"

namespace fs = std::filesystem;
using namespace tailor;
using test::expect_error;
using test::read_bytes;

namespace {

const fs::path kShared = TAILOR_SHARED_DIR;

fs::path temp_dir() {
  static fs::path dir = test::scratch_dir("tailor_test_st");
  return dir;
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

// A safetensors image from raw header text and data, built without our writer.
std::vector<uint8_t> image(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> b(8 + header.size() + data_bytes);
  uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  for (size_t k = 0; k < data_bytes; ++k) b[8 + header.size() + k] = static_cast<uint8_t>(k * 7 + 1);
  return b;
}

void expect_parse_error(const std::string& header, size_t data_bytes, const std::string& problem) {
  auto img = image(header, data_bytes);
  expect_error([&] { Safetensors::parse("hostile.safetensors", img.data(), img.size()); },
               "hostile.safetensors", problem);
}

std::vector<float> read_f32_file(const fs::path& p) {
  auto b = read_bytes(p);
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

// A sharded checkpoint in a temp folder, for the index tests.
struct Shards {
  fs::path dir;
  explicit Shards(const std::string& name) : dir(temp_dir() / name) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
    write_safetensors((dir / "s1.safetensors").string(), {{"a", "F32", {4}, a, sizeof a}});
    write_safetensors((dir / "s2.safetensors").string(), {{"b", "F32", {2}, b, sizeof b}});
  }
  fs::path index(const std::string& weight_map) {
    fs::path p = dir / "model.safetensors.index.json";
    write_text(p, R"({"metadata": {}, "weight_map": )" + weight_map + "}");
    return p;
  }
};

}  // namespace

TEST(Safetensors, ReadsShardedBf16Fixture) {
  fs::path dir = kShared / "models/llama-30m";
  Safetensors st = Safetensors::open(dir.string());  // the folder finds its index
  EXPECT_EQ(st.tensors().size(), 75u);
  int64_t params = 0;
  std::set<std::string> files;
  for (const auto& t : st.tensors()) {
    params += t.numel();
    EXPECT_EQ(t.dtype, StDtype::BF16) << t.name;
    EXPECT_EQ(t.nbytes, static_cast<size_t>(t.numel()) * 2);
    files.insert(t.file);
  }
  EXPECT_EQ(params, 30417408);
  EXPECT_EQ(files.size(), 5u);

  // Shards come in index order, tensors in file order within each.
  EXPECT_NE(st.tensors().front().file.find("model-00001-of-00005"), std::string::npos);
  EXPECT_NE(st.tensors().back().file.find("model-00005-of-00005"), std::string::npos);

  const StTensor* q = st.find("model.layers.3.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{512, 512}));
  std::vector<float> all(static_cast<size_t>(q->numel()));
  Safetensors::to_f32(*q, all.data());
  // The ggml vectors hold rows 0, 32, ..., 480, converted from bf16 exactly.
  auto ref = read_f32_file(kShared / "testdata/ggml-vectors/inputs/real512.f32");
  ASSERT_EQ(ref.size(), 16u * 512);
  for (size_t r = 0; r < 16; ++r)
    for (size_t c = 0; c < 512; ++c)
      ASSERT_EQ(std::memcmp(&all[r * 32 * 512 + c], &ref[r * 512 + c], 4), 0) << "row " << r * 32 << " col " << c;

  const StTensor* down = st.find("model.layers.3.mlp.down_proj.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->shape, (std::vector<int64_t>{512, 1280}));
  std::vector<float> d(static_cast<size_t>(down->numel()));
  Safetensors::to_f32(*down, d.data());
  auto ref2 = read_f32_file(kShared / "testdata/ggml-vectors/inputs/real1280.f32");
  ASSERT_EQ(ref2.size(), 8u * 1280);
  for (size_t r = 0; r < 8; ++r)
    EXPECT_EQ(std::memcmp(&d[r * 64 * 1280], &ref2[r * 1280], 1280 * 4), 0) << "row " << r * 64;

  // Opening the index directly gives the same result.
  Safetensors via_index = Safetensors::open((dir / "model.safetensors.index.json").string());
  EXPECT_EQ(via_index.tensors().size(), 75u);
}

TEST(Safetensors, ReadsF32ArchRef) {
  fs::path dir = kShared / "models/arch-refs/qwen2";
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  const int64_t h = cfg["hidden_size"], ff = cfg["intermediate_size"], vocab = cfg["vocab_size"];
  const int64_t layers = cfg["num_hidden_layers"];
  const int64_t kv = h / cfg["num_attention_heads"].get<int64_t>() * cfg["num_key_value_heads"].get<int64_t>();

  Safetensors st = Safetensors::open(dir.string());  // folder with model.safetensors
  EXPECT_EQ(st.metadata().at("format"), "pt");
  // Qwen2: q/k/v carry biases; untied embeddings.
  int64_t per_layer = (h * h + h) + 2 * (kv * h + kv) + h * h + 3 * h * ff + 2 * h;
  int64_t want = 2 * vocab * h + layers * per_layer + h;
  int64_t params = 0;
  for (const auto& t : st.tensors()) {
    EXPECT_EQ(t.dtype, StDtype::F32);
    params += t.numel();
  }
  EXPECT_EQ(params, want);
  EXPECT_EQ(st.tensors().size(), static_cast<size_t>(2 + 12 * layers + 1));
  const StTensor* kb = st.find("model.layers.1.self_attn.k_proj.bias");
  ASSERT_NE(kb, nullptr);
  EXPECT_EQ(kb->shape, (std::vector<int64_t>{kv}));

  // Values equal the raw bytes at the offsets the header gives (read independently).
  auto bytes = read_bytes(dir / "model.safetensors");
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(n));
  for (const char* name : {"model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"}) {
    const StTensor* t = st.find(name);
    ASSERT_NE(t, nullptr);
    std::vector<float> v(static_cast<size_t>(t->numel()));
    Safetensors::to_f32(*t, v.data());
    uint64_t begin = header[name]["data_offsets"][0];
    EXPECT_EQ(std::memcmp(v.data(), bytes.data() + 8 + n + begin, v.size() * 4), 0) << name;
  }
}

TEST(Safetensors, WriterRoundTripsAllDtypes) {
  fs::path p = temp_dir() / "all.safetensors";
  std::vector<float> f32 = {1.5f, -2.25f, 3e-8f, 65504.0f, -0.0f, 1e30f};
  std::vector<uint16_t> f16, bf16;
  for (float x : f32) {
    f16.push_back(fp32_to_fp16(x));
    bf16.push_back(fp32_to_bf16(x));
  }
  std::vector<int64_t> i64 = {-1, 1LL << 40};
  std::vector<uint8_t> u8 = {0, 255, 7}, f4 = {0x12, 0x34};
  write_safetensors(p.string(),
                    {{"w.f32", "F32", {2, 3}, f32.data(), f32.size() * 4},
                     {"w.f16", "F16", {6}, f16.data(), f16.size() * 2},
                     {"w.bf16", "BF16", {3, 2}, bf16.data(), bf16.size() * 2},
                     {"w.i64", "I64", {2}, i64.data(), 16},
                     {"w.u8", "U8", {3}, u8.data(), 3},
                     {"w.f8", "F8_E4M3", {3}, u8.data(), 3},
                     {"w.f4", "F4", {4}, f4.data(), 2},
                     {"w.empty", "F32", {0, 5}, nullptr, 0}},
                    {{"format", "pt"}, {"note", "h\xc3\xa9"}});
  auto bytes = read_bytes(p);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);

  Safetensors st = Safetensors::open(p.string());
  EXPECT_EQ(st.metadata().at("note"), "h\xc3\xa9");
  ASSERT_EQ(st.tensors().size(), 8u);
  EXPECT_EQ(st.tensors()[0].name, "w.f32");  // file order
  std::vector<float> out(6);
  Safetensors::to_f32(*st.find("w.f32"), out.data());
  EXPECT_EQ(std::memcmp(out.data(), f32.data(), 24), 0);
  Safetensors::to_f32(*st.find("w.f16"), out.data());
  for (size_t k = 0; k < 6; ++k) EXPECT_EQ(out[k], fp16_to_fp32(f16[k]));
  Safetensors::to_f32(*st.find("w.bf16"), out.data());
  for (size_t k = 0; k < 6; ++k) EXPECT_EQ(out[k], bf16_to_fp32(bf16[k]));

  const StTensor* ti = st.find("w.i64");
  EXPECT_EQ(ti->dtype, StDtype::I64);
  EXPECT_EQ(std::memcmp(ti->data, i64.data(), 16), 0);
  EXPECT_EQ(st.find("w.f8")->dtype, StDtype::F8_E4M3);
  EXPECT_EQ(st.find("w.f4")->dtype, StDtype::Other);
  EXPECT_EQ(std::memcmp(st.find("w.f4")->data, f4.data(), 2), 0);
  EXPECT_EQ(st.find("w.empty")->nbytes, 0u);
  Safetensors::to_f32(*st.find("w.empty"), nullptr);  // nothing to convert, nothing touched
  expect_error([&] { Safetensors::to_f32(*ti, out.data()); }, p.string(), "dtype I64, which cannot be converted");
}

TEST(Safetensors, WriterRefusesBadInput) {
  fs::path p = temp_dir() / "bad_writer.safetensors";
  float x[4] = {};
  expect_error([&] { write_safetensors(p.string(), {{"a", "F32", {3}, x, 16}}); }, p.string(), "needs 12");
  expect_error([&] { write_safetensors(p.string(), {{"a", "Q4", {4}, x, 16}}); }, p.string(), "unknown dtype");
  expect_error([&] { write_safetensors(p.string(), {{"a", "F32", {4}, x, 16}, {"a", "F32", {4}, x, 16}}); },
               p.string(), "duplicate tensor 'a'");
  EXPECT_FALSE(fs::exists(p));
}

TEST(Safetensors, ShardIndexConsistencyPasses) {
  Shards s("shards_ok");
  Safetensors st = Safetensors::open(s.index(R"({"a": "s1.safetensors", "b": "s2.safetensors"})").string());
  ASSERT_EQ(st.tensors().size(), 2u);
  std::vector<float> b(2);
  Safetensors::to_f32(*st.find("b"), b.data());
  EXPECT_EQ(b, (std::vector<float>{5, 6}));
}

// ---- hostile files and indexes --------------------------------------------------

TEST(SafetensorsHostile, TooShortAndMissing) {
  fs::path p = temp_dir() / "short.safetensors";
  write_text(p, "abc");
  expect_error([&] { Safetensors::open(p.string()); }, p.string(), "truncated");
  expect_error([&] { Safetensors::open((temp_dir() / "nope.safetensors").string()); }, "nope.safetensors",
               "cannot open");
}

TEST(SafetensorsHostile, HeaderLengthPastEnd) {
  std::vector<uint8_t> img = image("{}", 0);
  uint64_t huge = 1ull << 62;
  std::memcpy(img.data(), &huge, 8);
  expect_error([&] { Safetensors::parse("h.safetensors", img.data(), img.size()); }, "h.safetensors",
               "header length 4611686018427387904 runs past the end of the file (10 bytes)");
}

TEST(SafetensorsHostile, TruncatedAtEveryByte) {
  fs::path p = temp_dir() / "cut.safetensors";
  float a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  write_safetensors(p.string(), {{"a", "F32", {8}, a, sizeof a}, {"b", "F32", {2, 2}, a, 16}});
  auto full = read_bytes(p);
  for (size_t n = 0; n < full.size(); ++n) {
    try {
      Safetensors::parse("cut.safetensors", full.data(), n);
      ADD_FAILURE() << "accepted a file cut at " << n;
    } catch (const Error& e) {
      ASSERT_EQ(std::string(e.what()).rfind("cut.safetensors: ", 0), 0u) << e.what();
    }
  }
}

TEST(SafetensorsHostile, NotJson) {
  expect_parse_error("{\"a\": [1, 2", 0, "header is not valid JSON");
  expect_parse_error("GGUF", 0, "header is not valid JSON");
}

TEST(SafetensorsHostile, NulInsideHeader) {
  // Valid JSON, then a NUL and junk: the whole header must be JSON and spaces.
  expect_parse_error(std::string("{}  \0junk", 9), 0, "header holds a NUL byte at offset 4");
}

TEST(SafetensorsHostile, NotAnObject) {
  expect_parse_error("[1, 2, 3]", 0, "header is not a JSON object");
  expect_parse_error(R"({"a": 5})", 0, "tensor 'a' entry is not a JSON object");
}

TEST(SafetensorsHostile, WrongTypedFields) {
  expect_parse_error(R"({"a": {"dtype": 5, "shape": [1], "data_offsets": [0, 4]}})", 4, "has no string \"dtype\"");
  expect_parse_error(R"({"a": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}})", 4, "has no array \"shape\"");
  expect_parse_error(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 8,
                     "has no two-element array \"data_offsets\"");
  expect_parse_error(R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4,
                     "shape holds 1.5, not a non-negative integer");
  expect_parse_error(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4,
                     "shape holds -1, not a non-negative integer");
  expect_parse_error(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": ["0", 4]}})", 4,
                     "data_offsets are not non-negative integers");
  expect_parse_error(R"({"__metadata__": {"format": 1}})", 0, "__metadata__ value \"format\" is not a string");
  expect_parse_error(R"({"__metadata__": [1]})", 0, "__metadata__ is not a JSON object");
}

TEST(SafetensorsHostile, UnknownDtype) {
  expect_parse_error(R"({"a": {"dtype": "Q4_K", "shape": [1], "data_offsets": [0, 4]}})", 4,
                     "tensor 'a' has unknown dtype \"Q4_K\"");
}

TEST(SafetensorsHostile, OffsetsReversed) {
  expect_parse_error(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 8,
                     "tensor 'a' data_offsets [8, 4] are in the wrong order");
}

TEST(SafetensorsHostile, OffsetsPastEnd) {
  expect_parse_error(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 12,
                     "tensor 'a' data_offsets [0, 16] run past the end of the data (12 bytes)");
  expect_parse_error(R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [18446744073709551614, 18446744073709551615]}})",
                     4, "run past the end of the data");
}

TEST(SafetensorsHostile, SizeDoesNotMatchShape) {
  expect_parse_error(R"({"a": {"dtype": "BF16", "shape": [3, 2], "data_offsets": [0, 10]}})", 10,
                     "tensor 'a' holds 10 bytes but shape [3, 2] of BF16 needs 12");
  expect_parse_error(R"({"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}})", 2,
                     "needs a size that is not whole bytes");
}

TEST(SafetensorsHostile, ShapeOverflows) {
  expect_parse_error(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})", 4,
                     "tensor 'a' shape [4294967296, 4294967296] overflows int64");
  // Fits int64 elements, but not bytes.
  expect_parse_error(R"({"a": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 4]}})", 4,
                     "tensor 'a' shape [4611686018427387904] of F64 is too large");
}

TEST(SafetensorsHostile, OverlappingTensors) {
  expect_parse_error(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                     12, "tensors 'a' and 'b' overlap");
}

TEST(SafetensorsHostile, DuplicateKeys) {
  expect_parse_error(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                        "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                     8, "header has duplicate key \"a\"");
  expect_parse_error(R"({"a": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}})", 4,
                     "header has duplicate key \"dtype\"");
}

TEST(SafetensorsHostile, NonUtf8Name) {
  expect_parse_error("{\"a\xff\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
                     "UTF-8");
}

TEST(SafetensorsHostile, DeepNesting) {
  expect_parse_error(std::string(100000, '[') + std::string(100000, ']'), 0, "JSON nested more than 32 deep");
}

TEST(SafetensorsHostile, MissingShard) {
  Shards s("shards_missing");
  fs::path idx = s.index(R"({"a": "s1.safetensors", "b": "s2.safetensors", "c": "s3.safetensors"})");
  expect_error([&] { Safetensors::open(idx.string()); }, idx.string(),
               "weight_map names shard \"s3.safetensors\", which is missing");
}

TEST(SafetensorsHostile, IndexNamesTensorNotInShard) {
  Shards s("shards_notin");
  fs::path idx = s.index(R"({"a": "s1.safetensors", "b": "s2.safetensors", "zz": "s2.safetensors"})");
  expect_error([&] { Safetensors::open(idx.string()); }, idx.string(),
               "weight_map puts tensor 'zz' in \"s2.safetensors\", which does not hold it");
}

TEST(SafetensorsHostile, IndexPutsTensorInWrongShard) {
  Shards s("shards_wrong");
  fs::path idx = s.index(R"({"a": "s2.safetensors", "b": "s1.safetensors"})");
  expect_error([&] { Safetensors::open(idx.string()); }, idx.string(), "weight_map puts tensor");
  expect_error([&] { Safetensors::open(idx.string()); }, idx.string(), "but it is in");
}

TEST(SafetensorsHostile, ShardTensorMissingFromIndex) {
  Shards s("shards_unlisted");
  fs::path idx = s.index(R"({"a": "s1.safetensors"})");
  write_text(s.dir / "model.safetensors.index.json",
             R"({"weight_map": {"a": "s1.safetensors", "x": "s2.safetensors"}})");
  expect_error([&] { Safetensors::open(idx.string()); }, idx.string(),
               "tensor 'b' of shard \"s2.safetensors\" is not in the weight_map");
}

TEST(SafetensorsHostile, BadIndexes) {
  Shards s("shards_bad");
  fs::path idx = s.dir / "model.safetensors.index.json";
  write_text(idx, "not json");
  expect_error([&] { Safetensors::open(idx.string()); }, idx.string(), "index is not valid JSON");
  write_text(idx, R"({"metadata": {}})");
  expect_error([&] { Safetensors::open(idx.string()); }, idx.string(), "index has no \"weight_map\" object");
  write_text(idx, R"({"weight_map": {"a": 3}})");
  expect_error([&] { Safetensors::open(idx.string()); }, idx.string(), "weight_map entry for 'a' is not a string");
  write_text(idx, R"({"weight_map": {"a": "../s1.safetensors"}})");
  expect_error([&] { Safetensors::open(idx.string()); }, idx.string(), "not a file name in the index's folder");
  write_text(idx, R"({"weight_map": {}})");
  expect_error([&] { Safetensors::open(idx.string()); }, idx.string(), "weight_map is empty");
}

TEST(SafetensorsHostile, DuplicateTensorAcrossShards) {
  Shards s("shards_dup");
  float a[4] = {};
  write_safetensors((s.dir / "s2.safetensors").string(), {{"a", "F32", {4}, a, sizeof a}});
  fs::path idx = s.index(R"({"a": "s1.safetensors"})");
  write_text(idx, R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  expect_error([&] { Safetensors::open(idx.string()); }, "s2.safetensors", "tensor 'a' also appears in");
}

TEST(SafetensorsHostile, FolderWithoutCheckpoint) {
  fs::path d = temp_dir() / "empty_folder";
  fs::create_directories(d);
  expect_error([&] { Safetensors::open(d.string()); }, d.string(), "folder holds no .safetensors file");
}
