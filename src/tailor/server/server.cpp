#include "tailor/server/server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "tailor/eval/imatrix.h"
#include "tailor/hub/hub.h"
#include "tailor/jobs/job_store.h"
#include "tailor/measure/measure.h"
#include "tailor/model/inspect.h"
#include "tailor/plan/compare.h"
#include "tailor/plan/planner.h"
#include "tailor/plan/quantize.h"
#include "tailor/plan/strategy.h"
#include "tailor/util/clock.h"
#include "tailor/util/error.h"

namespace tailor::server {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A request the API refuses, with the HTTP status that says why.
struct HttpError {
  int status;
  std::string message;
};

[[noreturn]] void refuse(int status, std::string message) { throw HttpError{status, std::move(message)}; }

std::string random_token() {
  std::random_device rd;
  std::string t;
  for (int i = 0; i < 8; ++i) t += fmt::format("{:08x}", rd());
  return t;
}

// Equal-time comparison, so the token cannot be guessed byte by byte from timings.
bool same_secret(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

fs::path resolve(const std::string& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(fs::absolute(fs::path(p)), ec);
  if (ec) return {};
  return r;
}

json parse_body(const httplib::Request& req) {
  json j = json::parse(req.body, nullptr, false);
  if (j.is_discarded()) refuse(400, "request body is not valid JSON");
  if (!j.is_object()) refuse(400, "request body must be a JSON object");
  return j;
}

std::string str_field(const json& j, const char* key, bool required = true) {
  if (!j.contains(key) || j[key].is_null()) {
    if (required) refuse(400, fmt::format("'{}' is required", key));
    return {};
  }
  if (!j[key].is_string()) refuse(400, fmt::format("'{}' must be a string", key));
  return j[key].get<std::string>();
}

template <class T>
std::optional<T> num_field(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  if (!j[key].is_number()) refuse(400, fmt::format("'{}' must be a number", key));
  return j[key].get<T>();
}

// A list given as a JSON array of strings or one comma-separated string.
std::vector<std::string> list_field(const json& j, const char* key) {
  std::vector<std::string> out;
  if (!j.contains(key) || j[key].is_null()) return out;
  if (j[key].is_string()) {
    std::string s = j[key].get<std::string>(), part;
    for (char c : s + ",") {
      if (c == ',') {
        if (!part.empty()) out.push_back(part);
        part.clear();
      } else if (c != ' ') {
        part += c;
      }
    }
    return out;
  }
  if (!j[key].is_array()) refuse(400, fmt::format("'{}' must be a list of strings", key));
  for (const auto& v : j[key]) {
    if (!v.is_string()) refuse(400, fmt::format("'{}' must be a list of strings", key));
    out.push_back(v.get<std::string>());
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}

json strategy_json(const plan::Strategy& s) {
  return json::parse(plan::strategy_to_text(s, plan::StrategyFormat::Json));
}

std::string default_hf_token_file() {
  if (const char* x = std::getenv("XDG_CONFIG_HOME"); x && *x) return std::string(x) + "/tailor/hf_token";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.config/tailor/hf_token";
  return ".tailor_hf_token";
}


// A gradual job's units (JobStore::export_json) regrouped for the app: the
// importance analysis, the blocks done so far in the order they were
// processed, the final validation, and the units without a result yet
// ("pending", with their state). A unit whose metrics are not an object is
// listed there too rather than trusted.
json gradual_view(const json& units) {
  json out = {{"importance", nullptr}, {"blocks", json::array()}, {"validate", nullptr},
              {"pending", json::array()}, {"other", json::object()}};
  for (const auto& u : units) {
    const std::string key = u.value("key", "");
    const json& m = u["metrics"];
    if (u.value("state", "") != "done" || !m.is_object()) {
      out["pending"].push_back({{"key", key}, {"state", u.value("state", "")}});
    } else if (key == "importance") {
      out["importance"] = m;
    } else if (key == "validate") {
      out["validate"] = m;
    } else if (key.rfind("block.", 0) == 0 && key.size() > 6 && key.size() < 16 &&
               key.find_first_not_of("0123456789", 6) == std::string::npos) {
      json b = m;
      b["block"] = std::stoll(key.substr(6));  // the key names the block, whatever the metrics say
      out["blocks"].push_back(std::move(b));
    } else {
      out["other"][key] = m;  // units a later version of the job may add
    }
  }
  // Processing order ("order"), blocks without one last, by index.
  auto order = [](const json& b) {
    const json o = b.value("order", json());
    return std::pair{o.is_number() ? o.get<double>() : 1e300, b["block"].get<int64_t>()};
  };
  std::stable_sort(out["blocks"].begin(), out["blocks"].end(),
                   [&](const json& a, const json& b) { return order(a) < order(b); });
  return out;
}

}  // namespace

bool path_allowed(const std::string& path, const std::vector<std::string>& roots, std::string& resolved) {
  resolved.clear();
  if (path.empty() || path.find('\0') != std::string::npos) return false;
  const fs::path p = resolve(path);
  if (p.empty()) return false;
  resolved = p.string();
  for (const std::string& root : roots) {
    const fs::path r = resolve(root);
    if (r.empty()) continue;
    const fs::path rel = p.lexically_relative(r);
    if (rel.empty() || rel.is_absolute()) continue;
    if (*rel.begin() == "..") continue;
    return true;
  }
  return false;
}

// Background work that is not a job-store job (quantize, compare): kept in
// memory for the life of the server.
struct Task {
  int64_t id = 0;
  std::string kind, state = "running", message, error;
  double progress = 0, created = 0, finished = 0;
  json request, result;

  json to_json() const {
    json j = {{"id", id},           {"kind", kind},         {"state", state},   {"progress", progress},
              {"message", message}, {"created", created},   {"request", request}};
    if (finished > 0) j["finished"] = finished;
    if (!error.empty()) j["error"] = error;
    if (!result.is_null()) j["result"] = result;
    return j;
  }
};

struct Server::Impl {
  ServerOptions opt;
  std::vector<std::string> roots;
  std::string token;
  httplib::Server http;
  int port = 0;
  std::atomic<bool> stopping{false};

  std::mutex mu;  // guards everything below
  std::map<int64_t, Task> tasks;
  int64_t next_task = 1;
  std::set<int64_t> active_jobs;  // measure jobs a thread of this server works on
  std::vector<std::thread> workers;

  explicit Impl(ServerOptions o) : opt(std::move(o)) {
    if (opt.db.empty()) opt.db = jobs::JobStore::default_path();
    roots = opt.allow.empty() ? std::vector<std::string>{fs::current_path().string()} : opt.allow;
    token = opt.token.empty() ? random_token() : opt.token;
    if (opt.hf_token_file.empty()) opt.hf_token_file = default_hf_token_file();
    routes();
  }

  ~Impl() {
    stopping = true;
    http.stop();
    // Measurements pause at their next unit (the job store keeps them resumable).
    {
      std::lock_guard lk(mu);
      if (!active_jobs.empty()) {
        try {
          jobs::JobStore store(opt.db);
          for (int64_t id : active_jobs) store.pause(id);
        } catch (const std::exception&) {
        }
      }
    }
    // Joined outside the lock: a finishing worker may still append one.
    while (true) {
      std::vector<std::thread> batch;
      {
        std::lock_guard lk(mu);
        batch.swap(workers);
      }
      if (batch.empty()) break;
      for (auto& t : batch) t.join();
    }
  }

  // A model (`hub_cache`) may also sit in the Hugging Face cache, where Hub ids are pulled to.
  std::string allowed(const std::string& path, bool hub_cache = false) {
    std::string resolved;
    std::vector<std::string> in = roots;
    if (const std::string c = hub::default_cache_dir(); hub_cache && !c.empty()) in.push_back(c);
    if (!path_allowed(path, in, resolved))
      refuse(403, fmt::format("{}: outside the folders this server may use (--allow)", path));
    return resolved;
  }

  // The token stored through /api/hf-token; empty: the Hub's own defaults.
  std::string stored_hf_token() {
    std::ifstream in(opt.hf_token_file);
    std::string tok;
    std::getline(in, tok);
    return tok;
  }

  // A model argument: a path in an allowed folder, or a Hugging Face id
  // (ORG/NAME[@REV]) that names no local path, pulled into the Hub cache with
  // the stored token (nothing is fetched when the cache has it already). The
  // pull runs in the request, so a large model's first use answers late.
  std::string model_path(const std::string& given) {
    std::error_code ec;
    if (!given.empty() && !fs::exists(given, ec) && hub::looks_like_repo_spec(given)) {
      hub::PullOptions po;
      po.token = stored_hf_token();
      po.quiet = true;
      po.log = nullptr;
      return allowed(hub::pull(hub::parse_repo_spec(given), po).snapshot, true);
    }
    return allowed(given, true);
  }

  bool authorized(const httplib::Request& req) const {
    std::string given;
    const std::string auth = req.get_header_value("Authorization");
    if (auth.rfind("Bearer ", 0) == 0) given = auth.substr(7);
    else if (req.has_param("token")) given = req.get_param_value("token");
    return !given.empty() && same_secret(given, token);
  }

  jobs::JobStore store() { return jobs::JobStore(opt.db); }

  int64_t path_id(const httplib::Request& req) {
    try {
      return std::stoll(req.matches[1].str());
    } catch (const std::exception&) {
      refuse(404, "no such id");
    }
  }

  jobs::JobInfo job_or_404(jobs::JobStore& s, int64_t id) {
    auto j = s.find_job(id);
    if (!j) refuse(404, fmt::format("no job {}", id));
    return *j;
  }

  using Handler = std::function<json(const httplib::Request&)>;

  // JSON in, JSON out; refusals and library errors become status codes with
  // {"error": "..."}: a malformed request or input the library rejects is 400.
  httplib::Server::Handler wrap(Handler h) {
    return [h](const httplib::Request& req, httplib::Response& res) {
      auto error = [&res](int status, const std::string& msg) {
        res.status = status;
        res.set_content(json{{"error", msg}}.dump(), "application/json");
      };
      try {
        res.set_content(h(req).dump(), "application/json");
      } catch (const HttpError& e) {
        error(e.status, e.message);
      } catch (const Error& e) {
        error(400, e.what());
      } catch (const json::exception& e) {
        error(400, fmt::format("bad request: {}", e.what()));
      } catch (const std::exception& e) {
        error(500, e.what());
      }
    };
  }

  void spawn(std::function<void()> f) {
    std::lock_guard lk(mu);
    workers.emplace_back(std::move(f));
  }

  int64_t new_task(const std::string& kind, json request) {
    std::lock_guard lk(mu);
    Task t;
    t.id = next_task++;
    t.kind = kind;
    t.request = std::move(request);
    t.created = unix_seconds();
    tasks[t.id] = t;
    return t.id;
  }

  void update_task(int64_t id, const std::function<void(Task&)>& f) {
    std::lock_guard lk(mu);
    f(tasks[id]);
  }

  // Runs `f` as task `id`: done with its result, or failed with its message.
  void run_task(int64_t id, std::function<json()> f) {
    spawn([this, id, f = std::move(f)] {
      json result;
      std::string err;
      try {
        result = f();
      } catch (const std::exception& e) {
        err = e.what();
      }
      update_task(id, [&](Task& t) {
        t.state = err.empty() ? "done" : "failed";
        t.error = err;
        t.result = std::move(result);
        t.finished = unix_seconds();
        if (err.empty()) t.progress = 1;
      });
    });
  }

  // A measurement worker for job `job` (or a new job from `settings` when job
  // is 0) on its own JobStore connection. `on_job` learns the id (or an error).
  void start_measure(int64_t job, const std::string& model, const measure::Settings& settings,
                     std::shared_ptr<std::promise<int64_t>> on_job) {
    spawn([this, job, model, settings, on_job] {
      int64_t id = job;
      bool told = false, worked = false;
      try {
        jobs::JobStore st(opt.db);
        measure::RunOptions ro;
        ro.stop = &stopping;
        ro.on_job = [&](int64_t j) {
          id = j;
          worked = true;
          {
            std::lock_guard lk(mu);
            active_jobs.insert(j);
          }
          if (!told) on_job->set_value(j), told = true;
        };
        if (job > 0) measure::resume_measure(st, job, model, ro);
        else measure::run_measure(st, model, settings, ro);
      } catch (const std::exception& e) {
        if (!told) {
          on_job->set_exception(std::current_exception());
          told = true;
        } else if (id > 0) {
          try {
            jobs::JobStore st(opt.db);
            st.fail_job(id, e.what());
          } catch (const std::exception&) {
          }
        }
      }
      {
        std::lock_guard lk(mu);
        active_jobs.erase(id);
      }
      // A resume that came while this worker was stopping found it still
      // active and started none: carry on with the job here.
      if (worked && !stopping) {
        try {
          jobs::JobStore st(opt.db);
          if (st.state(id) == jobs::JobState::Queued)
            start_measure(id, model, {}, std::make_shared<std::promise<int64_t>>());
        } catch (const std::exception&) {
        }
      }
    });
  }

  // Waits for the worker to name its job: the preparation before it (model
  // load and hashing) is what fails on bad input, and the caller wants the id.
  int64_t await_job(std::shared_ptr<std::promise<int64_t>> p) {
    auto fut = p->get_future();
    if (fut.wait_for(std::chrono::minutes(5)) != std::future_status::ready)
      refuse(504, "the measurement did not start within 5 minutes");
    return fut.get();  // rethrows the worker's Error (-> 400)
  }

  json snapshot() {
    json j = {{"time", unix_seconds()}, {"jobs", json::array()}, {"tasks", json::array()}};
    try {
      jobs::JobStore st(opt.db, jobs::JobStore::Open::ExistingOnly);
      for (const auto& info : st.list_jobs()) j["jobs"].push_back(jobs::job_json(info));
    } catch (const Error&) {
    }
    std::lock_guard lk(mu);
    for (const auto& [id, t] : tasks) {
      json tj = t.to_json();
      tj.erase("result");  // results can be large; GET /api/tasks/{id} has them
      j["tasks"].push_back(std::move(tj));
    }
    for (auto& jj : j["jobs"]) jj["active"] = active_jobs.contains(jj["id"].get<int64_t>());
    return j;
  }

  void routes();
};

void Server::Impl::routes() {
  http.new_task_queue = [] { return new httplib::ThreadPool(16); };
  http.set_payload_max_length(16 << 20);
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.path.rfind("/api/", 0) != 0 || authorized(req)) return httplib::Server::HandlerResponse::Unhandled;
    res.status = 401;
    res.set_header("WWW-Authenticate", "Bearer");
    res.set_content(json{{"error", "missing or wrong access token (see the URL tailor serve printed)"}}.dump(),
                    "application/json");
    return httplib::Server::HandlerResponse::Handled;
  });
  if (!opt.quiet)
    // The path only: the token may be in the query, and bodies may hold secrets.
    http.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      std::fprintf(stderr, "%s %s %d\n", req.method.c_str(), req.path.c_str(), res.status);
    });

  http.Get("/api/jobs", wrap([this](const httplib::Request&) {
    json out = json::array();
    if (!fs::exists(opt.db)) return out;
    jobs::JobStore st = store();
    std::lock_guard lk(mu);
    for (const auto& j : st.list_jobs()) {
      json jj = jobs::job_json(j);
      jj["active"] = active_jobs.contains(j.id);
      out.push_back(std::move(jj));
    }
    return out;
  }));
  http.Get(R"(/api/jobs/(\d+))", wrap([this](const httplib::Request& req) {
    jobs::JobStore st = store();
    const int64_t id = path_id(req);
    json out = jobs::job_json(job_or_404(st, id));
    out["log"] = json::array();
    for (const auto& l : st.log_lines(id, 200)) out["log"].push_back({{"time", l.time}, {"line", l.line}});
    return out;
  }));
  http.Get(R"(/api/jobs/(\d+)/results)", wrap([this](const httplib::Request& req) {
    jobs::JobStore st = store();
    const int64_t id = path_id(req);
    const jobs::JobInfo info = job_or_404(st, id);
    json out = st.export_json(id);
    if (info.kind == "measure") out["summary"] = measure::summarize(out);
    return out;
  }));
  http.Get(R"(/api/gradual/(\d+))", wrap([this](const httplib::Request& req) {
    jobs::JobStore st = store();
    const int64_t id = path_id(req);
    const jobs::JobInfo info = job_or_404(st, id);
    if (info.kind != "gradual") refuse(400, fmt::format("job {} is a {} job, not a gradual one", id, info.kind));
    json out = gradual_view(st.export_json(id)["units"]);
    out["job"] = jobs::job_json(info);
    return out;
  }));
  http.Post(R"(/api/jobs/(\d+)/(pause|resume|cancel))", wrap([this](const httplib::Request& req) {
    jobs::JobStore st = store();
    const int64_t id = path_id(req);
    const jobs::JobInfo info = job_or_404(st, id);
    const std::string action = req.matches[2].str();
    bool started = false;
    if (action == "pause") {
      st.pause(id);
    } else if (action == "cancel") {
      st.cancel(id);
    } else {
      st.resume(id);
      bool active;
      {
        std::lock_guard lk(mu);
        active = active_jobs.contains(id);
      }
      // A measurement nobody works on gets a worker here (its model must be allowed).
      if (info.kind == "measure" && !active) {
        const std::string model = allowed(info.model.path, true);
        auto p = std::make_shared<std::promise<int64_t>>();
        start_measure(id, model, {}, p);
        await_job(p);
        started = true;
      }
    }
    json out = jobs::job_json(st.job(id));
    out["worker_started"] = started;
    return out;
  }));

  http.Post("/api/measure", wrap([this](const httplib::Request& req) {
    const json b = parse_body(req);
    const std::string model = model_path(str_field(b, "model"));
    measure::Settings s;
    s.text = allowed(str_field(b, "text"));
    const std::string ev = str_field(b, "eval", false);
    if (!ev.empty()) s.eval = allowed(ev);
    const std::string im = str_field(b, "imatrix", false);
    if (!im.empty()) s.imatrix = im == "none" ? im : allowed(im);
    const auto types = list_field(b, "types");
    if (!types.empty()) s.types = measure::parse_types(join(types));
    const std::string level = str_field(b, "level", false);
    if (!level.empty()) s.level = measure::parse_level(level);
    auto bounded = [&](const char* key, int64_t& v, int64_t lo, int64_t hi) {
      if (auto x = num_field<int64_t>(b, key)) {
        if (*x < lo || *x > hi) refuse(400, fmt::format("'{}' must be in [{}, {}]", key, lo, hi));
        v = *x;
      }
    };
    bounded("ctx", s.n_ctx, 8, 1 << 17);
    bounded("windows", s.windows, 1, 1 << 16);
    bounded("calib_chunks", s.calib_chunks, 1, 1 << 16);
    bounded("sample_rows", s.sample_rows, 1, 1 << 20);
    auto p = std::make_shared<std::promise<int64_t>>();
    start_measure(0, model, s, p);
    const int64_t id = await_job(p);
    return json{{"job", id}};
  }));

  http.Get("/api/model", wrap([this](const httplib::Request& req) {
    if (!req.has_param("path")) refuse(400, "'path' is required");
    return inspect_model(model_path(req.get_param_value("path")));
  }));

  http.Post("/api/plan", wrap([this](const httplib::Request& req) {
    const json b = parse_body(req);
    plan::PlanRequest pr;
    pr.model = model_path(str_field(b, "model"));
    jobs::JobStore st = store();
    int64_t job = num_field<int64_t>(b, "job").value_or(0);
    if (job == 0) job = measure::find_measurement(st, pr.model);
    if (job == 0) refuse(404, fmt::format("{}: no finished measurement of this model", pr.model));
    job_or_404(st, job);
    pr.measurement = st.export_json(job);
    pr.target_bpw = num_field<double>(b, "target_bpw");
    if (auto sz = str_field(b, "target_size", false); !sz.empty()) pr.target_bytes = plan::parse_size(sz);
    if (auto by = num_field<int64_t>(b, "target_bytes")) pr.target_bytes = by;
    pr.max_kld = num_field<double>(b, "max_kld");
    pr.max_ppl_increase = num_field<double>(b, "max_ppl_increase");
    pr.rules = list_field(b, "rules");
    for (const auto& t : list_field(b, "types")) pr.allowed.push_back(measure::parse_types(t).at(0));
    const plan::Plan p = plan::make_plan(pr);
    json out = {{"job", job},
                {"strategy", strategy_json(p.strategy)},
                {"fixed_bytes", p.fixed_bytes},
                {"total_elements", p.total_elements}};
    if (auto save = str_field(b, "save", false); !save.empty()) {
      const std::string path = allowed(save);
      plan::write_strategy(path, p.strategy);
      out["saved"] = path;
    }
    return out;
  }));

  http.Get("/api/strategy", wrap([this](const httplib::Request& req) {
    if (!req.has_param("path")) refuse(400, "'path' is required");
    const std::string path = allowed(req.get_param_value("path"));
    if (!fs::is_regular_file(path)) refuse(404, fmt::format("{}: no such file", req.get_param_value("path")));
    return json{{"path", path}, {"strategy", strategy_json(plan::read_strategy(path))}};
  }));
  http.Post("/api/strategy", wrap([this](const httplib::Request& req) {
    const json b = parse_body(req);
    const std::string path = allowed(str_field(b, "path"));
    if (!b.contains("strategy") || !b["strategy"].is_object()) refuse(400, "'strategy' must be an object");
    plan::strategy_format_for(path);  // .json/.yaml/.yml, else Error
    const plan::Strategy s = plan::strategy_from_text(b["strategy"].dump(), plan::StrategyFormat::Json, path);
    plan::write_strategy(path, s);
    return json{{"saved", path}};
  }));

  http.Post("/api/quantize", wrap([this](const httplib::Request& req) {
    const json b = parse_body(req);
    const std::string model = model_path(str_field(b, "model"));
    const std::string strategy = allowed(str_field(b, "strategy"));
    const std::string output = allowed(str_field(b, "output"));
    if (fs::path(output).extension() != ".gguf") refuse(400, "'output' must end in .gguf");
    std::string imatrix = str_field(b, "imatrix", false);
    if (!imatrix.empty()) imatrix = allowed(imatrix);
    // Check the strategy now so a wrong file is a 400, not a failed task.
    const plan::Strategy s = plan::read_strategy(strategy);
    plan::check_strategy_model(s, model, strategy);
    const auto types = plan::strategy_types(s, plan::model_tensors(model), strategy);
    const int64_t id = new_task("quantize", {{"model", model}, {"strategy", strategy}, {"output", output}});
    run_task(id, [this, id, model, output, imatrix, types] {
      QuantizeRequest q;
      q.input = model;
      q.output = output;
      std::optional<eval::Imatrix> im;
      if (!imatrix.empty()) {
        im = eval::Imatrix::load(imatrix);
        q.imatrix = &*im;
      }
      q.on_tensor = [this, id](const ConvertedTensor& t, size_t i, size_t n) {
        update_task(id, [&](Task& task) {
          task.progress = n ? double(i + 1) / double(n) : 0;
          task.message = t.name;
        });
      };
      const ConvertResult r = quantize_with_types(q, types, dominant_file_type(model, types), GgmlType::F16);
      int64_t bytes = 0;
      for (const auto& t : r.tensors) bytes += int64_t(t.nbytes);
      return json{{"output", output}, {"tensors", r.tensors.size()}, {"tensor_bytes", bytes},
                  {"file_bytes", int64_t(fs::file_size(output))}};
    });
    return json{{"task", id}};
  }));

  http.Post("/api/compare", wrap([this](const httplib::Request& req) {
    const json b = parse_body(req);
    plan::CompareRequest cr;
    cr.model = model_path(str_field(b, "model"));
    cr.text = allowed(str_field(b, "text"));
    cr.baselines = list_field(b, "baselines");
    for (const auto& s : list_field(b, "strategies")) cr.strategies.push_back(allowed(s));
    if (cr.baselines.empty() && cr.strategies.empty()) refuse(400, "give 'baselines' or 'strategies'");
    cr.n_ctx = num_field<int64_t>(b, "ctx").value_or(cr.n_ctx);
    cr.windows = num_field<int64_t>(b, "windows").value_or(cr.windows);
    cr.calib_chunks = num_field<int64_t>(b, "calib_chunks").value_or(cr.calib_chunks);
    if (cr.n_ctx < 8 || cr.n_ctx > (1 << 17) || cr.windows < 1 || cr.windows > (1 << 16) || cr.calib_chunks < 1)
      refuse(400, "'ctx', 'windows' or 'calib_chunks' out of range");
    if (auto im = str_field(b, "imatrix", false); !im.empty()) cr.imatrix = allowed(im);
    if (auto c = str_field(b, "calib", false); !c.empty()) cr.calib = allowed(c);
    const int64_t id = new_task("compare", b);
    run_task(id, [this, id, cr] {
      const plan::CompareResult r = plan::run_compare(cr, [this, id](const std::string& line) {
        update_task(id, [&](Task& t) { t.message = line; });
      });
      return json{{"table", plan::format_compare_table(r)}, {"data", plan::compare_json(r)}};
    });
    return json{{"task", id}};
  }));

  http.Get("/api/tasks", wrap([this](const httplib::Request&) {
    std::lock_guard lk(mu);
    json out = json::array();
    for (const auto& [id, t] : tasks) out.push_back(t.to_json());
    return out;
  }));
  http.Get(R"(/api/tasks/(\d+))", wrap([this](const httplib::Request& req) {
    const int64_t id = path_id(req);
    std::lock_guard lk(mu);
    const auto it = tasks.find(id);
    if (it == tasks.end()) refuse(404, fmt::format("no task {}", id));
    return it->second.to_json();
  }));

  http.Get("/api/download", [this](const httplib::Request& req, httplib::Response& res) {
    try {
      if (!req.has_param("path")) refuse(400, "'path' is required");
      const std::string path = allowed(req.get_param_value("path"));
      if (fs::path(path).extension() != ".gguf") refuse(403, "only .gguf files can be downloaded");
      if (!fs::is_regular_file(path)) refuse(404, fmt::format("{}: no such file", req.get_param_value("path")));
      const uint64_t size = fs::file_size(path);
      auto in = std::make_shared<std::ifstream>(path, std::ios::binary);
      res.set_header("Content-Disposition",
                     fmt::format("attachment; filename=\"{}\"", fs::path(path).filename().string()));
      res.set_content_provider(size, "application/octet-stream",
                               [in](size_t offset, size_t length, httplib::DataSink& sink) {
                                 std::vector<char> buf(std::min<size_t>(length, 1 << 20));
                                 in->seekg(std::streamoff(offset));
                                 in->read(buf.data(), std::streamsize(buf.size()));
                                 const auto got = size_t(in->gcount());
                                 return got > 0 && sink.write(buf.data(), got);
                               });
    } catch (const HttpError& e) {
      res.status = e.status;
      res.set_content(json{{"error", e.message}}.dump(), "application/json");
    }
  });

  http.Get("/api/events", [this](const httplib::Request&, httplib::Response& res) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", [this](size_t, httplib::DataSink& sink) {
      if (stopping) return false;
      const std::string ev = "event: progress\ndata: " + snapshot().dump() + "\n\n";
      if (!sink.write(ev.data(), ev.size())) return false;
      for (int i = 0; i < 10 && !stopping; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      return !stopping;
    });
  });

  http.Get("/api/hf-token", wrap([this](const httplib::Request&) {
    return json{{"stored", fs::exists(opt.hf_token_file)}};  // never the token itself
  }));
  http.Post("/api/hf-token", wrap([this](const httplib::Request& req) {
    const std::string tok = str_field(parse_body(req), "token");
    if (tok.empty() || tok.size() > 512) refuse(400, "'token' must be 1 to 512 characters");
    for (unsigned char c : tok)
      if (c <= ' ' || c >= 0x7f) refuse(400, "'token' must be printable ASCII without spaces");
    const fs::path f = opt.hf_token_file;
    if (f.has_parent_path()) fs::create_directories(f.parent_path());
    // Created 0600 and chmod'ed again in case the file was there with looser bits.
    const int fd = ::open(f.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) refuse(500, fmt::format("{}: cannot write the token file", f.string()));
    ::fchmod(fd, 0600);
    const std::string line = tok + "\n";
    const bool ok = ::write(fd, line.data(), line.size()) == ssize_t(line.size());
    ::close(fd);
    if (!ok) refuse(500, fmt::format("{}: cannot write the token file", f.string()));
    return json{{"stored", true}};
  }));

  // Unknown /api paths are JSON 404s; everything else is the app.
  http.Get(R"(/api/.*)", wrap([](const httplib::Request& req) -> json { refuse(404, "no such endpoint"); }));
  if (!opt.web_dir.empty() && fs::is_directory(opt.web_dir)) {
    http.set_mount_point("/", opt.web_dir);
  } else {
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("<!doctype html><title>Tailor</title><p>The Tailor web app is not built: run "
                      "scripts/build.sh (or pass --web DIR). The API is under /api/.</p>",
                      "text/html");
    });
  }
}

Server::Server(ServerOptions opt) : impl_(std::make_unique<Impl>(std::move(opt))) {}
Server::~Server() = default;

int Server::bind() {
  auto& im = *impl_;
  if (im.opt.port == 0) {
    im.port = im.http.bind_to_any_port(im.opt.host);
  } else {
    im.port = im.http.bind_to_port(im.opt.host, im.opt.port) ? im.opt.port : -1;
  }
  if (im.port <= 0) fail("{}:{}: cannot listen there", im.opt.host, im.opt.port);
  return im.port;
}

void Server::run() { impl_->http.listen_after_bind(); }

void Server::stop() {
  impl_->stopping = true;
  impl_->http.stop();
}

const std::string& Server::token() const { return impl_->token; }

std::string Server::url() const {
  const std::string& h = impl_->opt.host;
  const std::string host = h.find(':') != std::string::npos ? "[" + h + "]" : h;
  return fmt::format("http://{}:{}/?token={}", host, impl_->port, impl_->token);
}

}  // namespace tailor::server
