// Job store: lifecycle, idempotent create, claim order, commit atomicity,
// SIGKILLed workers that resume without losing or repeating a unit, schema
// refusal, corrupt files, merge, export, model identity, and the CLI.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sqlite3.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "cli_runner.h"
#include "sqlite_test_util.h"
#include "tailor/formats/gguf.h"
#include "tailor/jobs/job_store.h"
#include "tailor/util/error.h"

namespace fs = std::filesystem;
using namespace tailor;
using namespace tailor::jobs;
using tailor::test::run_cli;
using tailor::test::exec_sql;
using tailor::test::query_int;
using tailor::test::slurp;

namespace {

std::string fresh_db(const std::string& name) {
  const std::string dir = tailor::test::temp_dir() + "/jobs-" + std::to_string(::getpid());
  fs::create_directories(dir);
  const std::string p = dir + "/" + name + ".db";
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(p + suffix);
  return p;
}

std::vector<std::string> unit_keys(int n) {
  // Deliberately not in sorted order: claims must follow creation order.
  const char* types[] = {"Q8_0", "Q4_K", "IQ4_XS"};
  std::vector<std::string> keys;
  for (int i = n - 1; i >= 0; --i) keys.push_back(fmt::format("blk.{}.attn_q.weight|{}", i / 3, types[i % 3]));
  return keys;
}

JobSpec spec_for(int n, nlohmann::json settings = {{"level", "proxy"}}) {
  JobSpec s;
  s.kind = "measure";
  s.model = {"/models/x", "org/x", "main", "xxh3:0123456789abcdef"};
  s.settings = std::move(settings);
  s.units = unit_keys(n);
  return s;
}

// What a worker "measures" for a key: deterministic, so runs can be compared.
nlohmann::json fake_metrics(const std::string& key) {
  const uint64_t h = std::hash<std::string>{}(key);
  return {{"bytes", int64_t(h % 100000)}, {"rmse", double(h % 977) / 1000.0}, {"note", "a,b \"c\""}};
}

// key -> metrics of every done unit.
std::map<std::string, nlohmann::json> results_of(JobStore& store, int64_t job) {
  std::map<std::string, nlohmann::json> out;
  const nlohmann::json all = store.export_json(job);  // a named copy: the loop must not outlive it
  for (const auto& u : all["units"])
    if (u["state"] == "done") out[u["key"].get<std::string>()] = u["metrics"];
  return out;
}

void run_worker(JobStore& store, int64_t job, int unit_micros = 0) {
  store.begin_work(job);
  while (auto u = store.claim_next(job)) {
    if (unit_micros) ::usleep(useconds_t(unit_micros));
    store.commit_result(u->id, fake_metrics(u->key));
  }
}

}  // namespace

TEST(JobStore, LifecycleAndProgress) {
  JobStore store(fresh_db("life"));
  const int64_t id = store.create_job(spec_for(6));
  JobInfo j = store.job(id);
  EXPECT_EQ(j.state, JobState::Queued);
  EXPECT_EQ(j.units_total, 6);
  EXPECT_EQ(j.units_done, 0);
  EXPECT_FALSE(j.started.has_value());
  EXPECT_EQ(j.model.repo, "org/x");
  EXPECT_EQ(j.settings["level"], "proxy");

  store.begin_work(id);
  EXPECT_EQ(store.state(id), JobState::Running);
  for (int i = 0; i < 4; ++i) {
    auto u = store.claim_next(id);
    ASSERT_TRUE(u);
    ::usleep(2000);
    store.commit_result(u->id, fake_metrics(u->key));
  }
  j = store.job(id);
  EXPECT_EQ(j.units_done, 4);
  ASSERT_TRUE(j.rate && j.eta_s);
  EXPECT_GT(*j.rate, 0);
  EXPECT_NEAR(*j.eta_s, 2.0 / *j.rate, 1e-9);

  store.pause(id);
  EXPECT_EQ(store.state(id), JobState::Paused);
  store.resume(id);
  EXPECT_EQ(store.state(id), JobState::Queued);
  store.begin_work(id);
  run_worker(store, id);
  j = store.job(id);
  EXPECT_EQ(j.state, JobState::Done);
  EXPECT_EQ(j.units_done, 6);
  EXPECT_TRUE(j.finished.has_value());
  EXPECT_THROW(store.cancel(id), Error);  // a finished job cannot be cancelled
  store.log(id, "hello");
  auto log = store.log_lines(id);
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.back().line, "hello");
  EXPECT_EQ(store.log_lines(id, 1).size(), 1u);

  const int64_t other = store.create_job(spec_for(2, {{"level", "kld"}}));
  store.cancel(other);
  EXPECT_EQ(store.state(other), JobState::Cancelled);
  EXPECT_THROW(store.begin_work(other), Error);
  store.remove_job(other);
  EXPECT_FALSE(store.find_job(other));
  EXPECT_THROW(store.job(other), Error);
  EXPECT_EQ(store.list_jobs().size(), 1u);
}

TEST(JobStore, CreateIsIdempotent) {
  const std::string db = fresh_db("idem");
  int64_t id = 0;
  {
    JobStore store(db);
    id = store.create_job(spec_for(4));
    EXPECT_EQ(store.create_job(spec_for(4)), id);
  }
  JobStore store(db);  // a new process finds the same job
  JobSpec moved = spec_for(4);
  moved.model.path = "/elsewhere/x";  // same hash: the same model moved
  EXPECT_EQ(store.create_job(moved), id);
  EXPECT_EQ(store.job(id).units_total, 4);
  // More units join the existing job; different settings or model make a new one.
  EXPECT_EQ(store.create_job(spec_for(6)), id);
  EXPECT_EQ(store.job(id).units_total, 6);
  EXPECT_NE(store.create_job(spec_for(4, {{"level", "kld"}})), id);
  JobSpec changed = spec_for(4);
  changed.model.hash = "xxh3:ffffffffffffffff";
  EXPECT_NE(store.create_job(changed), id);
  EXPECT_EQ(store.list_jobs().size(), 3u);
}

TEST(JobStore, ClaimsInCreationOrder) {
  JobStore store(fresh_db("order"));
  const JobSpec s = spec_for(7);
  const int64_t id = store.create_job(s);
  store.begin_work(id);
  std::vector<std::string> claimed;
  while (auto u = store.claim_next(id)) {
    EXPECT_EQ(u->attempts, 1);
    claimed.push_back(u->key);
  }
  EXPECT_EQ(claimed, s.units);
  EXPECT_FALSE(store.claim_next(id));
  // A restart requeues the running units; they come back in the same order, attempt 2.
  store.begin_work(id);
  auto u = store.claim_next(id);
  ASSERT_TRUE(u);
  EXPECT_EQ(u->key, s.units[0]);
  EXPECT_EQ(u->attempts, 2);
}

TEST(JobStore, CommitIsAtomicAndOnce) {
  const std::string db = fresh_db("atomic");
  JobStore store(db);
  const int64_t id = store.create_job(spec_for(3));
  store.begin_work(id);
  auto u = store.claim_next(id);
  ASSERT_TRUE(u);
  store.commit_result(u->id, fake_metrics(u->key));
  // A second commit of the same unit is refused and changes nothing.
  EXPECT_THROW(store.commit_result(u->id, {{"rmse", 9.0}}), Error);
  auto r = results_of(store, id);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[u->key], fake_metrics(u->key));
  // A pending (unclaimed) unit cannot take a result either.
  const int64_t pending_id = query_int(db, "SELECT id FROM units WHERE state='pending' ORDER BY id LIMIT 1");
  EXPECT_THROW(store.commit_result(pending_id, {{"rmse", 1.0}}), Error);
  EXPECT_EQ(query_int(db, "SELECT count(*) FROM results"), 1);
  EXPECT_EQ(query_int(db, "SELECT count(*) FROM units WHERE state='done'"), 1);
  // Typed columns mirror the JSON for fast queries.
  EXPECT_EQ(query_int(db, "SELECT bytes FROM results"), fake_metrics(u->key)["bytes"].get<int64_t>());
  // A failed unit does not count as done and the job does not finish on it.
  auto v = store.claim_next(id);
  store.fail_unit(v->id, "rows too short for the type");
  EXPECT_EQ(store.job(id).units_failed, 1);
  EXPECT_EQ(store.job(id).units_done, 1);
  // If marking the unit done fails, its result is rolled back with it: make the
  // update fail with a trigger and check nothing of the commit remains.
  exec_sql(db,
           "CREATE TRIGGER refuse_done BEFORE UPDATE OF state ON units WHEN NEW.state='done' "
           "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;");
  auto w = store.claim_next(id);
  ASSERT_TRUE(w);
  EXPECT_THROW(store.commit_result(w->id, fake_metrics(w->key)), Error);
  EXPECT_EQ(query_int(db, "SELECT count(*) FROM results"), 1);
  EXPECT_EQ(query_int(db, fmt::format("SELECT count(*) FROM units WHERE id={} AND state='running'", w->id)), 1);
  exec_sql(db, "DROP TRIGGER refuse_done");
  store.commit_result(w->id, fake_metrics(w->key));
  EXPECT_EQ(query_int(db, "SELECT count(*) FROM results"), 2);
  // Every unit finished but one failed: the job failed, and resuming retries that unit.
  EXPECT_EQ(store.state(id), JobState::Failed);
  EXPECT_EQ(store.job(id).error, "1 unit(s) failed");
  store.resume(id);
  EXPECT_EQ(store.job(id).units_failed, 0);
  store.begin_work(id);
  auto again = store.claim_next(id);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->key, v->key);
  EXPECT_EQ(again->attempts, 2);
}

TEST(JobStore, DefaultPath) {
  const char* saved_db = std::getenv("TAILOR_DB");
  const char* saved_xdg = std::getenv("XDG_DATA_HOME");
  const std::string keep_db = saved_db ? saved_db : "", keep_xdg = saved_xdg ? saved_xdg : "";
  ::setenv("TAILOR_DB", "/x/my.db", 1);
  ::setenv("XDG_DATA_HOME", "/data", 1);
  EXPECT_EQ(JobStore::default_path(), "/x/my.db");
  ::unsetenv("TAILOR_DB");
  EXPECT_EQ(JobStore::default_path(), "/data/tailor/jobs.db");
  ::unsetenv("XDG_DATA_HOME");
  if (const char* home = std::getenv("HOME")) {
    EXPECT_EQ(JobStore::default_path(), std::string(home) + "/.local/share/tailor/jobs.db");
  }
  if (saved_db) ::setenv("TAILOR_DB", keep_db.c_str(), 1);
  if (saved_xdg) ::setenv("XDG_DATA_HOME", keep_xdg.c_str(), 1);
}

// Workers in child processes are SIGKILLed at random moments, several times;
// then the job is resumed to the end. A trigger counts every insert into
// results in the same transaction, so a unit written twice cannot hide.
TEST(JobStore, SurvivesSigkillAndNeverRepeatsAUnit) {
  const int n = 150;  // more than six rounds of at most 30 ms can finish
  const std::string db = fresh_db("kill"), ref_db = fresh_db("kill-ref");
  int64_t id = 0;
  {
    JobStore store(db);
    id = store.create_job(spec_for(n));
  }
  exec_sql(db,
           "CREATE TABLE write_count(unit_id INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
           "CREATE TRIGGER count_writes AFTER INSERT ON results BEGIN "
           "INSERT INTO write_count VALUES(NEW.unit_id, 1) "
           "ON CONFLICT(unit_id) DO UPDATE SET n = n + 1; END;");

  const unsigned seed = unsigned(std::chrono::steady_clock::now().time_since_epoch().count());
  SCOPED_TRACE(fmt::format("seed {}", seed));
  std::mt19937 rng(seed);
  int interrupted = 0;
  for (int round = 0; round < 6; ++round) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      try {
        JobStore store(db);
        run_worker(store, id, 1500);
      } catch (...) {
        ::_exit(3);
      }
      ::_exit(0);
    }
    ::usleep(useconds_t(std::uniform_int_distribution<int>(3000, 30000)(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) ++interrupted;
    else EXPECT_EQ(WEXITSTATUS(status), 0);
  }
  EXPECT_GE(interrupted, 4) << "the kills should land mid-run";
  JobStore store(db);
  const int64_t done_before = store.job(id).units_done;
  EXPECT_LT(done_before, n);
  run_worker(store, id);
  EXPECT_EQ(store.state(id), JobState::Done);

  JobStore ref(ref_db);
  const int64_t ref_id = ref.create_job(spec_for(n));
  run_worker(ref, ref_id);
  const auto got = results_of(store, id);
  EXPECT_EQ(got.size(), size_t(n));
  EXPECT_EQ(got, results_of(ref, ref_id));
  EXPECT_EQ(query_int(db, "SELECT count(*) FROM write_count"), n);
  EXPECT_EQ(query_int(db, "SELECT max(n) FROM write_count"), 1) << "a unit's result was written twice";
  EXPECT_EQ(query_int(db, "SELECT count(*) FROM results"), n);
  // Some unit was in flight at a kill and had to be claimed again.
  const int64_t reclaimed = query_int(db, "SELECT count(*) FROM units WHERE attempts > 1");
  EXPECT_GT(reclaimed, 0);
  std::printf("kills %d, units done before the last run %lld/%d, units claimed again %lld\n", interrupted,
              (long long)done_before, n, (long long)reclaimed);
}

// WAL: a reader holding a read transaction open does not block the writer,
// and a polling reader sees progress only grow.
TEST(JobStore, ReadersDoNotBlockTheWriter) {
  const std::string db = fresh_db("wal");
  JobStore store(db);
  const int n = 150;
  const int64_t id = store.create_job(spec_for(n));

  sqlite3* held = nullptr;
  ASSERT_EQ(sqlite3_open(db.c_str(), &held), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(held, "BEGIN; SELECT count(*) FROM results;", nullptr, nullptr, nullptr), SQLITE_OK);

  std::atomic<bool> stop{false};
  std::atomic<int> reads{0}, errors{0}, regressions{0};
  std::thread reader([&] {
    JobStore r(db);
    int64_t last = 0;
    while (!stop) {
      try {
        const JobInfo j = r.job(id);
        if (j.units_done < last) ++regressions;
        last = j.units_done;
        (void)r.export_json(id);
        ++reads;
      } catch (const Error&) {
        ++errors;
      }
    }
  });
  double worst = 0;
  store.begin_work(id);
  while (auto u = store.claim_next(id)) {
    const auto t0 = std::chrono::steady_clock::now();
    store.commit_result(u->id, fake_metrics(u->key));
    worst = std::max(worst, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  stop = true;
  reader.join();
  // The held transaction still sees its snapshot (no results), the writer finished anyway.
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(held, "SELECT count(*) FROM results", -1, &s, nullptr);
  ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int64(s, 0), 0);
  sqlite3_finalize(s);
  sqlite3_exec(held, "COMMIT", nullptr, nullptr, nullptr);
  sqlite3_close(held);

  EXPECT_EQ(store.job(id).units_done, n);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(regressions.load(), 0);
  EXPECT_GT(reads.load(), 0);
  EXPECT_LT(worst, 2.0) << "a commit waited on a reader";
}

TEST(JobStore, NewerSchemaIsRefusedAndLeftUntouched) {
  const std::string db = fresh_db("newer");
  {
    JobStore store(db);
    store.create_job(spec_for(2));
  }
  exec_sql(db, "PRAGMA user_version=99");
  const std::string before = slurp(db);
  ASSERT_FALSE(before.empty());
  try {
    JobStore store(db);
    FAIL() << "opened a newer schema";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("schema version 99"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
  EXPECT_EQ(slurp(db), before);
  EXPECT_EQ(query_int(db, "PRAGMA user_version"), 99);
}

TEST(JobStore, CorruptOrForeignFilesAreErrors) {
  const std::string bad = fresh_db("corrupt");
  {
    std::ofstream f(bad, std::ios::binary);
    for (int i = 0; i < 4096; ++i) f.put(char(i * 37));
  }
  const std::string before = slurp(bad);
  EXPECT_THROW(JobStore{bad}, Error);
  EXPECT_EQ(slurp(bad), before);

  // A real database whose pages are damaged after the header.
  const std::string dmg = fresh_db("damaged");
  {
    JobStore store(dmg);
    store.create_job(spec_for(30));
  }
  {
    std::fstream f(dmg, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    for (int i = 0; i < 3000; ++i) f.put(char(0xA5));
  }
  try {
    JobStore store(dmg);
    store.list_jobs();
    FAIL() << "a damaged database read as fine";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
  }

  const std::string foreign = fresh_db("foreign");
  exec_sql(foreign, "CREATE TABLE t(x); INSERT INTO t VALUES(1);");
  EXPECT_THROW(JobStore{foreign}, Error);
  EXPECT_EQ(query_int(foreign, "SELECT count(*) FROM t"), 1);
}

TEST(JobStore, MergesShards) {
  const int n = 12;
  const std::string a = fresh_db("shard-a"), b = fresh_db("shard-b"), out = fresh_db("merged");
  // Two shards of the same job: each does a different half (some overlap).
  for (const auto& [path, lo, hi] : {std::tuple{a, 0, 7}, std::tuple{b, 5, n}}) {
    JobStore s(path);
    const int64_t id = s.create_job(spec_for(n));
    s.begin_work(id);
    int i = 0;
    while (auto u = s.claim_next(id)) {
      if (i >= lo && i < hi) s.commit_result(u->id, fake_metrics(u->key));
      else s.fail_unit(u->id, "not this shard");
      ++i;
    }
  }
  JobStore::merge(out, {a, b});
  JobStore m(out);
  const auto jobs = m.list_jobs();
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].units_total, n);
  EXPECT_EQ(jobs[0].units_done, n);
  EXPECT_EQ(jobs[0].state, JobState::Done);
  std::map<std::string, nlohmann::json> expect;
  for (const auto& k : unit_keys(n)) expect[k] = fake_metrics(k);
  EXPECT_EQ(results_of(m, jobs[0].id), expect);

  // A shard with a different result for a unit: error, nothing merged.
  const std::string c = fresh_db("shard-c"), out2 = fresh_db("merged2");
  {
    JobStore s(c);
    const int64_t id = s.create_job(spec_for(n));
    s.begin_work(id);
    auto u = s.claim_next(id);
    s.commit_result(u->id, {{"rmse", -1.0}});
  }
  EXPECT_THROW(JobStore::merge(out2, {a, c}), Error);
  JobStore m2(out2);
  EXPECT_TRUE(m2.list_jobs().empty());
}

TEST(JobStore, ExportsJsonAndCsv) {
  JobStore store(fresh_db("export"));
  const int64_t id = store.create_job(spec_for(3));
  store.begin_work(id);
  auto u = store.claim_next(id);
  store.commit_result(u->id, fake_metrics(u->key));
  const nlohmann::json j = store.export_json(id);
  EXPECT_EQ(j["job"]["id"], id);
  ASSERT_EQ(j["units"].size(), 3u);
  EXPECT_EQ(j["units"][0]["key"], u->key);
  EXPECT_EQ(j["units"][0]["tensor"], "blk.0.attn_q.weight");
  EXPECT_EQ(j["units"][0]["type"], "IQ4_XS");
  EXPECT_EQ(j["units"][0]["metrics"], fake_metrics(u->key));
  EXPECT_TRUE(j["units"][1]["metrics"].is_null());

  const std::string csv = store.export_csv(id);
  EXPECT_EQ(tailor::test::count_lines(csv), 4);
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "key,tensor,type,state,attempts,seconds,bytes,note,rmse");
  const std::string row = csv.substr(csv.find('\n') + 1, csv.find('\n', csv.find('\n') + 1) - csv.find('\n') - 1);
  const auto m = fake_metrics(u->key);
  EXPECT_EQ(row.substr(0, row.find(",running")).find(u->key + ",blk.0.attn_q.weight,IQ4_XS,done,1,"), 0u) << row;
  EXPECT_NE(row.find(fmt::format(",{},\"a,b \"\"c\"\"\",{}", m["bytes"].dump(), m["rmse"].dump())),
            std::string::npos)
      << row;
}

TEST(JobStore, ModelContentHash) {
  const std::string dir = tailor::test::temp_dir() + "/model-" + std::to_string(::getpid());
  fs::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
  };
  auto safetensors = [](const std::string& header, const std::string& data) {
    std::string len(8, '\0');
    for (int i = 0; i < 8; ++i) len[size_t(i)] = char((header.size() >> (8 * i)) & 0xff);
    return len + header + data;
  };
  const std::string hdr = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  write("config.json", R"({"hidden_size": 2})");
  write("model.safetensors", safetensors(hdr, std::string(8, '\1')));
  write("README.md", "ignored");
  const std::string h0 = model_content_hash(dir);
  EXPECT_EQ(h0.rfind("xxh3:", 0), 0u);
  EXPECT_EQ(model_content_hash(dir), h0);
  write("README.md", "still ignored");
  EXPECT_EQ(model_content_hash(dir), h0);
  write("config.json", R"({"hidden_size": 3})");
  const std::string h1 = model_content_hash(dir);
  EXPECT_NE(h1, h0);
  write("model.safetensors", safetensors(R"({"w":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}})",
                                         std::string(8, '\1')));
  const std::string h2 = model_content_hash(dir);
  EXPECT_NE(h2, h1);
  write("model.safetensors", safetensors(R"({"w":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}})",
                                         std::string(16, '\1')));  // size changed
  EXPECT_NE(model_content_hash(dir), h2);

  JobInfo job;
  job.id = 7;
  job.model.hash = h0;
  try {
    check_model_unchanged(job, dir);
    FAIL() << "changed model accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("changed on disk"), std::string::npos) << e.what();
  }
  job.model.hash = model_content_hash(dir);
  EXPECT_NO_THROW(check_model_unchanged(job, dir));

  write("model.safetensors", safetensors(hdr, "") .substr(0, 12));  // header length past the end
  EXPECT_THROW(model_content_hash(dir), Error);
  EXPECT_THROW(model_content_hash(dir + "/nope"), Error);

  // A GGUF file: its metadata and tensor infos count, its tensor data does not.
  const std::string gguf = dir + "/m.gguf";
  auto write_gguf = [&](const std::string& arch, float value) {
    GgufWriter w(gguf);
    w.set("general.architecture", GgufValue::str(arch));
    w.add_tensor("w", {4}, GgmlType::F32);
    const float data[4] = {value, value, value, value};
    w.write_tensor_data(data, sizeof data);
    w.finish();
  };
  write_gguf("llama", 1.0f);
  const std::string g0 = model_content_hash(gguf);
  write_gguf("llama", 2.0f);
  EXPECT_EQ(model_content_hash(gguf), g0);
  write_gguf("qwen2", 1.0f);
  EXPECT_NE(model_content_hash(gguf), g0);
  std::ofstream(gguf, std::ios::binary) << "GGUF but broken";
  EXPECT_THROW(model_content_hash(gguf), Error);

  // The real fixture model hashes (headers only) and stays stable.
  const std::string llama = std::string(TAILOR_SHARED_DIR) + "/models/llama-30m";
  if (fs::exists(llama)) {
    EXPECT_EQ(model_content_hash(llama), model_content_hash(llama));
  }
}

TEST(JobsCli, ManagesJobs) {
  const std::string db = fresh_db("cli");
  int64_t id = 0;
  {
    JobStore store(db);
    id = store.create_job(spec_for(4));
    store.begin_work(id);
    auto u = store.claim_next(id);
    store.commit_result(u->id, fake_metrics(u->key));
    store.log(id, "measured one unit");
  }
  auto r = run_cli("jobs list --db " + db);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("1/4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("running"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("org/x"), std::string::npos) << r.out;

  r = run_cli("jobs list --json --db " + db);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto list = nlohmann::json::parse(r.out);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["units_done"], 1);
  EXPECT_EQ(list[0]["state"], "running");

  r = run_cli(fmt::format("jobs show {} --db {}", id, db));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("measured one unit"), std::string::npos) << r.out;
  r = run_cli(fmt::format("jobs show {} --json --db {}", id, db));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["model"]["hash"], "xxh3:0123456789abcdef");

  EXPECT_EQ(run_cli(fmt::format("jobs pause {} --db {}", id, db)).exit_code, 0);
  EXPECT_EQ(JobStore(db).state(id), JobState::Paused);
  EXPECT_EQ(run_cli(fmt::format("jobs resume {} --db {}", id, db)).exit_code, 0);
  EXPECT_EQ(JobStore(db).state(id), JobState::Queued);

  const std::string csv = fresh_db("cli-out") + ".csv";
  r = run_cli(fmt::format("jobs export {} --format csv -o {} --db {}", id, csv, db));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(slurp(csv), JobStore(db).export_csv(id));
  r = run_cli(fmt::format("jobs export {} --db {}", id, db));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out), JobStore(db).export_json(id));
  r = run_cli(fmt::format("jobs export {} --format xml --db {}", id, db));
  EXPECT_EQ(r.exit_code, 1);

  // TAILOR_DB is the default database.
  const std::string env_cmd = fmt::format("TAILOR_DB={} {} jobs list --json", db, TAILOR_CLI_PATH);
  EXPECT_EQ(std::system((env_cmd + " | grep -q units_done").c_str()), 0);

  const std::string merged = fresh_db("cli-merged");
  r = run_cli(fmt::format("jobs merge {} {}", merged, db));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(JobStore(merged).list_jobs().at(0).units_done, 1);
  r = run_cli(fmt::format("jobs merge {} {}", merged, db + ".missing"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no such job database"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(db + ".missing"));

  EXPECT_EQ(run_cli(fmt::format("jobs cancel {} --db {}", id, db)).exit_code, 0);
  EXPECT_EQ(JobStore(db).state(id), JobState::Cancelled);
  r = run_cli(fmt::format("jobs cancel {} --db {}", id + 100, db));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(tailor::test::count_lines(r.err), 1) << r.err;
  EXPECT_EQ(run_cli(fmt::format("jobs rm {} --db {}", id, db)).exit_code, 0);
  EXPECT_TRUE(JobStore(db).list_jobs().empty());

  const std::string junk = fresh_db("cli-junk");
  std::ofstream(junk) << "not a database at all, just some text that is long enough to be a header..........";
  r = run_cli("jobs list --db " + junk);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(tailor::test::count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(junk), std::string::npos) << r.err;

  exec_sql(db, "PRAGMA user_version=42");
  r = run_cli("jobs list --db " + db);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("schema version 42"), std::string::npos) << r.err;
  EXPECT_EQ(tailor::test::count_lines(r.err), 1) << r.err;
}

// A typo'd --db is an error, not a new empty database.
TEST(JobsCli, MissingDatabaseIsAnErrorAndNotCreated) {
  const std::string db = fresh_db("typo");
  for (const std::string cmd : {"jobs show 1 --db ", "jobs list --db ", "jobs pause 1 --db ", "jobs export 1 --db "}) {
    const auto r = run_cli(cmd + db);
    EXPECT_EQ(r.exit_code, 1) << cmd;
    EXPECT_NE(r.err.find(db + ": no such job database"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(db)) << cmd << " created the file";
  }
}
