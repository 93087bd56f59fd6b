#include "tailor/convert/convert.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>

#include <fmt/ranges.h>

#include "tailor/convert/vocab.h"
#include "tailor/eval/imatrix.h"
#include "tailor/formats/gguf.h"
#include "tailor/formats/safetensors.h"
#include "tailor/model/config.h"
#include "tailor/model/gguf_names.h"
#include "tailor/quant/codec.h"
#include "tailor/util/error.h"

namespace tailor {
namespace {

namespace fs = std::filesystem;

bool is_float_type(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16; }

// One output tensor and where its data comes from.
struct Planned {
  std::string name;
  std::vector<int64_t> ne;
  GgmlType type = GgmlType::F32;
  bool fell_back = false;
  int64_t layer = -1;
  size_t order = 0;                        // position among the checkpoint's tensors
  std::vector<const StTensor*> sources;    // one, or one per expert in expert order
  QkPermute permute = QkPermute::None;
  std::vector<float> generated;            // rope_freqs
  const std::vector<uint8_t>* blocks = nullptr;  // pre-quantized rows (ConvertOptions::tensor_blocks)
};

int rank_of(const Planned& p) {
  if (p.name == "token_embd.weight") return 0;
  if (p.name == "rope_freqs.weight") return 1;
  if (p.layer >= 0) return 2;
  if (p.name == "output_norm.weight") return 3;
  return 4;
}

std::vector<int64_t> ggml_shape(const std::vector<int64_t>& st_shape) {
  return std::vector<int64_t>(st_shape.rbegin(), st_shape.rend());
}

GgufValue to_gguf(const HParam& h) {
  switch (h.kind) {
    case HParam::U32: return GgufValue::u32(h.u);
    case HParam::F32: return GgufValue::f32(h.f);
    case HParam::Str: return GgufValue::str(h.s);
    case HParam::Bool: return GgufValue::boolean(h.b);
  }
  return GgufValue::u32(0);
}

void set_vocab(GgufWriter& w, const Vocab& v) {
  w.set("tokenizer.ggml.model", GgufValue::str(v.model));
  if (v.model == "none") return;
  w.set("tokenizer.ggml.pre", GgufValue::str(v.pre));
  w.set("tokenizer.ggml.tokens", GgufValue::strings(v.tokens));
  if (!v.scores.empty()) w.set("tokenizer.ggml.scores", GgufValue::floats(v.scores));
  w.set("tokenizer.ggml.token_type", GgufValue::i32s(v.token_types));
  // llama.cpp refuses a BPE vocabulary without the merges key, even an empty one.
  if (v.model == "gpt2") w.set("tokenizer.ggml.merges", GgufValue::strings(v.merges));
  auto id = [&](const char* key, const std::optional<int64_t>& x) {
    if (x) w.set(key, GgufValue::u32(static_cast<uint32_t>(*x)));
  };
  id("tokenizer.ggml.bos_token_id", v.bos);
  id("tokenizer.ggml.eos_token_id", v.eos);
  id("tokenizer.ggml.unknown_token_id", v.unk);
  id("tokenizer.ggml.padding_token_id", v.pad);
  auto flag = [&](const char* key, const std::optional<bool>& x) {
    if (x) w.set(key, GgufValue::boolean(*x));
  };
  flag("tokenizer.ggml.add_bos_token", v.add_bos);
  flag("tokenizer.ggml.add_eos_token", v.add_eos);
  flag("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
}

std::vector<Planned> plan_tensors(const Safetensors& st, const ModelConfig& c, GgmlType requested) {
  std::vector<Planned> plan;
  std::map<std::string, size_t> merged;  // GGUF name -> index in plan
  const auto& all = st.tensors();
  for (size_t i = 0; i < all.size(); ++i) {
    const StTensor& t = all[i];
    if (is_ignored_hf_tensor(t.name)) continue;
    auto m = map_hf_tensor(t.name, c);
    if (!m) fail("{}: tensor '{}' is not part of a {} model with {} layers{}", t.file, t.name,
                 family_name(c.family), c.num_layers,
                 c.is_moe() ? fmt::format(" and {} experts", c.num_experts) : "");
    if (t.shape.empty() || t.shape.size() > 2)
      fail("{}: tensor '{}' has {} dimensions; expected 1 or 2", t.file, t.name, t.shape.size());
    if (m->expert >= 0) {
      auto [it, fresh] = merged.try_emplace(m->name, plan.size());
      if (fresh) {
        Planned p;
        p.name = m->name;
        p.layer = m->layer;
        p.order = i;
        p.sources.assign(static_cast<size_t>(c.num_experts), nullptr);
        p.ne = ggml_shape(t.shape);
        p.ne.push_back(c.num_experts);
        plan.push_back(std::move(p));
      }
      Planned& p = plan[it->second];
      if (p.sources[m->expert] != nullptr) fail("{}: tensor '{}' appears twice", t.file, t.name);
      if (ggml_shape(t.shape) != std::vector<int64_t>(p.ne.begin(), p.ne.end() - 1))
        fail("{}: expert tensor '{}' has a different shape from the other experts of its layer",
             t.file, t.name);
      p.sources[m->expert] = &t;
      continue;
    }
    if (merged.count(m->name)) fail("{}: tensor '{}' appears twice", t.file, t.name);
    merged[m->name] = plan.size();
    Planned p;
    p.name = m->name;
    p.layer = m->layer;
    p.order = i;
    p.sources = {&t};
    p.permute = m->permute;
    p.ne = ggml_shape(t.shape);
    // The shared-expert gate is one row; llama.cpp expects it as a vector.
    if (p.ne.size() == 2 && p.ne[1] == 1 && p.name.ends_with("ffn_gate_inp_shexp.weight")) p.ne.pop_back();
    if (p.permute != QkPermute::None) {
      const int64_t heads = p.permute == QkPermute::Q ? c.num_heads : c.num_kv_heads;
      const int64_t rows = p.ne.size() == 2 ? p.ne[1] : p.ne[0];
      if (rows != heads * c.head_dim)
        fail("{}: tensor '{}' has {} rows; expected {} heads x {} = {}", t.file, t.name, rows, heads,
             c.head_dim, heads * c.head_dim);
    }
    plan.push_back(std::move(p));
  }
  for (const Planned& p : plan)
    for (size_t e = 0; e < p.sources.size(); ++e)
      if (!p.sources[e])
        fail("{}: expert {} of '{}' is missing from the checkpoint", st.tensors().front().file, e, p.name);

  // A shape llama.cpp would reject at load time is an error here, before any file is written.
  for (const Planned& p : plan) {
    auto want = expected_gguf_shape(p.name, c);
    if (!want || *want != p.ne) {
      const StTensor* s = p.sources.empty() ? nullptr : p.sources.front();
      fail("{}: tensor '{}' has shape [{}] in GGUF order but config.json implies [{}]",
           s ? s->file : std::string("config.json"), s ? s->name : p.name, fmt::join(p.ne, ", "),
           want ? fmt::format("{}", fmt::join(*want, ", ")) : std::string("?"));
    }
  }
  // The tensors every block needs; a checkpoint without them is not this model.
  auto need = [&](const std::string& n) {
    if (!merged.count(n)) fail("{}: the checkpoint has no tensor for '{}' (HF '{}')",
                               st.tensors().empty() ? std::string("safetensors") : st.tensors().front().file,
                               n, gguf_to_hf_name(n, c).value_or("?"));
  };
  need("token_embd.weight");
  need("output_norm.weight");
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (const char* s : {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm"})
      need(fmt::format("blk.{}.{}.weight", l, s));
    if (c.layer_is_moe(l)) {
      for (const char* s : {"ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"})
        need(fmt::format("blk.{}.{}.weight", l, s));
      if (c.shared_expert_intermediate_size > 0)
        for (const char* s : {"ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"})
          need(fmt::format("blk.{}.{}.weight", l, s));
    } else {
      for (const char* s : {"ffn_gate", "ffn_up", "ffn_down"}) need(fmt::format("blk.{}.{}.weight", l, s));
    }
    if (c.qk_norm)
      for (const char* s : {"attn_q_norm", "attn_k_norm"}) need(fmt::format("blk.{}.{}.weight", l, s));
  }

  if (auto freqs = llama3_rope_factors(c); !freqs.empty()) {
    Planned p;
    p.name = "rope_freqs.weight";
    p.ne = {static_cast<int64_t>(freqs.size())};
    p.generated = std::move(freqs);
    plan.push_back(std::move(p));
  }
  const bool tied = !merged.count("output.weight");
  for (Planned& p : plan) p.type = choose_tensor_type(p.name, p.ne, requested, tied, &p.fell_back);
  std::stable_sort(plan.begin(), plan.end(), [](const Planned& a, const Planned& b) {
    int ra = rank_of(a), rb = rank_of(b);
    if (ra != rb) return ra < rb;
    if (a.layer != b.layer) return a.layer < b.layer;
    return a.order < b.order;
  });
  return plan;
}

}  // namespace

GgmlType choose_tensor_type(const std::string& name, const std::vector<int64_t>& ne, GgmlType requested,
                            bool tied_embeddings, bool* fell_back) {
  if (fell_back) *fell_back = false;
  if (!tensor_is_quantizable(name, ne)) return GgmlType::F32;
  if (is_float_type(requested)) return requested;
  GgmlType t = requested;
  const int64_t ncols = ne[0];
  const bool is_output = name == "output.weight" || (tied_embeddings && name == "token_embd.weight");
  if (is_output && t != GgmlType::Q8_0)
    t = row_fits(t, ncols) ? GgmlType::Q6_K : GgmlType::Q8_0;
  return fit_row_type(t, ncols, fell_back);
}

namespace {

// Quantizes one planned tensor into `out`, with the imatrix's values for it
// when there are some: one vector per expert slice of a merged MoE tensor.
// Returns whether importance values were used.
bool quantize_weighted(const Planned& p, const std::vector<float>& f32, std::vector<uint8_t>& out, int64_t rows,
                       int64_t cols, const ConvertOptions& opts, ConvertResult& res) {
  const bool uses = type_info(p.type).uses_imatrix;
  const eval::ImatrixEntry* e = opts.imatrix && uses ? opts.imatrix->find(p.name) : nullptr;
  if (!e) {
    if (opts.imatrix && uses) res.missing_importance.push_back(p.name);
    quantize_rows(p.type, f32.data(), out.data(), rows, cols, nullptr, opts.threads);
    return false;
  }
  const int64_t experts = p.ne.size() == 3 ? p.ne[2] : 1;
  if (e->n_cols != cols || e->n_experts != experts)
    fail("convert: the imatrix entry for {} has {} columns x {} experts, the tensor {} x {}", p.name, e->n_cols,
         e->n_experts, cols, experts);
  const std::vector<float> values = e->values();
  const int64_t rows_per = rows / experts;
  const size_t row_bytes = row_size(p.type, cols);
  for (int64_t x = 0; x < experts; ++x)
    quantize_rows(p.type, f32.data() + x * rows_per * cols, out.data() + size_t(x * rows_per) * row_bytes, rows_per,
                  cols, values.data() + x * cols, opts.threads);
  return true;
}

// Points a tensor at the caller's pre-quantized rows, checking that they are
// what it needs (see ConvertOptions::tensor_blocks).
void attach_blocks(Planned& p, const std::vector<uint8_t>& bytes, GgmlType requested) {
  if (p.fell_back || p.type != requested)
    fail("{}: rows of {} values do not fit {} blocks", p.name, p.ne[0], type_name(requested));
  int64_t numel = 1;
  for (int64_t d : p.ne) numel *= d;
  const int64_t rows = numel / p.ne[0];
  const size_t want = row_size(p.type, p.ne[0]) * static_cast<size_t>(rows);
  if (bytes.size() != want)
    fail("{}: {} bytes of {} blocks given; {} rows of {} values need {} bytes", p.name, bytes.size(),
         type_name(p.type), rows, p.ne[0], want);
  p.blocks = &bytes;
}

// Puts the caller's per-tensor types (and pre-quantized rows) on the plan
// (see ConvertOptions::tensor_types and tensor_blocks).
void apply_tensor_types(std::vector<Planned>& plan, const ConvertOptions& opts) {
  for (const auto& [name, bytes] : opts.tensor_blocks)
    if (!opts.tensor_types.count(name)) fail("{}: blocks given without a type (tensor_types has no entry for it)", name);
  if (opts.tensor_types.empty()) return;
  std::map<std::string, Planned*> by_name;
  for (Planned& p : plan) by_name[p.name] = &p;
  for (const auto& [name, type] : opts.tensor_types) {
    auto it = by_name.find(name);
    if (it == by_name.end()) fail("{}: the model has no tensor '{}' to give type {}", opts.input, name, type_name(type));
    Planned& p = *it->second;
    const TypeInfo& info = type_info(type);
    if (!info.can_quantize) fail("{}: Tailor cannot write type {}", name, info.name);
    if (type != GgmlType::F32 && !tensor_is_quantizable(p.name, p.ne))
      fail("{}: must stay F32 (llama.cpp does not quantize it), not {}", name, info.name);
    p.type = fit_row_type(type, p.ne[0], &p.fell_back);
    if (auto b = opts.tensor_blocks.find(name); b != opts.tensor_blocks.end()) {
      attach_blocks(p, b->second, type);
      continue;  // already quantized: no importance values needed
    }
    if (type_info(p.type).requires_imatrix && !(opts.imatrix && opts.imatrix->find(name)))
      fail("{}: type {} needs importance values{}; pass --imatrix FILE", name, type_name(p.type),
           opts.imatrix ? " and the imatrix has none for it" : "");
  }
}

}  // namespace

std::vector<TensorDesc> gguf_tensor_layout(const std::string& input) {
  if (!fs::is_directory(input)) fail("{}: not a folder (expected a Hugging Face model folder)", input);
  const ModelConfig c = load_model_config(input);
  const Safetensors st = Safetensors::open(input);
  if (st.tensors().empty()) fail("{}: the checkpoint holds no tensors", input);
  std::vector<TensorDesc> out;
  for (const Planned& p : plan_tensors(st, c, GgmlType::F32)) out.push_back({p.name, p.ne});
  return out;
}

ConvertResult convert_hf_to_gguf(const ConvertOptions& opts) {
  const TypeInfo& req = type_info(opts.type);
  if (!req.can_quantize) fail("convert: Tailor cannot write type {} yet", req.name);
  if (req.requires_imatrix && !opts.imatrix)
    fail("convert: type {} needs an importance matrix (--imatrix FILE)", req.name);
  if (!fs::is_directory(opts.input)) fail("{}: not a folder (expected a Hugging Face model folder)", opts.input);

  const ModelConfig c = load_model_config(opts.input);
  const Safetensors st = Safetensors::open(opts.input);
  if (st.tensors().empty()) fail("{}: the checkpoint holds no tensors", opts.input);
  const Vocab vocab = load_vocab(opts.input, c);
  std::vector<Planned> plan = plan_tensors(st, c, opts.type);
  apply_tensor_types(plan, opts);
  // ggml refuses the lowest-bit types without importance values; tensors of
  // the uniform type the imatrix does not cover (the embedding, a lookup) get
  // Q2_K instead, as llama-quantize gives the embedding in those file types.
  // (Tensors given a type by name were checked above.)
  for (Planned& p : plan)
    if (!opts.tensor_types.count(p.name) && opts.imatrix && type_info(p.type).requires_imatrix &&
        !opts.imatrix->find(p.name)) {
      if (p.ne[0] % 256 != 0) fail("convert: {} has no importance values and no fallback type fits its rows", p.name);
      p.type = GgmlType::Q2_K;
      p.fell_back = true;
    }

  ConvertResult res;
  res.arch = gguf_arch_name(c.family);
  res.vocab_model = vocab.model;

  GgufWriter w(opts.output);
  std::string name = opts.name.empty() ? fs::path(opts.input).lexically_normal().filename().string() : opts.name;
  if (name.empty()) name = fs::absolute(opts.input).parent_path().filename().string();
  w.set("general.architecture", GgufValue::str(res.arch));
  w.set("general.name", GgufValue::str(name));
  for (const HParam& h : gguf_hparams(c)) w.set(h.key, to_gguf(h));
  w.set("general.file_type", GgufValue::u32(opts.file_type.value_or(llama_file_type(opts.type))));
  w.set("general.quantization_version", GgufValue::u32(2));
  set_vocab(w, vocab);
  for (const Planned& p : plan) w.add_tensor(p.name, p.ne, p.type);

  std::vector<float> f32;
  std::vector<uint8_t> out;
  for (size_t i = 0; i < plan.size(); ++i) {
    const Planned& p = plan[i];
    int64_t numel = 1;
    for (int64_t d : p.ne) numel *= d;
    const int64_t cols = p.ne[0], rows = numel / cols;
    const size_t nbytes = row_size(p.type, cols) * static_cast<size_t>(rows);
    const int64_t heads = p.permute == QkPermute::Q ? c.num_heads : c.num_kv_heads;
    bool weighted = false;
    if (p.blocks && p.permute == QkPermute::None) {
      w.write_tensor_data(p.blocks->data(), nbytes);
    } else if (p.blocks) {
      out.assign(p.blocks->begin(), p.blocks->end());
      permute_qk_row_bytes(out.data(), rows, row_size(p.type, cols), heads);
      w.write_tensor_data(out.data(), nbytes);
    } else {
      f32.resize(static_cast<size_t>(numel));
      if (!p.generated.empty()) {
        std::copy(p.generated.begin(), p.generated.end(), f32.begin());
      } else {
        int64_t at = 0;
        for (const StTensor* s : p.sources) {
          Safetensors::to_f32(*s, f32.data() + at);
          at += s->numel();
        }
      }
      if (p.permute != QkPermute::None) permute_qk_rows(f32.data(), rows, cols, heads);
      if (p.type == GgmlType::F32) {
        w.write_tensor_data(f32.data(), nbytes);
      } else {
        out.resize(nbytes);
        weighted = quantize_weighted(p, f32, out, rows, cols, opts, res);
        w.write_tensor_data(out.data(), nbytes);
      }
    }
    ConvertedTensor ct{p.name, p.ne, p.type, nbytes, p.fell_back, weighted};
    res.params += static_cast<uint64_t>(numel);
    res.fallbacks += p.fell_back ? 1 : 0;
    if (opts.on_tensor) opts.on_tensor(ct, i, plan.size());
    res.tensors.push_back(std::move(ct));
  }
  w.finish();
  res.file_size = fs::file_size(opts.output);
  return res;
}

}  // namespace tailor
