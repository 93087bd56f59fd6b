// Paths of the fixtures most end-to-end tests share (the trained llama-30m
// model and the calibration and eval texts), and fresh scratch databases.
#pragma once
#include <filesystem>
#include <string>

#include "cli_runner.h"

namespace tailor::test {

inline const std::string kShared = TAILOR_SHARED_DIR;
inline const std::string kModel = kShared + "/models/llama-30m";
inline const std::string kCalib = kShared + "/text/calibration.txt";
inline const std::string kEval = kShared + "/text/eval.txt";

// A path under the test's scratch folder / `area`, with any database left
// there (and its WAL files) removed.
inline std::string scratch_file(const std::string& area, const std::string& name) {
  const std::filesystem::path p = std::filesystem::path(temp_dir()) / area / name;
  std::filesystem::create_directories(p.parent_path());
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(p.string() + suffix);
  return p.string();
}

}  // namespace tailor::test
