#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "tailor/hub/hub.h"
#include "tailor/model/inspect.h"

namespace tailor::cli {

void register_inspect(CLI::App& app) {
  struct Options {
    std::string model;
    bool json = false;
    size_t max_items = 16;
  };
  auto opt = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "inspect", "Show a model's architecture, hyperparameters, tensors (shape, type, size) and totals");
  cmd->add_option("model", opt->model, "Hugging Face folder, .safetensors file or .gguf file")->required();
  cmd->add_flag("--json", opt->json, "Print the same data as JSON");
  cmd->add_option("--max-array-items", opt->max_items,
                  "GGUF metadata arrays longer than this are abbreviated")->capture_default_str();
  cmd->callback([opt] {
    opt->model = hub::resolve_model_path(opt->model);  // ORG/NAME: pulled into the Hub cache
    nlohmann::json report = inspect_model(opt->model, opt->max_items);
    std::string text = opt->json
                           ? report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"
                           : format_inspection(report);
    std::fwrite(text.data(), 1, text.size(), stdout);
  });
}

}  // namespace tailor::cli
