#include <gtest/gtest.h>

#include "ggml_vectors.h"
#include "tailor/quant/types.h"
#include "tailor/util/error.h"

using namespace tailor;

TEST(TypeCatalog, MatchesVectorManifest) {
  int n = 0;
  for (const auto& t : test::manifest()["types"]) {
    const TypeInfo* info = find_type(t["name"].get<std::string>());
    ASSERT_NE(info, nullptr) << t["name"];
    EXPECT_EQ(static_cast<uint32_t>(info->type), t["ggml_type_id"].get<uint32_t>()) << info->name;
    EXPECT_EQ(info->block_size, t["block_size"].get<int>()) << info->name;
    EXPECT_EQ(info->bytes_per_block, t["bytes_per_block"].get<int>()) << info->name;
    EXPECT_DOUBLE_EQ(info->bits_per_weight(), t["bits_per_weight"].get<double>()) << info->name;
    EXPECT_EQ(info->requires_imatrix, t["requires_imatrix"].get<bool>()) << info->name;
    ++n;
  }
  EXPECT_EQ(n, 23);
}

TEST(TypeCatalog, LookupAndRowFit) {
  EXPECT_EQ(find_type("q4_k")->type, GgmlType::Q4_K);
  EXPECT_EQ(find_type(uint32_t(8))->type, GgmlType::Q8_0);
  EXPECT_EQ(find_type("nope"), nullptr);
  EXPECT_EQ(find_type(uint32_t(4)), nullptr);  // removed Q4_2
  EXPECT_TRUE(row_fits(GgmlType::Q4_K, 512));
  EXPECT_FALSE(row_fits(GgmlType::Q4_K, 320));
  EXPECT_TRUE(row_fits(GgmlType::Q8_0, 320));
  EXPECT_EQ(row_size(GgmlType::Q6_K, 512), 420u);
  EXPECT_THROW(row_size(GgmlType::Q4_K, 100), Error);
}
