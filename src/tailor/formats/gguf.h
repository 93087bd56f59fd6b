// GGUF v3 (also reads v2): metadata key/values of every type including nested
// arrays, tensor infos, alignment and data offsets. Reading maps the file and
// checks every count, length and offset against the file size before use.
// Writing streams tensor data one tensor at a time into a temporary file that
// is renamed into place when complete.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tailor/quant/types.h"
#include "tailor/util/atomic_file.h"
#include "tailor/util/mapped_file.h"

namespace tailor {

enum class GgufType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
  BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_type_name(GgufType t);

// Limits that keep a hostile file from exhausting the stack or memory.
inline constexpr int kGgufMaxArrayDepth = 16;  // arrays nested in arrays
// Array elements in all metadata: 8x the largest real tokenizers (~1M tokens,
// scores, types and merges), and a bound on memory (~100 bytes per element).
inline constexpr uint64_t kGgufMaxValues = uint64_t{1} << 23;
// llama.cpp refuses longer tensor names (GGML_MAX_NAME is 64 with the NUL); the
// reader accepts them, the writer does not.
inline constexpr size_t kGgufMaxNameBytes = 63;
inline constexpr uint32_t kGgufMaxDims = 4;  // ggml's GGML_MAX_DIMS

// One metadata value. Scalars keep their exact GGUF type so a file round-trips.
struct GgufValue {
  GgufType type = GgufType::UINT32;
  uint64_t u = 0;        // UINT8/16/32/64 and BOOL; FLOAT32/64: raw bits as read
  int64_t i = 0;         // INT8/16/32/64
  double f = 0;          // FLOAT32/64 (the writer uses the raw bits in u while they
                         // still encode f, so NaN payloads round-trip exactly)
  std::string s;         // STRING
  GgufType elem = GgufType::UINT8;  // ARRAY: element type
  std::vector<GgufValue> arr;       // ARRAY: elements (may themselves be arrays)

  static GgufValue u8(uint8_t v);
  static GgufValue i8(int8_t v);
  static GgufValue u16(uint16_t v);
  static GgufValue i16(int16_t v);
  static GgufValue i64(int64_t v);
  static GgufValue f64(double v);
  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue u64(uint64_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue str(std::string v);
  static GgufValue array(GgufType elem, std::vector<GgufValue> items);
  static GgufValue strings(const std::vector<std::string>& items);
  static GgufValue floats(const std::vector<float>& items);
  static GgufValue i32s(const std::vector<int32_t>& items);

  // Numeric accessors convert between integer/float kinds; throw Error on a type mismatch.
  int64_t as_int() const;
  double as_float() const;
  bool as_bool() const;
  const std::string& as_string() const;
  bool is_integer() const;
  bool is_float() const;
  // A short human-readable rendering; arrays longer than max_items are abbreviated.
  std::string to_string(size_t max_items = 8) const;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;   // ggml order: ne[0] is the row length (innermost)
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;       // relative to the start of the data section
  size_t nbytes = 0;
  const uint8_t* data = nullptr;  // reader only: view into the mapped file

  int64_t numel() const;
  int64_t rows() const { return ne.empty() || ne[0] == 0 ? 0 : numel() / ne[0]; }
};

class GgufFile {
 public:
  // Throws Error("<path>: <problem>") for any malformed or hostile file.
  static GgufFile open(const std::string& path);
  // Parses a file image already in memory (the fuzzers use this); tensor data
  // views point into `data`, which must outlive the result. `name` is used in errors.
  static GgufFile parse(std::string_view name, const uint8_t* data, size_t size);

  uint32_t version() const { return version_; }
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(const std::string& key) const;
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute file offset of data section
  const std::string& path() const { return name_; }
  uint64_t file_size() const { return size_; }

 private:
  std::shared_ptr<MappedFile> file_;  // null when parsed from a caller's buffer
  std::string name_;
  size_t size_ = 0;
  uint32_t version_ = 3;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
  uint32_t alignment_ = 32;
  uint64_t data_offset_ = 0;
};

// Usage: set metadata, add every tensor's info, then write each tensor's data
// in the order added, then finish(). The header is written by the first
// write_tensor_data() (or finish()), so memory holds one tensor at a time.
// With explicit offsets, data is written in file order (ascending offset,
// ties in add order): next_tensor() says which tensor comes next.
class GgufWriter {
 public:
  explicit GgufWriter(std::string path, uint32_t version = 3);
  ~GgufWriter();

  // Sets (or replaces, keeping its position) a key. general.alignment sets the alignment.
  void set(const std::string& key, GgufValue value);
  void remove(const std::string& key);
  // Offsets are assigned in order, each aligned; pass `offset` to keep a
  // source file's layout exactly (must be aligned and not overlap).
  void add_tensor(const std::string& name, const std::vector<int64_t>& ne, GgmlType type,
                  std::optional<uint64_t> offset = std::nullopt);
  // Data for the next tensor in add order; nbytes must equal its size.
  void write_tensor_data(const void* data, size_t nbytes);
  // The tensor whose data write_tensor_data() expects next (Error when all are written).
  const GgufTensorInfo& next_tensor() const;
  // Writes any remaining header, pads the data section to the alignment, syncs
  // and renames into place. A file without tensors has no data section and
  // no padding (as vocab-only files are written), so those copy exactly too.
  void finish();

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

 private:
  void write_header();
  void assign_offsets();
  std::string path_;
  uint32_t version_;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
  std::vector<bool> fixed_offset_;   // offset given by the caller, not assigned
  std::vector<size_t> data_order_;   // tensor indices by ascending offset
  uint32_t alignment_ = 32;
  std::unique_ptr<AtomicFile> out_;
  bool header_written_ = false;
  size_t next_tensor_ = 0;
  uint64_t data_start_ = 0;
};

// Copies a GGUF file through GgufWriter (metadata, tensor infos and offsets, data).
// Used to prove byte-for-byte round-tripping: the copy is identical whenever the
// source's padding is zeros and its data section ends padded to the alignment
// (as ggml and gguf-py write it).
void copy_gguf(const GgufFile& in, const std::string& out_path);

}  // namespace tailor
