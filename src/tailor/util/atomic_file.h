// Writes an output file under a temporary name in the same folder and renames
// it into place only when commit() succeeds, so a crash or an error never
// leaves a half-written file under the final name.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace tailor {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // throws Error on failure
  ~AtomicFile();                          // removes the temporary if not committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write_zeros(size_t n);
  uint64_t position() const { return pos_; }
  void commit();  // flush, fsync, rename into place

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  uint64_t pos_ = 0;
  bool committed_ = false;
};

}  // namespace tailor
