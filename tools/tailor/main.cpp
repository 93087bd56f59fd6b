// tailor: measure, plan and write tailor-made quantized GGUF models.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "tailor/util/error.h"

int main(int argc, char** argv) {
  CLI::App app{"Tailor: per-tensor quantization for llama.cpp models", "tailor"};
  app.set_version_flag("--version", std::string("tailor ") + TAILOR_VERSION);
  app.require_subcommand(1);
  tailor::cli::register_inspect(app);
  tailor::cli::register_convert(app);
  tailor::cli::register_eval(app);
  tailor::cli::register_imatrix(app);
  tailor::cli::register_generate(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const tailor::Error& e) {
    std::fprintf(stderr, "tailor: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tailor: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
