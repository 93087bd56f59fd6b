// `tailor serve`: a local HTTP API over the job store, measurement, planning,
// quantization and comparison, plus the static single-page app (web/).
// Safety: it binds loopback by default, every /api call needs the random
// token printed in the URL, and every path a request names must resolve
// (symlinks included) inside one of the allowed folders.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace tailor::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;                    // 0: any free port (see Server::bind)
  std::string db;                  // job store; empty: JobStore::default_path()
  std::vector<std::string> allow;  // folders requests may name files in; empty: the current folder
  std::string web_dir;             // the built front end; empty or missing: a short placeholder page
  std::string token;               // empty: a random one
  std::string hf_token_file;       // where POST /api/hf-token stores a token (mode 0600)
  bool quiet = false;              // no request log on stderr
};

class Server {
 public:
  explicit Server(ServerOptions opt);
  ~Server();  // stops and joins the background work
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port (Error when it cannot) and returns the port bound.
  int bind();
  // Serves until stop(); call bind() first.
  void run();
  void stop();

  const std::string& token() const;
  // http://HOST:PORT/?token=...
  std::string url() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Resolves `path` (relative to the current folder) with symlinks followed as
// far as it exists; true when the result lies inside one of `roots` (which are
// resolved the same way). `resolved` receives the resolved path.
bool path_allowed(const std::string& path, const std::vector<std::string>& roots, std::string& resolved);

}  // namespace tailor::server
