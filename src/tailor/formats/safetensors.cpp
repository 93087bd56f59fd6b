#include "tailor/formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <nlohmann/json.hpp>

#include "tailor/formats/text.h"
#include "tailor/util/atomic_file.h"
#include "tailor/util/error.h"
#include "tailor/util/fp16.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tailor {
namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";
constexpr int kMaxJsonDepth = 32;  // a real header nests 3 deep

struct DtypeSpec {
  std::string_view name;
  StDtype dtype;
  int bits;  // per element; sub-byte types pack several per byte
};

constexpr DtypeSpec kDtypes[] = {
    {"F64", StDtype::F64, 64},       {"F32", StDtype::F32, 32},
    {"F16", StDtype::F16, 16},       {"BF16", StDtype::BF16, 16},
    {"I64", StDtype::I64, 64},       {"I32", StDtype::I32, 32},
    {"I16", StDtype::I16, 16},       {"I8", StDtype::I8, 8},
    {"U8", StDtype::U8, 8},          {"BOOL", StDtype::BOOL, 8},
    {"F8_E4M3", StDtype::F8_E4M3, 8}, {"F8_E5M2", StDtype::F8_E5M2, 8},
    {"U16", StDtype::U16, 16},       {"U32", StDtype::U32, 32},
    {"U64", StDtype::U64, 64},       {"F8_E8M0", StDtype::Other, 8},
    {"C64", StDtype::Other, 64},     {"F4", StDtype::Other, 4},
    {"F6_E2M3", StDtype::Other, 6},  {"F6_E3M2", StDtype::Other, 6},
};

const DtypeSpec* find_dtype(std::string_view name) {
  for (const auto& d : kDtypes)
    if (d.name == name) return &d;
  return nullptr;
}

// Rejects JSON nested deeper than kMaxJsonDepth before the parser sees it.
void check_json_depth(std::string_view file, std::string_view text) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) fail("{}: JSON nested more than {} deep", file, kMaxJsonDepth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

// Parses JSON text, refusing duplicate keys in any object (the library would
// silently keep the last one).
json parse_json(std::string_view file, std::string_view what, std::string_view text) {
  // The JSON library stops at a NUL byte and would ignore whatever follows it.
  if (size_t nul = text.find('\0'); nul != std::string_view::npos)
    fail("{}: {} holds a NUL byte at offset {}", file, what, nul);
  check_json_depth(file, text);
  std::vector<std::set<std::string>> keys;
  auto on_event = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == json::parse_event_t::key && !keys.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second)
        fail("{}: {} has duplicate key \"{}\"", file, what, escape_text(k, 128));
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), on_event);
  } catch (const json::exception& e) {
    fail("{}: {} is not valid JSON: {}", file, what, escape_text(e.what()));
  }
}

// An unsigned 64-bit integer from JSON, or nullopt for anything else.
std::optional<uint64_t> json_u64(const json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer() && j.get<int64_t>() >= 0) return static_cast<uint64_t>(j.get<int64_t>());
  return std::nullopt;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// Element count, or nullopt when the product overflows int64.
std::optional<int64_t> checked_numel(const std::vector<int64_t>& shape) {
  for (int64_t d : shape)
    if (d == 0) return 0;
  int64_t n = 1;
  for (int64_t d : shape) {
    if (n > std::numeric_limits<int64_t>::max() / d) return std::nullopt;
    n *= d;
  }
  return n;
}

// Bytes a tensor of `numel` elements of `spec` occupies, or nullopt if it is
// not a whole number of bytes or overflows.
std::optional<uint64_t> dtype_bytes(const DtypeSpec& spec, int64_t numel) {
  auto n = static_cast<uint64_t>(numel);
  if (n > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(spec.bits)) return std::nullopt;
  uint64_t bits = n * static_cast<uint64_t>(spec.bits);
  if (bits % 8 != 0) return std::nullopt;
  return bits / 8;
}

}  // namespace

size_t st_dtype_size(StDtype d) {
  if (d == StDtype::Other) return 0;
  for (const auto& s : kDtypes)
    if (s.dtype == d) return static_cast<size_t>(s.bits / 8);
  return 0;
}

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void Safetensors::add_file(std::string_view name, const uint8_t* data, size_t size, bool first) {
  if (size < 8) fail("{}: truncated: {} bytes, too short for the 8-byte header length", name, size);
  uint64_t header_len;
  std::memcpy(&header_len, data, 8);
  if (header_len > size - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes)", name, header_len, size);
  if (header_len > kStMaxHeaderBytes)
    fail("{}: header length {} exceeds the {} byte limit", name, header_len, kStMaxHeaderBytes);
  std::string_view text(reinterpret_cast<const char*>(data + 8), static_cast<size_t>(header_len));
  json header = parse_json(name, "header", text);
  if (!header.is_object()) fail("{}: header is not a JSON object", name);

  const uint8_t* base = data + 8 + header_len;
  uint64_t data_size = size - 8 - header_len;
  std::vector<StTensor> found;
  for (const auto& [key, val] : header.items()) {
    if (key == "__metadata__") {
      if (!val.is_object()) fail("{}: __metadata__ is not a JSON object", name);
      for (const auto& [mk, mv] : val.items()) {
        if (!mv.is_string())
          fail("{}: __metadata__ value \"{}\" is not a string", name, escape_text(mk, 128));
        if (first) metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    std::string tname = escape_text(key, 128);
    if (key.empty()) fail("{}: a tensor has an empty name", name);
    if (!val.is_object()) fail("{}: tensor '{}' entry is not a JSON object", name, tname);
    auto dt = val.find("dtype");
    auto sh = val.find("shape");
    auto off = val.find("data_offsets");
    if (dt == val.end() || !dt->is_string()) fail("{}: tensor '{}' has no string \"dtype\"", name, tname);
    if (sh == val.end() || !sh->is_array()) fail("{}: tensor '{}' has no array \"shape\"", name, tname);
    if (off == val.end() || !off->is_array() || off->size() != 2)
      fail("{}: tensor '{}' has no two-element array \"data_offsets\"", name, tname);

    StTensor t;
    t.name = key;
    t.file = std::string(name);
    t.dtype_name = dt->get<std::string>();
    const DtypeSpec* spec = find_dtype(t.dtype_name);
    if (spec == nullptr)
      fail("{}: tensor '{}' has unknown dtype \"{}\"", name, tname, escape_text(t.dtype_name, 32));
    t.dtype = spec->dtype;
    for (const auto& d : *sh) {
      auto v = json_u64(d);
      if (!v || *v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail("{}: tensor '{}' shape holds {}, not a non-negative integer", name, tname,
             escape_text(d.dump(), 64));
      t.shape.push_back(static_cast<int64_t>(*v));
    }
    auto numel = checked_numel(t.shape);
    if (!numel) fail("{}: tensor '{}' shape {} overflows int64", name, tname, shape_text(t.shape));
    auto begin = json_u64((*off)[0]), end = json_u64((*off)[1]);
    if (!begin || !end) fail("{}: tensor '{}' data_offsets are not non-negative integers", name, tname);
    if (*begin > *end)
      fail("{}: tensor '{}' data_offsets [{}, {}] are in the wrong order", name, tname, *begin, *end);
    if (*end > data_size)
      fail("{}: tensor '{}' data_offsets [{}, {}] run past the end of the data ({} bytes)", name,
           tname, *begin, *end, data_size);
    if (static_cast<uint64_t>(*numel) > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(spec->bits))
      fail("{}: tensor '{}' shape {} of {} is too large", name, tname, shape_text(t.shape), t.dtype_name);
    auto want = dtype_bytes(*spec, *numel);
    if (!want || *want != *end - *begin)
      fail("{}: tensor '{}' holds {} bytes but shape {} of {} needs {}", name, tname, *end - *begin,
           shape_text(t.shape), t.dtype_name,
           want ? fmt::format("{}", *want) : std::string("a size that is not whole bytes"));
    t.data = base + *begin;
    t.nbytes = static_cast<size_t>(*end - *begin);
    found.push_back(std::move(t));
  }

  // File order, and no two tensors sharing bytes.
  std::stable_sort(found.begin(), found.end(),
                   [](const StTensor& a, const StTensor& b) { return a.data < b.data; });
  const StTensor* prev = nullptr;
  for (const auto& t : found) {
    if (t.nbytes == 0) continue;
    if (prev != nullptr && prev->data + prev->nbytes > t.data)
      fail("{}: tensors '{}' and '{}' overlap", name, escape_text(prev->name, 128), escape_text(t.name, 128));
    prev = &t;
  }
  for (auto& t : found) {
    if (by_name_.count(t.name) != 0)
      fail("{}: tensor '{}' also appears in {}", name, escape_text(t.name, 128),
           tensors_[by_name_[t.name]].file);
    by_name_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }
}

Safetensors Safetensors::parse(std::string_view name, const uint8_t* data, size_t size) {
  Safetensors st;
  st.add_file(name, data, size, true);
  return st;
}

Safetensors Safetensors::open(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    fs::path dir(path);
    if (fs::exists(dir / kIndexName)) return open((dir / kIndexName).string());
    if (fs::exists(dir / kSingleName)) return open((dir / kSingleName).string());
    std::vector<fs::path> found;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".safetensors") found.push_back(e.path());
    if (found.empty()) fail("{}: folder holds no .safetensors file", path);
    if (found.size() > 1)
      fail("{}: folder holds {} .safetensors files but no {}", path, found.size(), kIndexName);
    return open(found[0].string());
  }

  Safetensors st;
  if (path.size() < 5 || path.compare(path.size() - 5, 5, ".json") != 0) {
    auto map = std::make_shared<MappedFile>(path);
    st.add_file(path, map->data(), map->size(), true);
    st.files_.push_back(std::move(map));
    return st;
  }

  // A shard index: {"metadata": {...}, "weight_map": {tensor: shard file}}.
  MappedFile index_map(path);
  if (index_map.size() > kStMaxHeaderBytes) fail("{}: index larger than {} bytes", path, kStMaxHeaderBytes);
  std::string_view text(reinterpret_cast<const char*>(index_map.data()), index_map.size());
  json index = parse_json(path, "index", text);
  if (!index.is_object()) fail("{}: index is not a JSON object", path);
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) fail("{}: index has no \"weight_map\" object", path);
  std::map<std::string, std::string> shard_of;
  std::set<std::string> shards;
  for (const auto& [tensor, file] : wm->items()) {
    if (!file.is_string())
      fail("{}: weight_map entry for '{}' is not a string", path, escape_text(tensor, 128));
    const auto& f = file.get_ref<const std::string&>();
    fs::path rel(f);
    bool escapes = std::any_of(rel.begin(), rel.end(), [](const fs::path& c) { return c == ".."; });
    if (f.empty() || rel.is_absolute() || escapes)
      fail("{}: weight_map names shard \"{}\", which is not a file name in the index's folder", path,
           escape_text(f, 128));
    shard_of[tensor] = f;
    shards.insert(f);
  }
  if (shards.empty()) fail("{}: weight_map is empty", path);

  fs::path dir = fs::path(path).parent_path();
  bool first = true;
  for (const auto& shard : shards) {
    std::string shard_path = (dir / shard).string();
    if (!fs::exists(shard_path, ec))
      fail("{}: weight_map names shard \"{}\", which is missing", path, escape_text(shard, 128));
    auto map = std::make_shared<MappedFile>(shard_path);
    size_t before = st.tensors_.size();
    st.add_file(shard_path, map->data(), map->size(), first);
    st.files_.push_back(std::move(map));
    first = false;
    for (size_t k = before; k < st.tensors_.size(); ++k) {
      const auto& name = st.tensors_[k].name;
      auto it = shard_of.find(name);
      if (it == shard_of.end())
        fail("{}: tensor '{}' of shard \"{}\" is not in the weight_map", path, escape_text(name, 128), shard);
      if (it->second != shard)
        fail("{}: weight_map puts tensor '{}' in \"{}\" but it is in \"{}\"", path,
             escape_text(name, 128), escape_text(it->second, 128), shard);
    }
  }
  for (const auto& [tensor, shard] : shard_of)
    if (st.by_name_.count(tensor) == 0)
      fail("{}: weight_map puts tensor '{}' in \"{}\", which does not hold it", path,
           escape_text(tensor, 128), escape_text(shard, 128));
  return st;
}

const StTensor* Safetensors::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

void Safetensors::to_f32(const StTensor& t, float* out) {
  const int64_t n = t.numel();
  if (n == 0) return;  // out may be null for an empty tensor
  switch (t.dtype) {
    case StDtype::F32:
      std::memcpy(out, t.data, static_cast<size_t>(n) * 4);
      return;
    case StDtype::F16:
    case StDtype::BF16: {
      const bool half = t.dtype == StDtype::F16;
      for (int64_t k = 0; k < n; ++k) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * k, 2);  // the data may be unaligned
        out[k] = half ? fp16_to_fp32(h) : bf16_to_fp32(h);
      }
      return;
    }
    default:
      fail("{}: tensor '{}' has dtype {}, which cannot be converted to f32", t.file, t.name, t.dtype_name);
  }
}

void write_safetensors(const std::string& path, const std::vector<StWriteTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || !valid_utf8(t.name))
      fail("{}: invalid tensor name \"{}\"", path, escape_text(t.name, 128));
    if (header.contains(t.name)) fail("{}: duplicate tensor '{}'", path, t.name);
    const DtypeSpec* spec = find_dtype(t.dtype_name);
    if (spec == nullptr) fail("{}: tensor '{}' has unknown dtype \"{}\"", path, t.name, t.dtype_name);
    auto numel = checked_numel(t.shape);
    if (std::any_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return d < 0; }) || !numel)
      fail("{}: tensor '{}' has invalid shape {}", path, t.name, shape_text(t.shape));
    auto want = dtype_bytes(*spec, *numel);
    if (!want || *want != t.nbytes)
      fail("{}: tensor '{}' has {} bytes but shape {} of {} needs {}", path, t.name, t.nbytes,
           shape_text(t.shape), t.dtype_name, want.value_or(0));
    header[t.name] = {{"dtype", t.dtype_name}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  AtomicFile out(path);
  uint64_t len = text.size();
  out.write(&len, 8);
  out.write(text.data(), text.size());
  for (const auto& t : tensors) out.write(t.data, t.nbytes);
  out.commit();
}

}  // namespace tailor
