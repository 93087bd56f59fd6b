// A progress line on stderr for long runs (eval, imatrix): count done of a
// total, rate and ETA. On a terminal one line is redrawn in place (at most
// ten times a second); otherwise, so that logs stay readable, a plain line is
// printed every `log_every` seconds and at the end. Quiet prints nothing.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace tailor {

class Progress {
 public:
  enum class Mode { Auto, Tty, Plain, Quiet };  // Auto: Tty when the stream is a terminal

  Progress(std::string label, std::string unit, Mode mode = Mode::Auto, std::FILE* out = stderr,
           double log_every = 10.0);
  ~Progress();  // finishes the line if update() was ever called

  // The rate counts from the first update's `done`, so a resumed job's units
  // done before it started do not inflate it.
  void update(int64_t done, int64_t total);
  // Erases a drawn terminal line so that other output can be printed; the
  // next update draws it again (the count, rate and ETA carry on).
  void clear();
  // Final line (rate over the whole run); called once, later calls do nothing.
  void finish();

  // "12.3 tok/s, ETA 1:02:03" pieces, public for tests.
  static std::string format_duration(double seconds);
  std::string line(int64_t done, int64_t total, double elapsed) const;

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_, unit_;
  Mode mode_;
  std::FILE* out_;
  double log_every_;
  Clock::time_point start_, last_;
  int64_t done_ = 0, total_ = 0, first_done_ = 0;
  bool started_ = false, finished_ = false, drawn_ = false;
};

}  // namespace tailor
