// tailor convert <hf-folder> -o out.gguf --type T: a Hugging Face checkpoint
// to a GGUF file llama.cpp loads, every large matrix in one type.
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "tailor/hub/hub.h"
#include "tailor/convert/convert.h"
#include "tailor/eval/imatrix.h"
#include "tailor/util/error.h"
#include "write_report.h"

namespace tailor::cli {
namespace {

struct ConvertArgs {
  std::string input, output, type = "F16", name, imatrix;
  int threads = 0;
  bool json = false, quiet = false;
};

void run_convert(const ConvertArgs& a) {
  const TypeInfo* t = find_type(a.type);
  if (!t) fail("convert: unknown type '{}' (e.g. F32, F16, BF16, Q8_0, Q6_K, Q4_K)", a.type);
  ConvertOptions o;
  o.input = a.input;
  o.output = a.output;
  o.type = t->type;
  o.threads = a.threads;
  o.name = a.name;
  std::optional<eval::Imatrix> im;
  if (!a.imatrix.empty()) {
    im = eval::Imatrix::load(a.imatrix);
    o.imatrix = &*im;
  }
  o.on_tensor = tensor_progress(!a.quiet && !a.json);
  const auto t0 = std::chrono::steady_clock::now();
  ConvertResult r = convert_hf_to_gguf(o);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  if (!a.quiet) warn_missing_importance(r.missing_importance, a.imatrix);
  std::map<std::string, int> by_type;
  for (const auto& ct : r.tensors) ++by_type[std::string(type_name(ct.type))];
  if (a.json) {
    nlohmann::json j;
    j["output"] = a.output;
    j["architecture"] = r.arch;
    j["type"] = std::string(t->name);
    j["tokenizer"] = r.vocab_model;
    j["tensor_count"] = r.tensors.size();
    j["parameters"] = r.params;
    j["file_size"] = r.file_size;
    j["bits_per_weight"] = r.params ? 8.0 * static_cast<double>(r.file_size) / static_cast<double>(r.params) : 0.0;
    j["fallbacks"] = r.fallbacks;
    j["missing_importance"] = r.missing_importance;
    j["seconds"] = secs;
    j["tensor_types"] = by_type;
    j["tensors"] = tensors_json(r.tensors);
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  if (a.quiet) return;
  std::string types;
  for (const auto& [k, v] : by_type) types += fmt::format("{}{} x{}", types.empty() ? "" : ", ", k, v);
  std::printf("wrote %s: %s, %zu tensors (%s), %.1f M parameters, %.2f MiB, %.1f s\n",
              a.output.c_str(), r.arch.c_str(), r.tensors.size(), types.c_str(),
              static_cast<double>(r.params) / 1e6, static_cast<double>(r.file_size) / (1024.0 * 1024.0), secs);
  if (r.fallbacks)
    std::printf("%d tensor(s) used a fallback type: their rows do not fit %s blocks\n", r.fallbacks,
                std::string(t->name).c_str());
}

}  // namespace

void register_convert(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  auto* cmd = app.add_subcommand("convert", "Convert a Hugging Face model folder to GGUF");
  cmd->add_option("input", args->input, "Hugging Face model folder (config.json, *.safetensors, tokenizer)")
      ->required();
  cmd->add_option("-o,--output", args->output, "Output .gguf file (written atomically)")->required();
  cmd->add_option("-t,--type", args->type,
                  "Type of the large matrices: F32, F16, BF16, Q8_0, Q6_K, Q5_K, Q4_K, Q5_0, Q4_0, ...")
      ->capture_default_str();
  cmd->add_option("--imatrix", args->imatrix,
                  "Importance matrix (llama-imatrix GGUF or .dat, or tailor imatrix) weighting the quantizer");
  cmd->add_option("--name", args->name, "general.name (default: the folder name)");
  cmd->add_option("-j,--threads", args->threads, "Threads for quantization (0 = all cores)")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "Print a JSON summary on stdout");
  cmd->add_flag("-q,--quiet", args->quiet, "No progress or summary");
  cmd->callback([args] {
    // ORG/NAME: pulled into the Hub cache; general.name is then NAME, not the snapshot's commit.
    const std::string given = args->input;
    args->input = hub::resolve_model_path(given);
    if (args->name.empty() && args->input != given) args->name = hub::parse_repo_spec(given).name();
    run_convert(*args);
  });
}

}  // namespace tailor::cli
