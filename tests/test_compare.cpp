// tailor compare on the trained llama-30m fixture: the recipes' KL divergence
// rises as they shrink, a hand-written all-Q8_0 strategy measures exactly as
// the Q8_0 recipe does, the sizes agree with the GGUF `tailor quantize`
// writes, the charts are real files, and every bad input is a one-line error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "tailor/engine/model.h"
#include "tailor/formats/gguf.h"
#include "tailor/plan/compare.h"
#include "tailor/util/error.h"

namespace fs = std::filesystem;
using nlohmann::json;
using tailor::test::run_cli;

namespace {

const std::string kShared = TAILOR_SHARED_DIR;
const std::string kModel = kShared + "/models/llama-30m";
const std::string kText = kShared + "/text/eval.txt";
// Small enough for seconds on two cores.
const std::string kSmall = "--ctx 256 --windows 4";

std::string work_dir() {
  static const std::string d = [] {
    const std::string p = (fs::path(TAILOR_CLI_PATH).parent_path() / "test-work" / "compare").string();
    fs::create_directories(p);
    return p;
  }();
  return d;
}

// Whether `path` was made by the CLI as it is now (not by an older build).
bool fresh(const std::string& path) {
  return fs::exists(path) && fs::last_write_time(path) >= fs::last_write_time(TAILOR_CLI_PATH);
}

void write_text(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  std::ofstream(tmp, std::ios::binary) << text;
  fs::rename(tmp, path);
}

tailor::plan::StrategyTensor named(const std::string& name, const std::string& type) {
  tailor::plan::StrategyTensor t;
  t.name = name;
  t.type = type;
  return t;
}

// Every quantizable tensor of the model in `type`, written as a strategy file.
std::string uniform_strategy(const std::string& type) {
  const std::string path = work_dir() + "/all_" + type + ".yaml";
  if (fresh(path)) return path;
  const tailor::engine::Model model = tailor::engine::Model::load(kModel);
  tailor::plan::Strategy s;
  s.model.source = kModel;
  s.model.arch = "llama";
  for (const tailor::plan::TensorOptions& t : tailor::plan::quantizable_tensors(model))
    s.tensors.push_back(named(t.name, type));
  tailor::plan::write_strategy(path, s);
  return path;
}

// One compare run shared by the tests (each test is its own process under ctest).
const json& shared_run() {
  static const json j = [] {
    const std::string out = work_dir() + "/run.json";
    if (!fresh(out)) {
      const std::string strategy = uniform_strategy("Q8_0");
      const auto r = run_cli("compare " + kModel + " --text " + kText + " " + kSmall +
                             " --baselines Q8_0,Q6_K,Q4_K_M,Q2_K --strategy " + strategy + " --chart " + work_dir() +
                             "/chart.svg --chart " + work_dir() + "/chart.png --json");
      EXPECT_EQ(r.exit_code, 0) << r.err;
      if (r.exit_code != 0) return json();
      write_text(out, r.out);
    }
    return json::parse(tailor::test::slurp(out));
  }();
  return j;
}

const json* entry(const json& j, const std::string& name) {
  for (const json& e : j["entries"])
    if (e["name"] == name) return &e;
  return nullptr;
}

TEST(Compare, KldRisesAsRecipesShrink) {
  const json& j = shared_run();
  ASSERT_TRUE(j.contains("entries"));
  EXPECT_EQ(j["windows"], 4);
  EXPECT_EQ(j["ctx"], 256);
  const std::vector<std::string> order = {"Q8_0", "Q6_K", "Q4_K_M", "Q2_K"};
  for (size_t i = 0; i + 1 < order.size(); ++i) {
    const json* big = entry(j, order[i]);
    const json* small = entry(j, order[i + 1]);
    ASSERT_TRUE(big && small) << order[i];
    EXPECT_GT((*big)["bytes"].get<int64_t>(), (*small)["bytes"].get<int64_t>()) << order[i];
    EXPECT_LT((*big)["kld"]["value"].get<double>(), (*small)["kld"]["value"].get<double>()) << order[i];
    EXPECT_LE((*big)["kld_p99"].get<double>(), (*small)["kld_p99"].get<double>()) << order[i];
  }
  const json& q8 = *entry(j, "Q8_0");
  EXPECT_GT(q8["kld"]["value"].get<double>(), 0.0);
  EXPECT_LT(q8["kld"]["value"].get<double>(), 1e-3);
  EXPECT_GT(q8["same_top"]["value"].get<double>(), 0.97);
  // Q8_0 is 8.5 bits a weight, the norms add a little.
  EXPECT_NEAR(q8["bpw"].get<double>(), 8.5, 0.05);
  // The table is sorted by size.
  int64_t last = 0;
  for (const json& e : j["entries"]) {
    EXPECT_GE(e["bytes"].get<int64_t>(), last);
    last = e["bytes"];
    // ΔPPL is PPL minus the reference's.
    EXPECT_NEAR(e["ppl_diff"]["value"].get<double>(),
                e["ppl"]["value"].get<double>() - j["ppl_base"]["value"].get<double>(), 1e-6);
  }
}

TEST(Compare, UniformStrategyMeasuresAsTheRecipe) {
  // Precondition: llama.cpp's Q8_0 recipe makes every tensor Q8_0 (output and
  // embedding included), so a strategy saying the same must measure the same.
  const tailor::plan::TypeMap recipe =
      tailor::plan::recipe_types(kModel, tailor::recipe_named("Q8_0"), nullptr);
  for (const auto& [name, type] : recipe) EXPECT_EQ(type, tailor::GgmlType::Q8_0) << name;
  const json& j = shared_run();
  const json* s = entry(j, "all_Q8_0");
  const json* q8 = entry(j, "Q8_0");
  ASSERT_TRUE(s && q8);
  EXPECT_EQ((*s)["kind"], "strategy");
  EXPECT_EQ((*q8)["kind"], "recipe");
  EXPECT_EQ((*s)["bytes"], (*q8)["bytes"]);
  for (const char* k : {"kld", "ppl", "same_top"})
    EXPECT_DOUBLE_EQ((*s)[k]["value"].get<double>(), (*q8)[k]["value"].get<double>()) << k;
  EXPECT_DOUBLE_EQ((*s)["kld_p99"].get<double>(), (*q8)["kld_p99"].get<double>());
}

// The recipe's own types written out as a strategy: mixed types, not one for all.
std::string recipe_strategy(const std::string& recipe) {
  const std::string path = work_dir() + "/as_" + recipe + ".json";
  if (fresh(path)) return path;
  tailor::plan::Strategy s;
  for (const auto& [name, type] : tailor::plan::recipe_types(kModel, tailor::recipe_named(recipe), nullptr))
    s.tensors.push_back(named(name, std::string(tailor::type_name(type))));
  tailor::plan::write_strategy(path, s);
  return path;
}

TEST(Compare, OneImportanceMatrixForRecipesAndStrategies) {
  const std::string calib = kShared + "/text/calibration.txt";
  const std::string strategy = recipe_strategy("Q4_K_M");
  const auto r = run_cli("compare " + kModel + " --text " + kText + " " + kSmall + " --calib " + calib +
                         " --calib-chunks 2 --baselines Q4_K_M --strategy " + strategy + " --json -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");  // -q
  const json j = json::parse(r.out);
  EXPECT_NE(j["imatrix"].get<std::string>().find("calibration.txt"), std::string::npos);
  const json* recipe = entry(j, "Q4_K_M");
  const json* mixed = entry(j, "as_Q4_K_M");
  ASSERT_TRUE(recipe && mixed);
  // The same types with the same importance values measure the same.
  EXPECT_EQ((*recipe)["bytes"], (*mixed)["bytes"]);
  EXPECT_DOUBLE_EQ((*recipe)["kld"]["value"].get<double>(), (*mixed)["kld"]["value"].get<double>());
  // ... and the importance values did reach the quantizers: without them
  // (the shared run, same windows) the K-quants round differently.
  const json* plain = entry(shared_run(), "Q4_K_M");
  ASSERT_TRUE(plain);
  EXPECT_EQ((*plain)["bytes"], (*recipe)["bytes"]);
  EXPECT_NE((*plain)["kld"]["value"].get<double>(), (*recipe)["kld"]["value"].get<double>());

  // A saved matrix from the same windows gives the same result as collecting it here.
  const std::string im = work_dir() + "/calib2.gguf";
  const auto made = run_cli("imatrix " + kModel + " --text " + calib + " --ctx 256 --chunks 2 -o " + im + " -q");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const auto r2 = run_cli("compare " + kModel + " --text " + kText + " " + kSmall + " --imatrix " + im +
                          " --baselines Q4_K_M --json -q");
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  const json j2 = json::parse(r2.out);
  const json* loaded = entry(j2, "Q4_K_M");
  ASSERT_TRUE(loaded);
  EXPECT_NEAR((*loaded)["kld"]["value"].get<double>(), (*recipe)["kld"]["value"].get<double>(),
              1e-3 * (*recipe)["kld"]["value"].get<double>());
}

TEST(Compare, SizesAgreeWithTheQuantizedFile) {
  const std::string gguf = work_dir() + "/q4_k_m.gguf";
  if (!fresh(gguf)) {
    const auto r = run_cli("quantize " + kModel + " -o " + gguf + " --type Q4_K_M -q");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  const tailor::GgufFile g = tailor::GgufFile::open(gguf);
  const tailor::plan::TypeMap types =
      tailor::plan::recipe_types(kModel, tailor::recipe_named("Q4_K_M"), nullptr);
  int64_t file_bytes = 0;
  for (const tailor::GgufTensorInfo& t : g.tensors()) {
    file_bytes += int64_t(t.nbytes);
    const auto it = types.find(t.name);
    EXPECT_EQ(it == types.end() ? tailor::GgmlType::F32 : it->second, t.type) << t.name;
  }
  const json* q4 = entry(shared_run(), "Q4_K_M");
  ASSERT_TRUE(q4);
  EXPECT_EQ((*q4)["bytes"].get<int64_t>(), file_bytes);
  const tailor::engine::Model model = tailor::engine::Model::load(kModel);
  EXPECT_EQ(tailor::plan::assignment_bytes(model, types), file_bytes);
}

TEST(Compare, ChartsAreWritten) {
  ASSERT_TRUE(shared_run().contains("entries"));
  const std::string png = tailor::test::slurp(work_dir() + "/chart.png");
  ASSERT_GT(png.size(), 8u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  const std::string svg = tailor::test::slurp(work_dir() + "/chart.svg");
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  for (const char* label : {"Q8_0", "Q6_K", "Q4_K_M", "Q2_K", "all_Q8_0", "bits per weight", "llama.cpp recipes"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
}

TEST(Compare, ChartDrawsStrategiesAsALine) {
  tailor::plan::CompareResult r;
  auto add = [&](const std::string& name, bool baseline, double bpw, double kld) {
    tailor::plan::CompareEntry e;
    e.name = name;
    e.baseline = baseline;
    e.result.bpw = bpw;
    e.result.report.kld.value = kld;
    r.entries.push_back(e);
  };
  add("Q4_K_M", true, 5.0, 0.016);
  add("plan-6", false, 6.0, 0.002);
  add("Q8_0", true, 8.5, 1.5e-4);
  add("plan-4.5", false, 4.5, 0.012);
  const tailor::report::Chart c = tailor::plan::compare_chart(r);
  EXPECT_TRUE(c.y_log);
  EXPECT_FALSE(c.x_log);
  ASSERT_EQ(c.series.size(), 2u);
  EXPECT_EQ(c.series[0].style, tailor::report::SeriesStyle::points);
  ASSERT_EQ(c.series[0].points.size(), 2u);
  EXPECT_EQ(c.series[0].points[1].label, "Q8_0");
  EXPECT_EQ(c.series[1].style, tailor::report::SeriesStyle::line);
  ASSERT_EQ(c.series[1].points.size(), 2u);
  EXPECT_EQ(c.series[1].points[0].label, "plan-4.5");
  EXPECT_DOUBLE_EQ(c.series[1].points[1].y, 0.002);
  // A single strategy is a point, not a line of one.
  r.entries.erase(r.entries.begin() + 1);  // plan-6
  EXPECT_EQ(tailor::plan::compare_chart(r).series[1].style, tailor::report::SeriesStyle::points);
}

TEST(Compare, TableIsSortedBySize) {
  const auto r = run_cli("compare " + kModel + " --text " + kText + " --ctx 128 --windows 1 --baselines Q2_K,Q8_0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const size_t q2 = r.out.find("\nQ2_K "), q8 = r.out.find("\nQ8_0 ");
  ASSERT_NE(q2, std::string::npos) << r.out;
  ASSERT_NE(q8, std::string::npos) << r.out;
  EXPECT_LT(q2, q8);
  for (const char* h : {"size MiB", "bpw", "PPL", "ΔPPL", "mean KLD ± err", "99% KLD", "same top"})
    EXPECT_NE(r.out.find(h), std::string::npos) << h;
  // Progress: one line per entry on stderr, with its time.
  EXPECT_NE(r.err.find("Q2_K"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" s\n"), std::string::npos) << r.err;
}

void expect_one_line_error(const std::string& args, const std::vector<std::string>& says) {
  const auto r = run_cli("compare " + args);
  EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.err;
  EXPECT_EQ(tailor::test::count_lines(r.err), 1) << r.err;
  for (const std::string& s : says) EXPECT_NE(r.err.find(s), std::string::npos) << s << " in: " << r.err;
}

TEST(Compare, UnknownBaselineListsTheKnownOnes) {
  expect_one_line_error(kModel + " --text " + kText + " --baselines Q8_0,Q9_K",
                        {"Q9_K", "Q4_K_M", "IQ4_XS"});
}

TEST(Compare, StrategyForAnotherModel) {
  tailor::plan::Strategy s = tailor::plan::read_strategy(uniform_strategy("Q8_0"));
  for (tailor::plan::StrategyTensor& t : s.tensors)
    t.name.replace(0, 0, "model.");  // names no llama tensor has
  const std::string path = work_dir() + "/foreign.yaml";
  tailor::plan::write_strategy(path, s);
  expect_one_line_error(kModel + " --text " + kText + " --strategy " + path,
                        {"foreign.yaml", "not in the model", "another model"});

  // One tensor too many (the next layer) is named with the nearest real one.
  s = tailor::plan::read_strategy(uniform_strategy("Q8_0"));
  s.tensors.push_back(named("blk.8.attn_q.weight", "Q8_0"));
  tailor::plan::write_strategy(path, s);
  expect_one_line_error(kModel + " --text " + kText + " --strategy " + path,
                        {"blk.8.attn_q.weight", "not in the model"});
}

TEST(Compare, StrategyWithBadTypeOrMissingTensor) {
  tailor::plan::Strategy s = tailor::plan::read_strategy(uniform_strategy("Q8_0"));
  s.tensors[3].type = "Q4_KM";
  const std::string path = work_dir() + "/typo.yaml";
  tailor::plan::write_strategy(path, s);
  expect_one_line_error(kModel + " --text " + kText + " --strategy " + path,
                        {"typo.yaml", s.tensors[3].name, "unknown type 'Q4_KM'", "Q4_K"});

  s = tailor::plan::read_strategy(uniform_strategy("Q8_0"));
  const std::string dropped = s.tensors.back().name;
  s.tensors.pop_back();
  tailor::plan::write_strategy(path, s);
  expect_one_line_error(kModel + " --text " + kText + " --strategy " + path, {dropped, "missing"});
}

TEST(Compare, UnreadableInputs) {
  expect_one_line_error(kModel + " --text " + kText + " --strategy " + work_dir() + "/absent.yaml", {"absent.yaml"});
  expect_one_line_error(kModel + " --text " + work_dir() + "/absent.txt --baselines Q8_0", {"absent.txt"});
  expect_one_line_error(kModel + " --text " + kText + " --baselines Q8_0 --imatrix " + work_dir() + "/absent.gguf",
                        {"absent.gguf"});
  expect_one_line_error(kShared + "/nowhere --text " + kText + " --baselines Q8_0", {"nowhere"});
  expect_one_line_error(kModel + " --text " + kText + " --baselines Q8_0 --chart " + work_dir() + "/c.jpg",
                        {"c.jpg", ".svg or .png"});
  expect_one_line_error(kModel + " --text " + kText, {"nothing to compare"});
  // Garbage where a strategy should be.
  const std::string junk = work_dir() + "/junk.json";
  write_text(junk, "{\"version\": 1, \"tensors\": [1, 2");
  expect_one_line_error(kModel + " --text " + kText + " --strategy " + junk, {"junk.json"});
}

TEST(Compare, RecipeNeedingAnImatrixWithoutOne) {
  expect_one_line_error(kModel + " --text " + kText + " --baselines IQ2_XXS", {"IQ2_XXS"});
}

}  // namespace
