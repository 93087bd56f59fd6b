#include "tailor/model/inspect.h"

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "tailor/formats/gguf.h"
#include "tailor/formats/safetensors.h"
#include "tailor/util/error.h"

namespace tailor {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json gguf_value_json(const GgufValue& v, size_t max_items) {
  switch (v.type) {
    case GgufType::UINT8: case GgufType::UINT16: case GgufType::UINT32: case GgufType::UINT64:
      return v.u;
    case GgufType::INT8: case GgufType::INT16: case GgufType::INT32: case GgufType::INT64:
      return v.i;
    case GgufType::FLOAT32: case GgufType::FLOAT64:
      return v.f;
    case GgufType::BOOL:
      return v.u != 0;
    case GgufType::STRING:
      // Invalid UTF-8 is kept; printers dump with error_handler_t::replace.
      return v.s;
    case GgufType::ARRAY: {
      json items = json::array();
      for (size_t k = 0; k < v.arr.size() && k < max_items; ++k)
        items.push_back(gguf_value_json(v.arr[k], max_items));
      if (v.arr.size() <= max_items) return items;
      return json{{"array_of", gguf_type_name(v.elem)}, {"length", v.arr.size()}, {"first", items}};
    }
  }
  return nullptr;
}

json tensor_row(const std::string& name, const std::vector<int64_t>& shape, const std::string& type,
                int64_t params, uint64_t bytes) {
  return json{{"name", name}, {"shape", shape}, {"type", type}, {"parameters", params},
              {"bytes", bytes}, {"bits_per_weight", params > 0 ? 8.0 * double(bytes) / double(params) : 0.0}};
}

void add_totals(json& report) {
  int64_t params = 0;
  uint64_t bytes = 0;
  json by_type = json::object();
  for (const auto& t : report["tensors"]) {
    params += t["parameters"].get<int64_t>();
    bytes += t["bytes"].get<uint64_t>();
    auto& bt = by_type[t["type"].get<std::string>()];
    if (bt.is_null()) bt = json{{"tensors", 0}, {"parameters", 0}, {"bytes", 0}};
    bt["tensors"] = bt["tensors"].get<int64_t>() + 1;
    bt["parameters"] = bt["parameters"].get<int64_t>() + t["parameters"].get<int64_t>();
    bt["bytes"] = bt["bytes"].get<uint64_t>() + t["bytes"].get<uint64_t>();
  }
  report["totals"] = json{{"tensors", report["tensors"].size()}, {"parameters", params},
                          {"bytes", bytes},
                          {"bits_per_weight", params > 0 ? 8.0 * double(bytes) / double(params) : 0.0},
                          {"by_type", by_type}};
}

json inspect_gguf(const std::string& path, size_t max_items) {
  GgufFile f = GgufFile::open(path);
  json report{{"path", path}, {"format", "gguf"}, {"gguf_version", f.version()},
              {"alignment", f.alignment()}, {"file_size", f.file_size()}};
  json meta = json::object();
  for (const auto& [key, value] : f.metadata()) meta[key] = gguf_value_json(value, max_items);
  report["metadata"] = meta;
  const GgufValue* arch = f.find("general.architecture");
  std::string a = arch && arch->type == GgufType::STRING ? arch->s : "";
  report["architecture"] = a;
  json hp = json::object();
  if (!a.empty())
    for (const auto& [key, value] : f.metadata())
      if (key.rfind(a + ".", 0) == 0) hp[key.substr(a.size() + 1)] = gguf_value_json(value, max_items);
  report["hyperparameters"] = hp;
  json tensors = json::array();
  for (const auto& t : f.tensors())
    tensors.push_back(tensor_row(t.name, t.ne, std::string(type_name(t.type)), t.numel(), t.nbytes));
  report["tensors"] = tensors;
  return report;
}

json inspect_safetensors(const std::string& path, const std::string& config_dir) {
  Safetensors st = Safetensors::open(path);
  json report{{"path", path}, {"format", "safetensors"}};
  fs::path cfg = fs::path(config_dir) / "config.json";
  json hp = json::object();
  std::string arch;
  if (fs::exists(cfg)) {
    std::ifstream in(cfg);
    json c = json::parse(in, nullptr, false);
    if (c.is_discarded() || !c.is_object()) fail("{}: not a JSON object", cfg.string());
    if (c.contains("architectures") && c["architectures"].is_array() && !c["architectures"].empty() &&
        c["architectures"][0].is_string())
      arch = c["architectures"][0].get<std::string>();
    else if (c.contains("model_type") && c["model_type"].is_string())
      arch = c["model_type"].get<std::string>();
    // Hyperparameters: every scalar or small object in config.json, as written.
    for (auto it = c.begin(); it != c.end(); ++it)
      if (it.key() != "architectures") hp[it.key()] = it.value();
    report["format"] = "huggingface";
  }
  report["architecture"] = arch;
  report["hyperparameters"] = hp;
  json tensors = json::array();
  for (const auto& t : st.tensors())
    tensors.push_back(tensor_row(t.name, t.shape, t.dtype_name, t.numel(), t.nbytes));
  report["tensors"] = tensors;
  return report;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) { b /= 1000; ++u; }
  return u == 0 ? fmt::format("{:.0f} B", b) : fmt::format("{:.2f} {}", b, units[u]);
}

std::string shape_string(const json& shape) {
  std::string s;
  for (const auto& d : shape) s += (s.empty() ? "" : " x ") + std::to_string(d.get<int64_t>());
  return s.empty() ? "scalar" : s;
}

json inspect_path(const std::string& path, size_t max_array_items) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("{}: no such file or folder", path);
  fs::path p(path);
  // A folder is a Hugging Face checkpoint; Safetensors::open finds its weights
  // (index, single file) and says what is missing.
  if (fs::is_directory(p, ec)) return inspect_safetensors(path, path);
  // Decide by content, not by extension: GGUF files start with the magic "GGUF".
  char magic[4] = {};
  {
    std::ifstream in(path, std::ios::binary);
    in.read(magic, 4);
  }
  if (std::string(magic, 4) == "GGUF") return inspect_gguf(path, max_array_items);
  return inspect_safetensors(path, p.parent_path().string());
}

}  // namespace

json inspect_model(const std::string& path, size_t max_array_items) {
  json report = inspect_path(path, max_array_items);
  add_totals(report);
  return report;
}

std::string format_inspection(const json& r) {
  std::string out;
  out += fmt::format("{}  ({})\n", r["path"].get<std::string>(), r["format"].get<std::string>());
  std::string arch = r.value("architecture", "");
  out += fmt::format("architecture: {}\n", arch.empty() ? "(unknown)" : arch);
  if (!r["hyperparameters"].empty()) {
    out += "hyperparameters:\n";
    for (auto it = r["hyperparameters"].begin(); it != r["hyperparameters"].end(); ++it)
      out += fmt::format("  {:<40} {}\n", it.key(), it.value().dump());
  }
  if (r.contains("metadata")) {
    out += fmt::format("metadata ({} keys, GGUF v{}, alignment {}):\n", r["metadata"].size(),
                       r["gguf_version"].get<int>(), r["alignment"].get<int>());
    for (auto it = r["metadata"].begin(); it != r["metadata"].end(); ++it) {
      std::string v = it.value().dump(-1, ' ', false, json::error_handler_t::replace);
      if (v.size() > 160) v = v.substr(0, 157) + "...";
      out += fmt::format("  {:<40} {}\n", it.key(), v);
    }
  }
  size_t w = 4;
  for (const auto& t : r["tensors"]) w = std::max(w, t["name"].get<std::string>().size());
  out += fmt::format("tensors:\n  {:<{}}  {:<20} {:<8} {:>12} {:>12} {:>6}\n", "name", w, "shape", "type",
                     "parameters", "bytes", "bpw");
  for (const auto& t : r["tensors"])
    out += fmt::format("  {:<{}}  {:<20} {:<8} {:>12} {:>12} {:>6.2f}\n", t["name"].get<std::string>(), w,
                       shape_string(t["shape"]), t["type"].get<std::string>(),
                       t["parameters"].get<int64_t>(), t["bytes"].get<uint64_t>(),
                       t["bits_per_weight"].get<double>());
  const auto& tot = r["totals"];
  out += fmt::format("total: {} tensors, {} parameters, {} ({:.3f} bits per weight)\n",
                     tot["tensors"].get<int64_t>(), tot["parameters"].get<int64_t>(),
                     human_bytes(double(tot["bytes"].get<uint64_t>())), tot["bits_per_weight"].get<double>());
  for (auto it = tot["by_type"].begin(); it != tot["by_type"].end(); ++it)
    out += fmt::format("  {:<8} {:>4} tensors {:>12} parameters {:>12}\n", it.key(),
                       it.value()["tensors"].get<int64_t>(), it.value()["parameters"].get<int64_t>(),
                       human_bytes(double(it.value()["bytes"].get<uint64_t>())));
  return out;
}

}  // namespace tailor
