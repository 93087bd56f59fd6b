// The point of planning: on llama-30m, with an importance matrix from the
// calibration text and measured on the held-out eval text, Tailor's plan at a
// size no larger than llama.cpp's Q4_K_M, Q3_K_M and Q2_K recipes (as Tailor
// reproduces them) has a mean KL divergence at least 25% lower. Also the
// verification loop for a quality budget, and `tailor plan` / `quantize
// --strategy` / `plan --check` end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>

#include "cli_runner.h"
#include "llama30m_fixture.h"
#include "tailor/engine/model.h"
#include "tailor/eval/run_eval.h"
#include "tailor/formats/gguf.h"
#include "tailor/measure/measure.h"
#include "tailor/plan/planner.h"
#include "tailor/plan/quantize.h"

namespace fs = std::filesystem;
using namespace tailor;
using tailor::test::run_cli;

namespace {

using tailor::test::kCalib;
using tailor::test::kEval;
using tailor::test::kModel;
using tailor::test::kShared;
const std::string kTypes = "Q8_0,Q6_K,Q5_K,Q4_K,IQ4_XS,Q3_K,IQ3_S,IQ3_XXS,Q2_K,IQ2_S,IQ2_XS";

std::string scratch(const std::string& name) { return tailor::test::scratch_file("plan", name); }

// One measurement shared by the tests of this program (kld level).
struct Fixture {
  std::string db = scratch("measure.db");
  jobs::JobStore store{db};
  measure::Settings settings;
  int64_t job = 0;
  Fixture() {
    settings.text = kCalib;
    settings.eval = kCalib;  // the plan is judged on eval.txt, which the measurement never sees
    settings.types = measure::parse_types(kTypes);
    settings.n_ctx = 512;
    settings.windows = 4;
    job = measure::run_measure(store, kModel, settings).job_id;
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

TEST(PlanQuality, BeatsLlamaCppRecipesAtTheirSize) {
  Fixture& f = fixture();
  engine::Model model = engine::Model::load(kModel);
  const auto im = measure::settings_imatrix(model, kModel, measure::Settings::from_json(f.store.job(f.job).settings));
  ASSERT_TRUE(im.has_value());
  const auto tok = eval::load_model_tokenizer(kModel);
  plan::AssignmentEvaluator ev(model, eval::tokenize_text_file(*tok, kEval), 512, 12, &*im);
  for (const char* name : {"Q4_K_M", "Q3_K_M", "Q2_K"}) {
    const RecipePlan rp = plan_recipe(kModel, recipe_named(name), true);
    plan::TypeMap recipe;
    for (const TensorChoice& c : rp.tensors)
      if (c.type != GgmlType::F32) recipe[c.name] = c.type;
    const plan::AssignmentResult base = ev.evaluate(recipe);

    plan::PlanRequest req;
    req.model = kModel;
    req.measurement = f.store.export_json(f.job);
    req.target_bytes = base.bytes;
    const plan::Plan p = plan::make_plan(req);
    const plan::AssignmentResult ours = ev.evaluate(plan::strategy_types(p.strategy));
    const double ratio = ours.report.kld.value / base.report.kld.value;
    std::printf("%-7s recipe %.3f bpw KLD %.5f ± %.5f (99%% %.4f, same-top %.2f%%) | plan %.3f bpw KLD %.5f ± %.5f "
                "(99%% %.4f, same-top %.2f%%, predicted %.5f) ratio %.3f\n",
                name, base.bpw, base.report.kld.value, base.report.kld.error, base.report.kld_p99,
                100 * base.report.same_top.value, ours.bpw, ours.report.kld.value, ours.report.kld.error,
                ours.report.kld_p99, 100 * ours.report.same_top.value, p.strategy.totals.cost, ratio);
    EXPECT_LE(ours.bytes, base.bytes) << name;
    EXPECT_LE(ratio, 0.75) << name << ": the plan must be at least 25% better than the recipe at its size";
  }
}

TEST(PlanQuality, QualityBudgetIsVerifiedAndHolds) {
  Fixture& f = fixture();
  engine::Model model = engine::Model::load(kModel);
  const auto im = measure::settings_imatrix(model, kModel, measure::Settings::from_json(f.store.job(f.job).settings));
  const auto tok = eval::load_model_tokenizer(kModel);
  plan::AssignmentEvaluator ev(model, eval::tokenize_text_file(*tok, kEval), 512, 6, &*im);
  plan::PlanRequest req;
  req.model = kModel;
  req.measurement = f.store.export_json(f.job);
  req.max_kld = 0.01;
  plan::Plan p = plan::make_plan(req);
  EXPECT_LE(p.strategy.totals.cost, 0.01 * (1 + 1e-9));
  const plan::Verification v = plan::verify_plan(p, ev);
  std::printf("max-kld 0.01: predicted %.5f, measured %.5f ± %.5f after %d round(s), %zu upgrade(s), %.3f bpw\n",
              v.predicted, v.measured, v.measured_error, v.rounds, v.upgrades.size(), p.strategy.totals.bpw);
  EXPECT_TRUE(v.met);
  EXPECT_LE(v.measured, 0.01);
  // Per-tensor costs add up to the joint damage roughly (jointly quantized
  // tensors hurt somewhat more than the sum: 1.4-1.5x here).
  EXPECT_GT(v.measured / v.predicted, 0.7);
  EXPECT_LT(v.measured / v.predicted, 2.5);
}

TEST(PlanCli, PlanQuantizeCheck) {
  Fixture& f = fixture();
  const std::string yaml = scratch("s.yaml"), gguf = scratch("s.gguf");
  auto r = run_cli("plan " + kModel + " --db " + f.db + " --target-bpw 4.0 --windows 4 -o " + yaml + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = nlohmann::json::parse(r.out);
  EXPECT_NEAR(out["all_weights"]["bpw"].get<double>(), 4.0, 0.05);
  EXPECT_LE(out["all_weights"]["bpw"].get<double>(), 4.0);
  EXPECT_GT(out["verification"]["measured_kld"].get<double>(), 0);
  // The strategy file round-trips into a GGUF with exactly its types.
  r = run_cli("quantize " + kModel + " --strategy " + yaml + " -o " + gguf + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const plan::Strategy s = plan::read_strategy(yaml);
  const auto g = GgufFile::open(gguf);
  int checked = 0;
  for (const auto& t : s.tensors) {
    const auto* info = g.find_tensor(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(std::string(type_name(info->type)), t.type) << t.name;
    ++checked;
  }
  EXPECT_EQ(checked, 58);
  r = run_cli("plan --check " + yaml + " " + kModel + " --db " + f.db);
  EXPECT_EQ(r.exit_code, 0) << r.err;

  // Edited by hand with a typo: named, with the likely meaning.
  std::string text = tailor::test::slurp(yaml);
  text = std::regex_replace(text, std::regex("type: (Q[0-9]_K|IQ[0-9]_[A-Z]+)"), "type: Q4_KK", std::regex_constants::format_first_only);
  const std::string typo = scratch("typo.yaml");
  std::ofstream(typo) << text;
  r = run_cli("plan --check " + typo + " " + kModel + " --db " + f.db);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Q4_KK"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("Q4_K"), std::string::npos) << r.err;
  r = run_cli("quantize " + kModel + " --strategy " + typo + " -o " + scratch("typo.gguf"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_FALSE(fs::exists(scratch("typo.gguf")));

  // A strategy for another model.
  const std::string other = kShared + "/models/moe-26m";
  r = run_cli("quantize " + other + " --strategy " + yaml + " -o " + scratch("other.gguf"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("another model"), std::string::npos) << r.err;

  // An impossible budget says what the minimum is.
  r = run_cli("plan " + kModel + " --db " + f.db + " --target-bpw 1.0 --no-verify -o " + scratch("x.yaml"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("smallest allowed types need"), std::string::npos) << r.err;
  EXPECT_EQ(tailor::test::count_lines(r.err), 1) << r.err;
  EXPECT_FALSE(fs::exists(scratch("x.yaml")));
  // A recipe's name as the size: no larger than that recipe's weights.
  r = run_cli("plan " + kModel + " --db " + f.db + " --target-size Q3_K_M --no-verify --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  {
    engine::Model m = engine::Model::load(kModel);
    plan::TypeMap q3;
    for (const TensorChoice& c : plan_recipe(kModel, recipe_named("Q3_K_M"), true).tensors)
      if (c.type != GgmlType::F32) q3[c.name] = c.type;
    const double planned = nlohmann::json::parse(r.out)["all_weights"]["bytes"].get<double>();
    EXPECT_LE(planned, double(plan::assignment_bytes(m, q3)));
    EXPECT_GT(planned, 0.99 * double(plan::assignment_bytes(m, q3)));
  }
  // Two budgets, and none.
  r = run_cli("plan " + kModel + " --db " + f.db + " --target-bpw 4 --max-kld 0.1");
  EXPECT_NE(r.err.find("exactly one budget"), std::string::npos) << r.err;
}

}  // namespace
