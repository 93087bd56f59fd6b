#include "commands.h"
#include "tailor/util/error.h"

namespace tailor::cli {

void register_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", "(not written yet)");
  cmd->callback([] { fail("convert: not implemented yet"); });
}

}  // namespace tailor::cli
