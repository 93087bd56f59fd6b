#include "tailor/formats/gguf.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "tailor/formats/text.h"
#include "tailor/util/error.h"

namespace tailor {

static_assert(std::endian::native == std::endian::little,
              "GGUF is read and written as little-endian by plain copies");

namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint32_t kDefaultAlignment = 32;
constexpr const char* kAlignmentKey = "general.alignment";
constexpr uint32_t kLastType = static_cast<uint32_t>(GgufType::FLOAT64);

bool valid_type(uint32_t t) { return t <= kLastType; }

// Fewest bytes one value of type t can occupy in a file, so that a count read
// from the file can be checked against the bytes left before anything is allocated.
uint64_t min_encoded_size(GgufType t) {
  switch (t) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL: return 1;
    case GgufType::UINT16: case GgufType::INT16: return 2;
    case GgufType::UINT32: case GgufType::INT32: case GgufType::FLOAT32: return 4;
    case GgufType::UINT64: case GgufType::INT64: case GgufType::FLOAT64: return 8;
    case GgufType::STRING: return 8;                 // length only
    case GgufType::ARRAY: return 4 + 8;              // element type and count
  }
  return 1;
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }
bool is_pow2(uint64_t a) { return a != 0 && (a & (a - 1)) == 0; }

// Element count of a shape; nullopt when a dimension is negative or the product overflows int64.
std::optional<int64_t> checked_numel(const std::vector<int64_t>& ne) {
  int64_t n = 1;
  bool zero = false;
  for (int64_t d : ne) {
    if (d < 0) return std::nullopt;
    if (d == 0) zero = true;
  }
  for (int64_t d : ne) {
    if (d == 0) continue;
    if (n > std::numeric_limits<int64_t>::max() / d) return std::nullopt;
    n *= d;
  }
  return zero ? 0 : n;
}

std::string shape_text(const std::vector<int64_t>& ne) {
  return fmt::format("[{}]", fmt::join(ne, ", "));
}

// Bytes of a tensor of `numel` elements of type `info`; nullopt on overflow.
std::optional<uint64_t> tensor_bytes(const TypeInfo& info, int64_t numel) {
  uint64_t blocks = static_cast<uint64_t>(numel) / static_cast<uint64_t>(info.block_size);
  if (blocks > std::numeric_limits<uint64_t>::max() / info.bytes_per_block) return std::nullopt;
  uint64_t n = blocks * info.bytes_per_block;
  if (n > std::numeric_limits<size_t>::max()) return std::nullopt;
  return n;
}

// Sequential little-endian reader over a file image; every read is bounds-checked.
class Reader {
 public:
  Reader(std::string_view name, const uint8_t* data, size_t size)
      : name_(name), data_(data), size_(size) {}

  const std::string& name() const { return name_; }
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  void need(uint64_t n, std::string_view what) const {
    if (n > remaining())
      fail("{}: truncated: {} needs {} bytes at offset {} but the file ends at {}", name_, what, n,
           pos_, size_);
  }

  template <typename T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string str(std::string_view what) {
    uint64_t n = read<uint64_t>(what);
    if (n > remaining())
      fail("{}: {}: string length {} runs past the end of the file ({} bytes left)", name_, what, n,
           remaining());
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(n));
    pos_ += n;
    return s;
  }

 private:
  std::string name_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

// Reads one value of type t (without its type tag, which the caller read).
GgufValue read_value(Reader& r, uint32_t raw_type, const std::string& what, int depth,
                     uint64_t& budget) {
  if (!valid_type(raw_type)) fail("{}: {}: unknown value type {}", r.name(), what, raw_type);
  GgufValue v;
  v.type = static_cast<GgufType>(raw_type);
  switch (v.type) {
    case GgufType::UINT8: v.u = r.read<uint8_t>(what); break;
    case GgufType::UINT16: v.u = r.read<uint16_t>(what); break;
    case GgufType::UINT32: v.u = r.read<uint32_t>(what); break;
    case GgufType::UINT64: v.u = r.read<uint64_t>(what); break;
    case GgufType::INT8: v.i = r.read<int8_t>(what); break;
    case GgufType::INT16: v.i = r.read<int16_t>(what); break;
    case GgufType::INT32: v.i = r.read<int32_t>(what); break;
    case GgufType::INT64: v.i = r.read<int64_t>(what); break;
    case GgufType::FLOAT32: {
      uint32_t bits = r.read<uint32_t>(what);
      v.u = bits;
      v.f = std::bit_cast<float>(bits);
      break;
    }
    case GgufType::FLOAT64: {
      uint64_t bits = r.read<uint64_t>(what);
      v.u = bits;
      v.f = std::bit_cast<double>(bits);
      break;
    }
    case GgufType::BOOL: {
      uint8_t b = r.read<uint8_t>(what);
      if (b > 1) fail("{}: {}: bool value {} is neither 0 nor 1", r.name(), what, b);
      v.u = b;
      break;
    }
    case GgufType::STRING: v.s = r.str(what); break;
    case GgufType::ARRAY: {
      if (depth >= kGgufMaxArrayDepth)
        fail("{}: {}: arrays nested more than {} deep", r.name(), what, kGgufMaxArrayDepth);
      uint32_t elem = r.read<uint32_t>(what);
      if (!valid_type(elem)) fail("{}: {}: unknown array element type {}", r.name(), what, elem);
      v.elem = static_cast<GgufType>(elem);
      uint64_t n = r.read<uint64_t>(what);
      uint64_t min = min_encoded_size(v.elem);
      if (n > r.remaining() / min)
        fail("{}: {}: array of {} {} values cannot fit in the {} bytes left in the file", r.name(),
             what, n, gguf_type_name(v.elem), r.remaining());
      if (n > budget)
        fail("{}: {}: metadata holds more than {} array values in all", r.name(), what,
             kGgufMaxValues);
      budget -= n;
      v.arr.reserve(static_cast<size_t>(n));
      for (uint64_t k = 0; k < n; ++k) v.arr.push_back(read_value(r, elem, what, depth + 1, budget));
      break;
    }
  }
  return v;
}

// Checks a name or key read from a file or given to the writer.
void check_name(std::string_view file, std::string_view kind, const std::string& s) {
  if (s.empty()) fail("{}: {} is empty", file, kind);
  if (!valid_utf8(s)) fail("{}: {} \"{}\" is not valid UTF-8", file, kind, escape_text(s, 64));
}

// ---- writing ----------------------------------------------------------------

template <typename T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

// The exact bits to write for a float value: the bits it was read with while
// they still encode f (keeps NaN payloads), otherwise f itself.
uint32_t f32_bits(const GgufValue& v) {
  float f = static_cast<float>(v.f);
  if (v.u <= 0xffffffffu) {
    auto raw = static_cast<uint32_t>(v.u);
    float rf = std::bit_cast<float>(raw);
    if (std::bit_cast<uint32_t>(f) == raw || (std::isnan(f) && std::isnan(rf))) return raw;
  }
  return std::bit_cast<uint32_t>(f);
}

uint64_t f64_bits(const GgufValue& v) {
  double rf = std::bit_cast<double>(v.u);
  if (std::bit_cast<uint64_t>(v.f) == v.u || (std::isnan(v.f) && std::isnan(rf))) return v.u;
  return std::bit_cast<uint64_t>(v.f);
}

// Ensures the value can be written as is: known types, array items of the
// declared element type, integers in range, bounded nesting.
void check_value(const std::string& file, const std::string& key, const GgufValue& v, int depth) {
  auto uint_fits = [&](uint64_t max) {
    if (v.u > max) fail("{}: key '{}': value {} does not fit {}", file, key, v.u, gguf_type_name(v.type));
  };
  auto int_fits = [&](int64_t lo, int64_t hi) {
    if (v.i < lo || v.i > hi)
      fail("{}: key '{}': value {} does not fit {}", file, key, v.i, gguf_type_name(v.type));
  };
  if (!valid_type(static_cast<uint32_t>(v.type)))
    fail("{}: key '{}': unknown value type {}", file, key, static_cast<uint32_t>(v.type));
  switch (v.type) {
    case GgufType::UINT8: uint_fits(0xff); break;
    case GgufType::UINT16: uint_fits(0xffff); break;
    case GgufType::UINT32: uint_fits(0xffffffffu); break;
    case GgufType::BOOL: uint_fits(1); break;
    case GgufType::INT8: int_fits(-128, 127); break;
    case GgufType::INT16: int_fits(-32768, 32767); break;
    case GgufType::INT32: int_fits(std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()); break;
    case GgufType::ARRAY:
      if (depth >= kGgufMaxArrayDepth)
        fail("{}: key '{}': arrays nested more than {} deep", file, key, kGgufMaxArrayDepth);
      if (!valid_type(static_cast<uint32_t>(v.elem)))
        fail("{}: key '{}': unknown array element type {}", file, key, static_cast<uint32_t>(v.elem));
      for (const auto& item : v.arr) {
        if (item.type != v.elem)
          fail("{}: key '{}': array of {} holds a {}", file, key, gguf_type_name(v.elem),
               gguf_type_name(item.type));
        check_value(file, key, item, depth + 1);
      }
      break;
    default: break;
  }
}

void put_value(std::string& out, const GgufValue& v) {
  switch (v.type) {
    case GgufType::UINT8: put<uint8_t>(out, static_cast<uint8_t>(v.u)); break;
    case GgufType::UINT16: put<uint16_t>(out, static_cast<uint16_t>(v.u)); break;
    case GgufType::UINT32: put<uint32_t>(out, static_cast<uint32_t>(v.u)); break;
    case GgufType::UINT64: put<uint64_t>(out, v.u); break;
    case GgufType::INT8: put<int8_t>(out, static_cast<int8_t>(v.i)); break;
    case GgufType::INT16: put<int16_t>(out, static_cast<int16_t>(v.i)); break;
    case GgufType::INT32: put<int32_t>(out, static_cast<int32_t>(v.i)); break;
    case GgufType::INT64: put<int64_t>(out, v.i); break;
    case GgufType::FLOAT32: put<uint32_t>(out, f32_bits(v)); break;
    case GgufType::FLOAT64: put<uint64_t>(out, f64_bits(v)); break;
    case GgufType::BOOL: put<uint8_t>(out, v.u != 0 ? 1 : 0); break;
    case GgufType::STRING: put_string(out, v.s); break;
    case GgufType::ARRAY:
      put<uint32_t>(out, static_cast<uint32_t>(v.elem));
      put<uint64_t>(out, v.arr.size());
      for (const auto& item : v.arr) put_value(out, item);
      break;
  }
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::UINT8: return "uint8";
    case GgufType::INT8: return "int8";
    case GgufType::UINT16: return "uint16";
    case GgufType::INT16: return "int16";
    case GgufType::UINT32: return "uint32";
    case GgufType::INT32: return "int32";
    case GgufType::FLOAT32: return "float32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "string";
    case GgufType::ARRAY: return "array";
    case GgufType::UINT64: return "uint64";
    case GgufType::INT64: return "int64";
    case GgufType::FLOAT64: return "float64";
  }
  return "unknown";
}

// ---- GgufValue ----------------------------------------------------------------

namespace {
GgufValue make_uint(GgufType t, uint64_t v) {
  GgufValue g;
  g.type = t;
  g.u = v;
  return g;
}
GgufValue make_int(GgufType t, int64_t v) {
  GgufValue g;
  g.type = t;
  g.i = v;
  return g;
}
}  // namespace

GgufValue GgufValue::u8(uint8_t v) { return make_uint(GgufType::UINT8, v); }
GgufValue GgufValue::u16(uint16_t v) { return make_uint(GgufType::UINT16, v); }
GgufValue GgufValue::u32(uint32_t v) { return make_uint(GgufType::UINT32, v); }
GgufValue GgufValue::u64(uint64_t v) { return make_uint(GgufType::UINT64, v); }
GgufValue GgufValue::boolean(bool v) { return make_uint(GgufType::BOOL, v ? 1 : 0); }
GgufValue GgufValue::i8(int8_t v) { return make_int(GgufType::INT8, v); }
GgufValue GgufValue::i16(int16_t v) { return make_int(GgufType::INT16, v); }
GgufValue GgufValue::i32(int32_t v) { return make_int(GgufType::INT32, v); }
GgufValue GgufValue::i64(int64_t v) { return make_int(GgufType::INT64, v); }

namespace {
GgufValue make_float(GgufType t, double v, uint64_t bits) {
  GgufValue g = make_uint(t, bits);
  g.f = v;
  return g;
}
}  // namespace

GgufValue GgufValue::f32(float v) { return make_float(GgufType::FLOAT32, v, std::bit_cast<uint32_t>(v)); }
GgufValue GgufValue::f64(double v) { return make_float(GgufType::FLOAT64, v, std::bit_cast<uint64_t>(v)); }

GgufValue GgufValue::str(std::string v) {
  GgufValue g;
  g.type = GgufType::STRING;
  g.s = std::move(v);
  return g;
}

GgufValue GgufValue::array(GgufType elem, std::vector<GgufValue> items) {
  GgufValue g;
  g.type = GgufType::ARRAY;
  g.elem = elem;
  g.arr = std::move(items);
  return g;
}

GgufValue GgufValue::strings(const std::vector<std::string>& items) {
  std::vector<GgufValue> v;
  v.reserve(items.size());
  for (const auto& s : items) v.push_back(str(s));
  return array(GgufType::STRING, std::move(v));
}

GgufValue GgufValue::floats(const std::vector<float>& items) {
  std::vector<GgufValue> v;
  v.reserve(items.size());
  for (float f : items) v.push_back(f32(f));
  return array(GgufType::FLOAT32, std::move(v));
}

GgufValue GgufValue::i32s(const std::vector<int32_t>& items) {
  std::vector<GgufValue> v;
  v.reserve(items.size());
  for (int32_t x : items) v.push_back(i32(x));
  return array(GgufType::INT32, std::move(v));
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::UINT8: case GgufType::UINT16: case GgufType::UINT32: case GgufType::UINT64:
    case GgufType::INT8: case GgufType::INT16: case GgufType::INT32: case GgufType::INT64:
      return true;
    default: return false;
  }
}

bool GgufValue::is_float() const { return type == GgufType::FLOAT32 || type == GgufType::FLOAT64; }

namespace {
bool is_unsigned(GgufType t) {
  return t == GgufType::UINT8 || t == GgufType::UINT16 || t == GgufType::UINT32 ||
         t == GgufType::UINT64;
}
}  // namespace

int64_t GgufValue::as_int() const {
  if (is_unsigned(type)) {
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail("value {} does not fit int64", u);
    return static_cast<int64_t>(u);
  }
  if (is_integer()) return i;
  if (is_float()) {
    // Only whole numbers convert, so a misplaced float never truncates silently.
    if (!(std::trunc(f) == f && std::fabs(f) < 9.2e18)) fail("value {} is not a whole number", f);
    return static_cast<int64_t>(f);
  }
  fail("expected an integer, found {}", gguf_type_name(type));
}

double GgufValue::as_float() const {
  if (is_float()) return f;
  if (is_unsigned(type)) return static_cast<double>(u);
  if (is_integer()) return static_cast<double>(i);
  fail("expected a number, found {}", gguf_type_name(type));
}

bool GgufValue::as_bool() const {
  if (type != GgufType::BOOL) fail("expected a bool, found {}", gguf_type_name(type));
  return u != 0;
}

const std::string& GgufValue::as_string() const {
  if (type != GgufType::STRING) fail("expected a string, found {}", gguf_type_name(type));
  return s;
}

std::string GgufValue::to_string(size_t max_items) const {
  switch (type) {
    case GgufType::BOOL: return u != 0 ? "true" : "false";
    case GgufType::STRING: return fmt::format("\"{}\"", escape_text(s));
    case GgufType::FLOAT32: return fmt::format("{}", static_cast<float>(f));
    case GgufType::FLOAT64: return fmt::format("{}", f);
    case GgufType::ARRAY: {
      std::string out = "[";
      size_t shown = std::min(arr.size(), max_items);
      for (size_t k = 0; k < shown; ++k) {
        if (k > 0) out += ", ";
        out += arr[k].to_string(max_items);
      }
      if (shown < arr.size()) out += fmt::format(", ... ({} items)", arr.size());
      return out + "]";
    }
    default: return is_unsigned(type) ? fmt::format("{}", u) : fmt::format("{}", i);
  }
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

// ---- GgufFile -------------------------------------------------------------------

GgufFile GgufFile::open(const std::string& path) {
  auto map = std::make_shared<MappedFile>(path);
  GgufFile g = parse(path, map->data(), map->size());
  g.file_ = std::move(map);
  return g;
}

GgufFile GgufFile::parse(std::string_view name, const uint8_t* data, size_t size) {
  GgufFile g;
  g.name_ = std::string(name);
  g.size_ = size;
  Reader r(name, data, size);
  const std::string& file = r.name();

  r.need(4, "the magic");
  if (std::memcmp(data, kMagic, 4) != 0)
    fail("{}: not a GGUF file (magic \"{}\", expected \"GGUF\")", file,
         escape_text(std::string_view(reinterpret_cast<const char*>(data), 4)));
  r.read<uint32_t>("the magic");
  uint32_t version = r.read<uint32_t>("the version");
  if (version != 0 && (version & 0xffffu) == 0)
    fail("{}: version reads as {:#x}: a big-endian GGUF file, which is not supported", file, version);
  if (version == 1) fail("{}: GGUF version 1 is not supported (only 2 and 3)", file);
  if (version != 2 && version != 3)
    fail("{}: unsupported GGUF version {} (only 2 and 3)", file, version);
  g.version_ = version;

  uint64_t n_tensors = r.read<uint64_t>("the tensor count");
  uint64_t n_kv = r.read<uint64_t>("the metadata count");
  // Smallest encodings: a key-value is a key length, one key byte, a type and a
  // one-byte value; a tensor info is a name length, one name byte, n_dims, one
  // dimension, a type and an offset.
  if (n_kv > r.remaining() / 14)
    fail("{}: metadata count {} cannot fit in the {} bytes of the file", file, n_kv, size);
  if (n_tensors > r.remaining() / 33)
    fail("{}: tensor count {} cannot fit in the {} bytes of the file", file, n_tensors, size);

  uint64_t budget = kGgufMaxValues;
  g.kv_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = r.str(fmt::format("metadata key #{}", k));
    check_name(file, fmt::format("metadata key #{}", k), key);
    std::string what = fmt::format("key '{}'", escape_text(key, 128));
    if (g.kv_index_.count(key) != 0) fail("{}: duplicate metadata {}", file, what);
    uint32_t type = r.read<uint32_t>(what);
    GgufValue v = read_value(r, type, what, 0, budget);
    g.kv_index_.emplace(key, g.kv_.size());
    g.kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = g.find(kAlignmentKey)) {
    if (a->type != GgufType::UINT32)
      fail("{}: {} must be uint32, found {}", file, kAlignmentKey, gguf_type_name(a->type));
    if (!is_pow2(a->u)) fail("{}: {} = {} is not a power of two", file, kAlignmentKey, a->u);
    g.alignment_ = static_cast<uint32_t>(a->u);
  }

  g.tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    t.name = r.str(fmt::format("tensor #{} name", k));
    check_name(file, fmt::format("tensor #{} name", k), t.name);
    std::string what = fmt::format("tensor '{}'", escape_text(t.name, 128));
    if (g.tensor_index_.count(t.name) != 0) fail("{}: duplicate {}", file, what);
    uint32_t n_dims = r.read<uint32_t>(what);
    if (n_dims > kGgufMaxDims)
      fail("{}: {} has {} dimensions (at most {})", file, what, n_dims, kGgufMaxDims);
    for (uint32_t d = 0; d < n_dims; ++d) t.ne.push_back(r.read<int64_t>(what));
    // A scalar (0 dimensions, as gguf-py writes a 0-d array) is read as [1],
    // as ggml does, so that every reader can rely on ne[0].
    if (t.ne.empty()) t.ne.push_back(1);
    auto numel = checked_numel(t.ne);
    if (!numel)
      fail("{}: {} has shape {}: negative or overflowing int64", file, what, shape_text(t.ne));
    uint32_t type = r.read<uint32_t>(what);
    const TypeInfo* info = find_type(type);
    if (info == nullptr) fail("{}: {} has unknown ggml type id {}", file, what, type);
    t.type = info->type;
    if (t.ne[0] % info->block_size != 0)
      fail("{}: {} of type {} has rows of {} elements, not a multiple of its block size {}", file,
           what, info->name, t.ne[0], info->block_size);
    auto nbytes = tensor_bytes(*info, *numel);
    if (!nbytes) fail("{}: {} with shape {} is too large", file, what, shape_text(t.ne));
    t.nbytes = static_cast<size_t>(*nbytes);
    t.offset = r.read<uint64_t>(what);
    g.tensor_index_.emplace(t.name, g.tensors_.size());
    g.tensors_.push_back(std::move(t));
  }

  g.data_offset_ = align_up(r.pos(), g.alignment_);
  if (n_tensors > 0 && g.data_offset_ > size)
    fail("{}: truncated: the data section would start at {} but the file ends at {}", file,
         g.data_offset_, size);
  uint64_t data_size = n_tensors > 0 ? size - g.data_offset_ : 0;
  for (auto& t : g.tensors_) {
    if (t.offset % g.alignment_ != 0)
      fail("{}: tensor '{}' data offset {} is not a multiple of the alignment {}", file,
           escape_text(t.name, 128), t.offset, g.alignment_);
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail("{}: tensor '{}' data [{}, +{}) runs past the end of the data section ({} bytes)", file,
           escape_text(t.name, 128), t.offset, t.nbytes, data_size);
    t.data = data + g.data_offset_ + t.offset;
  }

  // No two tensors may share bytes.
  std::vector<size_t> order(g.tensors_.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return g.tensors_[a].offset < g.tensors_[b].offset; });
  const GgufTensorInfo* prev = nullptr;
  for (size_t idx : order) {
    const auto& t = g.tensors_[idx];
    if (t.nbytes == 0) continue;
    if (prev != nullptr && prev->offset + prev->nbytes > t.offset)
      fail("{}: tensors '{}' and '{}' overlap in the data section", file,
           escape_text(prev->name, 128), escape_text(t.name, 128));
    prev = &t;
  }
  return g;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

// ---- GgufWriter -------------------------------------------------------------------

GgufWriter::GgufWriter(std::string path, uint32_t version)
    : path_(std::move(path)), version_(version) {
  if (version != 2 && version != 3) fail("{}: cannot write GGUF version {} (only 2 and 3)", path_, version);
}

GgufWriter::~GgufWriter() = default;

void GgufWriter::set(const std::string& key, GgufValue value) {
  if (header_written_) fail("{}: cannot set '{}' after the header was written", path_, key);
  check_name(path_, "metadata key", key);
  check_value(path_, key, value, 0);
  if (key == kAlignmentKey) {
    if (value.type != GgufType::UINT32)
      fail("{}: {} must be uint32, found {}", path_, key, gguf_type_name(value.type));
    if (!is_pow2(value.u)) fail("{}: {} = {} is not a power of two", path_, key, value.u);
    alignment_ = static_cast<uint32_t>(value.u);
  }
  auto it = std::find_if(kv_.begin(), kv_.end(), [&](const auto& kv) { return kv.first == key; });
  if (it != kv_.end())
    it->second = std::move(value);
  else
    kv_.emplace_back(key, std::move(value));
  if (key == kAlignmentKey) assign_offsets();
}

void GgufWriter::remove(const std::string& key) {
  if (header_written_) fail("{}: cannot remove '{}' after the header was written", path_, key);
  std::erase_if(kv_, [&](const auto& kv) { return kv.first == key; });
  if (key == kAlignmentKey) {
    alignment_ = kDefaultAlignment;
    assign_offsets();
  }
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& ne, GgmlType type,
                            std::optional<uint64_t> offset) {
  if (header_written_) fail("{}: cannot add tensor '{}' after the header was written", path_, name);
  check_name(path_, "tensor name", name);
  if (name.size() > kGgufMaxNameBytes)
    fail("{}: tensor name '{}' is longer than {} bytes, which llama.cpp cannot load", path_, name,
         kGgufMaxNameBytes);
  if (tensor_index_.count(name) != 0) fail("{}: duplicate tensor '{}'", path_, name);
  if (ne.empty() || ne.size() > kGgufMaxDims)
    fail("{}: tensor '{}' has {} dimensions (must be 1 to {})", path_, name, ne.size(), kGgufMaxDims);
  auto numel = checked_numel(ne);
  if (!numel) fail("{}: tensor '{}' has shape {}: negative or overflowing int64", path_, name, shape_text(ne));
  const TypeInfo* info = find_type(static_cast<uint32_t>(type));
  if (info == nullptr) fail("{}: tensor '{}' has unknown ggml type id {}", path_, name, static_cast<uint32_t>(type));
  if (ne[0] % info->block_size != 0)
    fail("{}: tensor '{}' of type {} has rows of {} elements, not a multiple of its block size {}",
         path_, name, info->name, ne[0], info->block_size);
  auto nbytes = tensor_bytes(*info, *numel);
  if (!nbytes) fail("{}: tensor '{}' with shape {} is too large", path_, name, shape_text(ne));
  GgufTensorInfo t;
  t.name = name;
  t.ne = ne;
  t.type = type;
  t.nbytes = static_cast<size_t>(*nbytes);
  t.offset = offset.value_or(0);
  tensor_index_.emplace(name, tensors_.size());
  tensors_.push_back(std::move(t));
  fixed_offset_.push_back(offset.has_value());
  assign_offsets();
}

void GgufWriter::assign_offsets() {
  // Unplaced tensors go right after the previous tensor (in add order), aligned.
  uint64_t end = 0;
  for (size_t k = 0; k < tensors_.size(); ++k) {
    auto& t = tensors_[k];
    if (!fixed_offset_[k]) t.offset = align_up(end, alignment_);
    end = std::max(end, t.offset + t.nbytes);
  }
}

const GgufTensorInfo& GgufWriter::next_tensor() const {
  if (next_tensor_ >= tensors_.size()) fail("{}: all {} tensors are already written", path_, tensors_.size());
  if (!header_written_) {
    // Before the header the order is not fixed yet; compute it the same way.
    size_t best = 0;
    for (size_t k = 1; k < tensors_.size(); ++k)
      if (tensors_[k].offset < tensors_[best].offset) best = k;
    return tensors_[best];
  }
  return tensors_[data_order_[next_tensor_]];
}

void GgufWriter::write_header() {
  data_order_.resize(tensors_.size());
  std::iota(data_order_.begin(), data_order_.end(), size_t{0});
  std::stable_sort(data_order_.begin(), data_order_.end(),
                   [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
  uint64_t end = 0;
  const GgufTensorInfo* prev = nullptr;
  for (size_t idx : data_order_) {
    const auto& t = tensors_[idx];
    if (t.offset % alignment_ != 0)
      fail("{}: tensor '{}' offset {} is not a multiple of the alignment {}", path_, t.name, t.offset, alignment_);
    if (t.nbytes > 0 && prev != nullptr && end > t.offset)
      fail("{}: tensors '{}' and '{}' overlap in the data section", path_, prev->name, t.name);
    if (t.nbytes > 0) {
      end = t.offset + t.nbytes;
      prev = &t;
    }
  }

  std::string h;
  h.append(kMagic, 4);
  put<uint32_t>(h, version_);
  put<uint64_t>(h, tensors_.size());
  put<uint64_t>(h, kv_.size());
  for (const auto& [key, v] : kv_) {
    put_string(h, key);
    put<uint32_t>(h, static_cast<uint32_t>(v.type));
    put_value(h, v);
  }
  for (const auto& t : tensors_) {
    put_string(h, t.name);
    put<uint32_t>(h, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) put<int64_t>(h, d);
    put<uint32_t>(h, static_cast<uint32_t>(t.type));
    put<uint64_t>(h, t.offset);
  }
  // A file without tensors has no data section, so nothing to align (this is
  // how vocab-only files are written); otherwise data starts aligned.
  if (!tensors_.empty()) h.append(align_up(h.size(), alignment_) - h.size(), '\0');

  out_ = std::make_unique<AtomicFile>(path_);
  out_->write(h.data(), h.size());
  data_start_ = out_->position();
  header_written_ = true;
}

void GgufWriter::write_tensor_data(const void* data, size_t nbytes) {
  if (!header_written_) write_header();
  if (!out_) fail("{}: write after finish()", path_);
  if (next_tensor_ >= tensors_.size()) fail("{}: all {} tensors are already written", path_, tensors_.size());
  const auto& t = tensors_[data_order_[next_tensor_]];
  if (nbytes != t.nbytes)
    fail("{}: tensor '{}' needs {} bytes of data, got {}", path_, t.name, t.nbytes, nbytes);
  uint64_t target = data_start_ + t.offset;
  if (nbytes > 0) {
    // write_header() proved that tensors with data do not overlap, so the
    // target is never behind; an empty tensor may sit anywhere and writes nothing.
    if (target < out_->position())
      fail("{}: tensor '{}' at offset {} lies behind data already written", path_, t.name, t.offset);
    out_->write_zeros(static_cast<size_t>(target - out_->position()));
    out_->write(data, nbytes);
  }
  ++next_tensor_;
}

void GgufWriter::finish() {
  if (!header_written_) write_header();
  if (!out_) fail("{}: finish() called twice", path_);
  if (next_tensor_ < tensors_.size())
    fail("{}: finish() with {} of {} tensors unwritten (next: '{}')", path_,
         tensors_.size() - next_tensor_, tensors_.size(), tensors_[data_order_[next_tensor_]].name);
  uint64_t pos = out_->position();
  if (!tensors_.empty()) out_->write_zeros(static_cast<size_t>(align_up(pos, alignment_) - pos));
  out_->commit();
  out_.reset();
}

void copy_gguf(const GgufFile& in, const std::string& out_path) {
  GgufWriter w(out_path, in.version());
  for (const auto& [key, v] : in.metadata()) w.set(key, v);
  for (const auto& t : in.tensors()) w.add_tensor(t.name, t.ne, t.type, t.offset);
  for (size_t k = 0; k < in.tensors().size(); ++k) {
    const GgufTensorInfo* src = in.find_tensor(w.next_tensor().name);
    w.write_tensor_data(src->data, src->nbytes);
  }
  w.finish();
}

}  // namespace tailor
