// tailor compare <model> --baselines Q8_0,Q4_K_M --strategy plan.yaml --text
// eval.txt: llama.cpp's recipes and Tailor's strategies measured the same way
// (quantized in memory, KL divergence against the unquantized model), as a
// table sorted by size, JSON, and a bits-per-weight against KLD chart.
#include <cctype>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "tailor/hub/hub.h"
#include "tailor/plan/compare.h"
#include "tailor/report/chart.h"
#include "tailor/util/error.h"

namespace tailor::cli {
namespace {

struct CompareArgs {
  plan::CompareRequest req;
  std::vector<std::string> charts;
  bool json = false, quiet = false;
};

void run(const CompareArgs& a) {
  for (const std::string& path : a.charts) {
    // Checked before the slow part, which would otherwise be lost to a typo.
    std::string ext = std::filesystem::path(path).extension().string();
    for (char& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (ext != ".svg" && ext != ".png") fail("{}: a chart must be .svg or .png", path);
    const std::filesystem::path dir = std::filesystem::path(path).parent_path();
    if (!dir.empty() && !std::filesystem::is_directory(dir)) fail("{}: folder {} does not exist", path, dir.string());
  }
  const bool log = !a.quiet;
  const plan::CompareResult r = plan::run_compare(a.req, [&](const std::string& line) {
    if (log) std::fprintf(stderr, "%s\n", line.c_str());
  });
  for (const std::string& path : a.charts) report::write_chart(plan::compare_chart(r), path);
  if (a.json) {
    nlohmann::json j = plan::compare_json(r);
    j["model"] = a.req.model;
    j["text"] = a.req.text;
    if (!a.charts.empty()) j["charts"] = a.charts;
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("%s", plan::format_compare_table(r).c_str());
  for (const std::string& path : a.charts) std::printf("wrote %s\n", path.c_str());
}

}  // namespace

void register_compare(CLI::App& app) {
  auto a = std::make_shared<CompareArgs>();
  auto* cmd = app.add_subcommand(
      "compare", "Measure llama.cpp recipes and strategy files side by side (size, PPL, KL divergence)");
  cmd->add_option("model", a->req.model, "Hugging Face model folder")->required();
  cmd->add_option("--text", a->req.text, "UTF-8 text to evaluate on")->required();
  cmd->add_option("--baselines", a->req.baselines, "llama-quantize types to compare with, e.g. Q8_0,Q6_K,Q4_K_M")
      ->delimiter(',');
  cmd->add_option("--strategy", a->req.strategies, "Strategy file (YAML or JSON); may be given more than once");
  cmd->add_option("-c,--ctx", a->req.n_ctx, "Window size in tokens")->capture_default_str();
  cmd->add_option("--windows", a->req.windows, "Eval windows (fewer when the text is short)")->capture_default_str();
  cmd->add_option("--imatrix", a->req.imatrix, "Importance matrix file used for every entry (llama-quantize --imatrix)");
  cmd->add_option("--calib", a->req.calib, "Collect the importance matrix from this text instead");
  cmd->add_option("--calib-chunks", a->req.calib_chunks, "Windows of --calib for the importance matrix")
      ->capture_default_str();
  cmd->add_option("--chart", a->charts, "Write a bits-per-weight against KLD chart (.svg or .png); repeatable");
  cmd->add_option("-j,--threads", a->req.threads, "Threads (0 = all cores)")->capture_default_str();
  cmd->add_flag("--json", a->json, "Print the results as JSON on stdout");
  cmd->add_flag("-q,--quiet", a->quiet, "No progress lines on stderr");
  cmd->callback([a] {
    a->req.model = hub::resolve_model_path(a->req.model);  // ORG/NAME: pulled into the Hub cache
    run(*a);
  });
}

}  // namespace tailor::cli
