// Importance matrix: accumulation against hand sums, merging, the GGUF layout
// llama-imatrix writes (checked tensor by tensor), the legacy .dat layout
// (written byte by byte here), and malformed files.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "format_test_util.h"
#include "tailor/eval/imatrix.h"
#include "tailor/formats/gguf.h"
#include "tailor/util/error.h"

namespace fs = std::filesystem;
using namespace tailor;
using namespace tailor::eval;
using test::expect_error;

namespace {

fs::path temp_dir() {
  static fs::path dir = test::scratch_dir("tailor_test_imatrix");
  return dir;
}

std::vector<float> random_rows(size_t rows, size_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.5f);
  std::vector<float> x(rows * cols);
  for (auto& v : x) v = nd(rng);
  return x;
}

// Little-endian builder for legacy .dat files.
struct Dat {
  std::vector<uint8_t> b;
  template <typename T>
  Dat& put(T v) {
    const size_t n = b.size();
    b.resize(n + sizeof(T));
    std::memcpy(b.data() + n, &v, sizeof(T));
    return *this;
  }
  Dat& str(const std::string& s) {
    put<int32_t>(int32_t(s.size()));
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Dat& entry(const std::string& name, int32_t ncall, const std::vector<float>& vals) {
    str(name).put<int32_t>(ncall).put<int32_t>(int32_t(vals.size()));
    for (float v : vals) put<float>(v);
    return *this;
  }
  fs::path write(const std::string& name) const {
    const auto p = temp_dir() / name;
    test::write_bytes(p, b.data(), b.size());
    return p;
  }
};

}  // namespace

TEST(Imatrix, AccumulatesSquaredInputsPerColumn) {
  const size_t cols = 6;
  const auto x = random_rows(10, cols, 1);
  Imatrix im;
  im.add("blk.0.attn_q.weight", std::span(x).first(4 * cols), cols);
  im.add("blk.0.attn_q.weight", std::span(x).subspan(4 * cols), cols);
  const ImatrixEntry* e = im.find("blk.0.attn_q.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->n_cols, 6);
  EXPECT_EQ(e->n_experts, 1);
  ASSERT_EQ(e->counts.size(), 1u);
  EXPECT_EQ(e->counts[0], 10);
  const auto v = e->values();
  for (size_t j = 0; j < cols; ++j) {
    double s = 0;
    for (size_t r = 0; r < 10; ++r) s += double(x[r * cols + j]) * x[r * cols + j];
    EXPECT_NEAR(e->sum2[j], s, 1e-9 * s);
    EXPECT_NEAR(v[j], s / 10, 1e-6 * s);
  }
  expect_error([&] { im.add("blk.0.attn_q.weight", x, 5); }, "blk.0.attn_q.weight", "shape 1 x 5");
  expect_error([&] { im.add("w", std::span(x).first(7), 6); }, "w", "not whole rows of 6");
  std::vector<float> bad(cols, 1.0f);
  bad[2] = INFINITY;
  expect_error([&] { im.add("blk.0.attn_q.weight", bad, cols); }, "blk.0.attn_q.weight", "non-finite");
}

TEST(Imatrix, ExpertsAreSeparateAndUnseenExpertsGetOne) {
  const size_t cols = 4;
  Imatrix im;
  const auto a = random_rows(3, cols, 2), b = random_rows(5, cols, 3);
  im.add_expert("blk.1.ffn_up_exps.weight", 0, 3, a, cols);
  im.add_expert("blk.1.ffn_up_exps.weight", 2, 3, b, cols);
  const ImatrixEntry& e = *im.find("blk.1.ffn_up_exps.weight");
  EXPECT_EQ(e.counts, (std::vector<int64_t>{3, 0, 5}));
  const auto v = e.values();
  ASSERT_EQ(v.size(), 12u);
  for (size_t j = 0; j < cols; ++j) {
    double sa = 0, sb = 0;
    for (size_t r = 0; r < 3; ++r) sa += double(a[r * cols + j]) * a[r * cols + j];
    for (size_t r = 0; r < 5; ++r) sb += double(b[r * cols + j]) * b[r * cols + j];
    EXPECT_NEAR(v[j], sa / 3, 1e-5);
    EXPECT_EQ(v[cols + j], 1.0f);  // expert 1 saw nothing
    EXPECT_NEAR(v[2 * cols + j], sb / 5, 1e-5);
  }
  expect_error([&] { im.add_expert("blk.1.ffn_up_exps.weight", 3, 3, a, cols); }, "ffn_up_exps", "expert 3 of 3");
}

TEST(Imatrix, MergeEqualsOneAccumulator) {
  const size_t cols = 8;
  const auto x = random_rows(12, cols, 4);
  Imatrix whole, left, right;
  whole.add("w", x, cols);
  whole.add_expert("m", 1, 2, x, cols);
  left.add("w", std::span(x).first(5 * cols), cols);
  left.add_expert("m", 1, 2, std::span(x).first(5 * cols), cols);
  left.datasets = {"a.txt"};
  left.chunk_count = 3;
  left.chunk_size = 512;
  right.add("w", std::span(x).subspan(5 * cols), cols);
  right.add_expert("m", 1, 2, std::span(x).subspan(5 * cols), cols);
  right.add("only_right", std::span(x).first(cols), cols);
  right.datasets = {"b.txt"};
  right.chunk_count = 4;
  left.merge(right);
  for (const char* name : {"w", "m"}) {
    const ImatrixEntry &m = *left.find(name), &w = *whole.find(name);
    EXPECT_EQ(m.counts, w.counts);
    for (size_t i = 0; i < w.sum2.size(); ++i) EXPECT_NEAR(m.sum2[i], w.sum2[i], 1e-9 * (1 + w.sum2[i]));
  }
  EXPECT_NE(left.find("only_right"), nullptr);
  EXPECT_EQ(left.datasets, (std::vector<std::string>{"a.txt", "b.txt"}));
  EXPECT_EQ(left.chunk_count, 7u);
  EXPECT_EQ(left.chunk_size, 512u);
  Imatrix other;
  other.add("w", std::span(x).first(3 * 4), 4);
  expect_error([&] { left.merge(other); }, "w", "cannot merge shape 1 x 4 into 1 x 8");
}

TEST(Imatrix, GgufRoundTripInLlamaLayout) {
  const size_t cols = 5;
  Imatrix im;
  im.add("blk.0.ffn_down.weight", random_rows(7, cols, 5), cols);
  im.add_expert("blk.0.ffn_gate_exps.weight", 1, 4, random_rows(3, cols, 6), cols);
  im.add_expert("blk.0.ffn_gate_exps.weight", 3, 4, random_rows(2, cols, 7), cols);
  im.datasets = {"wiki.train.raw", "code.txt"};
  im.chunk_count = 9;
  im.chunk_size = 512;
  const auto path = (temp_dir() / "imatrix.gguf").string();
  im.save_gguf(path);

  // The file as llama-quantize sees it.
  const GgufFile g = GgufFile::open(path);
  EXPECT_EQ(g.find("general.type")->as_string(), "imatrix");
  const GgufValue* ds = g.find("imatrix.datasets");
  ASSERT_NE(ds, nullptr);
  EXPECT_EQ(ds->elem, GgufType::STRING);
  ASSERT_EQ(ds->arr.size(), 2u);
  EXPECT_EQ(ds->arr[1].as_string(), "code.txt");
  EXPECT_EQ(g.find("imatrix.chunk_count")->type, GgufType::UINT32);
  EXPECT_EQ(g.find("imatrix.chunk_count")->as_int(), 9);
  EXPECT_EQ(g.find("imatrix.chunk_size")->as_int(), 512);
  const GgufTensorInfo* s1 = g.find_tensor("blk.0.ffn_down.weight.in_sum2");
  const GgufTensorInfo* c1 = g.find_tensor("blk.0.ffn_down.weight.counts");
  const GgufTensorInfo* s4 = g.find_tensor("blk.0.ffn_gate_exps.weight.in_sum2");
  const GgufTensorInfo* c4 = g.find_tensor("blk.0.ffn_gate_exps.weight.counts");
  ASSERT_TRUE(s1 && c1 && s4 && c4);
  EXPECT_EQ(s1->ne, (std::vector<int64_t>{5}));  // [n_cols, 1] with the 1 dropped, as ggml writes it
  EXPECT_EQ(c1->ne, (std::vector<int64_t>{1}));
  EXPECT_EQ(s4->ne, (std::vector<int64_t>{5, 4}));
  EXPECT_EQ(c4->ne, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(s4->type, GgmlType::F32);
  float counts[4];
  std::memcpy(counts, c4->data, sizeof counts);
  EXPECT_EQ(counts[0], 0.0f);
  EXPECT_EQ(counts[1], 3.0f);
  EXPECT_EQ(counts[3], 2.0f);

  const Imatrix back = Imatrix::load(path);
  EXPECT_EQ(back.datasets, im.datasets);
  EXPECT_EQ(back.chunk_count, 9u);
  EXPECT_EQ(back.chunk_size, 512u);
  ASSERT_EQ(back.entries().size(), 2u);
  for (const auto& [name, e] : im.entries()) {
    const ImatrixEntry* b = back.find(name);
    ASSERT_NE(b, nullptr) << name;
    EXPECT_EQ(b->n_cols, e.n_cols);
    EXPECT_EQ(b->n_experts, e.n_experts);
    EXPECT_EQ(b->counts, e.counts);
    for (size_t i = 0; i < e.sum2.size(); ++i) EXPECT_EQ(float(b->sum2[i]), float(e.sum2[i]));
    EXPECT_EQ(b->values().size(), e.values().size());
  }
}

TEST(Imatrix, LegacyDatWrittenByHand) {
  // What llama-imatrix --output-format dat writes: mean * ncall per value,
  // entries sorted by name, then the chunk count and the dataset name.
  const std::vector<float> q = {4.0f, 10.0f, 0.5f};  // means 0.4, 1.0, 0.05 over 10 calls
  const std::vector<float> up = {6.0f, 3.0f, 9.0f, 12.0f};
  const auto path = Dat{}
                        .put<int32_t>(2)
                        .entry("blk.0.attn_q.weight", 10, q)
                        .entry("blk.0.ffn_up_exps.weight", 3, up)
                        .put<int32_t>(10)
                        .str("wiki.train.raw")
                        .write("legacy.dat");
  const Imatrix im = Imatrix::load(path.string(), 256);
  ASSERT_EQ(im.entries().size(), 2u);
  EXPECT_EQ(im.chunk_count, 10u);
  EXPECT_EQ(im.datasets, (std::vector<std::string>{"wiki.train.raw"}));
  const ImatrixEntry& e = *im.find("blk.0.attn_q.weight");
  EXPECT_EQ(e.n_cols, 3);
  EXPECT_EQ(e.counts, (std::vector<int64_t>{10 * 256}));
  const auto v = e.values();  // what llama-quantize uses: value / ncall
  EXPECT_FLOAT_EQ(v[0], 0.4f);
  EXPECT_FLOAT_EQ(v[1], 1.0f);
  EXPECT_FLOAT_EQ(v[2], 0.05f);
  EXPECT_FLOAT_EQ(im.find("blk.0.ffn_up_exps.weight")->values()[3], 4.0f);

  // The trailer is optional, as in llama.cpp's loader.
  const auto bare = Dat{}.put<int32_t>(1).entry("w", 2, {2.0f, 4.0f}).write("bare.dat");
  const Imatrix b = Imatrix::load(bare.string());
  EXPECT_EQ(b.chunk_count, 0u);
  EXPECT_TRUE(b.datasets.empty());
  EXPECT_FLOAT_EQ(b.find("w")->values()[1], 2.0f);

  // A flat legacy entry merges into a per-expert one of the same size.
  Imatrix moe;
  moe.add_expert("blk.0.ffn_up_exps.weight", 0, 2, random_rows(4, 2, 8), 2);
  moe.merge(im);
  const ImatrixEntry& m = *moe.find("blk.0.ffn_up_exps.weight");
  EXPECT_EQ(m.n_experts, 2);
  EXPECT_EQ(m.counts, (std::vector<int64_t>{4 + 3 * 256, 3 * 256}));
}

TEST(Imatrix, BadFiles) {
  const auto good = Dat{}.put<int32_t>(1).entry("w", 2, {2.0f, 4.0f}).put<int32_t>(2).str("d").b;
  // Every truncation inside the entries is an error (cuts in the optional
  // trailer are errors too unless they fall exactly on a field boundary).
  const size_t entries_end = 4 + 4 + 1 + 4 + 4 + 8;
  for (size_t n = 0; n < good.size(); ++n) {
    Dat d;
    d.b.assign(good.begin(), good.begin() + ptrdiff_t(n));
    const auto p = d.write("trunc.dat");
    if (n == entries_end || n == entries_end + 4) {
      EXPECT_NO_THROW(Imatrix::load(p.string())) << n;
    } else {
      EXPECT_THROW(Imatrix::load(p.string()), Error) << "prefix " << n;
    }
  }
  auto expect_bad = [](const Dat& d, const std::string& problem) {
    const auto p = d.write("bad.dat");
    expect_error([&] { Imatrix::load(p.string()); }, p.string(), problem);
  };
  expect_bad(Dat{}.put<int32_t>(0), "0 legacy entries");
  expect_bad(Dat{}.put<int32_t>(1).put<int32_t>(-3), "name length -3");
  expect_bad(Dat{}.put<int32_t>(1).str("w").put<int32_t>(1).put<int32_t>(0), "value count 0");
  expect_bad(Dat{}.put<int32_t>(1).str("w").put<int32_t>(1).put<int32_t>(1 << 30), "truncated values");
  expect_bad(Dat{}.put<int32_t>(1).str("w").put<int32_t>(-1).put<int32_t>(1).put<float>(1), "negative call count");
  expect_bad(Dat{}.put<int32_t>(1).entry("w", 1, {NAN}), "value 0 is nan");
  expect_bad(Dat{}.put<int32_t>(2).entry("w", 1, {1}).entry("w", 1, {1}), "duplicate entry");
  expect_bad(Dat{}.put<int32_t>(1).entry("w", 1, {1}).put<int32_t>(1).str("d").put<int32_t>(7), "unexpected bytes");

  // GGUF: pairs, types, shapes and values are checked.
  auto gguf = [](const std::string& name, const std::function<void(GgufWriter&)>& fill) {
    const auto p = (temp_dir() / name).string();
    GgufWriter w(p);
    fill(w);
    w.finish();
    return p;
  };
  const std::vector<float> two = {1.0f, 2.0f}, one = {3.0f};
  auto p = gguf("unpaired.gguf", [&](GgufWriter& w) {
    w.add_tensor("x.in_sum2", {2}, GgmlType::F32);
    w.write_tensor_data(two.data(), 8);
  });
  expect_error([&] { Imatrix::load(p); }, p, "must come in pairs");
  p = gguf("f16.gguf", [&](GgufWriter& w) {
    w.add_tensor("x.in_sum2", {2}, GgmlType::F16);
    w.add_tensor("x.counts", {1}, GgmlType::F32);
    w.write_tensor_data(one.data(), 4);
    w.write_tensor_data(one.data(), 4);
  });
  expect_error([&] { Imatrix::load(p); }, p, "must be F32");
  p = gguf("shape.gguf", [&](GgufWriter& w) {
    w.add_tensor("x.in_sum2", {2}, GgmlType::F32);
    w.add_tensor("x.counts", {1, 2}, GgmlType::F32);
    w.write_tensor_data(two.data(), 8);
    w.write_tensor_data(two.data(), 8);
  });
  expect_error([&] { Imatrix::load(p); }, p, "does not match 2 counts");
  const std::vector<float> neg = {-1.0f, 2.0f};
  p = gguf("neg.gguf", [&](GgufWriter& w) {
    w.add_tensor("x.in_sum2", {2}, GgmlType::F32);
    w.add_tensor("x.counts", {1}, GgmlType::F32);
    w.write_tensor_data(neg.data(), 8);
    w.write_tensor_data(one.data(), 4);
  });
  expect_error([&] { Imatrix::load(p); }, p, "bad squared sum");
  p = gguf("stray.gguf", [&](GgufWriter& w) {
    w.add_tensor("token_embd.weight", {1}, GgmlType::F32);
    w.write_tensor_data(one.data(), 4);
  });
  expect_error([&] { Imatrix::load(p); }, p, "neither .in_sum2 nor .counts");
  p = gguf("badkey.gguf", [&](GgufWriter& w) {
    w.set("imatrix.chunk_count", GgufValue::str("nine"));
    w.add_tensor("x.in_sum2", {1}, GgmlType::F32);
    w.add_tensor("x.counts", {1}, GgmlType::F32);
    w.write_tensor_data(one.data(), 4);
    w.write_tensor_data(one.data(), 4);
  });
  expect_error([&] { Imatrix::load(p); }, p, "imatrix.chunk_count is not");
}
