// Model identity for the job store: a hash over what defines a model without
// reading its tensor data (which may be hundreds of GB): file names and sizes,
// config.json, and each weight file's header (safetensors JSON header, GGUF
// metadata and tensor infos).
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <xxhash.h>

#include "tailor/formats/gguf.h"
#include "tailor/jobs/job_store.h"
#include "tailor/util/error.h"

namespace tailor::jobs {
namespace {

namespace fs = std::filesystem;

// A safetensors header larger than this is not a real one (the format's own
// readers cap it at 100 MB).
constexpr uint64_t kMaxSafetensorsHeader = uint64_t{100} << 20;

std::string read_range(const fs::path& p, uint64_t offset, uint64_t n) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail("{}: cannot open for reading", p.string());
  std::string buf(size_t(n), '\0');
  f.seekg(std::streamoff(offset));
  f.read(buf.data(), std::streamsize(n));
  if (uint64_t(f.gcount()) != n) fail("{}: short read at offset {}", p.string(), offset);
  return buf;
}

// The bytes of `p` that describe its tensors, or "" for files we do not hash.
std::string header_bytes(const fs::path& p, uint64_t size) {
  const std::string ext = p.extension().string();
  if (p.filename() == "config.json") return read_range(p, 0, size);
  if (ext == ".safetensors") {
    if (size < 8) fail("{}: too small for a safetensors file", p.string());
    const std::string len_bytes = read_range(p, 0, 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(len_bytes[size_t(i)]);
    if (n > kMaxSafetensorsHeader || n > size - 8)
      fail("{}: safetensors header length {} is out of range", p.string(), n);
    return len_bytes + read_range(p, 8, n);
  }
  if (ext == ".gguf") {
    const GgufFile g = GgufFile::open(p.string());
    return read_range(p, 0, std::min<uint64_t>(g.data_offset(), size));
  }
  return {};
}

bool hashed_file(const fs::path& p) {
  const std::string ext = p.extension().string();
  return p.filename() == "config.json" || ext == ".safetensors" || ext == ".gguf";
}

}  // namespace

std::string model_content_hash(const std::string& path) {
  std::error_code ec;
  std::vector<fs::path> files;
  if (fs::is_directory(path, ec)) {
    for (const auto& e : fs::directory_iterator(path, ec))
      if (e.is_regular_file() && hashed_file(e.path())) files.push_back(e.path());
    if (ec) fail("{}: cannot list folder: {}", path, ec.message());
    if (files.empty()) fail("{}: no config.json, .safetensors or .gguf files to identify the model", path);
  } else if (fs::is_regular_file(path, ec)) {
    files.push_back(path);
  } else {
    fail("{}: no such model file or folder", path);
  }
  std::sort(files.begin(), files.end());
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  try {
    for (const fs::path& f : files) {
      const uint64_t size = fs::file_size(f);
      const std::string name = f.filename().string();
      const std::string head = header_bytes(f, size);
      // Length-prefix each piece so different splits cannot hash alike.
      const uint64_t lens[3] = {name.size(), size, head.size()};
      XXH3_64bits_update(st, lens, sizeof lens);
      XXH3_64bits_update(st, name.data(), name.size());
      XXH3_64bits_update(st, head.data(), head.size());
    }
  } catch (...) {
    XXH3_freeState(st);
    throw;
  }
  const uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  return fmt::format("xxh3:{:016x}", h);
}

void check_model_unchanged(const JobInfo& job, const std::string& path) {
  if (job.model.hash.empty()) return;  // a job made without a hash has nothing to check
  const std::string now = model_content_hash(path);
  if (now != job.model.hash)
    fail("{}: the model changed on disk since job {} was made (content hash {}, the job has {})", path, job.id,
         now, job.model.hash);
}

std::pair<JobInfo, std::string> job_to_resume(JobStore& store, int64_t id, const std::string& kind,
                                               const std::string& model_path) {
  JobInfo info = store.job(id);
  if (info.kind != kind) fail("job {} is a {} job, not a {} job", id, info.kind, kind);
  std::string path = model_path.empty() ? info.model.path : model_path;
  check_model_unchanged(info, path);
  return {std::move(info), std::move(path)};
}

ModelRef local_model_ref(const std::string& path) {
  ModelRef m;
  m.path = std::filesystem::absolute(path).lexically_normal().string();
  m.hash = model_content_hash(path);
  return m;
}

}  // namespace tailor::jobs
