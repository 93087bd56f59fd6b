// Strategy files: YAML and JSON round trips of a real allocation, atomic
// writes, check_strategy on edited files, and hostile input (truncated,
// corrupted, deeply nested, wrong types) that must give one-line Errors.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "format_test_util.h"
#include "tailor/plan/strategy.h"

using namespace tailor;
using namespace tailor::plan;
namespace fs = std::filesystem;

namespace {

const GgmlType kLadder[] = {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                            GgmlType::Q6_K, GgmlType::Q8_0};

TensorOptions tensor(const std::string& name, int64_t rows, int64_t cols, double sensitivity) {
  TensorOptions t{name, rows * cols, cols, {}};
  for (GgmlType ty : kLadder) {
    if (!row_fits(ty, cols)) continue;
    double c = sensitivity * std::pow(2.0, -type_info(ty).bits_per_weight());
    t.options.push_back({ty, static_cast<int64_t>(row_size(ty, cols)) * rows, c, 0.05 * c, ty == GgmlType::Q4_K});
  }
  return t;
}

std::vector<TensorOptions> model() {
  std::vector<TensorOptions> ts;
  for (int l = 0; l < 3; ++l)
    for (const char* part : {"attn_q", "attn_k", "attn_v", "ffn_up"})
      ts.push_back(tensor("blk." + std::to_string(l) + "." + part + ".weight", 64, 512, 1.0 + l));
  ts.push_back(tensor("blk.0.ffn_down.weight", 64, 544, 2.0));  // only 32-blocks fit
  ts.push_back(tensor("output.weight", 128, 512, 5.0));
  return ts;
}

struct Planned {
  std::vector<TensorOptions> tensors = model();
  std::vector<Rule> rules = {parse_rule("output.weight=Q8_0"), parse_rule("attn_v=Q6_K+"),
                             parse_rule("blk\\.[0-1]\\.attn_(q|k)>=Q4_K"), parse_rule("ffn_.*>=2.5")};
  Budget budget;
  Strategy strategy;
  Planned() {
    double q8 = 0;
    for (const auto& t : tensors) q8 += static_cast<double>(row_size(GgmlType::Q8_0, t.row_length)) * 64;
    budget = {Budget::Kind::Bytes, std::floor(0.7 * q8)};
    AllocateOptions opt;
    opt.rules = rules;
    Allocation a = allocate(tensors, budget, opt);
    strategy = make_strategy(tensors, a, budget, {"org/model", "abc123", "xxh64:0123456789abcdef", "llama"}, rules,
                             "0.7 x Q8_0");
  }
};

// Every field is in the JSON text and doubles are written in their shortest
// exact form, so equal texts mean equal strategies.
void expect_same(const Strategy& a, const Strategy& b) {
  EXPECT_EQ(strategy_to_text(a, StrategyFormat::Json), strategy_to_text(b, StrategyFormat::Json));
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  EXPECT_EQ(a.tensors.back().reason, b.tensors.back().reason);
  EXPECT_EQ(a.solver.lower_bound, b.solver.lower_bound);
  EXPECT_EQ(a.rules, b.rules);
}

// Parses `text`; any failure must be a one-line tailor::Error naming the source.
void expect_parses_or_errors(const std::string& text, StrategyFormat f) {
  try {
    strategy_from_text(text, f, "hostile.txt");
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind("hostile.txt", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a tailor::Error: " << e.what() << "\ninput: " << text.substr(0, 200);
  }
}

}  // namespace

TEST(PlanStrategy, MakeStrategyFillsEveryField) {
  Planned p;
  const Strategy& s = p.strategy;
  ASSERT_EQ(s.tensors.size(), p.tensors.size());
  int64_t bytes = 0;
  for (size_t i = 0; i < s.tensors.size(); ++i) {
    const auto& t = s.tensors[i];
    EXPECT_EQ(t.name, p.tensors[i].name);
    const TypeInfo* info = find_type(t.type);
    ASSERT_NE(info, nullptr) << t.type;
    EXPECT_EQ(t.bytes, static_cast<int64_t>(row_size(info->type, p.tensors[i].row_length)) * 64 *
                           (t.name == "output.weight" ? 2 : 1));
    EXPECT_NEAR(t.bpw, 8.0 * t.bytes / p.tensors[i].n_elements, 1e-12);
    // The knee is a type where the curve has one, and empty where it has none.
    const Knee k = find_knee(p.tensors[i]);
    EXPECT_EQ(t.knee, k.found ? std::string(type_name(k.type)) : std::string()) << t.name;
    if (!t.knee.empty()) EXPECT_NE(find_type(t.knee), nullptr) << t.knee;
    EXPECT_FALSE(t.reason.empty());
    EXPECT_EQ(t.pinned, t.name == "output.weight");
    bytes += t.bytes;
  }
  EXPECT_EQ(s.totals.bytes, bytes);
  EXPECT_LE(s.totals.bytes, p.budget.value);
  EXPECT_EQ(s.rules, (std::vector<std::string>{"output.weight=Q8_0", "attn_v=Q6_K+", "blk\\.[0-1]\\.attn_(q|k)>=Q4_K",
                                               "ffn_.*>=2.5"}));
  EXPECT_TRUE(check_strategy(s, p.tensors, "plan.yaml").empty());
}

TEST(PlanStrategy, RoundTripsThroughYamlAndJson) {
  Planned p;
  fs::path dir = test::scratch_dir("tailor_plan_strategy");
  for (const char* name : {"plan.yaml", "plan.yml", "plan.json"}) {
    std::string path = (dir / name).string();
    write_strategy(path, p.strategy);
    Strategy back = read_strategy(path);
    expect_same(p.strategy, back);
    // Only the file itself: the temporary was renamed into place.
    for (const auto& e : fs::directory_iterator(dir))
      EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
  }
  // YAML lists one tensor per line, so a person can edit a type in place.
  std::string yaml = strategy_to_text(p.strategy, StrategyFormat::Yaml);
  EXPECT_NE(yaml.find("{name: blk.1.attn_q.weight, type: "), std::string::npos) << yaml;
  // The same file read by content when the extension says nothing.
  std::string odd = (dir / "plan.strategy").string();
  test::write_bytes(odd, yaml.data(), yaml.size());
  expect_same(p.strategy, read_strategy(odd));
  std::string json = strategy_to_text(p.strategy, StrategyFormat::Json);
  test::write_bytes(odd, json.data(), json.size());
  expect_same(p.strategy, read_strategy(odd));
  test::expect_error([&] { write_strategy((dir / "plan.txt").string(), p.strategy); }, "plan.txt", ".yaml");
  test::expect_error([&] { write_strategy((dir / "no/such/plan.json").string(), p.strategy); }, "no/such/plan.json",
                     "cannot create");
  test::expect_error([&] { read_strategy((dir / "missing.yaml").string()); }, "missing.yaml", "cannot open");
}

TEST(PlanStrategy, CheckReportsEditsClearly) {
  Planned p;
  auto check = [&](const Strategy& s) { return check_strategy(s, p.tensors, "edited.yaml"); };
  auto expect_one = [&](const Strategy& s, const std::string& tensor, const std::string& problem) {
    auto problems = check(s);
    ASSERT_EQ(problems.size(), 1u) << (problems.empty() ? "none" : problems[0]);
    EXPECT_EQ(problems[0].rfind("edited.yaml: ", 0), 0u) << problems[0];
    EXPECT_NE(problems[0].find(tensor), std::string::npos) << problems[0];
    EXPECT_NE(problems[0].find(problem), std::string::npos) << problems[0];
  };
  auto find = [](Strategy& s, const std::string& name) -> StrategyTensor& {
    for (auto& t : s.tensors)
      if (t.name == name) return t;
    throw std::runtime_error("no " + name);
  };
  {
    Strategy s = p.strategy;
    find(s, "blk.1.attn_q.weight").type = "Q4_KM";
    expect_one(s, "blk.1.attn_q.weight", "unknown type 'Q4_KM' (did you mean Q4_K?)");
  }
  {
    Strategy s = p.strategy;
    find(s, "blk.0.ffn_down.weight").type = "q4_k";  // case is fine, the row length is not
    expect_one(s, "blk.0.ffn_down.weight", "multiple of 256 elements, rows here have 544");
  }
  {
    Strategy s = p.strategy;
    find(s, "blk.2.ffn_up.weight").name = "blk.2.ffn_upp.weight";
    auto problems = check(s);
    ASSERT_EQ(problems.size(), 2u);
    EXPECT_NE(problems[0].find("blk.2.ffn_upp.weight: not in the model (did you mean blk.2.ffn_up.weight?)"),
              std::string::npos) << problems[0];
    EXPECT_NE(problems[1].find("blk.2.ffn_up.weight: missing from the strategy"), std::string::npos) << problems[1];
  }
  {
    Strategy s = p.strategy;
    s.tensors.push_back(s.tensors.front());
    expect_one(s, s.tensors.front().name, "listed more than once");
  }
  {
    Strategy s = p.strategy;
    find(s, "blk.0.attn_k.weight").type = "Q8_K";  // a real type, but not one Tailor writes
    expect_one(s, "blk.0.attn_k.weight", "cannot write type Q8_K");
  }
  {
    Strategy s = p.strategy;
    for (auto& t : s.tensors) t.type = "Q8_0";  // stale bytes fields: sizes are recomputed
    auto problems = check(s);
    ASSERT_EQ(problems.size(), 1u);
    EXPECT_NE(problems[0].find("exceeds the budget"), std::string::npos) << problems[0];
  }
  {
    // A cost budget, checked with the model's predicted costs of the new types.
    Strategy s = p.strategy;
    s.budget = {"cost", s.totals.cost * 1.0001, ""};
    EXPECT_TRUE(check(s).empty());
    find(s, "output.weight").type = "Q2_K";
    auto problems = check(s);
    ASSERT_EQ(problems.size(), 1u);
    EXPECT_NE(problems[0].find("total predicted cost"), std::string::npos) << problems[0];
  }
}

TEST(PlanStrategy, SchemaErrorsNameFileAndField) {
  Planned p;
  std::string json = strategy_to_text(p.strategy, StrategyFormat::Json);
  auto with = [&](const std::string& from, const std::string& to) {
    std::string t = json;
    size_t at = t.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return t.replace(at, from.size(), to);
  };
  auto err = [&](const std::string& text, const std::string& problem) {
    test::expect_error([&] { strategy_from_text(text, StrategyFormat::Json, "s.json"); }, "s.json", problem);
  };
  err(with("\"version\": 1", "\"version\": 2"), "version 2 is not supported");
  err(with("\"format\": \"tailor-strategy\"", "\"format\": \"other\""), "not a Tailor strategy");
  err(with("\"type\": ", "\"tpye\": "), "unknown key 'tpye'");
  err(with("\"bytes\": " + std::to_string(p.strategy.tensors[0].bytes), "\"bytes\": -5"), "non-negative integer");
  err(with("\"bytes\": " + std::to_string(p.strategy.tensors[0].bytes), "\"bytes\": 1.5"), "non-negative integer");
  err(with("\"pinned\": false", "\"pinned\": 3"), "true or false");
  err(with("\"kind\": \"bytes\"", "\"kind\": \"bpw\""), "neither 'bytes' nor 'cost'");
  err("[1, 2]", "expected a map at the top");
  std::string yaml = strategy_to_text(p.strategy, StrategyFormat::Yaml);
  size_t at = yaml.find("bpw: ", yaml.find("tensors:"));
  std::string bad = yaml.substr(0, at) + "bpw: fast" + yaml.substr(yaml.find(',', at));
  test::expect_error([&] { strategy_from_text(bad, StrategyFormat::Yaml, "s.yaml"); }, "s.yaml",
                     "'bpw' must be a finite number");
}

TEST(PlanStrategy, HostileInputNeverCrashes) {
  Planned p;
  p.strategy.tensors.resize(3);  // keep the prefix sweep short
  for (StrategyFormat f : {StrategyFormat::Yaml, StrategyFormat::Json}) {
    std::string text = strategy_to_text(p.strategy, f);
    // Every truncation.
    for (size_t n = 0; n < text.size(); ++n) expect_parses_or_errors(text.substr(0, n), f);
    // Random corruption: bytes replaced by structural characters and junk.
    std::mt19937 rng(99);
    const std::string junk = "{}[]:,-\"'&*!|>#%@`\\\n\t \x01\xff";
    for (int i = 0; i < 2000; ++i) {
      std::string t = text;
      int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits; ++e) t[rng() % t.size()] = junk[rng() % junk.size()];
      expect_parses_or_errors(t, f);
    }
  }
  // Nesting, aliases, sizes and types no strategy has.
  const std::vector<std::string> yaml_cases = {
      std::string(200000, '['),
      [] { std::string s; for (int i = 0; i < 50000; ++i) s += "- "; return s + "x"; }(),
      [] { std::string s; for (int i = 0; i < 5000; ++i) s += std::string(i, ' ') + "a:\n"; return s; }(),
      "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"
      "d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e]\n",
      "format: tailor-strategy\nversion: 1\ntensors: &t [{name: a, type: Q4_K}]\n",
      "format: tailor-strategy\nversion: 99999999999999999999999\ntensors: []\n",
      "format: tailor-strategy\nversion: 1\ntensors: [{name: [1], type: Q4_K}]\n",
      "format: tailor-strategy\nversion: 1\ntensors: [{name: a, type: Q4_K, bytes: 1e300}]\n",
      "format: tailor-strategy\nversion: 1\ntensors: [{name: a, type: Q4_K, cost: .nan}]\n",
      "format: tailor-strategy\nversion: 1\ntensors: {name: a}\n",
      "? [a, b]\n: c\n",
      "%YAML 9.9\n---\na: b\n",
      "a: !!binary AAAA\n",
      "\xef\xbb\xbf\x00\x00",
      "",
  };
  for (const auto& t : yaml_cases) expect_parses_or_errors(t, StrategyFormat::Yaml);
  const std::vector<std::string> json_cases = {
      std::string(200000, '['),
      [] { std::string s; for (int i = 0; i < 100000; ++i) s += "{\"a\":"; return s; }(),
      "{\"format\": \"tailor-strategy\", \"version\": 1, \"tensors\": [{\"name\": \"a\", \"type\": 4}]}",
      "{\"format\": \"tailor-strategy\", \"version\": 1e400, \"tensors\": []}",
      "{\"format\": \"tailor-strategy\", \"version\": 1, \"tensors\": [{\"name\": \"a\", \"type\": \"Q4_K\", "
      "\"bytes\": 18446744073709551615}]}",
      "{\"a\": \"\\ud800\"}",
      "\"just a string\"",
      "",
  };
  for (const auto& t : json_cases) expect_parses_or_errors(t, StrategyFormat::Json);
  // A valid minimal file parses; its missing fields take defaults.
  Strategy s = strategy_from_text("format: tailor-strategy\nversion: 1\ntensors:\n  - {name: output.weight, type: Q8_0}\n",
                                  StrategyFormat::Yaml, "min.yaml");
  ASSERT_EQ(s.tensors.size(), 1u);
  EXPECT_EQ(s.tensors[0].type, "Q8_0");
  EXPECT_EQ(s.tensors[0].bytes, 0);
}
