// Safetensors checkpoints: one file, or shards listed by
// model.safetensors.index.json. Files are memory-mapped; tensors are zero-copy
// views into the maps. Every header length, offset and shape is bounds-checked.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tailor/util/mapped_file.h"

namespace tailor {

enum class StDtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2, U16, U32, U64, Other };

// Other: a dtype the format defines that Tailor has no use for (F8_E8M0, C64,
// F4, F6_*); such tensors are listed and readable as raw bytes.
// Bytes per element (0 for Other).
size_t st_dtype_size(StDtype d);

// Headers larger than this are refused (the reference implementation's limit).
inline constexpr uint64_t kStMaxHeaderBytes = 100ull << 20;

struct StTensor {
  std::string name;
  std::string dtype_name;        // as written in the header, e.g. "BF16"
  StDtype dtype = StDtype::Other;
  std::vector<int64_t> shape;    // row-major, outermost first (PyTorch order)
  const uint8_t* data = nullptr; // view into the mapped file
  size_t nbytes = 0;
  std::string file;              // the shard it lives in

  int64_t numel() const;
};

class Safetensors {
 public:
  // `path` is a .safetensors file, a model.safetensors.index.json, or a folder
  // holding either. Throws Error("<file>: <problem>") on any malformed input.
  static Safetensors open(const std::string& path);
  // Parses one safetensors file image already in memory (the fuzzers use
  // this); tensor views point into `data`, which must outlive the result.
  static Safetensors parse(std::string_view name, const uint8_t* data, size_t size);

  const std::vector<StTensor>& tensors() const { return tensors_; }
  const StTensor* find(const std::string& name) const;
  // __metadata__ of the (first) file's header.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Converts a F32/F16/BF16 tensor to f32 (out has numel() floats); throws for other dtypes.
  static void to_f32(const StTensor& t, float* out);

 private:
  void add_file(std::string_view name, const uint8_t* data, size_t size, bool first);
  std::vector<std::shared_ptr<MappedFile>> files_;
  std::vector<StTensor> tensors_;  // in file order, shards in index order
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

// Writes a single-file safetensors checkpoint atomically (used by tests and tools).
struct StWriteTensor {
  std::string name;
  std::string dtype_name;
  std::vector<int64_t> shape;
  const void* data;
  size_t nbytes;
};
void write_safetensors(const std::string& path, const std::vector<StWriteTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace tailor
