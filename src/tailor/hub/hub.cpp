// tailor pull: the model-info API for the file list, then the needed files
// from /resolve/<commit>/ a few at a time, each resumed from its .incomplete
// part with an HTTP Range request and verified against its hash before it
// becomes a blob.
#include "tailor/hub/hub.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <curl/curl.h>

#include "tailor/util/error.h"
#include "tailor/util/progress.h"

namespace fs = std::filesystem;

namespace tailor::hub {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::string home_dir() {
  const std::string h = env("HOME");
  return h.empty() ? "/tmp" : h;
}

std::string hf_home() {
  const std::string h = env("HF_HOME");
  if (!h.empty()) return h;
  const std::string xdg = env("XDG_CACHE_HOME");
  return (xdg.empty() ? home_dir() + "/.cache" : xdg) + "/huggingface";
}

bool is_hex(const std::string& s, size_t len) {
  return s.size() == len && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

bool repo_part_ok(const std::string& s) {
  if (s.empty() || s.size() > 96 || s == "." || s == ".." || s.find("..") != std::string::npos) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

// A relative path that stays inside the snapshot folder: no absolute paths,
// no "." or ".." parts, no backslashes or control characters.
bool safe_relative_path(const std::string& name) {
  if (name.empty() || name.size() > 1024 || name.front() == '/') return false;
  size_t start = 0;
  for (;;) {
    const size_t slash = name.find('/', start);
    const std::string part = name.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return std::none_of(name.begin(), name.end(),
                      [](char c) { return c == '\\' || static_cast<unsigned char>(c) < 0x20; });
}

// Percent-encodes a revision for the API path (refs/pr/1 -> refs%2Fpr%2F1).
std::string encode_path_part(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += char(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

std::string encode_file_path(const std::string& name) {
  std::string out;
  size_t start = 0;
  for (;;) {
    const size_t slash = name.find('/', start);
    out += encode_path_part(name.substr(start, slash == std::string::npos ? std::string::npos : slash - start));
    if (slash == std::string::npos) break;
    out += '/';
    start = slash + 1;
  }
  return out;
}

std::string gated_message(const std::string& repo) {
  return fmt::format(
      "{}: gated or private: accept the licence on the Hub page and pass --token or set HF_TOKEN", repo);
}

void curl_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// One easy handle with the settings every request shares. The token travels
// only in the Authorization header, which libcurl drops on redirects to other
// hosts (the Hub's CDN), and never in a message.
struct Request {
  CURL* h = nullptr;
  curl_slist* headers = nullptr;
  char errbuf[CURL_ERROR_SIZE] = {};

  Request(const std::string& url, const std::string& token) {
    curl_init_once();
    h = curl_easy_init();
    if (!h) fail("hub: cannot start an HTTP request");
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 30L);
    // A transfer that stalls (under 1 byte/s for a minute) is dropped and resumed.
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "tailor/" TAILOR_VERSION);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    if (!token.empty()) headers = curl_slist_append(headers, ("Authorization: Bearer " + token).c_str());
    if (headers) curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  }
  ~Request() {
    curl_easy_cleanup(h);
    curl_slist_free_all(headers);
  }
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  long status() const {
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    return code;
  }
  std::string error(CURLcode rc) const { return errbuf[0] ? errbuf : curl_easy_strerror(rc); }
};

size_t append_to_string(char* p, size_t size, size_t n, void* user) {
  auto* s = static_cast<std::string*>(user);
  if (s->size() + size * n > (64u << 20)) return 0;  // no API answer is this large
  s->append(p, size * n);
  return size * n;
}

// A network failure (no HTTP answer) as opposed to an HTTP error status.
struct Unreachable : Error {
  using Error::Error;
};

// The Hub names the cause of a 401/404 in X-Error-Code (RepoNotFound,
// RevisionNotFound, GatedRepo); only the final response's header counts.
size_t keep_error_code(char* p, size_t size, size_t n, void* user) {
  auto* code = static_cast<std::string*>(user);
  const std::string line(p, size * n);
  static const std::string key = "x-error-code:";
  if (line.starts_with("HTTP/")) code->clear();
  if (line.size() > key.size() &&
      std::equal(key.begin(), key.end(), line.begin(), [](char a, char b) { return a == std::tolower(b); })) {
    *code = line.substr(key.size());
    while (!code->empty() && std::isspace(static_cast<unsigned char>(code->back()))) code->pop_back();
    while (!code->empty() && std::isspace(static_cast<unsigned char>(code->front()))) code->erase(code->begin());
  }
  return size * n;
}

RepoInfo fetch_repo_info(const RepoSpec& spec, const std::string& endpoint, const std::string& token) {
  const std::string url = fmt::format("{}/api/models/{}/revision/{}?blobs=true", endpoint, spec.repo,
                                      encode_path_part(spec.revision));
  Request req(url, token);
  std::string body;
  curl_easy_setopt(req.h, CURLOPT_WRITEFUNCTION, append_to_string);
  curl_easy_setopt(req.h, CURLOPT_WRITEDATA, &body);
  std::string error_code;
  curl_easy_setopt(req.h, CURLOPT_HEADERFUNCTION, keep_error_code);
  curl_easy_setopt(req.h, CURLOPT_HEADERDATA, &error_code);
  const CURLcode rc = curl_easy_perform(req.h);
  if (rc != CURLE_OK) throw Unreachable(fmt::format("{}: cannot reach {}: {}", spec.repo, endpoint, req.error(rc)));
  const long code = req.status();
  // The Hub answers 401 for a repo that does not exist as for a private one.
  if (error_code == "RepoNotFound")
    fail("{}: repository not found on {} (HTTP {}; a private one needs --token or HF_TOKEN)", spec.repo, endpoint,
         code);
  if (error_code == "RevisionNotFound")
    fail("{}: revision '{}' not found on {} (HTTP {})", spec.repo, spec.revision, endpoint, code);
  if (code == 401 || code == 403) fail("{}", gated_message(spec.repo));
  if (code == 404)
    fail("{}: repository or revision '{}' not found on {} (404; a private repo also needs --token)", spec.repo,
         spec.revision, endpoint);
  if (code != 200) fail("{}: the Hub answered HTTP {} for the file list", spec.repo, code);
  return parse_repo_info(body, spec.repo);
}

struct Shared {
  const RepoSpec* spec;
  std::string endpoint, token, commit;
  fs::path locks;
  int max_attempts;
  std::atomic<int64_t> done{0};
  std::atomic<int64_t> downloaded{0};
  std::atomic<bool> stop{false};
};

struct Sink {
  int fd;
  Request* req;
  Shared* sh;
  int64_t have;       // bytes in the .incomplete file
  int64_t limit;      // the file's size: more is refused
  bool checked = false;
  bool restarted = false;
};

size_t write_part(char* p, size_t size, size_t n, void* user) {
  auto* s = static_cast<Sink*>(user);
  const size_t bytes = size * n;
  const long code = s->req->status();
  if (code != 200 && code != 206) return bytes;  // an error page: not file content
  if (!s->checked) {
    s->checked = true;
    // A plain 200 to a Range request is the whole file: start over.
    if (code == 200 && s->have > 0) {
      if (::ftruncate(s->fd, 0) != 0 || ::lseek(s->fd, 0, SEEK_SET) != 0) return 0;
      s->sh->done -= s->have;
      s->have = 0;
      s->restarted = true;
    }
  }
  if (s->have + int64_t(bytes) > s->limit) return 0;  // longer than the API said
  size_t off = 0;
  while (off < bytes) {
    const ssize_t w = ::write(s->fd, p + off, bytes - off);
    if (w <= 0) return 0;
    off += size_t(w);
  }
  s->have += int64_t(bytes);
  s->sh->done += int64_t(bytes);
  s->sh->downloaded += int64_t(bytes);
  return bytes;
}

int abort_when_stopped(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<Shared*>(user)->stop.load() ? 1 : 0;
}

int64_t file_size_or_zero(const fs::path& p) {
  std::error_code ec;
  const auto n = fs::file_size(p, ec);
  return ec ? 0 : int64_t(n);
}

std::string file_hash(const RemoteFile& f, const std::string& path) {
  return f.lfs ? sha256_file_hex(path) : git_blob_sha1_file_hex(path);
}

// An exclusive flock on <cache>/.locks/models--ORG--NAME/<hash>.lock, the
// lock file huggingface_hub's own downloads take (filelock uses flock too),
// so two pulls of one blob, ours or Python's, never write one .incomplete.
class BlobLock {
 public:
  explicit BlobLock(const fs::path& path) {
    fs::create_directories(path.parent_path());
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("{}: cannot open the lock file", path.string());
    if (::flock(fd_, LOCK_EX) != 0) {
      ::close(fd_);
      fail("{}: cannot lock", path.string());
    }
  }
  ~BlobLock() { ::close(fd_); }  // closing releases the lock
  BlobLock(const BlobLock&) = delete;
  BlobLock& operator=(const BlobLock&) = delete;

 private:
  int fd_ = -1;
};

// Fetches one file into `blob`, resuming from blob.incomplete.
void fetch_blob(Shared& sh, const RemoteFile& f, const fs::path& blob) {
  BlobLock lock(sh.locks / (f.hash + ".lock"));
  if (file_size_or_zero(blob) == f.size && fs::exists(blob)) {  // another process fetched it meanwhile
    sh.done += f.size - std::min(file_size_or_zero(blob.string() + ".incomplete"), f.size);
    return;
  }
  const std::string part = blob.string() + ".incomplete";
  const std::string url =
      fmt::format("{}/{}/resolve/{}/{}", sh.endpoint, sh.spec->repo, sh.commit, encode_file_path(f.name));
  int attempts = 0;
  bool hash_retried = false;
  std::string last_error;
  for (;;) {
    if (sh.stop) fail("{}: stopped", f.name);
    int64_t have = file_size_or_zero(part);
    if (have > f.size) {
      fs::remove(part);
      sh.done -= have;
      have = 0;
    }
    if (have < f.size) {
      if (attempts++ >= sh.max_attempts)
        fail("{}/{}: download failed after {} attempts: {}", sh.spec->repo, f.name, sh.max_attempts, last_error);
      const int fd = ::open(part.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd < 0) fail("{}: cannot write", part);
      Request req(url, sh.token);
      Sink sink{fd, &req, &sh, have, f.size};
      curl_easy_setopt(req.h, CURLOPT_WRITEFUNCTION, write_part);
      curl_easy_setopt(req.h, CURLOPT_WRITEDATA, &sink);
      curl_easy_setopt(req.h, CURLOPT_NOPROGRESS, 0L);
      curl_easy_setopt(req.h, CURLOPT_XFERINFOFUNCTION, abort_when_stopped);
      curl_easy_setopt(req.h, CURLOPT_XFERINFODATA, &sh);
      const std::string range = fmt::format("{}-", have);
      if (have > 0) curl_easy_setopt(req.h, CURLOPT_RANGE, range.c_str());
      const CURLcode rc = curl_easy_perform(req.h);
      ::close(fd);
      const long code = req.status();
      if (sh.stop) fail("{}: stopped", f.name);
      if (code == 401 || code == 403) fail("{}", gated_message(sh.spec->repo));
      if (code == 404) fail("{}/{}: not found at commit {} (404)", sh.spec->repo, f.name, sh.commit);
      if (code == 416) {  // the part does not fit what the server has: start over
        sh.done -= file_size_or_zero(part);
        fs::remove(part);
        last_error = "HTTP 416";
        continue;
      }
      if (rc != CURLE_OK) {
        last_error = req.error(rc);
        continue;  // dropped or stalled: resume from what arrived
      }
      if (code != 200 && code != 206) fail("{}/{}: the Hub answered HTTP {}", sh.spec->repo, f.name, code);
      if (file_size_or_zero(part) != f.size) {
        last_error = "short transfer";
        continue;
      }
    }
    if (f.size == 0 && !fs::exists(part)) std::ofstream(part, std::ios::binary);  // nothing to fetch
    const std::string got = file_hash(f, part);
    if (got == f.hash) break;
    sh.done -= f.size;
    fs::remove(part);
    if (hash_retried)
      fail("{}/{}: {} mismatch twice (expected {}, got {}); the download is corrupt", sh.spec->repo, f.name,
           f.lfs ? "sha256" : "git sha1", f.hash, got);
    hash_retried = true;  // a corrupt copy: fetch it once more from the start
  }
  fs::rename(part, blob);
}

// snapshots/<commit>/<name> -> ../../blobs/<hash> (one more ../ per folder in name).
void link_snapshot(const fs::path& snapshot, const RemoteFile& f) {
  const fs::path link = snapshot / f.name;
  fs::create_directories(link.parent_path());
  std::string target = "../../blobs/" + f.hash;
  for (char c : f.name)
    if (c == '/') target = "../" + target;
  std::error_code ec;
  if (fs::is_symlink(link, ec)) {
    if (fs::read_symlink(link, ec) == fs::path(target)) return;
    fs::remove(link);
  }
  fs::create_symlink(target, link);
}

void write_ref(const fs::path& repo_dir, const std::string& revision, const std::string& commit) {
  if (revision == commit) return;  // a commit needs no ref
  const fs::path ref = repo_dir / "refs" / revision;
  fs::create_directories(ref.parent_path());
  const std::string tmp = ref.string() + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << commit;
    if (!out) fail("{}: cannot write", tmp);
  }
  fs::rename(tmp, ref);
}

// The cached snapshot of a revision, for when the Hub cannot be reached.
std::string cached_commit(const fs::path& repo_dir, const std::string& revision) {
  if (is_hex(revision, 40) && fs::is_directory(repo_dir / "snapshots" / revision)) return revision;
  std::ifstream in(repo_dir / "refs" / revision);
  std::string commit;
  in >> commit;
  return is_hex(commit, 40) && fs::is_directory(repo_dir / "snapshots" / commit) ? commit : "";
}

PullResult offline_result(const RepoSpec& spec, const fs::path& repo_dir, const std::string& commit) {
  PullResult r;
  r.repo = spec.repo;
  r.revision = spec.revision;
  r.commit = commit;
  r.snapshot = (repo_dir / "snapshots" / commit).string();
  r.offline = true;
  for (const auto& e : fs::recursive_directory_iterator(r.snapshot)) {
    if (fs::is_directory(e.path())) continue;
    r.files.push_back({fs::relative(e.path(), r.snapshot).string(), file_size_or_zero(e.path()), false});
  }
  std::sort(r.files.begin(), r.files.end(), [](auto& a, auto& b) { return a.name < b.name; });
  return r;
}

}  // namespace

RepoSpec parse_repo_spec(const std::string& spec) {
  RepoSpec r;
  const size_t at = spec.find('@');
  r.repo = spec.substr(0, at);
  if (at != std::string::npos) r.revision = spec.substr(at + 1);
  const size_t slash = r.repo.find('/');
  if (slash == std::string::npos || r.repo.find('/', slash + 1) != std::string::npos ||
      !repo_part_ok(r.repo.substr(0, slash)) || !repo_part_ok(r.repo.substr(slash + 1)))
    fail("{}: not a Hub model id (ORG/NAME[@REVISION])", spec);
  if (!safe_relative_path(r.revision) || r.revision.size() > 256)
    fail("{}: bad revision '{}'", spec, r.revision);
  return r;
}

bool looks_like_repo_spec(const std::string& arg) {
  try {
    parse_repo_spec(arg);
    return true;
  } catch (const Error&) {
    return false;
  }
}

RepoInfo parse_repo_info(const std::string& body, const std::string& what) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(body);
  } catch (const nlohmann::json::exception&) {
    fail("{}: the Hub's file list is not valid JSON", what);
  }
  if (!j.is_object()) fail("{}: the Hub's file list is not a JSON object", what);
  RepoInfo info;
  if (!j.contains("sha") || !j["sha"].is_string() || !is_hex(j["sha"].get<std::string>(), 40))
    fail("{}: the Hub's file list has no commit hash ('sha')", what);
  info.commit = j["sha"].get<std::string>();
  if (!j.contains("siblings") || !j["siblings"].is_array()) fail("{}: the Hub's file list has no 'siblings'", what);
  if (j["siblings"].size() > 1000000) fail("{}: the Hub's file list is too long", what);
  for (const auto& s : j["siblings"]) {
    if (!s.is_object() || !s.contains("rfilename") || !s["rfilename"].is_string())
      fail("{}: a file in the Hub's list has no 'rfilename'", what);
    RemoteFile f;
    f.name = s["rfilename"].get<std::string>();
    if (!safe_relative_path(f.name)) fail("{}: refusing file name '{}' (outside the snapshot folder)", what, f.name);
    if (!is_needed_file(f.name)) continue;  // other files may lack blob details
    auto number = [&](const nlohmann::json& o, const char* key) -> int64_t {
      if (!o.contains(key) || !o[key].is_number_integer() || o[key].get<int64_t>() < 0)
        fail("{}: '{}' has no valid '{}' in the Hub's list (was it fetched with ?blobs=true?)", what, f.name, key);
      return o[key].get<int64_t>();
    };
    f.size = number(s, "size");
    if (s.contains("lfs") && s["lfs"].is_object()) {
      const auto& lfs = s["lfs"];
      if (!lfs.contains("sha256") || !lfs["sha256"].is_string() || !is_hex(lfs["sha256"].get<std::string>(), 64))
        fail("{}: '{}' has no valid lfs.sha256 in the Hub's list", what, f.name);
      f.hash = lfs["sha256"].get<std::string>();
      f.lfs = true;
      if (lfs.contains("size")) f.size = number(lfs, "size");
    } else {
      if (!s.contains("blobId") || !s["blobId"].is_string() || !is_hex(s["blobId"].get<std::string>(), 40))
        fail("{}: '{}' has no valid blobId in the Hub's list", what, f.name);
      f.hash = s["blobId"].get<std::string>();
    }
    info.files.push_back(std::move(f));
  }
  return info;
}

bool is_needed_file(const std::string& name) {
  if (name.find('/') != std::string::npos) return false;  // subfolders hold other formats
  static const char* names[] = {"config.json",          "generation_config.json", "model.safetensors.index.json",
                                "tokenizer.json",       "tokenizer.model",        "tokenizer_config.json",
                                "special_tokens_map.json"};
  for (const char* n : names)
    if (name == n) return true;
  return name.size() > 12 && name.ends_with(".safetensors");
}

std::string default_cache_dir() {
  const std::string c = env("HF_HUB_CACHE");
  return c.empty() ? hf_home() + "/hub" : c;
}

std::string default_endpoint() {
  std::string e = env("HF_ENDPOINT");
  if (e.empty()) e = "https://huggingface.co";
  while (!e.empty() && e.back() == '/') e.pop_back();
  return e;
}

std::string default_token() {
  std::string t = env("HF_TOKEN");
  if (t.empty()) {
    std::string path = env("HF_TOKEN_PATH");
    if (path.empty()) path = hf_home() + "/token";
    std::ifstream in(path);
    std::getline(in, t);
  }
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.front()))) t.erase(t.begin());
  return t;
}

nlohmann::json PullResult::to_json() const {
  nlohmann::json j{{"repo", repo},         {"revision", revision},
                   {"commit", commit},     {"snapshot", snapshot},
                   {"offline", offline},   {"bytes_downloaded", bytes_downloaded}};
  j["files"] = nlohmann::json::array();
  for (const auto& f : files) j["files"].push_back({{"name", f.name}, {"size", f.size}, {"downloaded", f.downloaded}});
  return j;
}

PullResult pull(const RepoSpec& spec, const PullOptions& opt) {
  std::string endpoint = opt.endpoint.empty() ? default_endpoint() : opt.endpoint;
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  const std::string token = opt.token.empty() ? default_token() : opt.token;
  const fs::path cache = opt.cache_dir.empty() ? default_cache_dir() : opt.cache_dir;
  const std::string org = spec.repo.substr(0, spec.repo.find('/'));
  const fs::path repo_dir = cache / ("models--" + org + "--" + spec.repo.substr(org.size() + 1));

  RepoInfo info;
  const bool offline = env("HF_HUB_OFFLINE") == "1" || env("HF_HUB_OFFLINE") == "true";
  if (offline) {
    const std::string commit = cached_commit(repo_dir, spec.revision);
    if (commit.empty()) fail("{}@{}: not in the cache {} and HF_HUB_OFFLINE is set", spec.repo, spec.revision, cache.string());
    return offline_result(spec, repo_dir, commit);
  }
  try {
    info = fetch_repo_info(spec, endpoint, token);
  } catch (const Unreachable& e) {
    const std::string commit = cached_commit(repo_dir, spec.revision);
    if (commit.empty()) throw;
    if (opt.log) std::fprintf(opt.log, "tailor: %s; using the cached snapshot %s\n", e.what(), commit.c_str());
    return offline_result(spec, repo_dir, commit);
  }
  bool any_weights = false;
  for (const auto& f : info.files) any_weights |= f.name.ends_with(".safetensors");
  if (!any_weights) fail("{}@{}: no .safetensors weights in the repository", spec.repo, spec.revision);

  const fs::path blobs = repo_dir / "blobs";
  const fs::path snapshot = repo_dir / "snapshots" / info.commit;
  fs::create_directories(blobs);
  fs::create_directories(snapshot);

  PullResult r;
  r.repo = spec.repo;
  r.revision = spec.revision;
  r.commit = info.commit;
  r.snapshot = snapshot.string();

  Shared sh;
  sh.spec = &spec;
  sh.endpoint = endpoint;
  sh.token = token;
  sh.commit = info.commit;
  sh.max_attempts = std::max(1, opt.max_attempts);
  sh.locks = cache / ".locks" / repo_dir.filename();

  // Present already (in the snapshot, or as a blob another revision shares): link only.
  std::vector<size_t> todo;
  int64_t total = 0;
  for (size_t i = 0; i < info.files.size(); ++i) {
    const RemoteFile& f = info.files[i];
    std::error_code ec;
    const bool in_snapshot = fs::exists(snapshot / f.name, ec);
    const bool have_blob = file_size_or_zero(blobs / f.hash) == f.size && fs::exists(blobs / f.hash, ec);
    r.files.push_back({f.name, f.size, false});
    if (in_snapshot) continue;
    if (have_blob) {
      link_snapshot(snapshot, f);
      continue;
    }
    todo.push_back(i);
    total += f.size;
    sh.done += std::min(file_size_or_zero(blobs.string() + "/" + f.hash + ".incomplete"), f.size);
  }

  // Largest first, so the long transfers overlap the short ones.
  std::sort(todo.begin(), todo.end(), [&](size_t a, size_t b) { return info.files[a].size > info.files[b].size; });
  std::atomic<size_t> next{0};
  std::exception_ptr first_error;
  std::mutex error_mu;
  auto worker = [&] {
    for (;;) {
      const size_t k = next++;
      if (k >= todo.size() || sh.stop) return;
      const RemoteFile& f = info.files[todo[k]];
      try {
        fetch_blob(sh, f, blobs / f.hash);
        link_snapshot(snapshot, f);
        r.files[todo[k]].downloaded = true;
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!first_error && !sh.stop) first_error = std::current_exception();
        sh.stop = true;
        return;
      }
    }
  };
  if (!todo.empty()) {
    Progress bar("pull " + spec.repo, "MiB", opt.quiet || !opt.log ? Progress::Mode::Quiet : Progress::Mode::Auto,
                 opt.log ? opt.log : stderr);
    std::vector<std::thread> threads;
    const size_t n = std::min<size_t>(std::max(1, opt.parallel), todo.size());
    for (size_t i = 0; i < n; ++i) threads.emplace_back(worker);
    const int64_t mib = 1 << 20;
    std::atomic<bool> finished{false};
    std::thread ticker([&] {
      while (!finished) {
        bar.update(sh.done / mib, (total + mib - 1) / mib);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
    for (auto& t : threads) t.join();
    finished = true;
    ticker.join();
    if (!first_error) {
      bar.update((total + mib - 1) / mib, (total + mib - 1) / mib);
      bar.finish();
    }
  }
  if (first_error) std::rethrow_exception(first_error);
  write_ref(repo_dir, spec.revision, info.commit);
  r.bytes_downloaded = sh.downloaded;
  return r;
}

std::string resolve_model_path(const std::string& arg) {
  std::error_code ec;
  if (arg.empty() || fs::exists(arg, ec) || !looks_like_repo_spec(arg)) return arg;
  return pull(parse_repo_spec(arg)).snapshot;
}

}  // namespace tailor::hub
