// GGUF reader and writer: every value type, tensor layouts, byte-exact round
// trips, and one test per kind of malformed file.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "tailor/formats/gguf.h"
#include "format_test_util.h"
#include "tailor/util/error.h"

namespace fs = std::filesystem;
using namespace tailor;
using test::expect_error;
using test::read_bytes;

namespace {

fs::path temp_dir() {
  static fs::path dir = test::scratch_dir("tailor_test_gguf");
  return dir;
}

void write_bytes(const fs::path& p, const std::vector<uint8_t>& b) { test::write_bytes(p, b.data(), b.size()); }

// Deterministic filler so every tensor's bytes are distinct.
std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<uint8_t>(x >> 24);
  }
  return v;
}

// Independent little-endian GGUF image builder, so the reader is tested
// against bytes that did not come from GgufWriter.
struct Bytes {
  std::vector<uint8_t> b;
  template <typename T>
  Bytes& put(T v) {
    uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));
    b.insert(b.end(), tmp, tmp + sizeof(T));
    return *this;
  }
  Bytes& str(std::string_view s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    put<uint32_t>(0x46554747u);  // "GGUF"
    return put<uint32_t>(version).put<uint64_t>(n_tensors).put<uint64_t>(n_kv);
  }
  Bytes& kv_u32(std::string_view key, uint32_t v) { return str(key).put<uint32_t>(4).put<uint32_t>(v); }
  Bytes& tensor(std::string_view name, std::vector<int64_t> ne, uint32_t type, uint64_t offset) {
    str(name).put<uint32_t>(static_cast<uint32_t>(ne.size()));
    for (auto d : ne) put<int64_t>(d);
    return put<uint32_t>(type).put<uint64_t>(offset);
  }
  Bytes& pad(size_t align) {
    while (b.size() % align != 0) b.push_back(0);
    return *this;
  }
  Bytes& data(const std::vector<uint8_t>& d) {
    b.insert(b.end(), d.begin(), d.end());
    return *this;
  }
};

bool same_value(const GgufValue& a, const GgufValue& b) {
  if (a.type != b.type) return false;
  switch (a.type) {
    case GgufType::UINT8: case GgufType::UINT16: case GgufType::UINT32: case GgufType::UINT64:
    case GgufType::BOOL:
      return a.u == b.u;
    case GgufType::INT8: case GgufType::INT16: case GgufType::INT32: case GgufType::INT64:
      return a.i == b.i;
    case GgufType::FLOAT32:
      return std::bit_cast<uint32_t>(static_cast<float>(a.f)) ==
                 std::bit_cast<uint32_t>(static_cast<float>(b.f)) ||
             (std::isnan(a.f) && a.u == b.u);
    case GgufType::FLOAT64:
      return std::bit_cast<uint64_t>(a.f) == std::bit_cast<uint64_t>(b.f) || (std::isnan(a.f) && a.u == b.u);
    case GgufType::STRING: return a.s == b.s;
    case GgufType::ARRAY:
      if (a.elem != b.elem || a.arr.size() != b.arr.size()) return false;
      for (size_t k = 0; k < a.arr.size(); ++k)
        if (!same_value(a.arr[k], b.arr[k])) return false;
      return true;
  }
  return false;
}

void expect_parse_error(const Bytes& img, const std::string& problem) {
  expect_error([&] { GgufFile::parse("hostile.gguf", img.b.data(), img.b.size()); },
               "hostile.gguf", problem);
}

struct TensorSpec {
  std::string name;
  std::vector<int64_t> ne;
  GgmlType type;
};

std::vector<std::pair<std::string, GgufValue>> every_value() {
  GgufValue nan_payload = GgufValue::f32(std::bit_cast<float>(0x7fc01234u));
  std::vector<GgufValue> nested = {GgufValue::i32s({1, 2, 3}), GgufValue::i32s({}),
                                   GgufValue::i32s({-7})};
  std::vector<GgufValue> nested_strings = {GgufValue::strings({"a", "bc"}),
                                           GgufValue::strings({"", "\xce\xbb", "x y"})};
  std::vector<GgufValue> deep = {GgufValue::array(GgufType::ARRAY, nested),
                                 GgufValue::array(GgufType::ARRAY, {})};
  return {
      {"general.architecture", GgufValue::str("llama")},
      {"v.u8", GgufValue::u8(250)},
      {"v.i8", GgufValue::i8(-120)},
      {"v.u16", GgufValue::u16(65000)},
      {"v.i16", GgufValue::i16(-32000)},
      {"v.u32", GgufValue::u32(4000000000u)},
      {"v.i32", GgufValue::i32(-2000000000)},
      {"v.f32", GgufValue::f32(1.0f / 3.0f)},
      {"v.f32_nan", nan_payload},
      {"v.bool_t", GgufValue::boolean(true)},
      {"v.bool_f", GgufValue::boolean(false)},
      {"v.string", GgufValue::str("h\xc3\xa9llo, \xe4\xb8\x96\xe7\x95\x8c")},
      {"v.string_bytes", GgufValue::str(std::string("\xff\x00\x01 raw", 7))},
      {"v.u64", GgufValue::u64(0xfedcba9876543210ull)},
      {"v.i64", GgufValue::i64(-(int64_t{1} << 62) - 5)},
      {"v.f64", GgufValue::f64(-2.718281828459045)},
      {"a.u8", GgufValue::array(GgufType::UINT8, {GgufValue::u8(0), GgufValue::u8(255)})},
      {"a.i8", GgufValue::array(GgufType::INT8, {GgufValue::i8(-128), GgufValue::i8(127)})},
      {"a.u16", GgufValue::array(GgufType::UINT16, {GgufValue::u16(1)})},
      {"a.i16", GgufValue::array(GgufType::INT16, {GgufValue::i16(-2), GgufValue::i16(3)})},
      {"a.u32", GgufValue::array(GgufType::UINT32, {GgufValue::u32(7), GgufValue::u32(8)})},
      {"a.i32", GgufValue::i32s({-1, 0, 1, 2147483647})},
      {"a.f32", GgufValue::floats({0.5f, -0.0f, 1e-30f, INFINITY})},
      {"a.bool", GgufValue::array(GgufType::BOOL, {GgufValue::boolean(true), GgufValue::boolean(false)})},
      {"a.string", GgufValue::strings({"<s>", "</s>", "", "\xe2\x96\x81the"})},
      {"a.u64", GgufValue::array(GgufType::UINT64, {GgufValue::u64(~0ull)})},
      {"a.i64", GgufValue::array(GgufType::INT64, {GgufValue::i64(INT64_MIN)})},
      {"a.f64", GgufValue::array(GgufType::FLOAT64, {GgufValue::f64(1e300), GgufValue::f64(-1e-300)})},
      {"a.empty", GgufValue::array(GgufType::FLOAT32, {})},
      {"a.nested", GgufValue::array(GgufType::ARRAY, nested)},
      {"a.nested_strings", GgufValue::array(GgufType::ARRAY, nested_strings)},
      {"a.deep", GgufValue::array(GgufType::ARRAY, deep)},
  };
}

std::vector<TensorSpec> some_tensors() {
  return {{"token_embd.weight", {8, 3}, GgmlType::F32},
          {"blk.0.attn_q.weight", {16, 2}, GgmlType::F16},
          {"blk.0.ffn_up.weight", {64, 2}, GgmlType::Q8_0},
          {"blk.0.ffn_down.weight", {256, 1, 2}, GgmlType::Q4_K},
          {"blk.0.attn_norm.weight", {5}, GgmlType::I32},
          {"blk.0.empty", {0, 4}, GgmlType::BF16},
          {"output.weight", {256, 1}, GgmlType::IQ2_XXS}};
}

// Writes metadata plus the tensors above; returns each tensor's data.
std::vector<std::vector<uint8_t>> write_sample(const fs::path& path, uint32_t alignment = 0) {
  GgufWriter w(path.string());
  for (auto& [k, v] : every_value()) w.set(k, v);
  if (alignment != 0) w.set("general.alignment", GgufValue::u32(alignment));
  for (auto& t : some_tensors()) w.add_tensor(t.name, t.ne, t.type);
  std::vector<std::vector<uint8_t>> data;
  for (size_t k = 0; k < w.tensors().size(); ++k) {
    data.push_back(pattern(w.tensors()[k].nbytes, static_cast<uint32_t>(k)));
    w.write_tensor_data(data.back().data(), data.back().size());
  }
  w.finish();
  return data;
}

}  // namespace

TEST(Gguf, EveryValueTypeAndTensorRoundTrips) {
  fs::path p = temp_dir() / "every.gguf";
  auto data = write_sample(p);
  GgufFile g = GgufFile::open(p.string());
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_EQ(g.path(), p.string());
  auto want = every_value();
  ASSERT_EQ(g.metadata().size(), want.size());
  for (size_t k = 0; k < want.size(); ++k) {
    EXPECT_EQ(g.metadata()[k].first, want[k].first);
    EXPECT_TRUE(same_value(g.metadata()[k].second, want[k].second))
        << want[k].first << ": " << g.metadata()[k].second.to_string() << " vs " << want[k].second.to_string();
  }
  // The NaN payload survives the double in GgufValue.
  EXPECT_EQ(g.find("v.f32_nan")->u, 0x7fc01234u);
  EXPECT_EQ(g.find("a.nested")->arr.at(0).arr.at(2).i, 3);
  EXPECT_EQ(g.find("a.nested_strings")->arr.at(1).arr.at(1).s, "\xce\xbb");
  EXPECT_EQ(g.find("a.deep")->arr.at(0).arr.at(2).arr.at(0).i, -7);

  auto specs = some_tensors();
  ASSERT_EQ(g.tensors().size(), specs.size());
  for (size_t k = 0; k < specs.size(); ++k) {
    const GgufTensorInfo* t = g.find_tensor(specs[k].name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->ne, specs[k].ne);
    EXPECT_EQ(t->type, specs[k].type);
    EXPECT_EQ(t->offset % 32, 0u);
    EXPECT_EQ(t->nbytes, data[k].size());
    EXPECT_EQ((g.data_offset() + t->offset) % 32, 0u);
    EXPECT_EQ(std::memcmp(t->data, data[k].data(), data[k].size()), 0) << specs[k].name;
  }
  // Sizes follow the block geometry: Q8_0 is 34 bytes per 32, Q4_K 144 per 256.
  EXPECT_EQ(g.find_tensor("blk.0.ffn_up.weight")->nbytes, 2u * 2 * 34);
  EXPECT_EQ(g.find_tensor("blk.0.ffn_down.weight")->nbytes, 2u * 144);
  EXPECT_EQ(g.find_tensor("blk.0.empty")->nbytes, 0u);
  EXPECT_EQ(g.file_size() % 32, 0u);
}

TEST(Gguf, AccessorsConvertAndRefuse) {
  EXPECT_EQ(GgufValue::u32(7).as_int(), 7);
  EXPECT_EQ(GgufValue::i8(-3).as_int(), -3);
  EXPECT_DOUBLE_EQ(GgufValue::u64(5).as_float(), 5.0);
  EXPECT_EQ(GgufValue::f32(4.0f).as_int(), 4);
  EXPECT_THROW(GgufValue::f32(4.5f).as_int(), Error);
  EXPECT_THROW(GgufValue::u64(~0ull).as_int(), Error);
  EXPECT_THROW(GgufValue::str("x").as_int(), Error);
  EXPECT_THROW(GgufValue::u8(1).as_bool(), Error);
  EXPECT_THROW(GgufValue::u8(1).as_string(), Error);
  EXPECT_TRUE(GgufValue::boolean(true).as_bool());
  EXPECT_EQ(GgufValue::str("q").as_string(), "q");
  EXPECT_EQ(GgufValue::i32s({1, 2, 3, 4}).to_string(2), "[1, 2, ... (4 items)]");
  // Hostile bytes print escaped on one line.
  EXPECT_EQ(GgufValue::str(std::string("a\n\xff\"", 4)).to_string(), "\"a\\n\\xff\\\"\"");
}

TEST(Gguf, CopyIsByteExactWithDefaultAlignment) {
  fs::path a = temp_dir() / "copy_a.gguf", b = temp_dir() / "copy_b.gguf";
  write_sample(a);
  copy_gguf(GgufFile::open(a.string()), b.string());
  EXPECT_EQ(read_bytes(a), read_bytes(b));
}

TEST(Gguf, CopyIsByteExactWithCustomAlignment) {
  fs::path a = temp_dir() / "align_a.gguf", b = temp_dir() / "align_b.gguf";
  write_sample(a, 256);
  GgufFile g = GgufFile::open(a.string());
  EXPECT_EQ(g.alignment(), 256u);
  EXPECT_EQ(g.data_offset() % 256, 0u);
  for (const auto& t : g.tensors()) EXPECT_EQ(t.offset % 256, 0u);
  copy_gguf(g, b.string());
  EXPECT_EQ(read_bytes(a), read_bytes(b));
}

// A hand-built file (not from GgufWriter) with alignment 64, whose tensor data
// lies in the opposite order to the tensor infos, with a gap between tensors.
TEST(Gguf, HandBuiltFileWithReversedDataOrderRoundTrips) {
  auto d_first = pattern(4 * 10, 1);  // F32 [10]
  auto d_second = pattern(34, 2);     // Q8_0 [32]
  Bytes img;
  img.header(2, 2).kv_u32("general.alignment", 64).str("general.name").put<uint32_t>(8).str("rev");
  img.tensor("first", {10}, 0, 128).tensor("second", {32}, 8, 0).pad(64);
  size_t data_start = img.b.size();
  img.data(d_second).pad(64);
  img.b.resize(data_start + 128, 0);
  img.data(d_first).pad(64);
  fs::path a = temp_dir() / "rev_a.gguf", b = temp_dir() / "rev_b.gguf";
  write_bytes(a, img.b);

  GgufFile g = GgufFile::open(a.string());
  EXPECT_EQ(g.alignment(), 64u);
  EXPECT_EQ(g.data_offset(), data_start);
  ASSERT_EQ(g.tensors().size(), 2u);
  EXPECT_EQ(g.tensors()[0].name, "first");
  EXPECT_EQ(g.tensors()[0].offset, 128u);
  EXPECT_EQ(std::memcmp(g.tensors()[0].data, d_first.data(), d_first.size()), 0);
  EXPECT_EQ(std::memcmp(g.tensors()[1].data, d_second.data(), d_second.size()), 0);
  copy_gguf(g, b.string());
  EXPECT_EQ(read_bytes(a), img.b);
  EXPECT_EQ(read_bytes(b), img.b);
}

// An empty tensor may share its offset with a tensor that has data (found by
// fuzzing: the copy once tried to seek backwards and wrote without end).
TEST(Gguf, EmptyTensorSharingAnOffsetCopies) {
  Bytes img;
  img.header(2, 0).tensor("w", {8}, 0, 0).tensor("e", {0}, 8, 0).pad(32).data(pattern(32, 4));
  GgufFile g = GgufFile::parse("empty_shared.gguf", img.b.data(), img.b.size());
  fs::path b = temp_dir() / "empty_shared_copy.gguf";
  copy_gguf(g, b.string());
  EXPECT_EQ(read_bytes(b), img.b);
}

TEST(Gguf, ReadsVersion2AndWritesIt) {
  Bytes img;
  img.header(1, 1, 2).kv_u32("k", 5).tensor("t", {4}, 0, 0).pad(32).data(pattern(16, 3)).pad(32);
  GgufFile g = GgufFile::parse("v2.gguf", img.b.data(), img.b.size());
  EXPECT_EQ(g.version(), 2u);
  EXPECT_EQ(g.find("k")->as_int(), 5);
  fs::path b = temp_dir() / "v2_copy.gguf";
  copy_gguf(g, b.string());
  EXPECT_EQ(read_bytes(b), img.b);
}

TEST(Gguf, WriterLeavesNoFileUntilFinish) {
  fs::path p = temp_dir() / "unfinished.gguf";
  {
    GgufWriter w(p.string());
    w.add_tensor("t", {4}, GgmlType::F32);
    float x[4] = {1, 2, 3, 4};
    EXPECT_THROW(w.write_tensor_data(x, 8), Error);  // wrong size
    w.write_tensor_data(x, sizeof x);
    EXPECT_FALSE(fs::exists(p));
  }
  EXPECT_FALSE(fs::exists(p));
  for (auto& e : fs::directory_iterator(temp_dir()))
    EXPECT_EQ(e.path().filename().string().find("unfinished.gguf.tmp"), std::string::npos);
}

TEST(Gguf, WriterRefusesBadInput) {
  fs::path p = temp_dir() / "bad_writer.gguf";
  GgufWriter w(p.string());
  expect_error([&] { w.set("general.alignment", GgufValue::u32(48)); }, p.string(), "not a power of two");
  expect_error([&] { w.set("general.alignment", GgufValue::u64(64)); }, p.string(), "must be uint32");
  expect_error([&] { w.set("k", GgufValue::array(GgufType::INT32, {GgufValue::u8(1)})); }, p.string(),
               "array of int32 holds a uint8");
  expect_error([&] { w.set("\xff", GgufValue::u8(1)); }, p.string(), "not valid UTF-8");
  expect_error([&] { w.add_tensor("q", {33}, GgmlType::Q8_0); }, p.string(), "not a multiple of its block size");
  w.add_tensor("a", {4}, GgmlType::F32);
  expect_error([&] { w.add_tensor("a", {4}, GgmlType::F32); }, p.string(), "duplicate tensor 'a'");
  expect_error([&] { w.add_tensor("big", {INT64_MAX, 2}, GgmlType::F32); }, p.string(), "overflowing int64");
  expect_error([&] { w.add_tensor(std::string(64, 'n'), {4}, GgmlType::F32); }, p.string(),
               "is longer than 63 bytes");
  expect_error([&] { w.finish(); }, p.string(), "1 of 1 tensors unwritten");
}

TEST(Gguf, WriterRefusesOverlappingOffsets) {
  fs::path p = temp_dir() / "overlap_writer.gguf";
  GgufWriter w(p.string());
  w.add_tensor("a", {16}, GgmlType::F32, 0);
  w.add_tensor("b", {16}, GgmlType::F32, 32);
  float x[16] = {};
  expect_error([&] { w.write_tensor_data(x, sizeof x); }, p.string(), "overlap");
}

// ---- hostile files: one test per problem ----------------------------------------

TEST(GgufHostile, ErrorsNameTheFileOnOpen) {
  fs::path p = temp_dir() / "truncated_on_disk.gguf";
  write_bytes(p, {'G', 'G', 'U', 'F', 3, 0});
  expect_error([&] { GgufFile::open(p.string()); }, p.string(), "truncated");
  expect_error([&] { GgufFile::open((temp_dir() / "missing.gguf").string()); }, "missing.gguf", "cannot open");
}

TEST(GgufHostile, EmptyAndWrongMagic) {
  expect_parse_error(Bytes{}, "truncated");
  Bytes img;
  img.b = {'G', 'G', 'M', 'L', 3, 0, 0, 0};
  expect_parse_error(img, "not a GGUF file");
}

TEST(GgufHostile, Versions) {
  Bytes v1, v9, big;
  v1.header(0, 0, 1);
  v9.header(0, 0, 9);
  big.header(0, 0, 0x03000000u);
  expect_parse_error(v1, "version 1 is not supported");
  expect_parse_error(v9, "unsupported GGUF version 9");
  expect_parse_error(big, "big-endian");
}

TEST(GgufHostile, TruncatedAtEveryByte) {
  fs::path p = temp_dir() / "full.gguf";
  write_sample(p);
  auto full = read_bytes(p);
  GgufFile g = GgufFile::open(p.string());
  // Every cut inside the header or inside tensor data must fail cleanly.
  for (size_t n = 0; n < full.size(); ++n) {
    bool cut_inside_data = false;
    for (const auto& t : g.tensors())
      if (t.nbytes > 0 && n < g.data_offset() + t.offset + t.nbytes) cut_inside_data = true;
    if (!cut_inside_data) continue;  // only trailing padding is cut
    try {
      GgufFile::parse("cut.gguf", full.data(), n);
      ADD_FAILURE() << "accepted a file cut at " << n;
    } catch (const Error& e) {
      ASSERT_EQ(std::string(e.what()).rfind("cut.gguf: ", 0), 0u) << e.what();
    }
  }
}

TEST(GgufHostile, AbsurdTensorCount) {
  Bytes img;
  img.header(uint64_t{1} << 60, 0);
  expect_parse_error(img, "tensor count 1152921504606846976 cannot fit");
}

TEST(GgufHostile, AbsurdMetadataCount) {
  Bytes img;
  img.header(0, ~uint64_t{0});
  expect_parse_error(img, "metadata count 18446744073709551615 cannot fit");
}

TEST(GgufHostile, AbsurdArrayLength) {
  Bytes img;
  img.header(0, 1).str("tokenizer.ggml.scores").put<uint32_t>(9).put<uint32_t>(6).put<uint64_t>(uint64_t{1} << 40);
  img.data(pattern(64, 0));
  expect_parse_error(img, "key 'tokenizer.ggml.scores': array of 1099511627776 float32 values cannot fit");
}

TEST(GgufHostile, TooManyArrayValuesInAll) {
  // Each array fits the file, but together they pass the whole-file bound.
  const uint64_t half = kGgufMaxValues / 2 + 1;
  Bytes img;
  img.header(0, 2);
  for (const char* key : {"a", "b"}) {
    img.str(key).put<uint32_t>(9).put<uint32_t>(0).put<uint64_t>(half);
    img.b.resize(img.b.size() + half, 0);
  }
  expect_parse_error(img, "key 'b': metadata holds more than 8388608 array values in all");
}

TEST(GgufHostile, StringLengthPastEnd) {
  Bytes img;
  img.header(0, 1).str("k").put<uint32_t>(8).put<uint64_t>(1000).data({'a', 'b'});
  expect_parse_error(img, "key 'k': string length 1000 runs past the end");
  Bytes key;
  key.header(0, 1).put<uint64_t>(~uint64_t{0}).data(pattern(32, 0));
  expect_parse_error(key, "metadata key #0: string length 18446744073709551615 runs past the end");
}

TEST(GgufHostile, NestingTooDeep) {
  Bytes img;
  img.header(0, 1).str("deep").put<uint32_t>(9);
  for (int d = 0; d < 100; ++d) img.put<uint32_t>(9).put<uint64_t>(1);
  img.put<uint32_t>(4).put<uint64_t>(0);
  expect_parse_error(img, "arrays nested more than 16 deep");
}

TEST(GgufHostile, UnknownValueTypes) {
  Bytes scalar, elem;
  scalar.header(0, 1).str("k").put<uint32_t>(13).put<uint32_t>(0);
  elem.header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(77).put<uint64_t>(0);
  expect_parse_error(scalar, "key 'k': unknown value type 13");
  expect_parse_error(elem, "key 'k': unknown array element type 77");
}

TEST(GgufHostile, BadBool) {
  Bytes img;
  img.header(0, 1).str("b").put<uint32_t>(7).put<uint8_t>(2);
  expect_parse_error(img, "bool value 2 is neither 0 nor 1");
}

TEST(GgufHostile, DuplicateKey) {
  Bytes img;
  img.header(0, 2).kv_u32("general.x", 1).kv_u32("general.x", 2);
  expect_parse_error(img, "duplicate metadata key 'general.x'");
}

TEST(GgufHostile, EmptyAndNonUtf8Keys) {
  Bytes empty, bad;
  empty.header(0, 1).kv_u32("", 1);
  bad.header(0, 1).kv_u32("ab\xc0\x80", 1);  // overlong NUL
  expect_parse_error(empty, "metadata key #0 is empty");
  expect_parse_error(bad, "metadata key #0 \"ab\\xc0\\x80\" is not valid UTF-8");
}

TEST(GgufHostile, NonUtf8TensorName) {
  Bytes img;
  img.header(1, 0).tensor("w\xed\xa0\x80", {4}, 0, 0).pad(32).data(pattern(16, 0));  // surrogate
  expect_parse_error(img, "tensor #0 name");
  expect_parse_error(img, "is not valid UTF-8");
}

TEST(GgufHostile, NonUtf8StringValueIsKept) {
  Bytes img;
  img.header(0, 1).str("general.name").put<uint32_t>(8).str("\xff\xfe\x1b[31m");
  GgufFile g = GgufFile::parse("bytes.gguf", img.b.data(), img.b.size());
  EXPECT_EQ(g.find("general.name")->s, "\xff\xfe\x1b[31m");
  EXPECT_EQ(g.find("general.name")->to_string(), "\"\\xff\\xfe\\x1b[31m\"");
}

TEST(GgufHostile, AlignmentWrongTypeOrNotPowerOfTwo) {
  Bytes wrong, zero, odd;
  wrong.header(0, 1).str("general.alignment").put<uint32_t>(10).put<uint64_t>(32);
  zero.header(0, 1).kv_u32("general.alignment", 0);
  odd.header(0, 1).kv_u32("general.alignment", 24);
  expect_parse_error(wrong, "general.alignment must be uint32, found uint64");
  expect_parse_error(zero, "general.alignment = 0 is not a power of two");
  expect_parse_error(odd, "general.alignment = 24 is not a power of two");
}

TEST(GgufHostile, DuplicateTensorName) {
  Bytes img;
  img.header(2, 0).tensor("w", {4}, 0, 0).tensor("w", {4}, 0, 32).pad(32).data(pattern(64, 0));
  expect_parse_error(img, "duplicate tensor 'w'");
}

TEST(GgufHostile, TooManyDimensions) {
  Bytes five;
  five.header(1, 0).tensor("w", {1, 1, 1, 1, 1}, 0, 0).pad(32);
  expect_parse_error(five, "tensor 'w' has 5 dimensions (at most 4)");
}

TEST(Gguf, ScalarTensorReadsAsOneElement) {
  Bytes img;
  img.header(1, 0).tensor("s", {}, 0, 0).pad(32).data(pattern(4, 9)).pad(32);
  GgufFile g = GgufFile::parse("scalar.gguf", img.b.data(), img.b.size());
  EXPECT_EQ(g.tensors()[0].ne, (std::vector<int64_t>{1}));
  EXPECT_EQ(g.tensors()[0].nbytes, 4u);
}

TEST(GgufHostile, NegativeDimension) {
  Bytes img;
  img.header(1, 0).tensor("w", {4, -1}, 0, 0).pad(32);
  expect_parse_error(img, "tensor 'w' has shape [4, -1]: negative or overflowing int64");
}

TEST(GgufHostile, ShapeProductOverflows) {
  Bytes img;
  img.header(1, 0).tensor("w", {int64_t{1} << 32, int64_t{1} << 32}, 0, 0).pad(32);
  expect_parse_error(img, "tensor 'w' has shape [4294967296, 4294967296]: negative or overflowing int64");
}

TEST(GgufHostile, ByteSizeOverflows) {
  Bytes img;
  // 2^62 elements fit int64, but 2^62 f32 values are 2^64 bytes.
  img.header(1, 0).tensor("w", {int64_t{1} << 62}, 0 /*F32*/, 0).pad(32);
  expect_parse_error(img, "tensor 'w' with shape [4611686018427387904] is too large");
  Bytes f16;
  f16.header(1, 0).tensor("w", {int64_t{1} << 62}, 1 /*F16*/, 0).pad(32);
  expect_parse_error(f16, "runs past the end of the data section");
}

TEST(GgufHostile, UnknownGgmlType) {
  Bytes img;
  img.header(1, 0).tensor("w", {4}, 4 /* removed Q4_2 */, 0).pad(32);
  expect_parse_error(img, "tensor 'w' has unknown ggml type id 4");
}

TEST(GgufHostile, RowNotMultipleOfBlock) {
  Bytes img;
  img.header(1, 0).tensor("w", {100}, 12 /*Q4_K*/, 0).pad(32);
  expect_parse_error(img, "tensor 'w' of type Q4_K has rows of 100 elements, not a multiple of its block size 256");
}

TEST(GgufHostile, MisalignedOffset) {
  Bytes img;
  img.header(1, 0).tensor("w", {4}, 0, 8).pad(32).data(pattern(64, 0));
  expect_parse_error(img, "tensor 'w' data offset 8 is not a multiple of the alignment 32");
}

TEST(GgufHostile, OffsetPastEnd) {
  Bytes img;
  img.header(1, 0).tensor("w", {4}, 0, 1024).pad(32).data(pattern(64, 0));
  expect_parse_error(img, "tensor 'w' data [1024, +16) runs past the end of the data section (64 bytes)");
  Bytes huge;
  huge.header(1, 0).tensor("w", {4}, 0, ~uint64_t{0} - 31).pad(32).data(pattern(64, 0));
  expect_parse_error(huge, "runs past the end of the data section");
}

TEST(GgufHostile, DataSizeLargerThanFile) {
  Bytes img;
  img.header(1, 0).tensor("w", {1000}, 0, 0).pad(32).data(pattern(64, 0));
  expect_parse_error(img, "tensor 'w' data [0, +4000) runs past the end of the data section (64 bytes)");
}

TEST(GgufHostile, OverlappingTensors) {
  Bytes img;
  img.header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {16}, 0, 32).pad(32).data(pattern(96, 0));
  expect_parse_error(img, "tensors 'a' and 'b' overlap");
}

TEST(GgufHostile, DataSectionStartsPastEnd) {
  Bytes img;
  img.header(1, 0).tensor("w", {0}, 0, 0);  // header ends unaligned, no padding follows
  ASSERT_NE(img.b.size() % 32, 0u);
  expect_parse_error(img, "the data section would start at");
}
