// tailor: measure, plan and write tailor-made quantized GGUF models.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <unistd.h>

#include "commands.h"
#include "tailor/util/error.h"

namespace {

// The GEMM library's OpenMP threads spin while idle by default; on a busy
// 2-core machine that makes two threads slower than one. OpenMP reads the
// policy when the library loads, before main, so set it and start again.
void ensure_passive_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "passive", 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: carry on as we are
}

}  // namespace

int main(int argc, char** argv) {
  ensure_passive_openmp(argv);
  CLI::App app{"Tailor: per-tensor quantization for llama.cpp models", "tailor"};
  app.set_version_flag("--version", std::string("tailor ") + TAILOR_VERSION);
  app.require_subcommand(1);
  tailor::cli::register_inspect(app);
  tailor::cli::register_convert(app);
  tailor::cli::register_quantize(app);
  tailor::cli::register_eval(app);
  tailor::cli::register_imatrix(app);
  tailor::cli::register_generate(app);
  tailor::cli::register_jobs(app);
  tailor::cli::register_measure(app);
  tailor::cli::register_plan(app);
  tailor::cli::register_compare(app);
  tailor::cli::register_pull(app);
  tailor::cli::register_serve(app);
  tailor::cli::register_gradual(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const tailor::cli::ExitCode& e) {
    return e.code;
  } catch (const tailor::Error& e) {
    std::fprintf(stderr, "tailor: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tailor: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
