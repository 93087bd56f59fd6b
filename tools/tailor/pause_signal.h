// Ctrl-C for long jobs (measure, gradual): the first press asks the worker to
// finish the unit in flight and pause the job; the second stops at once (the
// unit in flight is redone on resume; nothing committed is lost).
#pragma once
#include <atomic>

namespace tailor::cli {

extern std::atomic<bool> g_stop;
void on_pause_signal(int);

}  // namespace tailor::cli
