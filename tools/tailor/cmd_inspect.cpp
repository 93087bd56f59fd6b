#include "commands.h"
#include "tailor/util/error.h"

namespace tailor::cli {

void register_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "(not written yet)");
  cmd->callback([] { fail("inspect: not implemented yet"); });
}

}  // namespace tailor::cli
