// Errors Tailor reports to users. Every message is one line that names the
// file (or object) and the problem, so the CLI can print it as is.
#pragma once
#include <stdexcept>
#include <string>
#include <fmt/format.h>

namespace tailor {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace tailor
