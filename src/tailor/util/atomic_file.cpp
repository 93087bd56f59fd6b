#include "tailor/util/atomic_file.h"

#include <cerrno>
#include <cstring>
#include <unistd.h>

#include "tailor/util/error.h"

namespace tailor {

AtomicFile::AtomicFile(std::string path)
    : path_(std::move(path)), tmp_(path_ + fmt::format(".tmp.{}", ::getpid())) {
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (f_ == nullptr) fail("{}: cannot create: {}", tmp_, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_ != nullptr) std::fclose(f_);
  if (!committed_) std::remove(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  if (n == 0) return;
  if (std::fwrite(data, 1, n, f_) != n) fail("{}: write failed: {}", tmp_, std::strerror(errno));
  pos_ += n;
}

void AtomicFile::write_zeros(size_t n) {
  static const char zeros[4096] = {};
  while (n > 0) {
    size_t k = n < sizeof zeros ? n : sizeof zeros;
    write(zeros, k);
    n -= k;
  }
}

void AtomicFile::commit() {
  if (std::fflush(f_) != 0 || ::fsync(::fileno(f_)) != 0)
    fail("{}: flush failed: {}", tmp_, std::strerror(errno));
  if (std::fclose(f_) != 0) {
    f_ = nullptr;
    fail("{}: close failed: {}", tmp_, std::strerror(errno));
  }
  f_ = nullptr;
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
    fail("{}: cannot rename into place: {}", path_, std::strerror(errno));
  committed_ = true;
}

}  // namespace tailor
