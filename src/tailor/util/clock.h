// Clocks in seconds as doubles: durations and timestamps.
#pragma once
#include <chrono>

namespace tailor {

// Monotonic seconds, for measuring durations (differences only).
inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds since the Unix epoch, for timestamps stored or shown.
inline double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace tailor
