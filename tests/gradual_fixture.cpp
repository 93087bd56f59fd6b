// Writes the gradual fixture job (gradual_fixture.h) into a job store and
// prints what it committed as JSON, for the browser test (web/tests/ui.mjs).
// Usage: tailor_gradual_fixture DB MODEL_PATH
#include <cstdio>
#include <exception>

#include "gradual_fixture.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DB MODEL_PATH\n", argv[0]);
    return 2;
  }
  try {
    tailor::jobs::JobStore st(argv[1]);
    const auto f = tailor::test::write_gradual_fixture(st, argv[2]);
    const nlohmann::json out = {
        {"id", f.id}, {"importance", f.importance}, {"blocks", f.blocks}, {"validate", f.validate}};
    std::printf("%s\n", out.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tailor_gradual_fixture: %s\n", e.what());
    return 1;
  }
  return 0;
}
