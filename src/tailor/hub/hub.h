// Hugging Face Hub downloads into huggingface_hub's own cache layout, so a
// model fetched here is found by Python tools and one they fetched is reused:
//   <cache>/models--ORG--NAME/blobs/<sha256 or git blob sha1>
//   <cache>/models--ORG--NAME/refs/<revision>          (the commit hash)
//   <cache>/models--ORG--NAME/snapshots/<commit>/<file> -> ../../blobs/<hash>
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tailor::hub {

struct RepoSpec {
  std::string repo;                // "ORG/NAME"
  std::string revision = "main";   // branch, tag or commit
  std::string name() const { return repo.substr(repo.find('/') + 1); }  // "NAME"
};

// "ORG/NAME[@REVISION]"; fails on anything else (empty parts, "..", odd characters).
RepoSpec parse_repo_spec(const std::string& spec);
// True when `arg` has the shape of a repo id (the caller checks it is not a local path).
bool looks_like_repo_spec(const std::string& arg);

// One file of a revision as the model-info API lists it. `hash` names the blob:
// the LFS sha256 for LFS files, else the git blob sha1.
struct RemoteFile {
  std::string name;
  int64_t size = 0;
  std::string hash;
  bool lfs = false;
};

struct RepoInfo {
  std::string commit;  // 40 hex digits
  std::vector<RemoteFile> files;
};

// Parses GET /api/models/{repo}/revision/{rev}?blobs=true. Bad or hostile
// content (missing fields, "../" names, non-hex hashes) fails naming `what`.
RepoInfo parse_repo_info(const std::string& body, const std::string& what);
// The files a Tailor model needs (config, weights, tokenizer).
bool is_needed_file(const std::string& name);

// Settings from the environment as huggingface_hub reads them.
std::string default_cache_dir();  // $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub
std::string default_endpoint();   // $HF_ENDPOINT, else https://huggingface.co
std::string default_token();      // $HF_TOKEN, else the token file ($HF_TOKEN_PATH, $HF_HOME/token)

struct PullOptions {
  std::string endpoint;   // empty: default_endpoint()
  std::string token;      // empty: default_token()
  std::string cache_dir;  // empty: default_cache_dir()
  int parallel = 4;       // files fetched at once
  int max_attempts = 5;   // per file, for dropped connections (each resumes)
  bool quiet = false;     // no progress line
  std::FILE* log = stderr;
};

struct PulledFile {
  std::string name;
  int64_t size = 0;
  bool downloaded = false;  // false: already in the cache
};

struct PullResult {
  std::string repo, revision, commit;
  std::string snapshot;  // the folder every model-taking command accepts
  std::vector<PulledFile> files;
  int64_t bytes_downloaded = 0;
  bool offline = false;  // the Hub was unreachable and the cached snapshot was used
  nlohmann::json to_json() const;
};

PullResult pull(const RepoSpec& spec, const PullOptions& opt = {});

// A model argument as the commands take it: an existing path is returned as
// is; "ORG/NAME[@REV]" is pulled into the cache (nothing is fetched when it is
// there already) and its snapshot folder returned; anything else unchanged.
std::string resolve_model_path(const std::string& arg);

// Lower-case hex digests, for blob names and verification.
std::string sha256_hex(const void* data, size_t n);
std::string sha256_file_hex(const std::string& path);
std::string git_blob_sha1_file_hex(const std::string& path);  // sha1("blob <size>\0" + content)

}  // namespace tailor::hub
