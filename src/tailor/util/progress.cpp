#include "tailor/util/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace tailor {

Progress::Progress(std::string label, std::string unit, Mode mode, std::FILE* out, double log_every)
    : label_(std::move(label)), unit_(std::move(unit)), mode_(mode), out_(out), log_every_(log_every) {
  if (mode_ == Mode::Auto) mode_ = isatty(fileno(out_)) ? Mode::Tty : Mode::Plain;
  start_ = last_ = Clock::now();
}

Progress::~Progress() {
  if (started_) finish();
}

std::string Progress::format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<int64_t>(std::llround(s));
  if (t >= 3600) return fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
  return fmt::format("{}:{:02}", t / 60, t % 60);
}

std::string Progress::line(int64_t done, int64_t total, double elapsed) const {
  const double rate = elapsed > 0 ? double(done - first_done_) / elapsed : 0.0;
  const double pct = total > 0 ? 100.0 * double(done) / double(total) : 0.0;
  std::string s = fmt::format("{}: {}/{} {} ({:.0f}%), {:.1f} {}/s", label_, done, total, unit_, pct, rate, unit_);
  if (done < total && rate > 0) s += ", ETA " + format_duration(double(total - done) / rate);
  else if (done >= total) s += ", " + format_duration(elapsed);
  return s;
}

void Progress::update(int64_t done, int64_t total) {
  if (mode_ == Mode::Quiet || finished_) return;
  // Work done before the first update (a resumed job) has no time to count against.
  if (!started_ && done > 0) first_done_ = done, start_ = Clock::now();
  started_ = true;
  done_ = done;
  total_ = total;
  const auto now = Clock::now();
  const double since = std::chrono::duration<double>(now - last_).count();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (mode_ == Mode::Tty) {
    if (drawn_ && since < 0.1 && done < total) return;  // the first update shows at once
    drawn_ = true;
    std::fprintf(out_, "\r%s\x1b[K", line(done, total, elapsed).c_str());
  } else {
    if (since < log_every_) return;
    std::fprintf(out_, "%s\n", line(done, total, elapsed).c_str());
  }
  std::fflush(out_);
  last_ = now;
}

void Progress::clear() {
  if (mode_ != Mode::Tty || !drawn_) return;
  std::fprintf(out_, "\r\x1b[K");
  std::fflush(out_);
  drawn_ = false;
}

void Progress::finish() {
  if (finished_ || mode_ == Mode::Quiet) return;
  finished_ = true;
  if (!started_) return;
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const std::string l = line(done_, total_, elapsed);
  if (mode_ == Mode::Tty) std::fprintf(out_, "\r%s\x1b[K\n", l.c_str());
  else std::fprintf(out_, "%s\n", l.c_str());
  std::fflush(out_);
}

}  // namespace tailor
