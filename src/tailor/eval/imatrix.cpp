#include "tailor/eval/imatrix.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "tailor/formats/gguf.h"
#include "tailor/util/error.h"
#include "tailor/util/mapped_file.h"

namespace tailor::eval {

namespace {

const std::string kSumSuffix = ".in_sum2", kCountSuffix = ".counts";
constexpr int64_t kMaxValues = int64_t(1) << 31;

bool strip_suffix(std::string& s, const std::string& suffix) {
  if (s.size() <= suffix.size() || s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
  s.resize(s.size() - suffix.size());
  return true;
}

// ggml drops trailing dimensions of 1 when it writes a tensor.
std::vector<int64_t> ggml_dims(int64_t ne0, int64_t ne1) {
  return ne1 == 1 ? std::vector<int64_t>{ne0} : std::vector<int64_t>{ne0, ne1};
}

// Bounded little-endian cursor over a mapped legacy file.
struct Cursor {
  const MappedFile& f;
  uint64_t pos = 0;
  bool at_end() const { return pos == f.size(); }
  const uint8_t* take(uint64_t n, const char* what) {
    if (n > f.size() - pos) fail("{}: truncated {} at offset {}", f.path(), what, pos);
    const uint8_t* p = f.data() + pos;
    pos += n;
    return p;
  }
  int32_t i32(const char* what) {
    int32_t v;
    std::memcpy(&v, take(4, what), 4);
    return v;
  }
};

Imatrix load_legacy(const MappedFile& f, int64_t chunk_size) {
  if (chunk_size < 1) fail("{}: legacy chunk size {} must be positive", f.path(), chunk_size);
  Imatrix im;
  Cursor c{f};
  const int32_t n_entries = c.i32("entry count");
  if (n_entries < 1) fail("{}: not an imatrix (no GGUF magic, {} legacy entries)", f.path(), n_entries);
  for (int32_t e = 0; e < n_entries; ++e) {
    const int32_t len = c.i32("name length");
    if (len < 1 || len > 4096) fail("{}: entry {}: name length {} out of range", f.path(), e, len);
    const uint8_t* name_p = c.take(uint64_t(len), "name");
    std::string name(reinterpret_cast<const char*>(name_p), size_t(len));
    if (name.find('\0') != std::string::npos) fail("{}: entry {}: name contains a NUL byte", f.path(), e);
    const int32_t ncall = c.i32("call count");
    const int32_t nval = c.i32("value count");
    if (ncall < 0) fail("{}: {}: negative call count {}", f.path(), name, ncall);
    if (nval < 1) fail("{}: {}: value count {} out of range", f.path(), name, nval);
    const uint8_t* vals = c.take(uint64_t(nval) * 4, "values");
    if (im.find(name)) fail("{}: {}: duplicate entry", f.path(), name);
    // Stored: mean * ncall. Back to sums over ncall*chunk_size tokens (a
    // zero ncall is taken as one call so the stored means survive).
    const int64_t calls = ncall > 0 ? ncall : 1;
    std::vector<float> v(size_t(nval), 0.0f);
    std::memcpy(v.data(), vals, size_t(nval) * 4);
    ImatrixEntry en;
    en.n_cols = nval;
    en.n_experts = 1;
    en.counts = {calls * chunk_size};
    en.sum2.resize(size_t(nval));
    for (int32_t j = 0; j < nval; ++j) {
      if (!std::isfinite(v[size_t(j)]) || v[size_t(j)] < 0)
        fail("{}: {}: value {} is {}", f.path(), name, j, v[size_t(j)]);
      en.sum2[size_t(j)] = double(v[size_t(j)]) / double(calls) * double(en.counts[0]);
    }
    im.set_entry(name, std::move(en));
  }
  if (!c.at_end()) {
    const int32_t chunks = c.i32("chunk count");
    if (chunks < 0) fail("{}: negative chunk count {}", f.path(), chunks);
    im.chunk_count = uint32_t(chunks);
    if (!c.at_end()) {
      const int32_t len = c.i32("dataset name length");
      if (len < 0) fail("{}: negative dataset name length {}", f.path(), len);
      if (len > 0) {
        const uint8_t* p = c.take(uint64_t(len), "dataset name");
        im.datasets.emplace_back(reinterpret_cast<const char*>(p), size_t(len));
      }
    }
    if (!c.at_end()) fail("{}: {} unexpected bytes after the data", f.path(), f.size() - c.pos);
  }
  return im;
}

}  // namespace

std::vector<float> ImatrixEntry::values() const {
  std::vector<float> v(sum2.size());
  for (int64_t e = 0; e < n_experts; ++e)
    for (int64_t j = 0; j < n_cols; ++j) {
      const size_t i = size_t(e * n_cols + j);
      v[i] = counts[size_t(e)] > 0 ? float(sum2[i] / double(counts[size_t(e)])) : 1.0f;
    }
  return v;
}

void Imatrix::set_entry(const std::string& name, ImatrixEntry e) {
  if (e.n_cols < 1 || e.n_experts < 1 || e.n_cols * e.n_experts > kMaxValues ||
      e.sum2.size() != size_t(e.n_cols * e.n_experts) || e.counts.size() != size_t(e.n_experts))
    fail("imatrix: {}: inconsistent entry shape", name);
  entries_[name] = std::move(e);
}

const ImatrixEntry* Imatrix::find(const std::string& name) const {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

ImatrixEntry& Imatrix::entry(const std::string& name, int64_t n_experts, int64_t n_cols) {
  if (n_cols < 1 || n_experts < 1 || n_cols * n_experts > kMaxValues)
    fail("imatrix: {}: shape {} x {} out of range", name, n_experts, n_cols);
  auto [it, fresh] = entries_.try_emplace(name);
  ImatrixEntry& e = it->second;
  if (fresh) {
    e.n_cols = n_cols;
    e.n_experts = n_experts;
    e.sum2.assign(size_t(n_cols * n_experts), 0.0);
    e.counts.assign(size_t(n_experts), 0);
  } else if (e.n_cols != n_cols || e.n_experts != n_experts) {
    fail("imatrix: {}: shape {} x {} differs from earlier {} x {}", name, n_experts, n_cols, e.n_experts, e.n_cols);
  }
  return e;
}

void Imatrix::add(const std::string& name, std::span<const float> x, int64_t n_cols) {
  add_expert(name, 0, 1, x, n_cols);
}

void Imatrix::add_expert(const std::string& name, int64_t expert, int64_t n_experts, std::span<const float> x,
                         int64_t n_cols) {
  ImatrixEntry& e = entry(name, n_experts, n_cols);
  if (expert < 0 || expert >= n_experts) fail("imatrix: {}: expert {} of {}", name, expert, n_experts);
  if (x.size() % size_t(n_cols) != 0)
    fail("imatrix: {}: {} activations are not whole rows of {}", name, x.size(), n_cols);
  double* acc = e.sum2.data() + expert * n_cols;
  const size_t rows = x.size() / size_t(n_cols);
  for (size_t r = 0; r < rows; ++r) {
    const float* row = x.data() + r * size_t(n_cols);
    for (int64_t j = 0; j < n_cols; ++j) acc[j] += double(row[j]) * double(row[j]);
  }
  // One check per call rather than per value: a NaN or inf poisons the sum.
  for (int64_t j = 0; j < n_cols; ++j)
    if (!std::isfinite(acc[j])) fail("imatrix: {}: non-finite activation in column {}", name, j);
  e.counts[size_t(expert)] += int64_t(rows);
}

void Imatrix::merge(const Imatrix& o) {
  for (const auto& [name, src] : o.entries_) {
    auto it = entries_.find(name);
    if (it == entries_.end()) {
      entries_.emplace(name, src);
      continue;
    }
    ImatrixEntry& dst = it->second;
    if (dst.n_cols != src.n_cols || dst.n_experts != src.n_experts) {
      const bool same_size = dst.n_cols * dst.n_experts == src.n_cols * src.n_experts;
      if (same_size && dst.n_experts == 1) {
        // dst is a flattened legacy entry: give it src's shape.
        dst.n_cols = src.n_cols;
        dst.n_experts = src.n_experts;
        dst.counts.assign(size_t(src.n_experts), dst.counts[0]);
      } else if (!(same_size && src.n_experts == 1)) {
        fail("imatrix: {}: cannot merge shape {} x {} into {} x {}", name, src.n_experts, src.n_cols, dst.n_experts,
             dst.n_cols);
      }
    }
    for (size_t i = 0; i < dst.sum2.size(); ++i) dst.sum2[i] += src.sum2[i];
    for (size_t e = 0; e < dst.counts.size(); ++e)
      dst.counts[e] += src.counts.size() == dst.counts.size() ? src.counts[e] : src.counts[0];
  }
  datasets.insert(datasets.end(), o.datasets.begin(), o.datasets.end());
  chunk_count += o.chunk_count;
  if (chunk_size == 0) chunk_size = o.chunk_size;
}

void Imatrix::save_gguf(const std::string& path) const {
  GgufWriter w(path);
  w.set("general.type", GgufValue::str("imatrix"));
  w.set("imatrix.datasets", GgufValue::strings(datasets));
  w.set("imatrix.chunk_count", GgufValue::u32(chunk_count));
  w.set("imatrix.chunk_size", GgufValue::u32(chunk_size));
  for (const auto& [name, e] : entries_) {
    w.add_tensor(name + kSumSuffix, ggml_dims(e.n_cols, e.n_experts), GgmlType::F32);
    w.add_tensor(name + kCountSuffix, ggml_dims(1, e.n_experts), GgmlType::F32);
  }
  std::vector<float> buf;
  for (const auto& [name, e] : entries_) {
    buf.assign(e.sum2.begin(), e.sum2.end());
    w.write_tensor_data(buf.data(), buf.size() * sizeof(float));
    buf.assign(e.counts.begin(), e.counts.end());
    w.write_tensor_data(buf.data(), buf.size() * sizeof(float));
  }
  w.finish();
}

Imatrix Imatrix::load(const std::string& path, int64_t legacy_chunk_size) {
  {
    MappedFile f(path);
    const bool gguf = f.size() >= 4 && std::memcmp(f.data(), "GGUF", 4) == 0;
    if (!gguf) return load_legacy(f, legacy_chunk_size);
  }
  const GgufFile g = GgufFile::open(path);
  Imatrix im;
  if (const GgufValue* v = g.find("imatrix.datasets")) {
    if (v->type != GgufType::ARRAY || v->elem != GgufType::STRING)
      fail("{}: imatrix.datasets is not a string array", path);
    for (const auto& s : v->arr) im.datasets.push_back(s.as_string());
  }
  auto get_u32 = [&](const char* key) -> uint32_t {
    const GgufValue* v = g.find(key);
    if (!v) return 0;
    if (!v->is_integer() || v->as_int() < 0 || v->as_int() > int64_t(UINT32_MAX))
      fail("{}: {} is not an unsigned 32-bit integer", path, key);
    return uint32_t(v->as_int());
  };
  im.chunk_count = get_u32("imatrix.chunk_count");
  im.chunk_size = get_u32("imatrix.chunk_size");

  std::map<std::string, std::pair<const GgufTensorInfo*, const GgufTensorInfo*>> pairs;
  for (const GgufTensorInfo& t : g.tensors()) {
    std::string base = t.name;
    if (strip_suffix(base, kSumSuffix)) pairs[base].first = &t;
    else if (strip_suffix(base, kCountSuffix)) pairs[base].second = &t;
    else fail("{}: tensor {} is neither .in_sum2 nor .counts", path, t.name);
  }
  if (pairs.empty()) fail("{}: imatrix has no entries", path);
  for (const auto& [name, p] : pairs) {
    const auto [sums, counts] = p;
    if (!sums || !counts) fail("{}: {}: in_sum2 and counts must come in pairs", path, name);
    if (sums->type != GgmlType::F32 || counts->type != GgmlType::F32)
      fail("{}: {}: in_sum2 and counts must be F32", path, name);
    const int64_t n_experts = counts->numel();
    const int64_t n_cols = sums->ne.empty() ? 0 : sums->ne[0];
    if (n_experts < 1 || counts->ne.empty() || counts->ne[0] != 1 || n_cols < 1 || sums->numel() != n_cols * n_experts)
      fail("{}: {}: in_sum2 shape does not match {} counts", path, name, n_experts);
    ImatrixEntry& e = im.entry(name, n_experts, n_cols);
    for (int64_t i = 0; i < n_experts; ++i) {
      float c;
      std::memcpy(&c, counts->data + 4 * i, 4);
      if (!std::isfinite(c) || c < 0 || c > 9.0e15f) fail("{}: {}: bad count {}", path, name, c);
      e.counts[size_t(i)] = std::llround(c);
    }
    for (int64_t i = 0; i < n_cols * n_experts; ++i) {
      float s;
      std::memcpy(&s, sums->data + 4 * i, 4);
      if (!std::isfinite(s) || s < 0) fail("{}: {}: bad squared sum {} at {}", path, name, s, i);
      e.sum2[size_t(i)] = s;
    }
  }
  return im;
}

}  // namespace tailor::eval
