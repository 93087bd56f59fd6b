// Helpers shared by the file-format tests: scratch folders, whole-file I/O,
// and checking that an error is one line naming the file and the problem.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "tailor/util/error.h"

namespace tailor::test {

// The per-process scratch folder under the system temp dir, removed at exit
// (one per test program: the first prefix asked for names it).
inline std::filesystem::path scratch_dir(const std::string& prefix) {
  struct Owned {
    std::filesystem::path dir;
    ~Owned() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  };
  static Owned owned{std::filesystem::temp_directory_path() /
                     (prefix + "_" + std::to_string(::getpid()))};
  std::filesystem::create_directories(owned.dir);
  return owned.dir;
}

inline std::vector<uint8_t> read_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::filesystem::path& p, const void* data, size_t n) {
  std::ofstream f(p, std::ios::binary);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

// Expects `fn` to throw a one-line tailor::Error naming `file` and containing `problem`.
inline void expect_error(const std::function<void()>& fn, const std::string& file,
                         const std::string& problem) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected: " << problem;
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_NE(msg.find(problem), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

}  // namespace tailor::test
