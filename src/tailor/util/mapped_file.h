// A read-only memory map of a whole file. Inputs are mapped, never modified.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace tailor {

class MappedFile {
 public:
  MappedFile() = default;
  // Throws Error("<path>: <reason>") when the file cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Hands the whole pages inside [p, p + n) of a read-only file mapping back to
// the kernel (madvise DONTNEED): a loader that converts tensors to f32 would
// otherwise hold the file's pages and the copies at once. Reading them again
// faults them back in from the file, so this is only about memory.
void drop_mapped_pages(const void* p, size_t n);

}  // namespace tailor
