// Grid i-quants: dequantization against ggml's recorded output, codebook
// integrity, and robustness against arbitrary bytes.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "ggml_vectors.h"
#include "tailor/quant/codec.h"
#include "tailor/quant/iq_grids.h"
#include "tailor/quant/types.h"
#include "tailor/util/error.h"

using namespace tailor;
using tailor::test::expect_dequantize_bit_exact;

namespace {

constexpr GgmlType kGridTypes[] = {GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ2_S,
                                   GgmlType::IQ3_XXS, GgmlType::IQ3_S,  GgmlType::IQ1_S,
                                   GgmlType::IQ1_M};

// FNV-1a 64 over each entry's little-endian bytes.
template <typename T>
uint64_t fingerprint(const T* table, int n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int i = 0; i < n; ++i)
    for (size_t j = 0; j < sizeof(T); ++j) {
      h ^= (uint64_t(table[i]) >> (8 * j)) & 0xffu;
      h *= 0x100000001b3ull;
    }
  return h;
}

template <typename T>
std::set<unsigned> byte_values(const T* table, int n) {
  std::set<unsigned> out;
  for (int i = 0; i < n; ++i)
    for (size_t j = 0; j < sizeof(T); ++j)
      out.insert(unsigned(uint64_t(table[i]) >> (8 * j)) & 0xffu);
  return out;
}

template <typename T>
size_t distinct(const T* table, int n) {
  return std::set<T>(table, table + n).size();
}

}  // namespace

TEST(IqDequant, Iq2xxsBitExact) { expect_dequantize_bit_exact(GgmlType::IQ2_XXS); }
TEST(IqDequant, Iq2xsBitExact) { expect_dequantize_bit_exact(GgmlType::IQ2_XS); }
TEST(IqDequant, Iq2sBitExact) { expect_dequantize_bit_exact(GgmlType::IQ2_S); }
TEST(IqDequant, Iq3xxsBitExact) { expect_dequantize_bit_exact(GgmlType::IQ3_XXS); }
TEST(IqDequant, Iq3sBitExact) { expect_dequantize_bit_exact(GgmlType::IQ3_S); }
TEST(IqDequant, Iq1sBitExact) { expect_dequantize_bit_exact(GgmlType::IQ1_S); }
TEST(IqDequant, Iq1mBitExact) { expect_dequantize_bit_exact(GgmlType::IQ1_M); }

// The vectors touch only part of each codebook, so the tables are also pinned
// by fingerprints. The expected values were computed by a separate script
// straight from ggml-common.h's tables, not from our transcription.
TEST(IqGrids, FingerprintsMatchGgml) {
  using namespace tailor::quant;
  EXPECT_EQ(fingerprint(kIq2xxsGrid, kIq2xxsGridSize), 0xbb4ee025b5ac6e8eull);
  EXPECT_EQ(fingerprint(kIq2xsGrid, kIq2xsGridSize), 0xc9b1ee61e79909bdull);
  EXPECT_EQ(fingerprint(kIq2sGrid, kIq2sGridSize), 0x123edd38a3b62b90ull);
  EXPECT_EQ(fingerprint(kIq3xxsGrid, kIq3xxsGridSize), 0xdfa5dc83d6a155d5ull);
  EXPECT_EQ(fingerprint(kIq3sGrid, kIq3sGridSize), 0xfa37020c25b44829ull);
  EXPECT_EQ(fingerprint(kIq1sGrid, kIq1sGridSize), 0x6703ed863501ae2eull);
}

// Structure the formats rely on: no duplicate codewords, only the lattice's values.
TEST(IqGrids, EntriesAreDistinctLatticePoints) {
  using namespace tailor::quant;
  EXPECT_EQ(distinct(kIq2xxsGrid, kIq2xxsGridSize), size_t(kIq2xxsGridSize));
  EXPECT_EQ(distinct(kIq2xsGrid, kIq2xsGridSize), size_t(kIq2xsGridSize));
  EXPECT_EQ(distinct(kIq2sGrid, kIq2sGridSize), size_t(kIq2sGridSize));
  EXPECT_EQ(distinct(kIq3xxsGrid, kIq3xxsGridSize), size_t(kIq3xxsGridSize));
  EXPECT_EQ(distinct(kIq3sGrid, kIq3sGridSize), size_t(kIq3sGridSize));
  EXPECT_EQ(distinct(kIq1sGrid, kIq1sGridSize), size_t(kIq1sGridSize));
  const std::set<unsigned> iq2{8, 25, 43};
  EXPECT_EQ(byte_values(kIq2xxsGrid, kIq2xxsGridSize), iq2);
  EXPECT_EQ(byte_values(kIq2xsGrid, kIq2xsGridSize), iq2);
  EXPECT_EQ(byte_values(kIq2sGrid, kIq2sGridSize), iq2);
  EXPECT_EQ(byte_values(kIq3xxsGrid, kIq3xxsGridSize),
            (std::set<unsigned>{4, 12, 20, 28, 36, 44, 52, 62}));
  EXPECT_EQ(byte_values(kIq3sGrid, kIq3sGridSize), (std::set<unsigned>{1, 3, 5, 7, 9, 11, 13, 15}));
  EXPECT_EQ(byte_values(kIq1sGrid, kIq1sGridSize), (std::set<unsigned>{0x00, 0x01, 0xff}));
}

TEST(IqGrids, SignTableHasEvenParity) {
  for (unsigned i = 0; i < 128; ++i) {
    unsigned s = quant::kSignsWithParity[i];
    EXPECT_EQ(s & 127u, i);
    EXPECT_EQ(std::popcount(s) % 2, 0) << i;
  }
}

// Arbitrary bytes (every index field at every value) must neither crash nor
// read past the row. Each row lives in its own exactly-sized heap buffer so
// AddressSanitizer (-DTAILOR_SANITIZE=ON) flags any overread, and every output
// element must be written.
TEST(IqDequant, RandomBytesStayInBounds) {
  std::mt19937_64 rng(0x1a2b3c4d);
  constexpr uint32_t kSentinel = 0x7fc0dead;  // a NaN no kernel produces
  for (GgmlType t : kGridTypes) {
    for (int64_t n : {256, 1280}) {
      for (int trial = 0; trial < 64; ++trial) {
        size_t bytes = row_size(t, n);
        auto q = std::make_unique<uint8_t[]>(bytes);
        // Alternate uniform noise with all-ones and all-zeros rows: extremes of every field.
        for (size_t k = 0; k < bytes; ++k)
          q[k] = trial == 0 ? 0xff : trial == 1 ? 0x00 : static_cast<uint8_t>(rng());
        auto y = std::make_unique<float[]>(n);
        for (int64_t k = 0; k < n; ++k) std::memcpy(&y[k], &kSentinel, 4);
        dequantize_row(t, q.get(), y.get(), n);
        int64_t unwritten = 0;
        for (int64_t k = 0; k < n; ++k) unwritten += std::bit_cast<uint32_t>(y[k]) == kSentinel;
        EXPECT_EQ(unwritten, 0) << type_name(t) << " n=" << n << " trial " << trial;
      }
    }
  }
}

// A zero super-block scale zeroes every value (either sign) whatever the other
// fields hold: shows where each format keeps its scale, IQ1_M's split one included.
TEST(IqDequant, ZeroScaleGivesZeros) {
  std::mt19937_64 rng(7);
  for (GgmlType t : kGridTypes) {
    size_t bytes = row_size(t, 256);
    std::vector<uint8_t> q(bytes);
    for (auto& b : q) b = static_cast<uint8_t>(rng());
    // Clear the f16 super-block scale: bytes 0-1, or for IQ1_M the top nibbles of its 4 scale
    // words.
    if (t == GgmlType::IQ1_M) {
      for (int k = 0; k < 4; ++k) q[48 + 2 * k + 1] &= 0x0f;
    } else {
      q[0] = q[1] = 0;
    }
    std::vector<float> y(256);
    dequantize_row(t, q.data(), y.data(), 256);
    for (float v : y) ASSERT_EQ(v, 0.0f) << type_name(t);
  }
}

// Quantizers: error against ggml's own on the same inputs (sse plain, wsse with imatrix).
TEST(IqQuantize, Iq3xxsErrorMatchesGgml) { test::expect_quantize_error_ok(GgmlType::IQ3_XXS); }
TEST(IqQuantize, Iq3sErrorMatchesGgml) { test::expect_quantize_error_ok(GgmlType::IQ3_S); }
TEST(IqQuantize, Iq2sErrorMatchesGgml) { test::expect_quantize_error_ok(GgmlType::IQ2_S); }

// Degenerate rows (all zero, constant, subnormal, huge, NaN/inf, zero
// importance) must not crash or leave the grid; finite moderate inputs must
// dequantize to finite values, and an all-zero row to all zeros.
TEST(IqQuantize, DegenerateRowsAreSafe) {
  const float inf = INFINITY, nan = NAN;
  for (GgmlType t : kGridTypes) {
    if (!type_info(t).can_quantize) continue;
    const int64_t n = 512;
    std::vector<std::vector<float>> rows;
    rows.push_back(std::vector<float>(n, 0.f));
    rows.push_back(std::vector<float>(n, 0.05f));
    rows.push_back(std::vector<float>(n, -1e-40f));
    rows.push_back(std::vector<float>(n, 3e4f));
    std::vector<float> mixed(n);
    for (int64_t i = 0; i < n; ++i) mixed[i] = (i % 3 == 0) ? 0.f : float(i % 17) - 8.f;
    rows.push_back(mixed);
    const size_t finite_rows = rows.size();
    auto bad = mixed;
    bad[5] = nan, bad[300] = inf, bad[301] = -inf;
    rows.push_back(bad);
    std::vector<float> zero_imp(n, 0.f), imp(n, 1.f);
    for (size_t r = 0; r < rows.size(); ++r) {
      const float* importances[] = {nullptr, imp.data(), zero_imp.data()};
      for (const float* w : importances) {
        if (w == nullptr && type_info(t).requires_imatrix) continue;
        std::vector<uint8_t> q(row_size(t, n));
        quantize_row(t, rows[r].data(), q.data(), n, w);
        std::vector<float> y(n);
        dequantize_row(t, q.data(), y.data(), n);
        if (r >= finite_rows) continue;
        for (float v : y) ASSERT_TRUE(std::isfinite(v)) << type_name(t) << " row " << r;
        if (r == 0) {
          for (float v : y) ASSERT_EQ(v, 0.f) << type_name(t);
        }
      }
    }
  }
}
TEST(IqQuantize, Iq2xxsErrorMatchesGgml) { test::expect_quantize_error_ok(GgmlType::IQ2_XXS); }
TEST(IqQuantize, Iq2xsErrorMatchesGgml) { test::expect_quantize_error_ok(GgmlType::IQ2_XS); }
TEST(IqQuantize, Iq1sErrorMatchesGgml) { test::expect_quantize_error_ok(GgmlType::IQ1_S); }
TEST(IqQuantize, Iq1mErrorMatchesGgml) { test::expect_quantize_error_ok(GgmlType::IQ1_M); }

// Same search in the same float operation order as ggml, so the bytes match
// ggml's own .q files row for row (this build has no FMA contraction, like
// the reference). One exception: ggml's IQ3_S stops advancing its code and
// sign pointers after an all-zero sub-block, misplacing the rest of that
// super-block; synth512 has such blocks, and there we differ (and win, see
// Iq3sErrorMatchesGgml).
TEST(IqQuantize, BytesMatchGgml) {
  for (GgmlType t :
       {GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ2_S, GgmlType::IQ3_XXS, GgmlType::IQ3_S}) {
    std::string tname(type_name(t));
    const auto& results = test::manifest()["results"][tname];
    for (auto it = results.begin(); it != results.end(); ++it) {
      if (t == GgmlType::IQ3_S && it.key() == "synth512") continue;
      test::VectorSet s = test::load_set(it.key());
      for (const char* mode : {"plain", "imatrix"}) {
        if (!it.value().contains(mode)) continue;
        auto ref = test::read_bytes(test::vectors_dir() + "/" +
                                    it.value()[mode]["q_file"].get<std::string>());
        std::vector<uint8_t> q(ref.size());
        const float* w = std::string(mode) == "imatrix" ? s.imatrix.data() : nullptr;
        quantize_rows(t, s.input.data(), q.data(), s.rows, s.cols, w, 1);
        size_t rb = row_size(t, s.cols);
        int64_t differing = 0;
        for (int64_t r = 0; r < s.rows; ++r)
          differing += std::memcmp(q.data() + r * rb, ref.data() + r * rb, rb) != 0;
        EXPECT_EQ(differing, 0) << tname << " " << s.name << " " << mode;
      }
    }
  }
}

TEST(IqQuantize, MissingImportanceIsAnError) {
  std::vector<float> x(256, 0.1f);
  for (GgmlType t : {GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ1_S}) {
    std::vector<uint8_t> q(row_size(t, 256));
    EXPECT_THROW(quantize_row(t, x.data(), q.data(), 256, nullptr), Error) << type_name(t);
  }
}
