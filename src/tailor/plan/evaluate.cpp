#include "tailor/plan/evaluate.h"

#include <chrono>

#include "tailor/analysis/local_error.h"
#include "tailor/quant/codec.h"
#include "tailor/util/error.h"

namespace tailor::plan {

int64_t assignment_bytes(const engine::Model& model, const TypeMap& types, int64_t* n_elements) {
  int64_t bytes = 0, n = 0;
  for (const std::string& name : model.weight_names()) {
    const engine::Weight& w = model.weight(name);
    n += w.numel();
    const auto it = types.find(name);
    bytes += it == types.end() ? w.numel() * 4 : int64_t(row_size(it->second, w.cols())) * w.rows();
  }
  if (n_elements) *n_elements = n;
  return bytes;
}

namespace {
analysis::CacheOptions reference_only(int64_t n_ctx, int64_t windows) {
  analysis::CacheOptions o;
  o.n_ctx = n_ctx;
  o.max_windows = windows;
  o.keep_block_inputs = false;
  return o;
}
}  // namespace

AssignmentEvaluator::AssignmentEvaluator(engine::Model& model, const std::vector<int32_t>& eval_tokens,
                                         int64_t n_ctx, int64_t windows, const eval::Imatrix* imatrix)
    : model_(model), imatrix_(imatrix), cache_(model, eval_tokens, reference_only(n_ctx, windows)) {}

AssignmentResult AssignmentEvaluator::evaluate(const TypeMap& types, const Prequantized* blocks) {
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& [name, type] : types)
    if (!model_.find_weight(name)) fail("assignment names tensor {}, which the model does not have", name);
  AssignmentResult r;
  r.bytes = assignment_bytes(model_, types, &r.n_elements);
  r.bpw = 8.0 * double(r.bytes) / double(r.n_elements);
  std::vector<std::pair<std::string, engine::Weight>> originals;
  auto restore = [&] {
    for (auto& [name, w] : originals) model_.swap_weight(name, std::move(w));
    originals.clear();
  };
  try {
    for (const auto& [name, type] : types) {
      const bool given = blocks != nullptr && blocks->count(name) > 0;
      if (type == GgmlType::F32 && !given) continue;  // F32 values given are used (trained norms)
      const engine::Weight& w = model_.weight(name);
      if (blocks != nullptr)
        if (auto it = blocks->find(name); it != blocks->end()) {
          if (it->second.size() != row_size(type, w.cols()) * size_t(w.rows()))
            fail("assignment: {} blocks of {} bytes do not hold {} rows of {} in {}", name,
                 it->second.size(), w.rows(), w.cols(), type_name(type));
          engine::Weight q;
          q.shape = w.shape;
          q.f32.resize(size_t(w.numel()));
          dequantize_rows(type, it->second.data(), q.f32.data(), w.rows(), w.cols());
          originals.emplace_back(name, model_.swap_weight(name, std::move(q)));
          continue;
        }
      std::vector<float> imp;
      if (imatrix_)
        if (const eval::ImatrixEntry* e = imatrix_->find(name)) imp = e->values();
      originals.emplace_back(name, model_.swap_weight(name, analysis::quantize_weight(w, type, imp)));
    }
    r.report = cache_.measure_model();
  } catch (...) {
    restore();
    throw;
  }
  restore();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace tailor::plan
