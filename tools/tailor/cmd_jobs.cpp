// tailor jobs list|show|pause|resume|cancel|rm|export|merge: look after the
// measurement jobs in the job store (--db, default under the user's data dir).
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "commands.h"
#include "tailor/jobs/job_store.h"
#include "tailor/util/atomic_file.h"
#include "tailor/util/error.h"
#include "tailor/util/progress.h"

namespace tailor::cli {
namespace {

using jobs::JobInfo;
using jobs::job_json;
using jobs::JobStore;

struct JobsArgs {
  std::string db;
  int64_t id = 0;
  bool json = false;
  std::string format = "json", output, merge_out;
  std::vector<std::string> merge_in;
  int64_t log_lines = 10;
};

std::string db_path(const JobsArgs& a) { return a.db.empty() ? JobStore::default_path() : a.db; }

void print(const std::string& s) { std::fwrite(s.data(), 1, s.size(), stdout); }

std::string when(std::optional<double> t) {
  if (!t) return "-";
  const std::time_t s = std::time_t(*t);
  std::tm tm{};
  gmtime_r(&s, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

std::string model_name(const JobInfo& j) { return j.model.repo.empty() ? j.model.path : j.model.repo; }

void list(const JobsArgs& a) {
  if (a.db.empty() && !std::filesystem::exists(db_path(a))) {
    print(a.json ? "[]\n" : fmt::format("no jobs in {}\n", db_path(a)));
    return;
  }
  JobStore store(db_path(a), JobStore::Open::ExistingOnly);
  const auto all = store.list_jobs();
  if (a.json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& j : all) arr.push_back(job_json(j));
    print(arr.dump(2) + "\n");
    return;
  }
  if (all.empty()) {
    print(fmt::format("no jobs in {}\n", store.path()));
    return;
  }
  print(fmt::format("{:>5}  {:<9}  {:<10}  {:>13}  {:>9}  {}\n", "ID", "KIND", "STATE", "UNITS", "ETA", "MODEL"));
  for (const auto& j : all) {
    const std::string eta = j.eta_s && j.state == jobs::JobState::Running ? Progress::format_duration(*j.eta_s) : "-";
    print(fmt::format("{:>5}  {:<9}  {:<10}  {:>13}  {:>9}  {}\n", j.id, j.kind, jobs::state_name(j.state),
                      fmt::format("{}/{}", j.units_done, j.units_total), eta, model_name(j)));
  }
}

void show(const JobsArgs& a) {
  JobStore store(db_path(a), JobStore::Open::ExistingOnly);
  const JobInfo j = store.job(a.id);
  const auto log = store.log_lines(a.id, a.log_lines);
  if (a.json) {
    nlohmann::json out = job_json(j);
    out["log"] = nlohmann::json::array();
    for (const auto& l : log) out["log"].push_back({{"time", l.time}, {"line", l.line}});
    print(out.dump(2) + "\n");
    return;
  }
  std::string s = fmt::format("job {}: {} ({})\n", j.id, j.kind, jobs::state_name(j.state));
  s += fmt::format("  model     {}\n", model_name(j));
  if (!j.model.repo.empty() && !j.model.path.empty()) s += fmt::format("  path      {}\n", j.model.path);
  if (!j.model.revision.empty()) s += fmt::format("  revision  {}\n", j.model.revision);
  if (!j.model.hash.empty()) s += fmt::format("  hash      {}\n", j.model.hash);
  s += fmt::format("  settings  {}\n", j.settings.dump());
  s += fmt::format("  units     {} done, {} failed, {} total\n", j.units_done, j.units_failed, j.units_total);
  if (j.rate) s += fmt::format("  rate      {:.3g} units/s\n", *j.rate);
  if (j.eta_s && j.state == jobs::JobState::Running)
    s += fmt::format("  eta       {}\n", Progress::format_duration(*j.eta_s));
  s += fmt::format("  created   {}\n  started   {}\n  finished  {}\n", when(j.created), when(j.started),
                   when(j.finished));
  if (!j.error.empty()) s += fmt::format("  error     {}\n", j.error);
  if (!log.empty()) s += "  log:\n";
  for (const auto& l : log) s += fmt::format("    {}  {}\n", when(l.time), l.line);
  print(s);
}

void export_job(const JobsArgs& a) {
  JobStore store(db_path(a), JobStore::Open::ExistingOnly);
  std::string text;
  if (a.format == "json") text = store.export_json(a.id).dump(2) + "\n";
  else if (a.format == "csv") text = store.export_csv(a.id);
  else fail("jobs export: --format must be json or csv, not '{}'", a.format);
  if (a.output.empty() || a.output == "-") {
    print(text);
    return;
  }
  AtomicFile f(a.output);
  f.write(text.data(), text.size());
  f.commit();
}

template <typename Fn>
CLI::App* with_id(CLI::App* cmd, std::shared_ptr<JobsArgs> a, Fn fn) {
  cmd->add_option("id", a->id, "Job id (see `tailor jobs list`)")->required();
  cmd->callback([a, fn] { fn(*a); });
  return cmd;
}

}  // namespace

void register_jobs(CLI::App& app) {
  auto a = std::make_shared<JobsArgs>();
  auto* jobs = app.add_subcommand("jobs", "List and manage measurement jobs in the job store");
  jobs->require_subcommand(1);
  auto add_db = [&](CLI::App* c) {
    c->add_option("--db", a->db, "Job database (default: $TAILOR_DB, else $XDG_DATA_HOME/tailor/jobs.db)");
    return c;
  };

  auto* ls = add_db(jobs->add_subcommand("list", "Every job: id, kind, state, units done, ETA, model"));
  ls->add_flag("--json", a->json, "Print the jobs as JSON");
  ls->callback([a] { list(*a); });

  auto* sh = with_id(add_db(jobs->add_subcommand("show", "One job in detail with its latest log lines")), a, show);
  sh->add_flag("--json", a->json, "Print the job as JSON");
  sh->add_option("--log", a->log_lines, "Log lines to show (-1: all)")->capture_default_str();

  with_id(add_db(jobs->add_subcommand("pause", "Ask the job's worker to stop after its current unit")), a,
          [](const JobsArgs& x) { JobStore(db_path(x), JobStore::Open::ExistingOnly).pause(x.id); });
  with_id(add_db(jobs->add_subcommand("resume", "Queue a paused or failed job again")), a,
          [](const JobsArgs& x) { JobStore(db_path(x), JobStore::Open::ExistingOnly).resume(x.id); });
  with_id(add_db(jobs->add_subcommand("cancel", "Stop a job for good (its results stay)")), a,
          [](const JobsArgs& x) { JobStore(db_path(x), JobStore::Open::ExistingOnly).cancel(x.id); });
  with_id(add_db(jobs->add_subcommand("rm", "Delete a job with its units, results and log")), a,
          [](const JobsArgs& x) { JobStore(db_path(x), JobStore::Open::ExistingOnly).remove_job(x.id); });

  auto* ex = with_id(add_db(jobs->add_subcommand("export", "Write a job's units and results as JSON or CSV")), a,
                     export_job);
  ex->add_option("--format", a->format, "json or csv")->capture_default_str();
  ex->add_option("-o,--output", a->output, "Output file (default: stdout)");

  auto* mg = jobs->add_subcommand("merge", "Combine shard databases: union of each job's done units");
  mg->add_option("out", a->merge_out, "Output database (created if absent)")->required();
  mg->add_option("inputs", a->merge_in, "Shard databases")->required();
  mg->callback([a] { JobStore::merge(a->merge_out, a->merge_in); });
}

}  // namespace tailor::cli
