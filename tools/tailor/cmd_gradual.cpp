// tailor gradual <model> --text CALIB [--target-size S | --target-memory-reduction R]
//   [--max-ppl-increase P] -o out.gguf: importance analysis, block-by-block
// descent 8 -> 4 -> 2 bits with trained rounding and recovery, type trading,
// validation, as one resumable job.
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "commands.h"
#include "pause_signal.h"
#include "tailor/convert/convert.h"
#include "tailor/gradual/gradual.h"
#include "tailor/hub/hub.h"
#include "tailor/plan/evaluate.h"
#include "tailor/plan/planner.h"
#include "tailor/util/error.h"
#include "tailor/util/progress.h"

namespace tailor::cli {
namespace {

struct GradualArgs {
  std::string model, db, output, target_size, ladder, importance_weights, measure_types;
  std::optional<double> memory_reduction, max_ppl, target_bpw;
  gradual::Settings s;
  int64_t job = 0;
  bool json = false, quiet = false, no_adaptive = false, no_decay = false;
};

std::vector<int> parse_ladder(const std::string& text) {
  std::vector<int> v;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t comma = std::min(text.find(',', at), text.size());
    const std::string part = text.substr(at, comma - at);
    int bits = 0;
    if (std::sscanf(part.c_str(), "%d", &bits) != 1 || !(bits == 2 || bits == 3 || bits == 4 || bits == 5 ||
                                                         bits == 6 || bits == 8))
      fail("--ladder: '{}' is not one of 8, 6, 5, 4, 3, 2", part);
    if (!v.empty() && bits >= v.back()) fail("--ladder: bit levels must fall ({} after {})", bits, v.back());
    v.push_back(bits);
    at = comma + 1;
  }
  return v;
}

void set_weights(gradual::ImportanceOptions& o, const std::string& text) {
  double r, u, d, n;
  if (std::sscanf(text.c_str(), "%lf,%lf,%lf,%lf", &r, &u, &d, &n) != 4 || r < 0 || u < 0 || d < 0 || n < 0 ||
      r + u + d + n <= 0)
    fail("--importance-weights: '{}' is not four non-negative numbers RTN,UPGRADE,DISABLE,NOISE", text);
  o.w_rtn = r, o.w_upgrade = u, o.w_disable = d, o.w_noise = n;
}

void print_report(const nlohmann::json& exported) {
  std::string out;
  std::map<std::string, nlohmann::json> units;
  for (const auto& u : exported.at("units"))
    if (u.contains("metrics") && !u["metrics"].is_null()) units[u["key"].get<std::string>()] = u["metrics"];
  if (units.count("importance")) {
    out += "importance (combined share; 40% RTN, 25% upgrade, 20% disable, 15% noise by default)\n";
    out += fmt::format("{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}\n", "block", "combined", "rtn", "upgrade",
                       "disable", "noise", "budget");
    for (const auto& b : units["importance"]["blocks"])
      out += fmt::format("{:>5} {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f} {:>11.4g}\n", b["block"].get<int>(),
                         b["combined"].get<double>(), b["rtn"].get<double>(), b["upgrade"].get<double>(),
                         b["disable"].get<double>(), b["noise"].get<double>(), b["threshold"].get<double>());
  }
  out += "\nblocks, least important first (error: relative output error of the block)\n";
  out += fmt::format("{:>5} {:>5} {:>4} {:>10} {:>10} {:>10} {:>8} {:>8}  {}\n", "order", "block", "bits", "plain",
                     "error", "budget", "trained", "seconds", "types");
  std::vector<nlohmann::json> blocks;
  for (const auto& [k, m] : units)
    if (k.rfind("block.", 0) == 0) blocks.push_back(m);
  std::sort(blocks.begin(), blocks.end(), [](const auto& a, const auto& b) { return a["order"] < b["order"]; });
  for (const auto& b : blocks) {
    std::map<std::string, int> count;
    for (const auto& [n, t] : b["types"].items()) count[t.get<std::string>()]++;
    std::string types;
    for (const auto& [t, n] : count) types += fmt::format("{}{}x{}", types.empty() ? "" : " ", n, t);
    out += fmt::format("{:>5} {:>5} {:>4} {:>10.4g} {:>10.4g} {:>10.4g} {:>8} {:>8.1f}  {}\n", b["order"].get<int>(),
                       b["block"].get<int>(), b["bits"].get<int>(), b["plain_error"].get<double>(),
                       b["error"].get<double>(), b["threshold"].get<double>(), b["trained"].get<bool>() ? "yes" : "no",
                       b["seconds"].get<double>(), types);
  }
  if (units.count("final.output") && units["final.output"].value("trained", false)) {
    const auto& o = units["final.output"];
    out += fmt::format("\noutput matrix trained on the KL divergence: {:.4g} -> {:.4g} (calibration)\n",
                       o["kl_before"].get<double>(), o["kl_after"].get<double>());
  }
  if (units.count("final.embedding") && units["final.embedding"].value("trained", false)) {
    const auto& e = units["final.embedding"];
    out += fmt::format("token embedding ({}) trained on the KL divergence: held-out KL {:.4g} -> {:.4g}, {} steps, {:.0f} s\n",
                       e["type"].get<std::string>(), e["before"].get<double>(), e["after"].get<double>(),
                       e["steps"].get<int>(), e["seconds"].get<double>());
  }
  if (units.count("end_to_end") && units["end_to_end"].value("trained", false)) {
    const auto& e = units["end_to_end"];
    out += fmt::format("end-to-end training ({} matrices, {} norms): held-out KL {:.4g} -> {:.4g}, {} steps, {:.0f} s\n",
                       e["matrices"].get<int>(), e["norms"].size(), e["before"].get<double>(),
                       e["after"].get<double>(), e["steps"].get<int>(), e["seconds"].get<double>());
  }
  if (units.count("validate")) {
    const auto& v = units["validate"];
    out += fmt::format(
        "\nvalidation: mean KLD {:.5f} ± {:.5f}, PPL {:.3f} (base {:.3f}, {:+.2f}%), {:.2f} MiB, {:.3f} bpw{}\n",
        v["kld"].get<double>(), v["kld_error"].get<double>(), v["ppl"].get<double>(), v["ppl_base"].get<double>(),
        v["ppl_increase"].get<double>(), v["bytes"].get<double>() / (1 << 20), v["bpw"].get<double>(),
        v["met"].get<bool>() ? "" : "  (LIMITS NOT MET)");
    const auto& p = v["plain_plan"];
    out += fmt::format("plain-rounding plan of the same budget: mean KLD {:.5f}, {:.2f} MiB -> gradual is {:.0f}% lower\n",
                       p["kld"].get<double>(), p["bytes"].get<double>() / (1 << 20),
                       100.0 * (1.0 - v["kld"].get<double>() / p["kld"].get<double>()));
    for (const auto& u : v["upgrades"]) out += "  upgraded " + u.get<std::string>() + "\n";
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
}

void run(GradualArgs& a) {
  jobs::JobStore store(a.db.empty() ? jobs::JobStore::default_path() : a.db);
  gradual::RunOptions opt;
  opt.output = a.output;
  opt.stop = &g_stop;
  const bool show = !a.quiet && !a.json;
  std::unique_ptr<tailor::Progress> bar;
  std::unique_ptr<tailor::Progress> steps;
  // Log lines go above the bars (which redraw at their next update).
  auto clear_bars = [&] {
    if (bar) bar->clear();
    if (steps) steps->clear();
  };
  if (show) opt.log = [&](const std::string& line) {
    clear_bars();
    std::fprintf(stderr, "%s\n", line.c_str());
  };
  opt.on_unit = [&](const gradual::Progress& p) {
    if (!show) return;
    clear_bars();
    std::fprintf(stderr, "%s: %s\n", p.unit.c_str(), p.line.c_str());
    if (!bar) bar = std::make_unique<tailor::Progress>("gradual", "units");
    bar->update(p.done, p.total);
  };
  opt.on_steps = [&](const std::string& unit, int64_t done, int64_t total) {
    if (!show) return;
    if (!steps) steps = std::make_unique<tailor::Progress>(unit, "steps");
    steps->update(done, total);
    if (done == total) steps.reset();
  };
  g_stop = false;
  std::signal(SIGINT, on_pause_signal);
  gradual::RunResult r;
  if (a.job > 0) {
    r = gradual::resume_gradual(store, a.job, a.model, opt);
  } else {
    if (a.model.empty()) fail("gradual: give a model folder (or --job ID to resume a job)");
    if (a.s.text.empty()) fail("gradual: give a calibration text with --text");
    const int budgets = int(!a.target_size.empty()) + int(a.memory_reduction.has_value()) + int(a.target_bpw.has_value());
    if (budgets > 1) fail("gradual: give at most one of --target-size, --target-bpw, --target-memory-reduction");
    if (!a.target_size.empty()) a.s.target_bytes = plan::target_size_bytes(a.model, a.target_size);
    if (a.memory_reduction || a.target_bpw) {
      const int64_t f16 = [&] {
        int64_t n = 0;
        for (const auto& t : gguf_tensor_layout(a.model)) {
          int64_t e = 1;
          for (int64_t x : t.ne) e *= x;
          n += e;
        }
        return n;
      }();
      if (a.memory_reduction) {
        if (!(*a.memory_reduction > 0 && *a.memory_reduction < 1))
          fail("--target-memory-reduction: {} is not a fraction between 0 and 1 (0.75 = a quarter of F16)", *a.memory_reduction);
        a.s.target_bytes = int64_t(double(f16) * 2.0 * (1.0 - *a.memory_reduction));
      } else {
        a.s.target_bytes = int64_t(double(f16) * *a.target_bpw / 8.0);
      }
    }
    a.s.max_ppl_increase = a.max_ppl;
    if (!a.ladder.empty()) a.s.ladder = parse_ladder(a.ladder);
    if (!a.importance_weights.empty()) set_weights(a.s.importance, a.importance_weights);
    if (a.no_adaptive) a.s.train.adaptive = false;
    if (a.no_decay) a.s.final_lr_decay = false;
    if (!a.measure_types.empty()) a.s.measure.types = measure::parse_types(a.measure_types);
    r = gradual::run_gradual(store, a.model, a.s, opt);
  }
  std::signal(SIGINT, SIG_DFL);
  if (bar) bar->finish();
  const jobs::JobInfo info = store.job(r.job_id);
  const char* outcome = r.outcome == gradual::Outcome::Done ? "done"
                        : r.outcome == gradual::Outcome::Paused ? "paused" : "cancelled";
  if (a.json) {
    nlohmann::json out = {{"job", r.job_id}, {"db", store.path()}, {"outcome", outcome}, {"seconds", r.seconds},
                          {"units_done", info.units_done}, {"units_total", info.units_total},
                          {"output", a.output}, {"report", r.report}};
    std::printf("%s\n", out.dump(2).c_str());
  } else if (r.outcome == gradual::Outcome::Done && !a.quiet) {
    print_report(r.report);
    if (!a.output.empty()) std::printf("wrote %s\n", a.output.c_str());
  }
  if (r.outcome != gradual::Outcome::Done && !a.json)
    std::fprintf(stderr, "job %lld %s with %lld of %lld units done; continue with `tailor gradual --job %lld%s`\n",
                 (long long)r.job_id, outcome, (long long)info.units_done, (long long)info.units_total,
                 (long long)r.job_id, a.db.empty() ? "" : (" --db " + a.db).c_str());
  if (r.outcome == gradual::Outcome::Paused) throw ExitCode{130};
  if (r.outcome == gradual::Outcome::Cancelled) throw ExitCode{1};
}

}  // namespace

void register_gradual(CLI::App& app) {
  auto a = std::make_shared<GradualArgs>();
  auto* cmd = app.add_subcommand(
      "gradual",
      "Quantize block by block down 8 -> 4 -> 2 bits with trained rounding, layer recovery and rollback,\n"
      "trade types under a memory target, validate end to end and write a GGUF. A resumable job:\n"
      "Ctrl-C pauses, the same command (or --job ID) continues from the last finished block.");
  cmd->add_option("model", a->model, "HF model folder (dense llama-family)");
  cmd->add_option("-o,--output", a->output, "GGUF to write when the job is done");
  cmd->add_option("--text", a->s.text, "Calibration text (training activations, importance matrix)");
  cmd->add_option("--eval", a->s.eval, "Eval text for the final validation only (default: --text)");
  cmd->add_option("--target-size", a->target_size, "Memory target: size of all weights (18MB, 1.5GiB) or a recipe (Q3_K_M)");
  cmd->add_option("--target-bpw", a->target_bpw, "Memory target in bits per weight");
  cmd->add_option("--target-memory-reduction", a->memory_reduction,
                  "Memory target as a fraction saved against F16 (0.75: a quarter of the F16 size)");
  cmd->add_option("--max-ppl-increase", a->max_ppl, "Quality limit: perplexity increase in percent (default 5 without a memory target)");
  cmd->add_option("--ladder", a->ladder, "Bit levels to walk, falling (default 8,4,2)");
  cmd->add_option("--safety", a->s.safety, "Per-block budgets are the quality limit's share divided by this")->capture_default_str();
  cmd->add_option("--importance-weights", a->importance_weights, "RTN,UPGRADE,DISABLE,NOISE (default 0.4,0.25,0.2,0.15)");
  cmd->add_option("--ctx", a->s.n_ctx, "Tokens per calibration sequence")->capture_default_str();
  cmd->add_option("--samples", a->s.samples, "Calibration sequences (the full sample)")->capture_default_str();
  cmd->add_option("--small-sample", a->s.train.small_sample, "Adaptive training: sequences of the first run")->capture_default_str();
  cmd->add_flag("--no-adaptive", a->no_adaptive, "Always train on the full sample");
  cmd->add_flag("--no-lr-decay", a->no_decay, "Final training: keep each phase's rate constant instead of decaying it linearly to 0");
  cmd->add_option("--attn-epochs", a->s.train.attn.epochs, "Attention-only epochs")->capture_default_str();
  cmd->add_option("--attn-lr", a->s.train.attn.lr, "Attention-only signed-gradient step")->capture_default_str();
  cmd->add_option("--mlp-epochs", a->s.train.mlp.epochs, "MLP-only epochs")->capture_default_str();
  cmd->add_option("--mlp-lr", a->s.train.mlp.lr, "MLP-only step")->capture_default_str();
  cmd->add_option("--joint-epochs", a->s.train.joint.epochs, "Joint epochs")->capture_default_str();
  cmd->add_option("--joint-lr", a->s.train.joint.lr, "Joint step")->capture_default_str();
  cmd->add_option("--max-recover", a->s.max_recover, "Layers reverted per attempt by layer-level recovery")->capture_default_str();
  cmd->add_option("--e2e-epochs", a->s.e2e_epochs, "Epochs of training all matrices together on the model's KL divergence (0: none)")
      ->capture_default_str();
  cmd->add_option("--e2e-samples", a->s.e2e_samples,
                  "Calibration sequences of end-to-end and token embedding training (0: twice --samples)")
      ->capture_default_str();
  cmd->add_option("--e2e-norm-lr", a->s.e2e_norm_lr, "Relative step of the norm weights in end-to-end training (0: frozen)")
      ->capture_default_str();
  cmd->add_option("--e2e-lr", a->s.e2e_lr, "Signed step of the rounding offsets in end-to-end training")
      ->capture_default_str();
  cmd->add_option("--embd-epochs", a->s.embd_epochs,
                  "Epochs of training the token embedding on the model's KL divergence (0: plain rounding)")
      ->capture_default_str();
  cmd->add_option("--embd-lr", a->s.embd_lr, "Signed step of the token embedding's rounding offsets")->capture_default_str();
  cmd->add_option("--output-epochs", a->s.output_epochs, "Epochs of training the output matrix on the KL divergence (0: none)")
      ->capture_default_str();
  cmd->add_flag("--genetic", a->s.genetic, "Refine the greedy type trading with a genetic search (50 x 20)");
  cmd->add_option("--windows", a->s.eval_windows, "Validation windows")->capture_default_str();
  cmd->add_option("--eval-ctx", a->s.eval_ctx, "Tokens per validation window")->capture_default_str();
  cmd->add_option("--measure-types", a->measure_types,
                  "Types the per-tensor measurement offers type trading (default: Q8_0,Q6_K,Q5_K,Q4_K,IQ4_XS,Q3_K,IQ3_S,IQ3_XXS,Q2_K,IQ2_S,IQ2_XS)");
  cmd->add_option("--measure-windows", a->s.measure.windows, "Eval windows of the per-tensor measurement")->capture_default_str();
  cmd->add_option("--measure-ctx", a->s.measure.n_ctx, "Tokens per window of the per-tensor measurement")->capture_default_str();
  cmd->add_option("--importance-windows", a->s.importance.windows, "Windows of the importance analysis")->capture_default_str();
  cmd->add_option("--importance-ctx", a->s.importance.n_ctx, "Tokens per window of the importance analysis")->capture_default_str();
  cmd->add_option("--job", a->job, "Resume this job id with its own settings");
  cmd->add_option("--db", a->db, "Job database (default: $TAILOR_DB, else $XDG_DATA_HOME/tailor/jobs.db)");
  cmd->add_flag("--json", a->json, "Print the outcome and the job's results as JSON");
  cmd->add_flag("-q,--quiet", a->quiet, "No progress or report");
  cmd->callback([a] {
    if (!a->model.empty()) a->model = hub::resolve_model_path(a->model);
    run(*a);
  });
}

}  // namespace tailor::cli
