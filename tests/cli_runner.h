// Test helper: runs the tailor CLI (or any command) and captures its exit
// code, stdout and stderr, so tests check what a user would see.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "format_test_util.h"

namespace tailor::test {

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

// The test program's scratch folder (removed at exit).
inline std::string temp_dir() { return scratch_dir("tailor_cli").string(); }

// `args` is appended to the CLI path verbatim (quote paths with spaces yourself).
inline CommandResult run_cli(const std::string& args) {
  static int counter = 0;
  std::string base = temp_dir() + "/cmd" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
  std::string cmd = std::string(TAILOR_CLI_PATH) + " " + args + " >" + base + ".out 2>" + base + ".err </dev/null";
  int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(base + ".out");
  r.err = slurp(base + ".err");
  std::remove((base + ".out").c_str());
  std::remove((base + ".err").c_str());
  return r;
}

inline int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n + (!s.empty() && s.back() != '\n');
}

}  // namespace tailor::test
