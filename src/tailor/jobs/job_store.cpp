#include "tailor/jobs/job_store.h"

#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <sqlite3.h>
#include <utility>
#include <xxhash.h>

#include "tailor/util/clock.h"
#include "tailor/util/error.h"

namespace tailor::jobs {
namespace {

// "TLR1": marks a database as ours so a foreign SQLite file is refused, not migrated.
constexpr int kApplicationId = 0x544c5231;
constexpr int kBusyTimeoutMs = 10000;


// Migration i takes the schema from version i to i+1; append, never edit.
const char* const kMigrations[] = {
    R"sql(
CREATE TABLE jobs(
  id INTEGER PRIMARY KEY,
  identity TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  model_path TEXT NOT NULL DEFAULT '',
  model_repo TEXT NOT NULL DEFAULT '',
  model_revision TEXT NOT NULL DEFAULT '',
  model_hash TEXT NOT NULL DEFAULT '',
  settings TEXT NOT NULL DEFAULT '{}',
  state TEXT NOT NULL DEFAULT 'queued'
    CHECK(state IN ('queued','running','paused','done','failed','cancelled')),
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  started_at REAL,
  finished_at REAL,
  units_total INTEGER NOT NULL DEFAULT 0,
  units_done INTEGER NOT NULL DEFAULT 0,
  units_failed INTEGER NOT NULL DEFAULT 0,
  rate REAL,
  eta_s REAL,
  error TEXT NOT NULL DEFAULT '');
CREATE TABLE job_log(
  id INTEGER PRIMARY KEY,
  job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  time REAL NOT NULL,
  line TEXT NOT NULL);
CREATE INDEX job_log_by_job ON job_log(job_id, id);
CREATE TABLE units(
  id INTEGER PRIMARY KEY,
  job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  key TEXT NOT NULL,
  tensor TEXT NOT NULL DEFAULT '',
  type TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL DEFAULT 'pending' CHECK(state IN ('pending','running','done','failed')),
  attempts INTEGER NOT NULL DEFAULT 0,
  started_at REAL,
  finished_at REAL,
  seconds REAL,
  error TEXT NOT NULL DEFAULT '',
  UNIQUE(job_id, key));
CREATE INDEX units_by_state ON units(job_id, state, id);
CREATE TABLE results(
  unit_id INTEGER PRIMARY KEY REFERENCES units(id) ON DELETE CASCADE,
  job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  metrics TEXT NOT NULL,
  bytes INTEGER, bpw REAL, rmse REAL, kld REAL, dppl REAL,
  written_at REAL NOT NULL);
CREATE INDEX results_by_job ON results(job_id);
)sql",
};
static_assert(std::size(kMigrations) == kSchemaVersion);

}  // namespace

// ---- a thin, throwing SQLite wrapper ----------------------------------------

class Db {
 public:
  Db() = default;
  ~Db() { close(); }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  void open(const std::string& path) {
    path_ = path;
    int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             nullptr);
    if (rc != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
      close();
      fail("{}: cannot open job database: {}", path, msg);
    }
    sqlite3_extended_result_codes(db_, 1);
    sqlite3_busy_timeout(db_, kBusyTimeoutMs);
  }
  void close() {
    if (db_) sqlite3_close_v2(db_);
    db_ = nullptr;
  }
  [[noreturn]] void raise(const char* what) const {
    fail("{}: {}: {}", path_, what, sqlite3_errmsg(db_));
  }
  void exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : sqlite3_errmsg(db_);
      sqlite3_free(err);
      fail("{}: {}", path_, msg);
    }
  }
  sqlite3* handle() const { return db_; }
  const std::string& path() const { return path_; }

 private:
  sqlite3* db_ = nullptr;
  std::string path_;
};

class Stmt {
 public:
  Stmt(Db& db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db.handle(), sql, -1, &s_, nullptr) != SQLITE_OK) db.raise("query failed");
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(int i, int64_t v) { return check(sqlite3_bind_int64(s_, i, v)); }
  Stmt& bind(int i, int v) { return bind(i, int64_t{v}); }
  Stmt& bind(int i, double v) { return check(sqlite3_bind_double(s_, i, v)); }
  Stmt& bind(int i, const std::string& v) {
    return check(sqlite3_bind_text(s_, i, v.data(), int(v.size()), SQLITE_TRANSIENT));
  }
  Stmt& bind(int i, const char* v) { return bind(i, std::string(v)); }
  Stmt& bind_null(int i) { return check(sqlite3_bind_null(s_, i)); }
  template <typename T>
  Stmt& bind(int i, const std::optional<T>& v) { return v ? bind(i, *v) : bind_null(i); }

  // True while there is a row.
  bool step() {
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    db_.raise("query failed");
  }
  void run() {
    while (step()) {
    }
  }
  Stmt& reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
    return *this;
  }
  bool null(int c) const { return sqlite3_column_type(s_, c) == SQLITE_NULL; }
  int64_t i64(int c) const { return sqlite3_column_int64(s_, c); }
  double f64(int c) const { return sqlite3_column_double(s_, c); }
  std::optional<double> opt_f64(int c) const { return null(c) ? std::nullopt : std::optional(f64(c)); }
  std::string text(int c) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, c));
    return p ? std::string(p, size_t(sqlite3_column_bytes(s_, c))) : std::string();
  }

 private:
  Stmt& check(int rc) {
    if (rc != SQLITE_OK) db_.raise("bind failed");
    return *this;
  }
  Db& db_;
  sqlite3_stmt* s_ = nullptr;
};

// Rolls back unless committed. IMMEDIATE takes the write lock up front so two
// writers queue on the busy timeout instead of failing on lock upgrade.
class Tx {
 public:
  explicit Tx(Db& db, bool write = true) : db_(db) { db_.exec(write ? "BEGIN IMMEDIATE" : "BEGIN"); }
  ~Tx() {
    if (!done_) sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void commit() {
    db_.exec("COMMIT");
    done_ = true;
  }

 private:
  Db& db_;
  bool done_ = false;
};

struct JobStore::Impl {
  Db db;
  std::string path;
};

namespace {

const char* const kJobStates[] = {"queued", "running", "paused", "done", "failed", "cancelled"};
const char* const kUnitStates[] = {"pending", "running", "done", "failed"};

int64_t scalar_int(Db& db, const char* sql) {
  Stmt s(db, sql);
  return s.step() ? s.i64(0) : 0;
}

void open_and_migrate(Db& db, const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(path);
  if (p.has_parent_path() && !fs::exists(p.parent_path(), ec)) fs::create_directories(p.parent_path(), ec);
  db.open(path);
  // Read the versions before anything writes: WAL mode and migrations change the
  // file, and a database we must refuse stays byte for byte as it was.
  int64_t version = 0, app_id = 0, tables = 0;
  try {
    version = scalar_int(db, "PRAGMA user_version");
    app_id = scalar_int(db, "PRAGMA application_id");
    tables = scalar_int(db, "SELECT count(*) FROM sqlite_schema");
  } catch (const Error&) {
    std::string msg = sqlite3_errmsg(db.handle());
    db.close();
    fail("{}: not a readable job database ({})", path, msg);
  }
  if (version > kSchemaVersion) {
    db.close();
    fail("{}: job database has schema version {}, newer than this tailor's {}; use a newer tailor",
         path, version, kSchemaVersion);
  }
  if (tables > 0 && app_id != kApplicationId) {
    db.close();
    fail("{}: an SQLite database that is not a tailor job database", path);
  }
  db.exec("PRAGMA journal_mode=WAL");
  // WAL + NORMAL: a killed process loses no commit; a power cut may roll back the
  // last few, never part of one (so a unit is then simply redone).
  db.exec("PRAGMA synchronous=NORMAL");
  db.exec("PRAGMA foreign_keys=ON");
  while (version < kSchemaVersion) {
    Tx tx(db);
    db.exec(kMigrations[version]);
    ++version;
    db.exec(fmt::format("PRAGMA user_version={}", version).c_str());
    db.exec(fmt::format("PRAGMA application_id={}", kApplicationId).c_str());
    tx.commit();
  }
}

std::string identity_of(const JobSpec& s) {
  nlohmann::json id = {{"kind", s.kind},
                       {"repo", s.model.repo},
                       {"revision", s.model.revision},
                       {"hash", s.model.hash},
                       {"settings", s.settings}};
  if (s.model.hash.empty()) id["path"] = s.model.path;
  const std::string text = id.dump();  // object keys are sorted: a canonical form
  return fmt::format("{:016x}", XXH3_64bits(text.data(), text.size()));
}

std::pair<std::string, std::string> split_key(const std::string& key) {
  const size_t bar = key.rfind('|');
  if (bar == std::string::npos) return {key, ""};
  return {key.substr(0, bar), key.substr(bar + 1)};
}

constexpr const char* kJobColumns =
    "id, identity, kind, model_path, model_repo, model_revision, model_hash, settings, state, "
    "created_at, updated_at, started_at, finished_at, units_total, units_done, units_failed, rate, "
    "eta_s, error";

JobInfo read_job(const Stmt& s) {
  JobInfo j;
  j.id = s.i64(0);
  j.identity = s.text(1);
  j.kind = s.text(2);
  j.model = {s.text(3), s.text(4), s.text(5), s.text(6)};
  j.settings = nlohmann::json::parse(s.text(7), nullptr, false);
  j.state = parse_job_state(s.text(8));
  j.created = s.f64(9);
  j.updated = s.f64(10);
  j.started = s.opt_f64(11);
  j.finished = s.opt_f64(12);
  j.units_total = s.i64(13);
  j.units_done = s.i64(14);
  j.units_failed = s.i64(15);
  j.rate = s.opt_f64(16);
  j.eta_s = s.opt_f64(17);
  j.error = s.text(18);
  return j;
}

// Counts, rate and ETA into the jobs row (inside the caller's transaction), so
// a reader gets them from one row. Rate: over the last 32 finished units, which
// follows the current worker's speed and survives restarts.
void refresh_progress(Db& db, int64_t job) {
  Stmt c(db,
         "SELECT count(*), coalesce(sum(state='done'),0), coalesce(sum(state='failed'),0) "
         "FROM units WHERE job_id=?");
  c.bind(1, job).step();
  const int64_t total = c.i64(0), done = c.i64(1), failed = c.i64(2);
  Stmt r(db,
         "SELECT count(*), min(finished_at), max(finished_at), avg(seconds) FROM "
         "(SELECT finished_at, seconds FROM units WHERE job_id=? AND state='done' "
         "ORDER BY finished_at DESC LIMIT 32)");
  r.bind(1, job).step();
  std::optional<double> rate, eta;
  const int64_t n = r.i64(0);
  if (n >= 2 && r.f64(2) > r.f64(1)) {
    rate = double(n - 1) / (r.f64(2) - r.f64(1));
  } else if (n >= 1 && r.f64(3) > 0) {
    rate = 1.0 / r.f64(3);
  }
  if (rate) eta = double(total - done - failed) / *rate;
  Stmt u(db,
         "UPDATE jobs SET units_total=?, units_done=?, units_failed=?, rate=?, eta_s=?, updated_at=? "
         "WHERE id=?");
  u.bind(1, total).bind(2, done).bind(3, failed).bind(4, rate).bind(5, eta).bind(6, unix_seconds()).bind(7, job).run();
}

// When no unit is left to do, a live job ends: done, or failed when some unit
// failed (resume retries those). A cancelled job stays cancelled.
void finish_if_complete(Db& db, int64_t job) {
  Stmt left(db,
            "SELECT coalesce(sum(state IN ('pending','running')),0), coalesce(sum(state='failed'),0) "
            "FROM units WHERE job_id=?");
  left.bind(1, job).step();
  if (left.i64(0) > 0) return;
  const int64_t failed = left.i64(1);
  Stmt f(db,
         "UPDATE jobs SET state=?, error=?, finished_at=?, eta_s=0 "
         "WHERE id=? AND state IN ('running','queued','paused')");
  f.bind(1, failed ? "failed" : "done")
      .bind(2, failed ? fmt::format("{} unit(s) failed", failed) : std::string())
      .bind(3, unix_seconds())
      .bind(4, job)
      .run();
}

void set_job_state(Db& db, int64_t job, JobState to, std::initializer_list<JobState> from, const char* verb) {
  Tx tx(db);
  Stmt s(db, "SELECT state FROM jobs WHERE id=?");
  if (!s.bind(1, job).step()) fail("{}: no job {}", db.path(), job);
  const JobState cur = parse_job_state(s.text(0));
  if (cur == to) return;  // already there: nothing to do
  bool ok = false;
  for (JobState f : from) ok |= f == cur;
  if (!ok) fail("{}: cannot {} job {}: it is {}", db.path(), verb, job, state_name(cur));
  Stmt u(db, "UPDATE jobs SET state=?, updated_at=? WHERE id=?");
  u.bind(1, state_name(to)).bind(2, unix_seconds()).bind(3, job).run();
  Stmt l(db, "INSERT INTO job_log(job_id, time, line) VALUES(?,?,?)");
  l.bind(1, job).bind(2, unix_seconds()).bind(3, fmt::format("{} -> {}", state_name(cur), state_name(to))).run();
  tx.commit();
}

std::string csv_field(const std::string& v) {
  if (v.find_first_of(",\"\n\r") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string csv_value(const nlohmann::json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) return csv_field(v.get<std::string>());
  return csv_field(v.dump());
}

}  // namespace

const char* state_name(JobState s) { return kJobStates[int(s)]; }
const char* state_name(UnitState s) { return kUnitStates[int(s)]; }
JobState parse_job_state(const std::string& s) {
  for (int i = 0; i < 6; ++i)
    if (s == kJobStates[i]) return JobState(i);
  fail("unknown job state '{}'", s);
}

std::string JobStore::default_path() {
  if (const char* p = std::getenv("TAILOR_DB"); p && *p) return p;
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && *x) return std::string(x) + "/tailor/jobs.db";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.local/share/tailor/jobs.db";
}

JobStore::JobStore(const std::string& path, Open mode) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  if (mode == Open::ExistingOnly && !std::filesystem::exists(path))
    fail("{}: no such job database (check --db, or run a job first)", path);
  open_and_migrate(impl_->db, path);
}
JobStore::~JobStore() = default;
JobStore::JobStore(JobStore&&) noexcept = default;
JobStore& JobStore::operator=(JobStore&&) noexcept = default;
const std::string& JobStore::path() const { return impl_->path; }

int64_t JobStore::create_job(const JobSpec& spec) {
  if (spec.kind.empty()) fail("{}: a job needs a kind", path());
  Db& db = impl_->db;
  const std::string identity = identity_of(spec);
  Tx tx(db);
  int64_t id = 0;
  {
    Stmt f(db, "SELECT id FROM jobs WHERE identity=?");
    if (f.bind(1, identity).step()) id = f.i64(0);
  }
  const double t = unix_seconds();
  if (id == 0) {
    Stmt ins(db,
             "INSERT INTO jobs(identity, kind, model_path, model_repo, model_revision, model_hash, settings, "
             "created_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?)");
    ins.bind(1, identity).bind(2, spec.kind).bind(3, spec.model.path).bind(4, spec.model.repo);
    ins.bind(5, spec.model.revision).bind(6, spec.model.hash).bind(7, spec.settings.dump()).bind(8, t).bind(9, t);
    ins.run();
    id = sqlite3_last_insert_rowid(db.handle());
  }
  Stmt u(db, "INSERT OR IGNORE INTO units(job_id, key, tensor, type) VALUES(?,?,?,?)");
  int64_t added = 0;
  for (const std::string& key : spec.units) {
    auto [tensor, type] = split_key(key);
    u.reset().bind(1, id).bind(2, key).bind(3, tensor).bind(4, type).run();
    added += sqlite3_changes(db.handle());
  }
  if (added > 0) {
    // New units reopen a finished job.
    Stmt r(db, "UPDATE jobs SET state='queued', finished_at=NULL WHERE id=? AND state='done'");
    r.bind(1, id).run();
  }
  refresh_progress(db, id);
  tx.commit();
  return id;
}

std::optional<JobInfo> JobStore::find_job(int64_t id) {
  Stmt s(impl_->db, fmt::format("SELECT {} FROM jobs WHERE id=?", kJobColumns).c_str());
  if (!s.bind(1, id).step()) return std::nullopt;
  return read_job(s);
}

JobInfo JobStore::job(int64_t id) {
  auto j = find_job(id);
  if (!j) fail("{}: no job {}", path(), id);
  return *j;
}

std::vector<JobInfo> JobStore::list_jobs() {
  Stmt s(impl_->db, fmt::format("SELECT {} FROM jobs ORDER BY id", kJobColumns).c_str());
  std::vector<JobInfo> out;
  while (s.step()) out.push_back(read_job(s));
  return out;
}

void JobStore::remove_job(int64_t id) {
  Db& db = impl_->db;
  Tx tx(db);
  Stmt s(db, "DELETE FROM jobs WHERE id=?");
  s.bind(1, id).run();
  if (sqlite3_changes(db.handle()) == 0) fail("{}: no job {}", path(), id);
  tx.commit();
}

void JobStore::begin_work(int64_t job_id) {
  Db& db = impl_->db;
  Tx tx(db);
  Stmt s(db, "SELECT state FROM jobs WHERE id=?");
  if (!s.bind(1, job_id).step()) fail("{}: no job {}", path(), job_id);
  const JobState cur = parse_job_state(s.text(0));
  if (cur == JobState::Cancelled) fail("{}: job {} was cancelled", path(), job_id);
  Stmt reset(db, "UPDATE units SET state='pending', started_at=NULL WHERE job_id=? AND state='running'");
  reset.bind(1, job_id).run();
  const int64_t requeued = sqlite3_changes(db.handle());
  const double t = unix_seconds();
  Stmt u(db,
         "UPDATE jobs SET state=CASE WHEN state='done' THEN 'done' ELSE 'running' END, error='', "
         "started_at=coalesce(started_at, ?), updated_at=? WHERE id=?");
  u.bind(1, t).bind(2, t).bind(3, job_id).run();
  Stmt l(db, "INSERT INTO job_log(job_id, time, line) VALUES(?,?,?)");
  l.bind(1, job_id).bind(2, t)
      .bind(3, requeued ? fmt::format("worker started; {} unit(s) left running were requeued", requeued)
                        : std::string("worker started"))
      .run();
  refresh_progress(db, job_id);
  tx.commit();
}

std::optional<Unit> JobStore::claim_next(int64_t job_id) {
  Db& db = impl_->db;
  Tx tx(db);
  Stmt s(db, "SELECT id, key, attempts FROM units WHERE job_id=? AND state='pending' ORDER BY id LIMIT 1");
  if (!s.bind(1, job_id).step()) return std::nullopt;
  Unit u{s.i64(0), job_id, s.text(1), int(s.i64(2)) + 1};
  Stmt m(db, "UPDATE units SET state='running', attempts=?, started_at=?, error='' WHERE id=?");
  m.bind(1, u.attempts).bind(2, unix_seconds()).bind(3, u.id).run();
  tx.commit();
  return u;
}

std::optional<Unit> JobStore::claim_unit(int64_t job_id, const std::string& key) {
  Db& db = impl_->db;
  Tx tx(db);
  Stmt s(db, "SELECT id, attempts FROM units WHERE job_id=? AND key=? AND state='pending'");
  if (!s.bind(1, job_id).bind(2, key).step()) return std::nullopt;
  Unit u{s.i64(0), job_id, key, int(s.i64(1)) + 1};
  Stmt m(db, "UPDATE units SET state='running', attempts=?, started_at=?, error='' WHERE id=?");
  m.bind(1, u.attempts).bind(2, unix_seconds()).bind(3, u.id).run();
  tx.commit();
  return u;
}

void JobStore::commit_result(int64_t unit_id, const nlohmann::json& metrics) {
  Db& db = impl_->db;
  Tx tx(db);
  Stmt s(db, "SELECT job_id, state, started_at FROM units WHERE id=?");
  if (!s.bind(1, unit_id).step()) fail("{}: no unit {}", path(), unit_id);
  const int64_t job = s.i64(0);
  if (s.text(1) != "running") fail("{}: unit {} is {}, not running: result refused", path(), unit_id, s.text(1));
  const double t = unix_seconds();
  const double secs = s.null(2) ? 0.0 : t - s.f64(2);
  Stmt ins(db,
           "INSERT INTO results(unit_id, job_id, metrics, bytes, bpw, rmse, kld, dppl, written_at) "
           "VALUES(?,?,?,?,?,?,?,?,?)");
  ins.bind(1, unit_id).bind(2, job).bind(3, metrics.dump());
  int col = 4;
  for (const char* k : kTypedMetrics) {
    auto it = metrics.is_object() ? metrics.find(k) : metrics.end();
    if (it != metrics.end() && it->is_number()) {
      if (col == 4) ins.bind(col, it->get<int64_t>());
      else ins.bind(col, it->get<double>());
    } else {
      ins.bind_null(col);
    }
    ++col;
  }
  ins.bind(9, t).run();
  Stmt d(db, "UPDATE units SET state='done', finished_at=?, seconds=? WHERE id=?");
  d.bind(1, t).bind(2, secs).bind(3, unit_id).run();
  refresh_progress(db, job);
  finish_if_complete(db, job);
  tx.commit();
}

void JobStore::fail_unit(int64_t unit_id, const std::string& error) {
  Db& db = impl_->db;
  Tx tx(db);
  Stmt s(db, "UPDATE units SET state='failed', finished_at=?, error=? WHERE id=? RETURNING job_id");
  if (!s.bind(1, unix_seconds()).bind(2, error).bind(3, unit_id).step()) fail("{}: no unit {}", path(), unit_id);
  const int64_t job = s.i64(0);
  s.run();
  refresh_progress(db, job);
  finish_if_complete(db, job);
  tx.commit();
}

void JobStore::fail_job(int64_t job_id, const std::string& error) {
  Db& db = impl_->db;
  Tx tx(db);
  Stmt s(db, "UPDATE jobs SET state='failed', error=?, updated_at=? WHERE id=?");
  s.bind(1, error).bind(2, unix_seconds()).bind(3, job_id).run();
  if (sqlite3_changes(db.handle()) == 0) fail("{}: no job {}", path(), job_id);
  Stmt l(db, "INSERT INTO job_log(job_id, time, line) VALUES(?,?,?)");
  l.bind(1, job_id).bind(2, unix_seconds()).bind(3, "failed: " + error).run();
  tx.commit();
}

void JobStore::pause(int64_t job_id) {
  set_job_state(impl_->db, job_id, JobState::Paused, {JobState::Queued, JobState::Running}, "pause");
}
void JobStore::resume(int64_t job_id) {
  set_job_state(impl_->db, job_id, JobState::Queued, {JobState::Paused, JobState::Failed}, "resume");
  // Resuming is also the retry: failed units get another attempt.
  Db& db = impl_->db;
  Tx tx(db);
  Stmt s(db, "UPDATE units SET state='pending', error='' WHERE job_id=? AND state='failed'");
  s.bind(1, job_id).run();
  refresh_progress(db, job_id);
  tx.commit();
}
void JobStore::cancel(int64_t job_id) {
  set_job_state(impl_->db, job_id, JobState::Cancelled,
                {JobState::Queued, JobState::Running, JobState::Paused, JobState::Failed}, "cancel");
}

JobState JobStore::state(int64_t job_id) {
  Stmt s(impl_->db, "SELECT state FROM jobs WHERE id=?");
  if (!s.bind(1, job_id).step()) fail("{}: no job {}", path(), job_id);
  return parse_job_state(s.text(0));
}

void JobStore::log(int64_t job_id, const std::string& line) {
  Stmt l(impl_->db, "INSERT INTO job_log(job_id, time, line) VALUES(?,?,?)");
  l.bind(1, job_id).bind(2, unix_seconds()).bind(3, line).run();
}

std::vector<LogLine> JobStore::log_lines(int64_t job_id, int64_t last_n) {
  Stmt s(impl_->db,
         "SELECT time, line FROM (SELECT id, time, line FROM job_log WHERE job_id=? ORDER BY id DESC LIMIT ?) "
         "ORDER BY id");
  s.bind(1, job_id).bind(2, last_n < 0 ? int64_t{-1} : last_n);
  std::vector<LogLine> out;
  while (s.step()) out.push_back({s.f64(0), s.text(1)});
  return out;
}

std::optional<nlohmann::json> JobStore::unit_metrics(int64_t job_id, const std::string& key) {
  Stmt s(impl_->db,
         "SELECT r.metrics FROM units u JOIN results r ON r.unit_id=u.id WHERE u.job_id=? AND u.key=?");
  s.bind(1, job_id).bind(2, key);
  if (!s.step()) return std::nullopt;
  return nlohmann::json::parse(s.text(0), nullptr, false);
}

nlohmann::json JobStore::export_json(int64_t job_id) {
  const JobInfo j = job(job_id);
  nlohmann::json units = nlohmann::json::array();
  Stmt s(impl_->db,
         "SELECT u.key, u.tensor, u.type, u.state, u.attempts, u.seconds, u.error, r.metrics "
         "FROM units u LEFT JOIN results r ON r.unit_id=u.id WHERE u.job_id=? ORDER BY u.id");
  s.bind(1, job_id);
  while (s.step()) {
    nlohmann::json u = {{"key", s.text(0)},  {"tensor", s.text(1)},   {"type", s.text(2)},
                        {"state", s.text(3)}, {"attempts", s.i64(4)}, {"seconds", nullptr}};
    if (!s.null(5)) u["seconds"] = s.f64(5);
    if (!s.text(6).empty()) u["error"] = s.text(6);
    u["metrics"] = s.null(7) ? nlohmann::json(nullptr) : nlohmann::json::parse(s.text(7), nullptr, false);
    units.push_back(std::move(u));
  }
  nlohmann::json jj = {{"id", j.id},
                       {"kind", j.kind},
                       {"identity", j.identity},
                       {"model",
                        {{"path", j.model.path},
                         {"repo", j.model.repo},
                         {"revision", j.model.revision},
                         {"hash", j.model.hash}}},
                       {"settings", j.settings},
                       {"state", state_name(j.state)},
                       {"units_total", j.units_total},
                       {"units_done", j.units_done},
                       {"units_failed", j.units_failed}};
  return {{"job", jj}, {"units", units}};
}

std::string JobStore::export_csv(int64_t job_id) {
  const nlohmann::json all = export_json(job_id);
  // Columns: the fixed unit fields, then every metric name any unit has (sorted).
  std::set<std::string> metric_names;
  for (const auto& u : all["units"])
    if (u["metrics"].is_object())
      for (const auto& [k, v] : u["metrics"].items()) metric_names.insert(k);
  const char* fixed[] = {"key", "tensor", "type", "state", "attempts", "seconds"};
  std::string out;
  auto cell = [&out](bool first, const std::string& text) {
    if (!first) out.push_back(',');
    out.append(text);
  };
  for (const char* f : fixed) cell(f == fixed[0], f);
  for (const auto& m : metric_names) cell(false, csv_field(m));
  out.push_back('\n');
  for (const auto& u : all["units"]) {
    for (const char* f : fixed) cell(f == fixed[0], csv_value(u[f]));
    const auto& mm = u["metrics"];
    for (const auto& m : metric_names) cell(false, mm.is_object() && mm.contains(m) ? csv_value(mm[m]) : "");
    out.push_back('\n');
  }
  return out;
}

void JobStore::merge(const std::string& out, const std::vector<std::string>& inputs) {
  JobStore dst(out);
  Db& db = dst.impl_->db;
  Tx tx(db);
  for (const std::string& in_path : inputs) {
    if (std::filesystem::exists(out) && std::filesystem::exists(in_path) &&
        std::filesystem::equivalent(out, in_path))
      fail("{}: merge input is the output database", in_path);
    if (!std::filesystem::is_regular_file(in_path)) fail("{}: no such job database to merge", in_path);
    JobStore src(in_path);
    for (const JobInfo& j : src.list_jobs()) {
      // Recreate the job by its identity (same rules as create_job, so same id key).
      int64_t id = 0;
      {
        Stmt f(db, "SELECT id FROM jobs WHERE identity=?");
        if (f.bind(1, j.identity).step()) id = f.i64(0);
      }
      if (id == 0) {
        Stmt ins(db,
                 "INSERT INTO jobs(identity, kind, model_path, model_repo, model_revision, model_hash, "
                 "settings, state, created_at, updated_at, started_at) VALUES(?,?,?,?,?,?,?,'queued',?,?,?)");
        ins.bind(1, j.identity).bind(2, j.kind).bind(3, j.model.path).bind(4, j.model.repo);
        ins.bind(5, j.model.revision).bind(6, j.model.hash).bind(7, j.settings.dump());
        ins.bind(8, j.created).bind(9, unix_seconds()).bind(10, j.started).run();
        id = sqlite3_last_insert_rowid(db.handle());
      }
      Stmt su(src.impl_->db,
              "SELECT u.key, u.tensor, u.type, u.state, u.attempts, u.started_at, u.finished_at, u.seconds, "
              "r.metrics, r.bytes, r.bpw, r.rmse, r.kld, r.dppl, r.written_at "
              "FROM units u LEFT JOIN results r ON r.unit_id=u.id WHERE u.job_id=? ORDER BY u.id");
      su.bind(1, j.id);
      while (su.step()) {
        const std::string key = su.text(0);
        Stmt ui(db, "INSERT OR IGNORE INTO units(job_id, key, tensor, type) VALUES(?,?,?,?)");
        ui.bind(1, id).bind(2, key).bind(3, su.text(1)).bind(4, su.text(2)).run();
        if (su.text(3) != "done" || su.null(8)) continue;
        Stmt cur(db,
                 "SELECT u.id, r.metrics FROM units u LEFT JOIN results r ON r.unit_id=u.id "
                 "WHERE u.job_id=? AND u.key=?");
        cur.bind(1, id).bind(2, key).step();
        const int64_t uid = cur.i64(0);
        const std::string metrics = su.text(8);
        if (!cur.null(1)) {
          if (nlohmann::json::parse(cur.text(1), nullptr, false) != nlohmann::json::parse(metrics, nullptr, false))
            fail("{}: job {} unit '{}' has a result that differs from the one already merged", in_path, j.id,
                 key);
          continue;
        }
        Stmt r(db,
               "INSERT INTO results(unit_id, job_id, metrics, bytes, bpw, rmse, kld, dppl, written_at) "
               "SELECT ?,?,?,?,?,?,?,?,?");
        r.bind(1, uid).bind(2, id).bind(3, metrics);
        if (su.null(9)) r.bind_null(4); else r.bind(4, su.i64(9));
        for (int c = 10; c <= 13; ++c) r.bind(c - 5, su.opt_f64(c));
        r.bind(9, su.f64(14)).run();
        Stmt m(db, "UPDATE units SET state='done', attempts=?, started_at=?, finished_at=?, seconds=? WHERE id=?");
        m.bind(1, su.i64(4)).bind(2, su.opt_f64(5)).bind(3, su.opt_f64(6)).bind(4, su.opt_f64(7)).bind(5, uid).run();
      }
      refresh_progress(db, id);
      Stmt st(db,
              "UPDATE jobs SET state=CASE WHEN units_done=units_total THEN 'done' "
              "WHEN state='done' THEN 'queued' ELSE state END, "
              "finished_at=CASE WHEN units_done=units_total THEN coalesce(finished_at, ?) ELSE NULL END "
              "WHERE id=?");
      st.bind(1, unix_seconds()).bind(2, id).run();
      Stmt l(db, "INSERT INTO job_log(job_id, time, line) VALUES(?,?,?)");
      l.bind(1, id).bind(2, unix_seconds()).bind(3, fmt::format("merged job {} from {}", j.id, in_path)).run();
    }
  }
  tx.commit();
}

nlohmann::json job_json(const JobInfo& j) {
  auto opt = [](std::optional<double> v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
  return {{"id", j.id},
          {"kind", j.kind},
          {"identity", j.identity},
          {"model", {{"path", j.model.path}, {"repo", j.model.repo}, {"revision", j.model.revision},
                     {"hash", j.model.hash}}},
          {"settings", j.settings},
          {"state", state_name(j.state)},
          {"created", j.created},
          {"updated", j.updated},
          {"started", opt(j.started)},
          {"finished", opt(j.finished)},
          {"units_total", j.units_total},
          {"units_done", j.units_done},
          {"units_failed", j.units_failed},
          {"rate", opt(j.rate)},
          {"eta_s", opt(j.eta_s)},
          {"error", j.error}};
}

}  // namespace tailor::jobs
