// `tailor inspect` as a user runs it: data on the fixtures, clean errors on bad input.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_runner.h"

using tailor::test::count_lines;
using tailor::test::run_cli;

namespace {

const std::string kLlama = std::string(TAILOR_SHARED_DIR) + "/models/llama-30m";

std::string write_file(const std::string& name, const std::string& bytes) {
  std::string path = tailor::test::temp_dir() + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

}  // namespace

TEST(CliInspect, HuggingFaceFolderAsJson) {
  auto r = run_cli("inspect " + kLlama + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["format"], "huggingface");
  EXPECT_EQ(j["architecture"], "LlamaForCausalLM");
  EXPECT_EQ(j["hyperparameters"]["hidden_size"], 512);
  EXPECT_EQ(j["tensors"].size(), 75u);
  EXPECT_EQ(j["totals"]["parameters"], 30417408);
  EXPECT_EQ(j["totals"]["bytes"], 2 * 30417408);
  EXPECT_DOUBLE_EQ(j["totals"]["bits_per_weight"].get<double>(), 16.0);
  bool found = false;
  for (const auto& t : j["tensors"])
    if (t["name"] == "model.layers.3.mlp.down_proj.weight") {
      found = true;
      EXPECT_EQ(t["shape"], nlohmann::json({512, 1280}));
      EXPECT_EQ(t["type"], "BF16");
    }
  EXPECT_TRUE(found);
}

TEST(CliInspect, TextTableShowsTotals) {
  auto r = run_cli("inspect " + kLlama);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("architecture: LlamaForCausalLM"), std::string::npos);
  EXPECT_NE(r.out.find("model.embed_tokens.weight"), std::string::npos);
  EXPECT_NE(r.out.find("total: 75 tensors, 30417408 parameters"), std::string::npos) << r.out;
}

TEST(CliInspect, MissingPathIsOneLineError) {
  auto r = run_cli("inspect /nonexistent/model.gguf");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/model.gguf"), std::string::npos) << r.err;
}

TEST(CliInspect, TruncatedGgufIsOneLineError) {
  // Magic and version, then the header stops in the middle of the tensor count.
  std::string bytes = std::string("GGUF") + std::string("\x03\x00\x00\x00", 4) + std::string("\x01\x00", 2);
  std::string path = write_file("truncated.gguf", bytes);
  auto r = run_cli("inspect " + path);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(path), std::string::npos) << r.err;
}

TEST(CliInspect, GarbageSafetensorsIsOneLineError) {
  // A header length far past the end of the file.
  std::string bytes("\xff\xff\xff\xff\xff\xff\x00\x00{}", 10);
  std::string path = write_file("garbage.safetensors", bytes);
  auto r = run_cli("inspect " + path);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(path), std::string::npos) << r.err;
}

TEST(CliInspect, HelpDescribesOptions) {
  auto r = run_cli("inspect --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--json"), std::string::npos);
  auto top = run_cli("--help");
  EXPECT_EQ(top.exit_code, 0);
  EXPECT_NE(top.out.find("inspect"), std::string::npos);
  EXPECT_NE(top.out.find("convert"), std::string::npos);
}
