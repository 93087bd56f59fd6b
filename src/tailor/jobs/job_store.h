// The job store: long measurements as resumable jobs in one SQLite file (WAL,
// so readers such as a GUI never block the worker). A job owns work units
// (e.g. "blk.3.attn_q.weight|Q4_K"); a worker claims one unit at a time and
// commits its result in the same transaction that marks it done, so a killed
// worker loses at most the unit in flight and never does a committed one again.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tailor::jobs {

enum class JobState { Queued, Running, Paused, Done, Failed, Cancelled };
enum class UnitState { Pending, Running, Done, Failed };
const char* state_name(JobState s);
const char* state_name(UnitState s);
JobState parse_job_state(const std::string& s);  // throws Error on an unknown name

// What a job measures. A job's identity is kind + model (repo, revision, hash;
// the path only when there is no hash) + settings, so moving a model folder
// does not start a new job but changing one file does.
struct ModelRef {
  std::string path, repo, revision, hash;
};

struct JobSpec {
  std::string kind;  // e.g. "measure"
  ModelRef model;
  nlohmann::json settings = nlohmann::json::object();
  std::vector<std::string> units;  // unit keys, claimed in this order
};

struct JobInfo {
  int64_t id = 0;
  std::string kind, identity;
  ModelRef model;
  nlohmann::json settings;
  JobState state = JobState::Queued;
  double created = 0, updated = 0;                 // unix seconds
  std::optional<double> started, finished;
  int64_t units_total = 0, units_done = 0, units_failed = 0;
  std::optional<double> rate;   // units per second over the recent units
  std::optional<double> eta_s;  // seconds left at that rate
  std::string error;
};

// A job as JSON (state by name, absent times as null), for `tailor jobs --json`
// and the web server's API.
nlohmann::json job_json(const JobInfo& j);

struct Unit {
  int64_t id = 0, job = 0;
  std::string key;
  int attempts = 0;  // claims so far, this one included
};

struct LogLine {
  double time = 0;
  std::string line;
};

// Metric keys that also land in typed result columns (for fast queries).
inline constexpr const char* kTypedMetrics[] = {"bytes", "bpw", "rmse", "kld", "dppl"};
inline constexpr int kSchemaVersion = 1;

// One connection: use a JobStore from one thread at a time (open one per thread;
// they share the file safely, across processes too).
class JobStore {
 public:
  // $TAILOR_DB, else $XDG_DATA_HOME/tailor/jobs.db, else ~/.local/share/tailor/jobs.db.
  static std::string default_path();
  // Opens (creating file and folder if needed) and migrates to kSchemaVersion.
  // A newer schema, a corrupt file or a foreign SQLite file: Error, file untouched.
  // ExistingOnly: a missing file is an Error instead of a new empty database
  // (for commands that only read or manage jobs, so a typo'd --db says so).
  enum class Open { CreateIfMissing, ExistingOnly };
  explicit JobStore(const std::string& path, Open mode = Open::CreateIfMissing);
  ~JobStore();
  JobStore(JobStore&&) noexcept;
  JobStore& operator=(JobStore&&) noexcept;

  const std::string& path() const;

  // Finds the job with the same identity (adding unit keys it lacks) or makes one.
  int64_t create_job(const JobSpec& spec);
  std::optional<JobInfo> find_job(int64_t id);
  JobInfo job(int64_t id);  // throws Error when there is none
  std::vector<JobInfo> list_jobs();
  void remove_job(int64_t id);

  // A worker starts (or resumes) a job: units left 'running' by a killed process
  // go back to pending; the job becomes running. Refuses done or cancelled jobs.
  void begin_work(int64_t job_id);
  // Next pending unit in creation order, marked running; nullopt when none is left.
  std::optional<Unit> claim_next(int64_t job_id);
  // The pending unit `key`, marked running; nullopt when it is not pending
  // (done, running elsewhere, or absent). For jobs whose order is decided
  // while they run (gradual: blocks in the order an analysis gives).
  std::optional<Unit> claim_unit(int64_t job_id, const std::string& key);
  // Stores the result and marks the unit done in one transaction; finishes the job
  // when it was the last unit. Refuses a unit that is not running.
  void commit_result(int64_t unit_id, const nlohmann::json& metrics);
  void fail_unit(int64_t unit_id, const std::string& error);
  void fail_job(int64_t job_id, const std::string& error);

  // Requests the worker polls between units (state(job) tells it what to do).
  void pause(int64_t job_id);   // queued/running -> paused
  void resume(int64_t job_id);  // paused/failed -> queued, failed units -> pending
  void cancel(int64_t job_id);  // anything not done -> cancelled
  JobState state(int64_t job_id);

  void log(int64_t job_id, const std::string& line);
  std::vector<LogLine> log_lines(int64_t job_id, int64_t last_n = -1);

  // The stored result of one unit (by key), if it is done.
  std::optional<nlohmann::json> unit_metrics(int64_t job_id, const std::string& key);
  // Every unit with its state and (if done) its metrics.
  nlohmann::json export_json(int64_t job_id);
  std::string export_csv(int64_t job_id);

  // Combines shard databases into `out` (created if absent): jobs with the same
  // identity get the union of their units and done results; two different
  // results for one unit are an error and nothing is written.
  static void merge(const std::string& out, const std::vector<std::string>& inputs);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Content hash of a model: file names and sizes, config.json, and every
// safetensors/GGUF header (not the tensor data, so it is quick on big models).
// `path` is a model folder or a single .safetensors/.gguf file.
std::string model_content_hash(const std::string& path);
// For resuming job `id` of `kind`: the job, and the model path to use
// (`model_path`, else the job's own), checked to hash as it did. Error for
// another kind of job or a model that changed.
std::pair<JobInfo, std::string> job_to_resume(JobStore& store, int64_t id, const std::string& kind,
                                               const std::string& model_path);
// A job's reference to a model on disk: its absolute path and content hash.
ModelRef local_model_ref(const std::string& path);
// Throws Error when the files at `path` no longer hash to the job's model hash.
void check_model_unchanged(const JobInfo& job, const std::string& path);

}  // namespace tailor::jobs
