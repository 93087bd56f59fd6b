// Each subcommand registers itself on the CLI app; main.cpp only wires them up.
#pragma once
#include <CLI/CLI.hpp>

namespace tailor::cli {

void register_inspect(CLI::App& app);
void register_convert(CLI::App& app);
void register_quantize(CLI::App& app);
void register_eval(CLI::App& app);
void register_imatrix(CLI::App& app);
void register_generate(CLI::App& app);
void register_jobs(CLI::App& app);
void register_measure(CLI::App& app);
void register_plan(CLI::App& app);
void register_compare(CLI::App& app);
void register_pull(CLI::App& app);
void register_serve(CLI::App& app);
void register_gradual(CLI::App& app);

// Thrown by a command that must end with a particular exit status (e.g. 130
// after a Ctrl-C pause); main returns it.
struct ExitCode {
  int code = 0;
};

}  // namespace tailor::cli
