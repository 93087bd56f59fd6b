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

}  // namespace tailor::cli
