// tailor measure <model> --text CALIB [--eval EVAL] [--types ...] [--level proxy|kld|full]:
// what quantizing each tensor alone to each type costs, as a resumable job.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <unistd.h>

#include <fmt/format.h>

#include "commands.h"
#include "pause_signal.h"
#include "tailor/hub/hub.h"
#include "tailor/measure/measure.h"
#include "tailor/util/error.h"
#include "tailor/util/progress.h"

namespace tailor::cli {
namespace {

struct MeasureArgs {
  std::string model, db, types, calibrate, level = "kld", shard;
  measure::Settings s;
  int64_t job = 0;
  bool json = false, quiet = false;
};

std::string cost_cell(const nlohmann::json& c) {
  if (!c.value("applicable", true)) return "n/a";
  const std::string src = c.value("source", "");
  const double v = c.value("cost", 0.0);
  const std::string mark = src == "measured" ? "" : src == "predicted" ? "~" : "p";
  return fmt::format("{}{:.2e}", mark, v);
}

void print_table(const nlohmann::json& summary, const std::vector<GgmlType>& types) {
  std::string s = fmt::format("{:<28}", "tensor");
  for (GgmlType t : types) s += fmt::format(" {:>10}", type_name(t));
  s += "\n";
  for (const auto& row : summary["tensors"]) {
    s += fmt::format("{:<28}", row["tensor"].get<std::string>());
    for (GgmlType t : types) {
      const std::string name(type_name(t));
      s += fmt::format(" {:>10}", row["types"].contains(name) ? cost_cell(row["types"][name]) : "-");
    }
    s += "\n";
  }
  s += "ΔKL in nats when that tensor alone is quantized; ~ predicted from local errors, p proxy "
       "(squared relative output error, not nats)\n";
  if (summary.contains("prediction_error")) {
    const auto& pe = summary["prediction_error"];
    s += fmt::format("prediction error on {} held-out measured pairs: median x{:.2f}, 90% x{:.2f}\n",
                     pe["pairs"].get<int64_t>(), pe["median_factor"].get<double>(), pe["p90_factor"].get<double>());
  }
  std::fwrite(s.data(), 1, s.size(), stdout);
}

void run(MeasureArgs& a) {
  jobs::JobStore store(a.db.empty() ? jobs::JobStore::default_path() : a.db);
  measure::RunOptions opt;
  if (!a.shard.empty()) opt.shard = measure::parse_shard(a.shard);
  opt.stop = &g_stop;
  std::unique_ptr<tailor::Progress> bar;
  const bool show = !a.quiet && !a.json;
  if (show) opt.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  opt.on_unit = [&](const measure::Progress& p) {
    if (!show) return;
    if (!bar) bar = std::make_unique<tailor::Progress>("measure", "units");
    // The rate is of this run; done counts units finished before it too.
    bar->update(p.done_this_run, p.left_at_start);
  };
  g_stop = false;
  std::signal(SIGINT, on_pause_signal);
  measure::RunResult r;
  if (a.job > 0) {
    r = measure::resume_measure(store, a.job, a.model, opt);
  } else {
    if (a.model.empty()) fail("measure: give a model folder or file (or --job ID to resume a job)");
    a.s.level = measure::parse_level(a.level);
    if (!a.types.empty()) a.s.types = measure::parse_types(a.types);
    if (!a.calibrate.empty()) a.s.calibrate = measure::parse_types(a.calibrate);
    r = measure::run_measure(store, a.model, a.s, opt);
  }
  std::signal(SIGINT, SIG_DFL);
  if (bar) bar->finish();
  const nlohmann::json exported = store.export_json(r.job_id);
  const nlohmann::json summary = measure::summarize(exported);
  const jobs::JobInfo info = store.job(r.job_id);
  const char* outcome = r.outcome == measure::Outcome::Done ? "done"
                        : r.outcome == measure::Outcome::Paused ? "paused" : "cancelled";
  if (a.json) {
    nlohmann::json out = {{"job", r.job_id},       {"db", store.path()},          {"outcome", outcome},
                          {"units_run", r.units_run}, {"units_failed", r.units_failed},
                          {"units_done", info.units_done}, {"units_total", info.units_total},
                          {"seconds", r.seconds},  {"summary", summary}};
    std::printf("%s\n", out.dump(2).c_str());
  } else if (r.outcome == measure::Outcome::Done && !a.quiet) {
    print_table(summary, measure::Settings::from_json(info.settings).types);
    std::printf("job %lld done: %lld units (%lld this run, %.1f s) in %s; export with `tailor jobs export %lld`\n",
                (long long)r.job_id, (long long)info.units_total, (long long)r.units_run, r.seconds,
                store.path().c_str(), (long long)r.job_id);
  }
  if (r.outcome != measure::Outcome::Done && !a.json)
    std::fprintf(stderr, "job %lld %s with %lld of %lld units done; continue with `tailor measure --job %lld%s`\n",
                 (long long)r.job_id, outcome, (long long)info.units_done, (long long)info.units_total,
                 (long long)r.job_id, a.db.empty() ? "" : (" --db " + a.db).c_str());
  if (r.outcome == measure::Outcome::Paused) throw ExitCode{130};
  if (r.outcome == measure::Outcome::Cancelled) throw ExitCode{1};
  if (r.units_failed > 0) fail("{} unit(s) failed; see `tailor jobs show {}`", r.units_failed, r.job_id);
}

}  // namespace

void register_measure(CLI::App& app) {
  auto a = std::make_shared<MeasureArgs>();
  auto* cmd = app.add_subcommand(
      "measure",
      "Measure what quantizing each tensor alone to each type costs (local errors, end-to-end KL divergence),\n"
      "as a job in the job store: Ctrl-C pauses, running the same command again (or --job ID) resumes.");
  cmd->add_option("model", a->model, "HF model folder or .gguf file");
  cmd->add_option("--text", a->s.text, "Calibration text (importance matrix, activation samples)");
  cmd->add_option("--eval", a->s.eval, "Eval text for the end-to-end KL divergence (default: --text)");
  cmd->add_option("--types", a->types, "Candidate types, comma-separated (default Q8_0,Q6_K,Q5_K,Q4_K,IQ4_XS,Q3_K,Q2_K)");
  cmd->add_option("--level", a->level,
                  "proxy: local errors only; kld: measure a few types end to end and predict the rest; "
                  "full: every pair end to end")
      ->capture_default_str();
  cmd->add_option("--imatrix", a->s.imatrix, "Importance matrix file, or 'none' (default: collected from --text)");
  cmd->add_option("--ctx", a->s.n_ctx, "Tokens per window")->capture_default_str();
  cmd->add_option("--windows", a->s.windows, "Eval windows for the end-to-end measurement")->capture_default_str();
  cmd->add_option("--calib-chunks", a->s.calib_chunks, "Windows of --text for the importance matrix")
      ->capture_default_str();
  cmd->add_option("--max-rel-error", a->s.max_rel_error,
                  "Stop a unit once its KL divergence's standard error is below this fraction")
      ->capture_default_str();
  cmd->add_option("--noise-floor", a->s.noise_floor, "Stop a unit once its KL divergence is clearly below this")
      ->capture_default_str();
  cmd->add_option("--calibrate", a->calibrate, "kld level: types measured end to end (default: the one nearest 4.5 bpw)");
  cmd->add_option("--holdout-every", a->s.holdout_every,
                  "kld level: every Nth tensor is also measured at a second type to report the prediction error")
      ->capture_default_str();
  cmd->add_option("--shard", a->shard, "K/N: measure only this deterministic slice of the tensors (merge with `tailor jobs merge`)");
  cmd->add_option("--job", a->job, "Resume this job id with its own settings");
  cmd->add_option("--db", a->db, "Job database (default: $TAILOR_DB, else $XDG_DATA_HOME/tailor/jobs.db)");
  cmd->add_flag("--json", a->json, "Print the outcome and the per-tensor table as JSON");
  cmd->add_flag("-q,--quiet", a->quiet, "No progress or table");
  cmd->callback([a] {
    a->model = hub::resolve_model_path(a->model);  // ORG/NAME: pulled into the Hub cache
    run(*a);
  });
}

}  // namespace tailor::cli
