#include "pause_signal.h"

#include <csignal>
#include <unistd.h>

namespace tailor::cli {

std::atomic<bool> g_stop{false};

void on_pause_signal(int) {
  if (g_stop.exchange(true)) {
    std::signal(SIGINT, SIG_DFL);
    std::raise(SIGINT);
    return;
  }
  const char msg[] = "\ntailor: pausing after the unit in flight (Ctrl-C again to stop at once)\n";
  (void)!::write(2, msg, sizeof msg - 1);
}

}  // namespace tailor::cli
