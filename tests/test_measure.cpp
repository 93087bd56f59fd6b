// tailor measure: rank fidelity of the kld and proxy levels against the full
// level on llama-30m, resume after SIGKILL and Ctrl-C, sharding + merge, and
// bad input (newer / corrupt database, a model changed on disk, types the
// rows cannot hold).
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <spawn.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "cli_runner.h"
#include "llama30m_fixture.h"
#include "sqlite_test_util.h"
#include "tailor/analysis/predict.h"
#include "tailor/measure/measure.h"
#include "tailor/util/error.h"

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

std::string scratch(const std::string& name) { return tailor::test::scratch_file("measure", name); }

// key -> metrics of the done units of a job.
std::map<std::string, nlohmann::json> results(jobs::JobStore& store, int64_t job) {
  std::map<std::string, nlohmann::json> out;
  const nlohmann::json all = store.export_json(job);
  for (const auto& u : all["units"])
    if (u["state"] == "done") out[u["key"].get<std::string>()] = u["metrics"];
  return out;
}

// Metrics without the wall-clock field, which legitimately differs between runs.
nlohmann::json timeless(nlohmann::json m) {
  m.erase("e2e_seconds");
  return m;
}

TEST(Predict, SpearmanAndGain) {
  const std::vector<double> a = {1, 2, 3, 4, 5}, rev = {5, 4, 3, 2, 1}, mono = {1, 4, 9, 16, 100};
  EXPECT_DOUBLE_EQ(analysis::spearman(a, mono), 1.0);
  EXPECT_DOUBLE_EQ(analysis::spearman(a, rev), -1.0);
  // One swapped neighbour pair in 5: 1 - 6*2/(5*24) = 0.9.
  EXPECT_NEAR(analysis::spearman(a, std::vector<double>{1, 3, 2, 4, 5}), 0.9, 1e-12);
  // Ties share ranks: x = [1,1,2], y = [1,2,3] -> ranks [1.5,1.5,3] vs [1,2,3].
  EXPECT_NEAR(analysis::spearman(std::vector<double>{1, 1, 2}, std::vector<double>{1, 2, 3}), 0.8660254, 1e-6);

  std::vector<analysis::GainPoint> pts = {{0.01, 0.3 * 0.01}, {0.001, 0.3 * 0.001}, {0.0, 1.0}};
  const analysis::GainFit f = analysis::fit_gain(pts);
  EXPECT_EQ(f.points, 2) << "the point with no proxy is not usable";
  EXPECT_NEAR(f.predict(0.05), 0.3 * 0.05, 1e-12);
  // Two tensors with slope 2 in log-log, different gains.
  const std::vector<std::vector<analysis::GainPoint>> tensors = {{{0.1, 0.01}, {0.2, 0.04}}, {{0.1, 5 * 0.01}, {0.3, 5 * 0.09}}};
  EXPECT_NEAR(analysis::fit_exponent(tensors), 2.0, 1e-9);
}

// The acceptance figure: all 58 matrices x 7 types. Fewer, shorter windows
// than the defaults keep the full level quick in CI; the ranking is what counts.
TEST(MeasureLevels, KldAndProxyRankLikeFull) {
  const std::string db = scratch("levels.db");
  jobs::JobStore store(db);
  measure::Settings s;
  s.text = kCalib;
  s.eval = kEval;
  s.n_ctx = 256;
  s.windows = 4;
  s.calib_chunks = 4;
  s.min_windows = 2;
  std::map<measure::Level, std::map<std::string, nlohmann::json>> r;
  std::map<measure::Level, double> secs;
  for (measure::Level lv : {measure::Level::Full, measure::Level::Kld, measure::Level::Proxy}) {
    s.level = lv;
    const measure::RunResult res = measure::run_measure(store, kModel, s);
    ASSERT_EQ(res.outcome, measure::Outcome::Done);
    EXPECT_EQ(res.units_failed, 0);
    r[lv] = results(store, res.job_id);
    secs[lv] = res.seconds;
    if (lv == measure::Level::Kld) {
      const nlohmann::json sum = measure::summarize(store.export_json(res.job_id));
      ASSERT_TRUE(sum.contains("prediction_error"));
      EXPECT_GE(sum["prediction_error"]["pairs"].get<int>(), 10);
      EXPECT_LT(sum["prediction_error"]["median_factor"].get<double>(), 2.0);
      std::printf("kld level prediction error: %s\n", sum["prediction_error"].dump().c_str());
    }
  }
  const auto& full = r[measure::Level::Full];
  ASSERT_EQ(full.size(), size_t(58 * 7));
  std::vector<double> truth, kld, proxy;
  int measured_equal = 0, measured = 0;
  for (const auto& [key, m] : full) {
    ASSERT_TRUE(m["applicable"].get<bool>()) << key;
    ASSERT_EQ(m["source"], "measured");
    truth.push_back(m["kld"].get<double>());
    const nlohmann::json& k = r[measure::Level::Kld].at(key);
    kld.push_back(k["cost"].get<double>());
    proxy.push_back(r[measure::Level::Proxy].at(key)["cost"].get<double>());
    if (k["source"] == "measured") {
      ++measured;
      // Fewer windows at the kld level, the same windows first: within the errors.
      const double d = std::abs(k["kld"].get<double>() - m["kld"].get<double>());
      measured_equal += d <= 3 * std::hypot(k["kld_error"].get<double>(), m["kld_error"].get<double>()) + 1e-9;
    }
    // Local errors do not depend on the level.
    EXPECT_EQ(k.value("rel_output", -1.0), m.value("rel_output", -1.0)) << key;
  }
  EXPECT_EQ(measured_equal, measured) << "an end-to-end unit must agree across levels within its errors";
  EXPECT_GE(measured, 58);
  EXPECT_LT(measured, 58 * 2) << "the kld level measures a few types per tensor, not all";
  const double rho_kld = analysis::spearman(kld, truth), rho_proxy = analysis::spearman(proxy, truth);
  std::printf("Spearman vs full over %zu pairs: kld %.4f (%d measured), proxy %.4f; seconds full %.1f kld %.1f proxy %.1f\n",
              truth.size(), rho_kld, measured, rho_proxy, secs[measure::Level::Full], secs[measure::Level::Kld],
              secs[measure::Level::Proxy]);
  EXPECT_GE(rho_kld, 0.9);
  EXPECT_GE(rho_proxy, 0.8);
}

// A small, quick measurement for the CLI tests.
std::string quick_args(const std::string& db) {
  return kModel + " --text " + kCalib + " --level kld --types Q8_0,Q4_K,Q2_K --ctx 128 --windows 2 " +
         "--calib-chunks 2 --holdout-every 5 -q --db " + db;
}

pid_t spawn_cli(const std::string& args) {
  // exec, so signals reach tailor itself and not a shell around it.
  const std::string cmd = "exec " + std::string(TAILOR_CLI_PATH) + " measure " + args + " >/dev/null 2>&1";
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = 0;
  if (posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) != 0) return -1;
  return pid;
}

int64_t units_done(const std::string& db) {
  if (!fs::exists(db)) return -1;
  return query_int(db, "SELECT count(*) FROM results");
}

// Waits until the job has at least `n` results (or the process ended).
bool wait_for_results(const std::string& db, int64_t n, pid_t pid) {
  for (int i = 0; i < 6000; ++i) {
    if (units_done(db) >= n) return true;
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// SIGKILL at random points of the unit loop, several times, then run to the
// end: the same results as an uninterrupted run, no unit written twice.
TEST(MeasureCli, SurvivesSigkillAndMatchesAnUninterruptedRun) {
  const std::string db = scratch("killed.db"), ref_db = scratch("ref.db");
  const auto ref = run_cli("measure " + quick_args(ref_db));
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  const int64_t total = units_done(ref_db);
  ASSERT_EQ(total, 58 * 3);

  const unsigned seed = unsigned(std::chrono::steady_clock::now().time_since_epoch().count());
  SCOPED_TRACE(fmt::format("seed {}", seed));
  std::mt19937 rng(seed);
  bool counting = false;
  int kills = 0;
  int64_t target = 0;
  for (int round = 0; round < 4; ++round) {
    target += std::uniform_int_distribution<int64_t>(5, total / 6)(rng);
    const pid_t pid = spawn_cli(quick_args(db));
    ASSERT_GT(pid, 0);
    const bool reached = wait_for_results(db, target, pid);
    if (reached) {
      // Land somewhere inside the next unit, not always on a boundary.
      std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 40000)(rng)));
      ::kill(pid, SIGKILL);
      int status = 0;
      ::waitpid(pid, &status, 0);
      kills += WIFSIGNALED(status);
    }
    if (!counting && fs::exists(db)) {
      // Every insert into results is counted, so a unit written twice cannot hide.
      exec_sql(db,
               "CREATE TABLE IF NOT EXISTS write_count(unit_id INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
               "CREATE TRIGGER IF NOT EXISTS count_writes AFTER INSERT ON results BEGIN "
               "INSERT INTO write_count VALUES(NEW.unit_id, 1) "
               "ON CONFLICT(unit_id) DO UPDATE SET n = n + 1; END;");
      counting = true;
    }
  }
  EXPECT_GE(kills, 3);
  const int64_t before = units_done(db);
  EXPECT_LT(before, total) << "the kills should land before the end";
  const auto last = run_cli("measure " + quick_args(db));
  ASSERT_EQ(last.exit_code, 0) << last.err;

  jobs::JobStore a(db), b(ref_db);
  const auto got = results(a, a.list_jobs().at(0).id), want = results(b, b.list_jobs().at(0).id);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [key, m] : want) EXPECT_EQ(timeless(got.at(key)), timeless(m)) << key;
  EXPECT_EQ(query_int(db, "SELECT max(n) FROM write_count"), 1) << "a unit's result was written twice";
  EXPECT_EQ(query_int(db, "SELECT count(*) FROM results"), total);
  std::printf("kills %d, units done before the last run %lld/%lld, units claimed again %lld\n", kills,
              (long long)before, (long long)total,
              (long long)query_int(db, "SELECT count(*) FROM units WHERE attempts > 1"));
}

TEST(MeasureCli, CtrlCPausesAndTheSameCommandResumes) {
  const std::string db = scratch("paused.db");
  const pid_t pid = spawn_cli(quick_args(db));
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(wait_for_results(db, 3, pid));
  ::kill(pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 130);
  jobs::JobStore store(db);
  const jobs::JobInfo j = store.list_jobs().at(0);
  EXPECT_EQ(j.state, jobs::JobState::Paused);
  EXPECT_LT(j.units_done, j.units_total);
  EXPECT_EQ(query_int(db, "SELECT count(*) FROM units WHERE state='running'"), 0)
      << "a clean pause leaves no unit in flight";

  // While paused, the same command says how to resume; --job resumes it.
  const auto again = run_cli("measure --job " + std::to_string(j.id) + " --db " + db + " --json");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  const auto out = nlohmann::json::parse(again.out);
  EXPECT_EQ(out["outcome"], "done");
  EXPECT_EQ(out["units_done"], out["units_total"]);
  EXPECT_EQ(out["units_run"].get<int64_t>(), j.units_total - j.units_done);
}

TEST(MeasureCli, ShardsMergeIntoTheWholeJob) {
  const std::string whole = scratch("whole.db"), s1 = scratch("s1.db"), s2 = scratch("s2.db"),
                    merged = scratch("merged.db");
  const std::string args =
      kModel + " --text " + kCalib + " --level proxy --types Q8_0,Q4_K --ctx 128 --calib-chunks 2 -q --db ";
  ASSERT_EQ(run_cli("measure " + args + whole).exit_code, 0);
  const auto r1 = run_cli("measure " + args + s1 + " --shard 1/2");
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  ASSERT_EQ(run_cli("measure " + args + s2 + " --shard 2/2").exit_code, 0);
  EXPECT_EQ(units_done(s1), 29 * 2);
  EXPECT_EQ(units_done(s2), 29 * 2);
  const auto m = run_cli("jobs merge " + merged + " " + s1 + " " + s2);
  ASSERT_EQ(m.exit_code, 0) << m.err;
  jobs::JobStore a(merged), b(whole);
  ASSERT_EQ(a.list_jobs().size(), 1u) << "shards of one measurement are one job";
  EXPECT_EQ(a.list_jobs()[0].state, jobs::JobState::Done);
  EXPECT_EQ(results(a, a.list_jobs()[0].id), results(b, b.list_jobs()[0].id));
  const auto bad = run_cli("measure " + args + s1 + " --shard 3/2");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--shard '3/2'"), std::string::npos) << bad.err;
}

// --- bad input ---------------------------------------------------------------

void write_f32_safetensors(const fs::path& path, const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors,
                           unsigned seed) {
  nlohmann::json header = nlohmann::json::object();
  int64_t offset = 0;
  for (const auto& [name, shape] : tensors) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {offset, offset + 4 * n}}};
    offset += 4 * n;
  }
  const std::string h = header.dump();
  std::ofstream f(path, std::ios::binary);
  const uint64_t len = h.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f.write(h.data(), std::streamsize(h.size()));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  for (const auto& [name, shape] : tensors) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const bool norm = shape.size() == 1;
    for (int64_t i = 0; i < n; ++i) {
      const float v = norm ? 1.0f : normal(rng);
      f.write(reinterpret_cast<const char*>(&v), 4);
    }
  }
}

// A one-block Llama whose feed-forward width (320) fits Q8_0's blocks of 32
// but not the K-quants' 256, with llama-30m's tokenizer.
std::string odd_model() {
  const fs::path dir = fs::path(tailor::test::temp_dir()) / "measure" / "odd-model";
  if (fs::exists(dir / "model.safetensors")) return dir.string();
  fs::create_directories(dir);
  const nlohmann::json config = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"},
                                 {"hidden_size", 256}, {"intermediate_size", 320},
                                 {"num_hidden_layers", 1}, {"num_attention_heads", 4},
                                 {"num_key_value_heads", 2}, {"vocab_size", 8192},
                                 {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0},
                                 {"max_position_embeddings", 512}, {"hidden_act", "silu"},
                                 {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", 2}};
  std::ofstream(dir / "config.json") << config.dump(2);
  write_f32_safetensors(dir / "model.safetensors",
                        {{"model.embed_tokens.weight", {8192, 256}},
                         {"model.layers.0.input_layernorm.weight", {256}},
                         {"model.layers.0.self_attn.q_proj.weight", {256, 256}},
                         {"model.layers.0.self_attn.k_proj.weight", {128, 256}},
                         {"model.layers.0.self_attn.v_proj.weight", {128, 256}},
                         {"model.layers.0.self_attn.o_proj.weight", {256, 256}},
                         {"model.layers.0.post_attention_layernorm.weight", {256}},
                         {"model.layers.0.mlp.gate_proj.weight", {320, 256}},
                         {"model.layers.0.mlp.up_proj.weight", {320, 256}},
                         {"model.layers.0.mlp.down_proj.weight", {256, 320}},
                         {"model.norm.weight", {256}},
                         {"lm_head.weight", {8192, 256}}},
                        7);
  fs::create_symlink(fs::path(kModel) / "tokenizer.model", dir / "tokenizer.model");
  return dir.string();
}

TEST(MeasureBadInput, TypeTheRowsCannotHoldIsRecordedNotFatal) {
  const std::string db = scratch("odd.db");
  const auto r = run_cli("measure " + odd_model() + " --text " + kCalib +
                         " --level kld --types Q8_0,Q4_K --ctx 64 --windows 2 --calib-chunks 2 --json --db " + db);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = nlohmann::json::parse(r.out);
  const auto& rows = out["summary"]["tensors"];
  int na = 0;
  for (const auto& row : rows) {
    const auto& q4 = row["types"]["Q4_K"];
    if (row["tensor"] == "blk.0.ffn_down.weight") {
      EXPECT_FALSE(q4["applicable"].get<bool>());
      EXPECT_NE(q4["reason"].get<std::string>().find("rows of 320 cannot be stored in Q4_K"), std::string::npos);
      EXPECT_TRUE(row["types"]["Q8_0"].value("applicable", true)) << "Q8_0 holds rows of 320";
      ++na;
    } else {
      EXPECT_TRUE(q4.value("applicable", true)) << row["tensor"];
    }
  }
  EXPECT_EQ(na, 1);
  EXPECT_EQ(out["summary"]["counts"]["not_applicable"], 1);
}

TEST(MeasureBadInput, ClearErrorsAndNoDataLost) {
  // Unknown type, unknown level, text shorter than a window.
  auto r = run_cli("measure " + kModel + " --text " + kCalib + " --types Q4_X -q --db " + scratch("e1.db"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unknown type 'Q4_X'"), std::string::npos) << r.err;
  r = run_cli("measure " + kModel + " --text " + kCalib + " --level fast -q --db " + scratch("e2.db"));
  EXPECT_NE(r.err.find("unknown measurement level 'fast'"), std::string::npos) << r.err;
  const std::string tiny = scratch("tiny.txt");
  std::ofstream(tiny) << "Just a few words.";
  r = run_cli("measure " + kModel + " --text " + tiny + " --level proxy -q --db " + scratch("e3.db"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(tiny), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("fewer than one window"), std::string::npos) << r.err;

  // A database from a newer Tailor, and a corrupt one: refused, left as they were.
  const std::string newer = scratch("newer.db");
  exec_sql(newer, "PRAGMA user_version = 99; CREATE TABLE t(x);");
  const std::string before = tailor::test::slurp(newer);
  r = run_cli("measure " + quick_args(newer));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(newer), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("newer"), std::string::npos) << r.err;
  EXPECT_EQ(tailor::test::slurp(newer), before);
  const std::string corrupt = scratch("corrupt.db");
  std::ofstream(corrupt) << std::string(4096, 'x');
  r = run_cli("measure " + quick_args(corrupt));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(corrupt), std::string::npos) << r.err;
  EXPECT_EQ(tailor::test::slurp(corrupt), std::string(4096, 'x'));

  // A job whose model changed on disk: resuming it is refused, results kept.
  const fs::path copy = fs::path(tailor::test::temp_dir()) / "measure" / "changing-model";
  fs::create_directories(copy);
  for (const auto& e : fs::directory_iterator(kModel)) {
    if (e.path().filename() == "config.json") fs::copy_file(e.path(), copy / "config.json");
    else if (!fs::exists(copy / e.path().filename())) fs::create_symlink(e.path(), copy / e.path().filename());
  }
  const std::string db = scratch("changed.db");
  r = run_cli("measure " + copy.string() + " --text " + kCalib +
              " --level proxy --types Q8_0 --ctx 128 --calib-chunks 1 --json --db " + db);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const int64_t job = nlohmann::json::parse(r.out)["job"].get<int64_t>();
  const int64_t done = units_done(db);
  exec_sql(db, "UPDATE jobs SET state='paused'");
  {
    std::ofstream cfg(copy / "config.json", std::ios::app);
    cfg << "\n";
  }
  r = run_cli("measure --job " + std::to_string(job) + " --db " + db);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("changed on disk"), std::string::npos) << r.err;
  EXPECT_EQ(tailor::test::count_lines(r.err), 1) << r.err;
  EXPECT_EQ(units_done(db), done) << "the job's results must survive";
}

}  // namespace
