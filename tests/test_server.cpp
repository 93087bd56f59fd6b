// `tailor serve`'s API, driven over real HTTP: the server runs in-process on a
// free port and every call goes through httplib::Client. Answers are checked
// against the libraries the endpoints wrap (job store, planner, inspect), not
// against numbers written here.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "gradual_fixture.h"
#include "tailor/jobs/job_store.h"
#include "tailor/model/inspect.h"
#include "tailor/plan/strategy.h"
#include "tailor/server/server.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kShared = TAILOR_SHARED_DIR;
const std::string kModel = kShared + "/models/llama-30m";
const std::string kCalib = kShared + "/text/calibration.txt";
const std::string kEval = kShared + "/text/eval.txt";

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class ServerTest : public ::testing::Test {
 protected:
  fs::path root;
  std::unique_ptr<tailor::server::Server> srv;
  std::thread thread;
  int port = 0;
  std::string token;

  void SetUp() override {
    root = fs::temp_directory_path() /
           ("tailor_server_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root);
    fs::create_directories(root / "work");
    // A symlink inside the allowed folder that points out of it.
    fs::create_directory_symlink("/etc", root / "work" / "escape");
    tailor::server::ServerOptions o;
    o.db = (root / "work" / "jobs.db").string();
    o.allow = {(root / "work").string(), kShared};
    o.hf_token_file = (root / "config" / "hf_token").string();
    o.quiet = true;
    srv = std::make_unique<tailor::server::Server>(o);
    port = srv->bind();
    token = srv->token();
    thread = std::thread([this] { srv->run(); });
  }

  void TearDown() override {
    srv->stop();
    thread.join();
    srv.reset();
    fs::remove_all(root);
  }

  httplib::Client client(bool auth = true) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(300, 0);
    if (auth) c.set_bearer_token_auth(token);
    return c;
  }

  json get_json(const std::string& path, int want = 200) {
    auto c = client();
    auto r = c.Get(path);
    EXPECT_TRUE(r) << path;
    if (!r) return nullptr;
    EXPECT_EQ(r->status, want) << path << ": " << r->body;
    return json::parse(r->body);
  }

  json post_json(const std::string& path, const json& body, int want = 200) {
    auto c = client();
    auto r = c.Post(path, body.dump(), "application/json");
    EXPECT_TRUE(r) << path;
    if (!r) return nullptr;
    EXPECT_EQ(r->status, want) << path << ": " << r->body;
    return json::parse(r->body);
  }

  std::string q(const std::string& s) { return httplib::detail::encode_query_param(s); }

  // Polls the job until the server has no worker on it.
  json wait_idle(int64_t id) {
    for (int i = 0; i < 600; ++i) {
      for (const auto& j : get_json("/api/jobs"))
        if (j["id"] == id && !j["active"].get<bool>()) return j;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    ADD_FAILURE() << "job " << id << " still running after 5 minutes";
    return nullptr;
  }

  json wait_task(int64_t id) {
    for (int i = 0; i < 1200; ++i) {
      json t = get_json("/api/tasks/" + std::to_string(id));
      if (t["state"] != "running") return t;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    ADD_FAILURE() << "task " << id << " still running after 10 minutes";
    return nullptr;
  }
};

TEST_F(ServerTest, EveryApiCallNeedsTheToken) {
  auto none = client(false);
  auto r = none.Get("/api/jobs");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = none.Post("/api/measure", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = none.Get("/api/events");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);

  auto wrong = client(false);
  wrong.set_bearer_token_auth(token.substr(0, token.size() - 1) + (token.back() == '0' ? "1" : "0"));
  r = wrong.Get("/api/jobs");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = none.Get("/api/jobs?token=nope");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);

  // The right token, as a header or in the query (EventSource cannot set headers).
  r = client().Get("/api/jobs");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = none.Get("/api/jobs?token=" + token);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body), json::array());
  // The app's page itself needs no token (it reads it from its URL).
  r = none.Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(srv->url(), "http://127.0.0.1:" + std::to_string(port) + "/?token=" + token);
}

TEST_F(ServerTest, BadRequestsAreFourHundredsWithAMessage) {
  auto c = client();
  for (const char* path : {"/api/measure", "/api/plan", "/api/quantize", "/api/compare", "/api/strategy"}) {
    auto r = c.Post(path, "{\"model\": ", "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << path;
    EXPECT_FALSE(json::parse(r->body).value("error", "").empty()) << path;
    r = c.Post(path, "[1,2]", "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << path;
  }
  // Well-formed but wrong: a missing field, a wrong type, a bad level, a missing text file.
  json e = post_json("/api/measure", {{"text", kCalib}}, 400);
  EXPECT_NE(e["error"].get<std::string>().find("model"), std::string::npos);
  post_json("/api/measure", {{"model", kModel}, {"text", 7}}, 400);
  post_json("/api/measure", {{"model", kModel}, {"text", kCalib}, {"level", "extreme"}}, 400);
  e = post_json("/api/measure", {{"model", kModel}, {"text", kShared + "/text/missing.txt"}}, 400);
  EXPECT_NE(e["error"].get<std::string>().find("missing.txt"), std::string::npos);
  // Unknown ids and endpoints.
  get_json("/api/jobs/424242", 404);
  get_json("/api/jobs/424242/results", 404);
  post_json("/api/jobs/424242/pause", json::object(), 404);
  get_json("/api/tasks/99", 404);
  get_json("/api/nothing-here", 404);
  // No measurement of this model yet: the plan has nothing to work from.
  post_json("/api/plan", {{"model", kModel}, {"target_bpw", 5.0}}, 404);
}

TEST_F(ServerTest, PathsOutsideTheAllowedFoldersAreRefused) {
  const std::string work = (root / "work").string();
  const std::vector<std::string> bad = {
      "../../etc/passwd",
      work + "/../../../../etc/passwd",
      work + "/escape/passwd",  // symlink to /etc inside an allowed folder
      "/etc/passwd",
      kShared + "/../../etc/passwd",
  };
  for (const auto& p : bad) {
    get_json("/api/model?path=" + q(p), 403);
    get_json("/api/download?path=" + q(p), 403);
    get_json("/api/strategy?path=" + q(p), 403);
    post_json("/api/strategy", {{"path", p}, {"strategy", json::object()}}, 403);
    post_json("/api/measure", {{"model", p}, {"text", kCalib}}, 403);
    post_json("/api/measure", {{"model", kModel}, {"text", p}}, 403);
  }
  // A symlink escape through a file link, and writes through the folder link.
  fs::create_symlink("/etc/hostname", root / "work" / "host.gguf");
  get_json("/api/download?path=" + q(work + "/host.gguf"), 403);
  post_json("/api/quantize", {{"model", kModel}, {"strategy", work + "/s.json"}, {"output", work + "/escape/x.gguf"}},
            403);
  EXPECT_FALSE(fs::exists("/etc/x.gguf"));
  // Inside is fine: the model's description matches inspect_model's.
  json m = get_json("/api/model?path=" + q(kModel));
  const json want = tailor::inspect_model(kModel);
  EXPECT_EQ(m["tensors"], want["tensors"]);
  EXPECT_EQ(m["totals"], want["totals"]);
  // Only GGUF files are offered for download.
  get_json("/api/download?path=" + q(kModel + "/config.json"), 403);
}

TEST_F(ServerTest, HuggingFaceTokenIsStoredPrivatelyAndNeverReturned) {
  const std::string secret = "hf_TestSecretValue123";
  EXPECT_EQ(get_json("/api/hf-token"), (json{{"stored", false}}));
  auto c = client();
  auto r = c.Post("/api/hf-token", json{{"token", secret}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body.find(secret), std::string::npos);
  const fs::path f = root / "config" / "hf_token";
  struct stat st {};
  ASSERT_EQ(::stat(f.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(read_file(f), secret + "\n");
  r = c.Get("/api/hf-token");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body.find(secret), std::string::npos);
  EXPECT_EQ(json::parse(r->body), (json{{"stored", true}}));
  post_json("/api/hf-token", {{"token", "two words"}}, 400);
}

// A Hugging Face id that names no local path is pulled into (here: found in,
// offline) the Hub cache, whose snapshot the server may read although it is
// outside --allow; a path-like argument never becomes a Hub id.
TEST_F(ServerTest, HuggingFaceIdsResolveThroughTheHubCache) {
  const fs::path cache = root / "hub";
  const std::string commit(40, 'c');
  const fs::path repo = cache / "models--test-org--tiny-llama";
  fs::create_directories(repo / "refs");
  std::ofstream(repo / "refs" / "main") << commit;
  const fs::path snap = repo / "snapshots" / commit;
  fs::create_directories(snap);
  for (const auto& e : fs::directory_iterator(kModel))
    if (e.is_regular_file()) fs::create_symlink(e.path(), snap / e.path().filename());
  ::setenv("HF_HUB_CACHE", cache.c_str(), 1);
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  json m = get_json("/api/model?path=" + q("test-org/tiny-llama"));
  EXPECT_EQ(m["tensors"], tailor::inspect_model(kModel)["tensors"]);
  // The id reaches the planner as the snapshot folder, which has no measurement yet.
  json p = post_json("/api/plan", {{"model", "test-org/tiny-llama"}, {"target_bpw", 4.5}}, 404);
  EXPECT_NE(p["error"].get<std::string>().find(snap.string()), std::string::npos) << p;
  // Not cached (and offline): a one-line 400 naming the id, not a crash or a 500.
  json e = post_json("/api/measure", {{"model", "test-org/absent"}, {"text", kCalib}}, 400);
  EXPECT_NE(e["error"].get<std::string>().find("test-org/absent"), std::string::npos) << e;
  // Other folders of the cache's file system stay closed, and so do escapes.
  get_json("/api/model?path=" + q("/etc/passwd"), 403);
  get_json("/api/model?path=" + q("../etc/passwd"), 403);
  ::unsetenv("HF_HUB_OFFLINE");
  ::unsetenv("HF_HUB_CACHE");
}

// The whole path of the app on llama-30m: measure (paused, resumed, watched
// over SSE), results, plan, strategy files, quantize, download and compare.
// A gradual job, written with the JobStore API as the job commits it, comes
// back regrouped: importance, blocks in processing order, validation.
TEST_F(ServerTest, GradualJobViewRegroupsItsUnits) {
  tailor::test::GradualFixture done, running;
  int64_t measure_job;
  {
    tailor::jobs::JobStore st((root / "work" / "jobs.db").string());
    done = tailor::test::write_gradual_fixture(st, kModel);
    running = tailor::test::write_gradual_fixture(st, kModel, 8, 3, "running");
    tailor::jobs::JobSpec spec;
    spec.kind = "measure";
    spec.model.path = kModel;
    spec.units = {"a"};
    measure_job = st.create_job(spec);
  }
  json g = get_json("/api/gradual/" + std::to_string(done.id));
  EXPECT_EQ(g["job"]["id"], done.id);
  EXPECT_EQ(g["job"]["kind"], "gradual");
  EXPECT_EQ(g["job"]["state"], "done");
  EXPECT_EQ(g["importance"], done.importance);
  EXPECT_EQ(g["validate"], done.validate);
  ASSERT_EQ(g["blocks"].size(), 8u);
  EXPECT_EQ(g["blocks"], done.blocks);
  // The fixture processes the least important block first.
  for (size_t k = 1; k < g["blocks"].size(); ++k) {
    const auto imp = [&](size_t i) {
      return g["importance"]["blocks"][g["blocks"][i]["block"].get<size_t>()]["combined"].get<double>();
    };
    EXPECT_LE(imp(k - 1), imp(k));
    EXPECT_EQ(g["blocks"][k]["order"], int(k));
  }
  EXPECT_TRUE(g["pending"].empty());

  // Still running: the blocks done so far, the rest pending, no validation yet.
  g = get_json("/api/gradual/" + std::to_string(running.id));
  EXPECT_EQ(g["job"]["state"], "running");
  EXPECT_EQ(g["blocks"], running.blocks);
  EXPECT_EQ(g["blocks"].size(), 3u);
  EXPECT_TRUE(g["validate"].is_null());
  ASSERT_EQ(g["pending"].size(), running.pending.size());
  for (size_t i = 0; i < running.pending.size(); ++i) {
    EXPECT_EQ(g["pending"][i]["key"], running.pending[i]);
    EXPECT_EQ(g["pending"][i]["state"], "pending");
  }

  get_json("/api/gradual/" + std::to_string(measure_job), 400);
  get_json("/api/gradual/999999", 404);
}

// Results in an unexpected shape are sorted out, not trusted or crashed on.
TEST_F(ServerTest, GradualJobViewToleratesOddUnits) {
  int64_t id;
  {
    tailor::jobs::JobStore st((root / "work" / "jobs.db").string());
    tailor::jobs::JobSpec spec;
    spec.kind = "gradual";
    spec.model.path = kModel;
    spec.units = {"block.0", "block.1", "block.2", "block.3", "block.x", "block.4", "trade"};
    id = st.create_job(spec);
    st.begin_work(id);
    const json metrics[] = {{{"order", 2}}, {{"order", 0}},  {{"order", 1}}, json::array({1, 2}),
                            {{"order", 5}}, {{"block", 7}}, {{"bytes", 10}}};
    for (const json& m : metrics) st.commit_result(st.claim_next(id)->id, m);
  }
  const json g = get_json("/api/gradual/" + std::to_string(id));
  std::vector<int64_t> order;
  for (const auto& b : g["blocks"]) order.push_back(b["block"].get<int64_t>());
  EXPECT_EQ(order, (std::vector<int64_t>{1, 2, 0, 4}));  // by "order", then those without one; the key names the block
  EXPECT_TRUE(g["importance"].is_null());
  EXPECT_TRUE(g["validate"].is_null());
  ASSERT_EQ(g["pending"].size(), 1u);
  EXPECT_EQ(g["pending"][0]["key"], "block.3");
  EXPECT_EQ(g["other"]["block.x"], json({{"order", 5}}));
  EXPECT_EQ(g["other"]["trade"], json({{"bytes", 10}}));
}

TEST_F(ServerTest, MeasurePlanQuantizeCompareOnLlama30m) {
  const json req = {{"model", kModel},     {"text", kCalib}, {"eval", kEval},        {"level", "proxy"},
                    {"types", "Q8_0,Q4_K"}, {"ctx", 128},     {"calib_chunks", 2}};
  const int64_t id = post_json("/api/measure", req)["job"].get<int64_t>();
  ASSERT_GT(id, 0);
  // Pause at once: the worker stops after the unit in flight.
  json j = post_json("/api/jobs/" + std::to_string(id) + "/pause", json::object());
  EXPECT_EQ(j["state"], "paused");
  j = wait_idle(id);
  EXPECT_EQ(j["state"], "paused");
  const int64_t total = j["units_total"].get<int64_t>();
  ASSERT_GT(total, 10);
  EXPECT_LT(j["units_done"].get<int64_t>(), total);
  {
    tailor::jobs::JobStore st((root / "work" / "jobs.db").string());
    EXPECT_EQ(st.state(id), tailor::jobs::JobState::Paused);
  }

  // Resume: the server starts a worker; the event stream shows its progress.
  j = post_json("/api/jobs/" + std::to_string(id) + "/resume", json::object());
  EXPECT_TRUE(j["worker_started"].get<bool>());
  std::string buf;
  json event;
  auto c = client(false);
  auto r = c.Get("/api/events?token=" + token, [&](const char* data, size_t n) {
    buf.append(data, n);
    const auto end = buf.find("\n\n");
    if (end == std::string::npos) return true;
    const std::string ev = buf.substr(0, end);
    const auto d = ev.find("data: ");
    if (ev.rfind("event: progress\n", 0) == 0 && d != std::string::npos) event = json::parse(ev.substr(d + 6));
    return false;  // one event is enough
  });
  ASSERT_FALSE(event.is_null()) << buf;
  bool seen = false;
  for (const auto& e : event["jobs"])
    if (e["id"] == id) {
      seen = true;
      EXPECT_EQ(e["units_total"], total);
      EXPECT_TRUE(e["state"] == "running" || e["state"] == "queued" || e["state"] == "done") << e["state"];
    }
  EXPECT_TRUE(seen) << event.dump();

  j = wait_idle(id);
  ASSERT_EQ(j["state"], "done") << get_json("/api/jobs/" + std::to_string(id)).dump(1);
  EXPECT_EQ(j["units_done"], total);
  json info = get_json("/api/jobs/" + std::to_string(id));
  EXPECT_FALSE(info["log"].empty());

  // Results are the store's export plus a per-tensor summary.
  json res = get_json("/api/jobs/" + std::to_string(id) + "/results");
  {
    tailor::jobs::JobStore st((root / "work" / "jobs.db").string());
    json want = st.export_json(id);
    EXPECT_EQ(res["units"], want["units"]);
  }
  ASSERT_TRUE(res["summary"]["tensors"].is_array());
  EXPECT_EQ(res["summary"]["tensors"].size() * 2, size_t(total));

  // Cancel: another job, made in the store directly.
  int64_t other;
  {
    tailor::jobs::JobStore st((root / "work" / "jobs.db").string());
    tailor::jobs::JobSpec spec;
    spec.kind = "test";
    spec.model.path = "/nowhere";
    spec.units = {"a", "b"};
    other = st.create_job(spec);
  }
  EXPECT_EQ(post_json("/api/jobs/" + std::to_string(other) + "/cancel", json::object())["state"], "cancelled");

  // Plan at 6 bits per weight from this measurement; save it and read it back.
  const std::string work = (root / "work").string();
  json p = post_json("/api/plan", {{"model", kModel}, {"job", id}, {"target_bpw", 6.0}, {"save", work + "/s.json"}});
  ASSERT_TRUE(p["strategy"]["tensors"].is_array());
  EXPECT_EQ(p["strategy"]["tensors"].size(), res["summary"]["tensors"].size());
  EXPECT_LE(p["strategy"]["totals"]["bpw"].get<double>(), 6.0 + 1e-9);
  const tailor::plan::Strategy saved = tailor::plan::read_strategy(work + "/s.json");
  ASSERT_EQ(saved.tensors.size(), p["strategy"]["tensors"].size());
  for (size_t i = 0; i < saved.tensors.size(); ++i)
    EXPECT_EQ(saved.tensors[i].type, p["strategy"]["tensors"][i]["type"]);
  json loaded = get_json("/api/strategy?path=" + q(work + "/s.json"));
  EXPECT_EQ(loaded["strategy"], p["strategy"]);
  // Saving as YAML through the API writes the same plan.
  post_json("/api/strategy", {{"path", work + "/s.yaml"}, {"strategy", p["strategy"]}});
  const tailor::plan::Strategy yaml = tailor::plan::read_strategy(work + "/s.yaml");
  ASSERT_EQ(yaml.tensors.size(), saved.tensors.size());
  for (size_t i = 0; i < yaml.tensors.size(); ++i) {
    EXPECT_EQ(yaml.tensors[i].name, saved.tensors[i].name);
    EXPECT_EQ(yaml.tensors[i].type, saved.tensors[i].type);
  }
  EXPECT_EQ(get_json("/api/strategy?path=" + q(work + "/s.yaml"))["strategy"]["tensors"].size(), saved.tensors.size());
  post_json("/api/strategy", {{"path", work + "/s.txt"}, {"strategy", p["strategy"]}}, 400);
  post_json("/api/plan", {{"model", kModel}, {"job", id}}, 400);  // no budget

  // Quantize with it; the GGUF has the planned types and downloads byte for byte.
  const std::string out = work + "/out.gguf";
  const int64_t task = post_json("/api/quantize", {{"model", kModel}, {"strategy", work + "/s.json"}, {"output", out}})
                           ["task"]
                               .get<int64_t>();
  json t = wait_task(task);
  ASSERT_EQ(t["state"], "done") << t.dump();
  EXPECT_DOUBLE_EQ(t["progress"].get<double>(), 1.0);
  const json g = tailor::inspect_model(out);
  std::map<std::string, std::string> types;
  for (const auto& tt : g["tensors"]) types[tt["name"]] = tt["type"];
  for (const auto& st : saved.tensors) EXPECT_EQ(types[st.name], st.type) << st.name;
  auto d = client().Get("/api/download?path=" + q(out));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->status, 200);
  EXPECT_EQ(d->body.size(), fs::file_size(out));
  EXPECT_TRUE(d->body == read_file(out));

  // Compare the plan with Q8_0 on a short eval.
  const int64_t ct = post_json("/api/compare", {{"model", kModel},
                                                {"text", kEval},
                                                {"baselines", {"Q8_0"}},
                                                {"strategies", {work + "/s.json"}},
                                                {"ctx", 128},
                                                {"windows", 2}})["task"]
                         .get<int64_t>();
  t = wait_task(ct);
  ASSERT_EQ(t["state"], "done") << t.dump();
  EXPECT_FALSE(t["result"]["table"].get<std::string>().empty());
  EXPECT_NE(t["result"]["table"].get<std::string>().find("Q8_0"), std::string::npos);
}

}  // namespace
