#include "tailor/plan/strategy.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sys/stat.h>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "tailor/util/atomic_file.h"
#include "tailor/util/error.h"

namespace tailor::plan {
namespace {

using Json = nlohmann::ordered_json;

constexpr const char* kFormatName = "tailor-strategy";
// Bounds on what a strategy file may hold; real ones are far below them.
constexpr size_t kMaxText = size_t{64} << 20;
constexpr int kMaxDepth = 32;
constexpr size_t kMaxTensors = 1'000'000;
constexpr size_t kMaxRules = 10'000;
constexpr size_t kMaxString = 4096;
constexpr size_t kMaxNodes = 16'000'000;

// Text from the file echoed in a message: control characters (a newline
// would break the one-line rule) become '?', and long text is cut.
std::string shown(std::string_view s, size_t max = 96) {
  std::string out;
  for (char c : s.substr(0, max)) out += static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? '?' : c;
  if (s.size() > max) out += "...";
  return out;
}

// ---- writing -----------------------------------------------------------

Json to_json(const Strategy& s) {
  Json j;
  j["format"] = kFormatName;
  j["version"] = s.version;
  j["model"] = {{"source", s.model.source},
                {"revision", s.model.revision},
                {"content_hash", s.model.content_hash},
                {"arch", s.model.arch}};
  j["budget"] = {{"kind", s.budget.kind}, {"value", s.budget.value}, {"spec", s.budget.spec}};
  j["rules"] = s.rules;
  j["totals"] = {{"bytes", s.totals.bytes},
                 {"n_elements", s.totals.n_elements},
                 {"bpw", s.totals.bpw},
                 {"cost", s.totals.cost},
                 {"cost_error", s.totals.cost_error}};
  j["solver"] = {{"objective", s.solver.objective},
                 {"lower_bound", s.solver.lower_bound},
                 {"gap", s.solver.gap},
                 {"proven_optimal", s.solver.proven_optimal}};
  Json ts = Json::array();
  for (const StrategyTensor& t : s.tensors)
    ts.push_back({{"name", t.name},
                  {"type", t.type},
                  {"bytes", t.bytes},
                  {"bpw", t.bpw},
                  {"cost", t.cost},
                  {"cost_error", t.cost_error},
                  {"knee", t.knee},
                  {"pinned", t.pinned},
                  {"reason", t.reason}});
  j["tensors"] = std::move(ts);
  return j;
}

// A string YAML would read back as something else (number, bool, null) is quoted.
bool needs_quotes(const std::string& s) {
  if (s.empty()) return true;
  std::string l;
  for (char c : s) l += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const std::set<std::string> special = {"true", "false", "yes", "no", "on", "off", "null", "~",
                                                ".inf", "-.inf", ".nan", "y", "n"};
  if (special.count(l)) return true;
  double d;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
  return ec == std::errc() && end == s.data() + s.size();
}

// Emits the JSON tree as YAML: block style, except the entries of the
// tensor list, one flow map per line so a person can edit types in place.
void emit_yaml(YAML::Emitter& out, const Json& j, bool flow) {
  switch (j.type()) {
    case Json::value_t::object:
      out << (flow ? YAML::Flow : YAML::Block) << YAML::BeginMap;
      for (const auto& [k, v] : j.items()) {
        out << YAML::Key << k << YAML::Value;
        emit_yaml(out, v, flow);
      }
      out << YAML::EndMap;
      break;
    case Json::value_t::array: {
      bool is_tensor_list = !j.empty() && j.front().is_object();
      out << (flow || (!is_tensor_list && j.size() <= 4) ? YAML::Flow : YAML::Block) << YAML::BeginSeq;
      for (const Json& v : j) emit_yaml(out, v, flow || is_tensor_list);
      out << YAML::EndSeq;
      break;
    }
    case Json::value_t::string: {
      const std::string& s = j.get_ref<const std::string&>();
      if (needs_quotes(s)) out << YAML::DoubleQuoted;
      out << s;
      break;
    }
    case Json::value_t::boolean: out << (j.get<bool>() ? "true" : "false"); break;
    case Json::value_t::number_float: out << fmt::format("{}", j.get<double>()); break;
    default: out << j.dump(); break;  // integers, null
  }
}

// ---- reading -------------------------------------------------------------

// Brackets nested deeper than the schema ever needs are refused before any
// parser sees them (recursion in parsers and destructors).
void check_nesting(std::string_view text, bool json, const std::string& source) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (json && in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (json && c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > kMaxDepth) fail("{}: nesting deeper than {} levels", source, kMaxDepth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

// YAML scalars become JSON strings; the schema reader converts them.
Json yaml_to_json(const YAML::Node& n, int depth, size_t& budget, const std::string& source) {
  if (depth > kMaxDepth) fail("{}: nesting deeper than {} levels", source, kMaxDepth);
  if (budget-- == 0) fail("{}: too many YAML nodes", source);
  switch (n.Type()) {
    case YAML::NodeType::Scalar: return n.Scalar();
    case YAML::NodeType::Sequence: {
      Json a = Json::array();
      for (const YAML::Node& x : n) a.push_back(yaml_to_json(x, depth + 1, budget, source));
      return a;
    }
    case YAML::NodeType::Map: {
      Json o = Json::object();
      for (const auto& kv : n) {
        if (!kv.first.IsScalar()) fail("{}: line {}: map keys must be plain names", source, kv.first.Mark().line + 1);
        o[kv.first.Scalar()] = yaml_to_json(kv.second, depth + 1, budget, source);
      }
      return o;
    }
    default: return nullptr;
  }
}

// Typed access to one object of the schema, with the path for messages.
class Fields {
 public:
  Fields(const Json& j, std::string where, const std::string& source) : j_(j), where_(std::move(where)), source_(source) {
    if (!j.is_object()) fail("{}: {}: expected a map", source_, where_);
  }
  // Refuses keys outside `known` (a misspelt key would otherwise be ignored silently).
  void only(std::initializer_list<const char*> known) const {
    for (const auto& [k, v] : j_.items())
      if (std::none_of(known.begin(), known.end(), [&](const char* x) { return k == x; }))
        fail("{}: {}: unknown key '{}'", source_, where_, shown(k));
  }
  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const Json& at(const char* key) const {
    if (!has(key)) fail("{}: {}: missing '{}'", source_, where_, key);
    return j_.at(key);
  }
  std::string str(const char* key, bool required = false) const {
    if (!required && !has(key)) return {};
    const Json& v = at(key);
    if (!v.is_string()) fail("{}: {}: '{}' must be a string", source_, where_, key);
    const std::string& s = v.get_ref<const std::string&>();
    if (s.size() > kMaxString) fail("{}: {}: '{}' longer than {} characters", source_, where_, key, kMaxString);
    return s;
  }
  double num(const char* key) const {
    if (!has(key)) return 0;
    const Json& v = at(key);
    double d = 0;
    if (v.is_number()) {
      d = v.get<double>();
    } else if (v.is_string()) {
      const std::string& s = v.get_ref<const std::string&>();
      auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
      if (ec != std::errc() || end != s.data() + s.size()) d = std::nan("");
    } else {
      d = std::nan("");
    }
    if (!std::isfinite(d)) fail("{}: {}: '{}' must be a finite number", source_, where_, key);
    return d;
  }
  int64_t integer(const char* key) const {
    double d = num(key);
    if (d < 0 || d > 9.0e15 || d != std::floor(d))
      fail("{}: {}: '{}' must be a non-negative integer", source_, where_, key);
    return static_cast<int64_t>(d);
  }
  bool flag(const char* key) const {
    if (!has(key)) return false;
    const Json& v = at(key);
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_string() && (v == "true" || v == "false")) return v == "true";
    fail("{}: {}: '{}' must be true or false", source_, where_, key);
  }

 private:
  const Json& j_;
  std::string where_;
  const std::string& source_;
};

Strategy from_json(const Json& j, const std::string& source) {
  Fields top(j, "top level", source);
  top.only({"format", "version", "model", "budget", "rules", "totals", "solver", "tensors"});
  if (top.str("format", true) != kFormatName)
    fail("{}: not a Tailor strategy ('format' is not '{}')", source, kFormatName);
  Strategy s;
  int64_t version = top.integer("version");
  if (version != kStrategyVersion)
    fail("{}: strategy format version {} is not supported (this Tailor reads version {})", source, version,
         kStrategyVersion);
  s.version = static_cast<int>(version);
  if (top.has("model")) {
    Fields m(top.at("model"), "model", source);
    m.only({"source", "revision", "content_hash", "arch"});
    s.model = {m.str("source"), m.str("revision"), m.str("content_hash"), m.str("arch")};
  }
  if (top.has("budget")) {
    Fields b(top.at("budget"), "budget", source);
    b.only({"kind", "value", "spec"});
    s.budget.kind = b.str("kind", true);
    if (s.budget.kind != "bytes" && s.budget.kind != "cost")
      fail("{}: budget: kind '{}' is neither 'bytes' nor 'cost'", source, shown(s.budget.kind));
    s.budget.value = b.num("value");
    s.budget.spec = b.str("spec");
  }
  if (top.has("rules")) {
    const Json& r = top.at("rules");
    if (!r.is_array()) fail("{}: rules: expected a list", source);
    if (r.size() > kMaxRules) fail("{}: rules: more than {}", source, kMaxRules);
    for (const Json& x : r) {
      if (!x.is_string() || x.get_ref<const std::string&>().size() > kMaxString)
        fail("{}: rules: every rule must be a string of at most {} characters", source, kMaxString);
      s.rules.push_back(x.get<std::string>());
    }
  }
  if (top.has("totals")) {
    Fields t(top.at("totals"), "totals", source);
    t.only({"bytes", "n_elements", "bpw", "cost", "cost_error"});
    s.totals = {t.integer("bytes"), t.integer("n_elements"), t.num("bpw"), t.num("cost"), t.num("cost_error")};
  }
  if (top.has("solver")) {
    Fields t(top.at("solver"), "solver", source);
    t.only({"objective", "lower_bound", "gap", "proven_optimal"});
    s.solver = {t.num("objective"), t.num("lower_bound"), t.num("gap"), t.flag("proven_optimal")};
  }
  const Json& ts = top.at("tensors");
  if (!ts.is_array()) fail("{}: tensors: expected a list", source);
  if (ts.size() > kMaxTensors) fail("{}: tensors: more than {} entries", source, kMaxTensors);
  for (size_t i = 0; i < ts.size(); ++i) {
    std::string where = fmt::format("tensors[{}]", i);
    if (ts[i].is_object() && ts[i].contains("name") && ts[i]["name"].is_string())
      where = "tensor " + shown(ts[i]["name"].get_ref<const std::string&>(), 200);
    Fields f(ts[i], where, source);
    f.only({"name", "type", "bytes", "bpw", "cost", "cost_error", "knee", "pinned", "reason"});
    StrategyTensor t;
    t.name = f.str("name", true);
    t.type = f.str("type", true);
    t.bytes = f.integer("bytes");
    t.bpw = f.num("bpw");
    t.cost = f.num("cost");
    t.cost_error = f.num("cost_error");
    t.knee = f.str("knee");
    t.pinned = f.flag("pinned");
    t.reason = f.str("reason");
    s.tensors.push_back(std::move(t));
  }
  return s;
}

std::string read_text(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) fail("{}: cannot open", path);
  if (!S_ISREG(st.st_mode)) fail("{}: not a regular file", path);
  if (static_cast<uint64_t>(st.st_size) > kMaxText) fail("{}: larger than {} MiB, not a strategy", path, kMaxText >> 20);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::string text(static_cast<size_t>(st.st_size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (static_cast<size_t>(in.gcount()) != text.size()) fail("{}: read failed", path);
  return text;
}

bool ends_with(const std::string& s, std::string_view suffix) {
  if (s.size() < suffix.size()) return false;
  return std::equal(suffix.rbegin(), suffix.rend(), s.rbegin(),
                    [](char a, char b) { return a == std::tolower(static_cast<unsigned char>(b)); });
}

// ---- checking ------------------------------------------------------------

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      bool same = std::toupper(static_cast<unsigned char>(a[i - 1])) == std::toupper(static_cast<unsigned char>(b[j - 1]));
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (same ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closest_type(std::string_view typo) {
  std::string_view best;
  size_t best_d = SIZE_MAX;
  for (const TypeInfo& t : all_types()) {
    if (!t.can_quantize) continue;
    size_t d = edit_distance(typo.substr(0, 64), t.name);
    if (d < best_d) best_d = d, best = t.name;
  }
  return std::string(best);
}

}  // namespace

Strategy make_strategy(std::span<const TensorOptions> tensors, const Allocation& allocation, const Budget& budget,
                       const ModelIdentity& model, std::span<const Rule> rules, std::string budget_spec,
                       const KneeOptions& knee_opt) {
  if (allocation.choices.size() != tensors.size())
    fail("strategy: {} choices for {} tensors", allocation.choices.size(), tensors.size());
  Strategy s;
  s.model = model;
  s.budget = {budget.kind == Budget::Kind::Bytes ? "bytes" : "cost", budget.value, std::move(budget_spec)};
  for (const Rule& r : rules) s.rules.push_back(r.text);
  double var = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Choice& c = allocation.choices[i];
    StrategyTensor t;
    t.name = tensors[i].name;
    t.type = std::string(type_name(c.type));
    t.bytes = c.bytes;
    t.bpw = bits_per_weight(c.bytes, tensors[i].n_elements);
    t.cost = c.cost;
    t.cost_error = c.cost_error;
    const Knee k = find_knee(tensors[i], knee_opt);
    t.knee = k.found ? std::string(type_name(k.type)) : "";
    t.pinned = c.pinned;
    t.reason = c.reason;
    s.totals.bytes += c.bytes;
    s.totals.n_elements += tensors[i].n_elements;
    s.totals.cost += c.cost;
    var += c.cost_error * c.cost_error;
    s.tensors.push_back(std::move(t));
  }
  s.totals.bpw = bits_per_weight(s.totals.bytes, s.totals.n_elements);
  s.totals.cost_error = std::sqrt(var);
  s.solver = {allocation.objective, allocation.lower_bound, allocation.gap, allocation.proven_optimal};
  return s;
}

StrategyFormat strategy_format_for(const std::string& path) {
  if (ends_with(path, ".json")) return StrategyFormat::Json;
  if (ends_with(path, ".yaml") || ends_with(path, ".yml")) return StrategyFormat::Yaml;
  fail("{}: a strategy file must end in .yaml, .yml or .json", path);
}

std::string strategy_to_text(const Strategy& s, StrategyFormat format) {
  Json j = to_json(s);
  if (format == StrategyFormat::Json) return j.dump(2) + "\n";
  YAML::Emitter out;
  out.SetIndent(2);
  emit_yaml(out, j, false);
  if (!out.good()) fail("strategy: YAML emitter failed: {}", out.GetLastError());
  return std::string("# Tailor quantization strategy (docs/strategy.md)\n") + out.c_str() + "\n";
}

Strategy strategy_from_text(std::string_view text, StrategyFormat format, const std::string& source) {
  if (text.size() > kMaxText) fail("{}: larger than {} MiB, not a strategy", source, kMaxText >> 20);
  bool json = format == StrategyFormat::Json;
  check_nesting(text, json, source);
  Json j;
  if (json) {
    try {
      j = Json::parse(text.begin(), text.end());
    } catch (const Json::exception& e) {
      fail("{}: invalid JSON: {}", source, shown(e.what(), 300));
    }
  } else {
    try {
      YAML::Node root = YAML::Load(std::string(text));
      size_t budget = kMaxNodes;
      j = yaml_to_json(root, 0, budget, source);
    } catch (const YAML::Exception& e) {
      fail("{}: invalid YAML: line {}: {}", source, e.mark.line + 1, shown(e.msg, 300));
    }
  }
  if (!j.is_object()) fail("{}: not a Tailor strategy (expected a map at the top)", source);
  return from_json(j, source);
}

void write_strategy(const std::string& path, const Strategy& s) {
  std::string text = strategy_to_text(s, strategy_format_for(path));
  AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

Strategy read_strategy(const std::string& path) {
  std::string text = read_text(path);
  StrategyFormat format;
  if (ends_with(path, ".json")) {
    format = StrategyFormat::Json;
  } else if (ends_with(path, ".yaml") || ends_with(path, ".yml")) {
    format = StrategyFormat::Yaml;
  } else {
    size_t p = text.find_first_not_of(" \t\r\n");
    format = p != std::string::npos && text[p] == '{' ? StrategyFormat::Json : StrategyFormat::Yaml;
  }
  return strategy_from_text(text, format, path);
}

std::vector<std::string> check_strategy(const Strategy& s, std::span<const TensorOptions> model,
                                        const std::string& file) {
  std::vector<std::string> problems;
  std::map<std::string_view, const TensorOptions*> by_name;
  for (const TensorOptions& t : model) by_name[t.name] = &t;
  std::set<std::string_view> seen;
  double total_bytes = 0, total_cost = 0;
  bool sizes_known = true;
  for (const StrategyTensor& e : s.tensors) {
    auto it = by_name.find(e.name);
    if (it == by_name.end()) {
      // The nearest model tensor name helps with an edited layer number or part.
      std::string_view near;
      size_t best = SIZE_MAX;
      if (e.name.size() <= 256)
        for (const auto& [n, _] : by_name) {
          size_t d = edit_distance(e.name, n);
          if (d < best) best = d, near = n;
        }
      problems.push_back(best <= 3 ? fmt::format("{}: tensor {}: not in the model (did you mean {}?)", file,
                                                 shown(e.name, 200), near)
                                   : fmt::format("{}: tensor {}: not in the model", file, shown(e.name, 200)));
      continue;
    }
    if (!seen.insert(it->first).second) {
      problems.push_back(fmt::format("{}: tensor {}: listed more than once", file, e.name));
      continue;
    }
    const TensorOptions& t = *it->second;
    const TypeInfo* info = find_type(e.type);
    if (info == nullptr) {
      problems.push_back(fmt::format("{}: tensor {}: unknown type '{}' (did you mean {}?)", file, e.name,
                                     shown(e.type), closest_type(e.type)));
      sizes_known = false;
      continue;
    }
    if (!info->can_quantize) {
      problems.push_back(fmt::format("{}: tensor {}: Tailor cannot write type {}", file, e.name, info->name));
      sizes_known = false;
      continue;
    }
    if (t.row_length > 0 && !row_fits(info->type, t.row_length)) {
      problems.push_back(fmt::format("{}: tensor {}: type {} needs rows of a multiple of {} elements, rows here have {}",
                                     file, e.name, info->name, info->block_size, t.row_length));
      sizes_known = false;
      continue;
    }
    if (t.row_length > 0 && t.n_elements % t.row_length == 0)
      total_bytes += static_cast<double>(row_size(info->type, t.row_length)) *
                     static_cast<double>(t.n_elements / t.row_length);
    else
      total_bytes += static_cast<double>(e.bytes);
    // The predicted cost of the type now written, when the model knows it.
    double cost = e.cost;
    for (const TypeOption& o : t.options)
      if (o.type == info->type) cost = o.cost;
    total_cost += cost;
  }
  for (const TensorOptions& t : model)
    if (!seen.count(t.name)) problems.push_back(fmt::format("{}: tensor {}: missing from the strategy", file, t.name));
  if (sizes_known && s.budget.value > 0) {
    if (s.budget.kind == "bytes" && total_bytes > s.budget.value)
      problems.push_back(fmt::format("{}: total size {:.0f} bytes exceeds the budget of {:.0f} bytes by {:.0f}", file,
                                     total_bytes, s.budget.value, total_bytes - s.budget.value));
    if (s.budget.kind == "cost" && total_cost > s.budget.value * (1 + 1e-12))
      problems.push_back(fmt::format("{}: total predicted cost {:.6g} exceeds the budget of {:.6g}", file, total_cost,
                                     s.budget.value));
  }
  return problems;
}

}  // namespace tailor::plan
