// `tailor serve`: the web app and its HTTP API on this machine (src/tailor/server).
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "commands.h"
#include "tailor/server/server.h"
#include "tailor/util/error.h"

namespace tailor::cli {
namespace {

// The app is built into <build>/web/dist, beside the tailor binary.
std::string default_web_dir() {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  return (exe.parent_path() / "web" / "dist").string();
}

void run_serve(server::ServerOptions o) {
  if (o.web_dir.empty()) o.web_dir = default_web_dir();
  if (!std::filesystem::is_directory(o.web_dir))
    std::fprintf(stderr, "tailor serve: %s: no built web app there (scripts/build.sh builds it); serving the API only\n",
                 o.web_dir.c_str());
  for (const auto& d : o.allow)
    if (!std::filesystem::is_directory(d)) fail("serve: --allow {}: not a folder", d);
  // Ctrl-C and SIGTERM stop the server cleanly (measurements pause, resumable):
  // the signals are blocked in every thread and awaited here.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  server::Server srv(o);
  srv.bind();
  std::printf("Tailor is serving at %s\n(allowed folders:", srv.url().c_str());
  if (o.allow.empty()) std::printf(" %s", std::filesystem::current_path().c_str());
  for (const auto& d : o.allow) std::printf(" %s", d.c_str());
  std::printf("; Ctrl-C stops)\n");
  std::fflush(stdout);
  std::thread t([&srv] { srv.run(); });
  int sig = 0;
  sigwait(&sigs, &sig);
  std::fprintf(stderr, "tailor serve: stopping\n");
  srv.stop();
  t.join();
}

}  // namespace

void register_serve(CLI::App& app) {
  auto o = std::make_shared<server::ServerOptions>();
  auto* cmd = app.add_subcommand("serve", "Serve the web app and its API on this machine (http://127.0.0.1:PORT/?token=...)");
  cmd->add_option("--host", o->host, "Address to listen on (keep 127.0.0.1 unless you know why)")->capture_default_str();
  cmd->add_option("--port", o->port, "Port; 0 picks a free one")->capture_default_str();
  cmd->add_option("--db", o->db, "Job store (default: $TAILOR_DB or ~/.local/share/tailor/jobs.db)");
  cmd->add_option("--allow", o->allow,
                  "A folder requests may read and write files in (repeatable; default: the current folder)");
  cmd->add_option("--web", o->web_dir, "The built web app (default: web/dist beside the tailor binary)");
  cmd->add_option("--token", o->token, "Access token (default: a random one, printed in the URL)");
  cmd->add_option("--hf-token-file", o->hf_token_file,
                  "Where a Hugging Face token given in the app is stored, mode 0600 (default: ~/.config/tailor/hf_token)");
  cmd->add_flag("--quiet", o->quiet, "No request log");
  cmd->callback([o] { run_serve(*o); });
}

}  // namespace tailor::cli
