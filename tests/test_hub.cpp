// tailor pull against a mock Hugging Face Hub on 127.0.0.1, serving the
// llama-30m fixture with the real model-info API's JSON shapes: layout,
// reuse, resume after a dropped connection or a kill, hash checks, gated and
// missing repos, and hostile or malformed file lists.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>

#include "cli_runner.h"
#include "tailor/hub/hub.h"
#include "tailor/util/error.h"

namespace fs = std::filesystem;
using namespace tailor;
using tailor::test::slurp;

namespace {

const std::string kFixture = std::string(TAILOR_SHARED_DIR) + "/models/llama-30m";
const std::string kCommit = "3f1c0de2a4b5c6d7e8f90123456789abcdef0123";
const std::vector<std::string> kNeeded = {
    "config.json", "generation_config.json", "model-00001-of-00005.safetensors",
    "model-00002-of-00005.safetensors", "model-00003-of-00005.safetensors", "model-00004-of-00005.safetensors",
    "model-00005-of-00005.safetensors", "model.safetensors.index.json", "tokenizer.model", "tokenizer_config.json"};

bool is_lfs(const std::string& name) { return name.ends_with(".safetensors") || name == "tokenizer.model"; }

struct Blob {
  std::shared_ptr<const std::string> data;
  std::string hash;
};

// The fixture's files, read once: (name -> content, blob hash).
const std::map<std::string, Blob>& fixture_files() {
  static const std::map<std::string, Blob> files = [] {
    std::map<std::string, Blob> m;
    for (const std::string& name : kNeeded) {
      const std::string path = kFixture + "/" + name;
      auto data = std::make_shared<const std::string>(slurp(path));
      m[name] = {data, is_lfs(name) ? hub::sha256_hex(data->data(), data->size()) : hub::git_blob_sha1_file_hex(path)};
    }
    return m;
  }();
  return files;
}

int64_t needed_bytes() {
  int64_t n = 0;
  for (const auto& [name, b] : fixture_files()) n += int64_t(b.data->size());
  return n;
}

class MockHub {
 public:
  // Faults, set before a pull.
  std::string gated_repo;                 // answers 401 whatever the token
  std::string gated_files_repo;           // lists its files (as the Hub does) but answers 403 to downloads
  std::string drop_file;                  // closes the connection after drop_after bytes ...
  int64_t drop_after = 0;
  std::atomic<int> drop_times{0};         // ... this many times
  std::string corrupt_file;               // serves a changed byte ...
  std::atomic<int> corrupt_times{0};      // ... this many times
  std::atomic<int> slow_us{0};            // sleep per 64 KiB chunk
  std::string info_override;              // the file-list body instead of the real one
  std::vector<std::string> extra_names;   // more siblings (hostile names)
  std::map<std::string, Blob> extra_files;  // more files, listed and served

  std::atomic<int64_t> served{0};
  std::mutex mu;
  std::map<std::string, int64_t> served_per_file;
  std::vector<std::string> ranges;        // "file range" of every ranged request
  std::vector<std::string> auth_headers;

  MockHub() {
    srv_.Get(R"(/api/models/([^/]+)/([^/]+)/revision/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      api(req, res);
    });
    srv_.Get(R"(/([^/]+)/([^/]+)/resolve/([0-9a-f]{40})/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      resolve(req, res);
    });
    port_ = srv_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { srv_.listen_after_bind(); });
    while (!srv_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~MockHub() {
    srv_.stop();
    thread_.join();
  }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int64_t served_of(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = served_per_file.find(name);
    return it == served_per_file.end() ? 0 : it->second;
  }
  void reset_counts() {
    std::lock_guard<std::mutex> lock(mu);
    served = 0;
    served_per_file.clear();
    ranges.clear();
  }

 private:
  httplib::Server srv_;
  std::thread thread_;
  int port_ = 0;

  void api(const httplib::Request& req, httplib::Response& res) {
    const std::string repo = req.matches[1].str() + "/" + req.matches[2].str();
    {
      std::lock_guard<std::mutex> lock(mu);
      auth_headers.push_back(req.get_header_value("Authorization"));
    }
    if (repo == gated_repo) {
      res.status = 401;
      res.set_content(R"({"error":"Access to model )" + repo + R"( is restricted."})", "application/json");
      return;
    }
    if (repo == "org/absent") {  // what huggingface.co answers for a repo that is not there
      res.status = 401;
      res.set_header("X-Error-Code", "RepoNotFound");
      res.set_content(R"({"error":"Repository not found"})", "application/json");
      return;
    }
    const std::string rev = req.matches[3].str();
    if (rev != "main" && rev != kCommit) {
      res.status = 404;
      res.set_header("X-Error-Code", "RevisionNotFound");
      res.set_content(R"({"error":"Invalid rev id: )" + rev + R"("})", "application/json");
      return;
    }
    if (!info_override.empty()) {
      res.set_content(info_override, "application/json");
      return;
    }
    nlohmann::json j{{"_id", "65a0c0ffee"}, {"id", repo}, {"modelId", repo}, {"sha", kCommit},
                     {"private", false}, {"gated", false}, {"tags", {"safetensors", "llama"}}};
    auto& sib = j["siblings"] = nlohmann::json::array();
    sib.push_back({{"rfilename", ".gitattributes"}, {"blobId", "a6344aac8c09253b3b630fb776ae94478aa0275b"}, {"size", 1519}});
    sib.push_back({{"rfilename", "README.md"}, {"blobId", "7be5fc7f47d5db027d120b8024982df93db95b74"}, {"size", 31}});
    sib.push_back({{"rfilename", "reference.json"}, {"blobId", "0123456789abcdef0123456789abcdef01234567"}, {"size", 669035}});
    std::map<std::string, Blob> files = fixture_files();
    files.insert(extra_files.begin(), extra_files.end());
    for (const auto& [name, b] : files) {
      nlohmann::json s{{"rfilename", name}, {"size", b.data->size()}};
      if (is_lfs(name)) {
        s["blobId"] = "1111111111111111111111111111111111111111";  // the pointer file's git sha
        s["lfs"] = {{"sha256", b.hash}, {"size", b.data->size()}, {"pointerSize", 134}};
      } else {
        s["blobId"] = b.hash;
      }
      sib.push_back(s);
    }
    for (const auto& n : extra_names)
      sib.push_back({{"rfilename", n}, {"blobId", "2222222222222222222222222222222222222222"}, {"size", 4}});
    res.set_content(j.dump(), "application/json");
  }

  void resolve(const httplib::Request& req, httplib::Response& res) {
    const std::string name = req.matches[4].str();
    if (req.matches[1].str() + "/" + req.matches[2].str() == gated_files_repo) {
      res.status = 403;
      res.set_content("Access to this resource is restricted", "text/plain");
      return;
    }
    auto it = fixture_files().find(name);
    if (it == fixture_files().end()) it = extra_files.find(name);
    if (it == extra_files.end() || req.matches[3].str() != kCommit) {
      res.status = 404;
      res.set_content("Entry not found", "text/plain");
      return;
    }
    std::shared_ptr<const std::string> data = it->second.data;
    if (name == corrupt_file && corrupt_times > 0) {
      --corrupt_times;
      auto bad = std::make_shared<std::string>(*data);
      (*bad)[bad->size() / 2] ^= 0x5a;
      data = bad;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      if (req.has_header("Range")) ranges.push_back(name + " " + req.get_header_value("Range"));
    }
    const bool drop = name == drop_file && drop_times > 0;
    if (drop) --drop_times;
    res.set_content_provider(data->size(), "application/octet-stream",
                             [this, data, name, drop](size_t offset, size_t length, httplib::DataSink& sink) {
                               size_t n = std::min<size_t>(length, 64 * 1024);
                               if (drop) {
                                 if (int64_t(offset) >= drop_after) return false;  // the connection drops
                                 n = std::min<size_t>(n, size_t(drop_after) - offset);
                               }
                               if (slow_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(slow_us.load()));
                               if (!sink.write(data->data() + offset, n)) return false;
                               served += int64_t(n);
                               std::lock_guard<std::mutex> lock(mu);
                               served_per_file[name] += int64_t(n);
                               return true;
                             });
  }
};

class HubTest : public ::testing::Test {
 protected:
  MockHub hub_;
  std::string cache_;

  void SetUp() override {
    ::unsetenv("HF_TOKEN");
    ::unsetenv("HF_HUB_OFFLINE");
    ::setenv("HF_TOKEN_PATH", "/nonexistent/token", 1);
    cache_ = tailor::test::temp_dir() + "/cache_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(cache_);
  }

  hub::PullOptions options() const {
    hub::PullOptions o;
    o.endpoint = hub_.endpoint();
    o.cache_dir = cache_;
    o.quiet = true;
    return o;
  }

  std::string repo_dir() const { return cache_ + "/models--org--llama-30m"; }

  void expect_snapshot_complete(const std::string& snapshot) {
    EXPECT_EQ(snapshot, repo_dir() + "/snapshots/" + kCommit);
    for (const auto& [name, b] : fixture_files()) {
      const fs::path p = fs::path(snapshot) / name;
      ASSERT_TRUE(fs::is_symlink(p)) << name;
      EXPECT_EQ(fs::read_symlink(p).string(), "../../blobs/" + b.hash) << name;
      EXPECT_TRUE(slurp(p.string()) == *b.data) << name << " differs from the fixture";
    }
  }
};

TEST_F(HubTest, PullWritesHuggingFaceCacheLayoutAndSecondPullFetchesNothing) {
  const hub::PullResult r = hub::pull(hub::parse_repo_spec("org/llama-30m"), options());
  EXPECT_EQ(r.commit, kCommit);
  expect_snapshot_complete(r.snapshot);
  EXPECT_EQ(slurp(repo_dir() + "/refs/main"), kCommit);
  // Only the needed files: not README.md, .gitattributes or reference.json.
  EXPECT_EQ(r.files.size(), kNeeded.size());
  EXPECT_FALSE(fs::exists(r.snapshot + "/reference.json"));
  EXPECT_FALSE(fs::exists(r.snapshot + "/README.md"));
  EXPECT_EQ(r.bytes_downloaded, needed_bytes());
  EXPECT_EQ(hub_.served.load(), needed_bytes());
  for (const auto& e : fs::directory_iterator(repo_dir() + "/blobs"))
    EXPECT_FALSE(e.path().string().ends_with(".incomplete")) << e.path();

  hub_.reset_counts();
  const hub::PullResult again = hub::pull(hub::parse_repo_spec("org/llama-30m@main"), options());
  EXPECT_EQ(again.snapshot, r.snapshot);
  EXPECT_EQ(again.bytes_downloaded, 0);
  EXPECT_EQ(hub_.served.load(), 0);
  for (const auto& f : again.files) EXPECT_FALSE(f.downloaded) << f.name;

  // A blob another tool left without its snapshot link is linked, not fetched.
  const std::string cfg = r.snapshot + "/config.json";
  fs::remove(cfg);
  hub_.reset_counts();
  hub::pull(hub::parse_repo_spec("org/llama-30m"), options());
  EXPECT_EQ(hub_.served.load(), 0);
  EXPECT_TRUE(slurp(cfg) == *fixture_files().at("config.json").data);

  // The CLI: the snapshot folder on stdout, or the whole result as JSON.
  const std::string args = " --endpoint " + hub_.endpoint() + " --cache " + cache_;
  const auto plain = tailor::test::run_cli("pull org/llama-30m" + args);
  EXPECT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(plain.out, r.snapshot + "\n");
  const auto js = tailor::test::run_cli("pull org/llama-30m@" + kCommit + " --json" + args);
  ASSERT_EQ(js.exit_code, 0) << js.err;
  const nlohmann::json j = nlohmann::json::parse(js.out);
  EXPECT_EQ(j["snapshot"], r.snapshot);
  EXPECT_EQ(j["commit"], kCommit);
  EXPECT_EQ(j["bytes_downloaded"], 0);
  EXPECT_EQ(j["files"].size(), kNeeded.size());
  EXPECT_EQ(hub_.served.load(), 0);
}

TEST_F(HubTest, EmptyFileAndSubfolderWeights) {
  // An empty needed file has nothing to fetch but is still verified and linked;
  // weights in a subfolder (another format's copy) are not needed.
  const std::string empty_path = tailor::test::temp_dir() + "/empty";
  { std::ofstream(empty_path, std::ios::binary); }
  hub_.extra_files["special_tokens_map.json"] = {std::make_shared<const std::string>(),
                                                 hub::git_blob_sha1_file_hex(empty_path)};
  hub_.extra_files["original/model.safetensors"] = fixture_files().at("model-00005-of-00005.safetensors");
  const hub::PullResult r = hub::pull(hub::parse_repo_spec("org/llama-30m"), options());
  expect_snapshot_complete(r.snapshot);
  EXPECT_EQ(hub_.extra_files["special_tokens_map.json"].hash, "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
  EXPECT_TRUE(fs::is_symlink(r.snapshot + "/special_tokens_map.json"));
  EXPECT_EQ(fs::file_size(r.snapshot + "/special_tokens_map.json"), 0u);
  EXPECT_FALSE(fs::exists(r.snapshot + "/original"));
  EXPECT_EQ(hub_.served.load(), needed_bytes());
}

TEST_F(HubTest, DroppedConnectionResumesWithRange) {
  const std::string file = "model-00002-of-00005.safetensors";
  hub_.drop_file = file;
  hub_.drop_after = 5 << 20;
  hub_.drop_times = 1;
  const hub::PullResult r = hub::pull(hub::parse_repo_spec("org/llama-30m"), options());
  expect_snapshot_complete(r.snapshot);
  ASSERT_EQ(hub_.ranges.size(), 1u);
  EXPECT_EQ(hub_.ranges[0], file + " bytes=" + std::to_string(5 << 20) + "-");
  // Resumed, not fetched again from the start.
  EXPECT_EQ(hub_.served_of(file), int64_t(fixture_files().at(file).data->size()));
  EXPECT_EQ(hub_.served.load(), needed_bytes());
}

TEST_F(HubTest, WrongHashIsFetchedAgainThenRefused) {
  const std::string file = "model-00003-of-00005.safetensors";
  const int64_t size = int64_t(fixture_files().at(file).data->size());
  hub_.corrupt_file = file;
  hub_.corrupt_times = 1;
  const hub::PullResult r = hub::pull(hub::parse_repo_spec("org/llama-30m"), options());
  expect_snapshot_complete(r.snapshot);
  EXPECT_EQ(hub_.served_of(file), 2 * size);

  // A small (git sha1) file that stays wrong: an error, and no blob under its name.
  const std::string cache2 = cache_ + "_2";
  hub::PullOptions o = options();
  o.cache_dir = cache2;
  hub_.corrupt_file = "config.json";
  hub_.corrupt_times = 100;
  try {
    hub::pull(hub::parse_repo_spec("org/llama-30m"), o);
    FAIL() << "a corrupt file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("mismatch"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(cache2 + "/models--org--llama-30m/blobs/" + fixture_files().at("config.json").hash));
  EXPECT_FALSE(fs::exists(cache2 + "/models--org--llama-30m/snapshots/" + kCommit + "/config.json"));
}

TEST_F(HubTest, GatedRepoSaysAcceptLicenceAndNeverPrintsTheToken) {
  hub_.gated_repo = "org/gated";
  const std::string token = "hf_SeCrEt0123456789tokenvalue";
  const auto r = tailor::test::run_cli("pull org/gated --token " + token + " --endpoint " + hub_.endpoint() +
                                       " --cache " + cache_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("gated or private"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("accept the licence"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--token"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find(token), std::string::npos);
  EXPECT_EQ(r.out.find(token), std::string::npos);
  // The token was sent, as a bearer header.
  std::lock_guard<std::mutex> lock(hub_.mu);
  ASSERT_FALSE(hub_.auth_headers.empty());
  EXPECT_EQ(hub_.auth_headers.back(), "Bearer " + token);
}

TEST_F(HubTest, GatedFilesSayAcceptLicence) {
  // A gated repo's file list is public; its files answer 403 until the licence is accepted.
  hub_.gated_files_repo = "org/licensed";
  ::setenv("HF_TOKEN", "hf_EnvTokenNeverShown", 1);
  const auto r = tailor::test::run_cli("pull org/licensed --endpoint " + hub_.endpoint() + " --cache " + cache_);
  ::unsetenv("HF_TOKEN");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("org/licensed: gated or private: accept the licence"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("hf_EnvTokenNeverShown"), std::string::npos);
  EXPECT_EQ(r.out.find("hf_EnvTokenNeverShown"), std::string::npos);
  EXPECT_EQ(hub_.served.load(), 0);
  EXPECT_FALSE(fs::exists(cache_ + "/models--org--licensed/snapshots/" + kCommit + "/config.json"));
  std::lock_guard<std::mutex> lock(hub_.mu);
  ASSERT_FALSE(hub_.auth_headers.empty());
  EXPECT_EQ(hub_.auth_headers.back(), "Bearer hf_EnvTokenNeverShown");
}

TEST_F(HubTest, TokenComesFromEnvironmentThenTokenFile) {
  const std::string file = tailor::test::temp_dir() + "/hf_token";
  { std::ofstream(file) << "hf_fromfile\n"; }
  ::setenv("HF_TOKEN_PATH", file.c_str(), 1);
  EXPECT_EQ(hub::default_token(), "hf_fromfile");
  ::setenv("HF_TOKEN", "hf_fromenv", 1);
  EXPECT_EQ(hub::default_token(), "hf_fromenv");
  ::unsetenv("HF_TOKEN");
  ::setenv("HF_TOKEN_PATH", "/nonexistent/token", 1);
  EXPECT_EQ(hub::default_token(), "");
}

TEST_F(HubTest, MissingRevisionIs404Error) {
  try {
    hub::pull(hub::parse_repo_spec("org/llama-30m@no-such-branch"), options());
    FAIL() << "a missing revision was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-branch"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not found"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(repo_dir() + "/refs/no-such-branch"));
  try {
    hub::pull(hub::parse_repo_spec("org/absent"), options());
    FAIL() << "a missing repo was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("org/absent: repository not found"), std::string::npos) << e.what();
  }
}

TEST_F(HubTest, KilledPullResumesFetchingOnlyWhatIsMissing) {
  hub_.slow_us = 4000;  // ~16 MB/s per connection
  const std::string endpoint = hub_.endpoint(), cache = cache_;
  const char* cli = TAILOR_CLI_PATH;
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::dup2(null, 2);
    ::execl(cli, cli, "pull", "org/llama-30m", "--endpoint", endpoint.c_str(), "--cache", cache.c_str(), "--quiet",
            (char*)nullptr);
    ::_exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (hub_.served < needed_bytes() / 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the pull ended before it was killed";
  ASSERT_LT(hub_.served.load(), needed_bytes());

  // What the killed pull left on disk: finished blobs and .incomplete parts.
  int64_t on_disk = 0;
  int partial = 0;
  for (const auto& e : fs::directory_iterator(repo_dir() + "/blobs")) {
    on_disk += int64_t(e.file_size());
    partial += e.path().string().ends_with(".incomplete");
  }
  EXPECT_GT(on_disk, 0);
  EXPECT_GT(partial, 0);

  hub_.slow_us = 0;
  hub_.reset_counts();
  const hub::PullResult r = hub::pull(hub::parse_repo_spec("org/llama-30m"), options());
  expect_snapshot_complete(r.snapshot);
  // Only what is missing is fetched again. The killed pull may have died with
  // its last received chunk not yet written, so one chunk (64 KiB) of slack.
  const int64_t missing = needed_bytes() - on_disk, slack = 64 * 1024;
  EXPECT_GE(int64_t(hub_.served.load()), missing);
  EXPECT_LE(int64_t(hub_.served.load()), missing + slack);
  EXPECT_EQ(int64_t(r.bytes_downloaded), int64_t(hub_.served.load()));
  EXPECT_FALSE(hub_.ranges.empty());
}

TEST_F(HubTest, WaitsForAnotherDownloadersBlobLock) {
  // Another process (huggingface_hub, say) holds the lock of config.json's blob
  // and finishes it: the pull waits, then uses that blob without fetching it.
  const Blob& cfg = fixture_files().at("config.json");
  const std::string lock_path = cache_ + "/.locks/models--org--llama-30m/" + cfg.hash + ".lock";
  fs::create_directories(fs::path(lock_path).parent_path());
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  std::exception_ptr error;
  std::thread t([&] {
    try {
      hub::pull(hub::parse_repo_spec("org/llama-30m"), options());
    } catch (...) {
      error = std::current_exception();
    }
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (hub_.served < needed_bytes() - int64_t(cfg.data->size()) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(hub_.served_of("config.json"), 0);
  fs::create_directories(repo_dir() + "/blobs");
  { std::ofstream(repo_dir() + "/blobs/" + cfg.hash, std::ios::binary) << *cfg.data; }
  ::close(fd);
  t.join();
  ASSERT_FALSE(error);
  expect_snapshot_complete(repo_dir() + "/snapshots/" + kCommit);
  EXPECT_EQ(hub_.served_of("config.json"), 0);
  EXPECT_EQ(hub_.served.load(), needed_bytes() - int64_t(cfg.data->size()));
}

TEST_F(HubTest, HostileFileNamesAreRefused) {
  for (const std::string& name : std::vector<std::string>{"../evil.safetensors", "../../../../tmp/x", "/etc/passwd", "a/../../b.json",
                                 "sub/./config.json", "dir\\..\\x", std::string("nul\0x", 5)}) {
    hub_.extra_names = {name};
    hub_.reset_counts();
    EXPECT_THROW(hub::pull(hub::parse_repo_spec("org/llama-30m"), options()), Error) << name;
    EXPECT_EQ(hub_.served.load(), 0) << name;
  }
  EXPECT_FALSE(fs::exists(cache_ + "/models--org--llama-30m/evil.safetensors"));
  // Hostile repo ids and revisions never reach the cache path either.
  for (const std::string& spec : std::vector<std::string>{"../x", "org/..", "org/a/b", "org/name@../../etc", "org/name@", "/x", "org/"})
    EXPECT_THROW(hub::parse_repo_spec(spec), Error) << spec;
  EXPECT_EQ(hub::parse_repo_spec("org/name@refs/pr/1").revision, "refs/pr/1");
}

TEST_F(HubTest, MalformedFileListIsAnError) {
  const std::string sha = "\"sha\":\"" + kCommit + "\"";
  const std::vector<std::string> bodies = {
      "", "not json", "[]", "{}", "{\"sha\":\"abc\",\"siblings\":[]}", "{" + sha + "}",
      "{" + sha + ",\"siblings\":{}}", "{" + sha + ",\"siblings\":[1]}",
      "{" + sha + ",\"siblings\":[{\"rfilename\":7}]}",
      "{" + sha + ",\"siblings\":[{\"rfilename\":\"config.json\"}]}",
      "{" + sha + ",\"siblings\":[{\"rfilename\":\"config.json\",\"size\":-1,\"blobId\":\"" + kCommit + "\"}]}",
      "{" + sha + ",\"siblings\":[{\"rfilename\":\"config.json\",\"size\":3,\"blobId\":\"../../../x\"}]}",
      "{" + sha + ",\"siblings\":[{\"rfilename\":\"m.safetensors\",\"size\":3,\"lfs\":{\"sha256\":\"xyz\"}}]}",
      "{\"sha\":\"../../../../../../../../../../../../../tmp/x\",\"siblings\":[]}"};
  for (const auto& b : bodies) EXPECT_THROW(hub::parse_repo_info(b, "org/x"), Error) << b;
  // Through a pull, with nothing written.
  hub_.info_override = "{\"sha\": 12, \"siblings\": [";
  EXPECT_THROW(hub::pull(hub::parse_repo_spec("org/llama-30m"), options()), Error);
  EXPECT_FALSE(fs::exists(repo_dir() + "/snapshots"));
  // A list without weights is refused too.
  hub_.info_override = "{" + sha + ",\"siblings\":[]}";
  EXPECT_THROW(hub::pull(hub::parse_repo_spec("org/llama-30m"), options()), Error);
}

TEST_F(HubTest, ModelArgumentResolvesThroughTheCache) {
  ::setenv("HF_ENDPOINT", hub_.endpoint().c_str(), 1);
  ::setenv("HF_HUB_CACHE", cache_.c_str(), 1);
  // A local path is returned as it is; an unknown non-id too.
  EXPECT_EQ(hub::resolve_model_path(kFixture), kFixture);
  EXPECT_EQ(hub::resolve_model_path("no/such/file.gguf"), "no/such/file.gguf");
  const std::string snap = hub::resolve_model_path("org/llama-30m");
  expect_snapshot_complete(snap);
  // Offline: from refs/main, without asking the Hub.
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  hub_.reset_counts();
  EXPECT_EQ(hub::resolve_model_path("org/llama-30m"), snap);
  EXPECT_THROW(hub::resolve_model_path("org/other"), Error);
  ::unsetenv("HF_HUB_OFFLINE");
  // A command takes the id: inspect reads the pulled snapshot.
  const auto r = tailor::test::run_cli("inspect org/llama-30m --json");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"llama\""), std::string::npos);
  // convert takes it too, and names the GGUF after the repo, not the snapshot's commit.
  const std::string gguf = cache_ + "/out.gguf";
  const auto c = tailor::test::run_cli("convert org/llama-30m -o " + gguf + " --type F16");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  const auto i = tailor::test::run_cli("inspect " + gguf + " --json");
  EXPECT_NE(i.out.find("\"llama-30m\""), std::string::npos);
  EXPECT_EQ(i.out.find(kCommit), std::string::npos);
  EXPECT_EQ(hub_.served.load(), 0);
  ::unsetenv("HF_ENDPOINT");
  ::unsetenv("HF_HUB_CACHE");
}

}  // namespace
