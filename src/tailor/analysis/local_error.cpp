#include "tailor/analysis/local_error.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

#include "tailor/engine/gemm.h"
#include "tailor/quant/codec.h"
#include "tailor/util/error.h"

namespace tailor::analysis {

ActivationSamples sample_activations(engine::Model& model, const engine::Sequences& seqs,
                                     const SampleOptions& opt) {
  ActivationSamples out;
  std::map<std::string, std::vector<int64_t>> seen;  // rows offered so far, per expert
  const int64_t stride = std::max<int64_t>(1, opt.stride);
  model.set_linear_hook([&](const engine::LinearCall& c) {
    auto& samples = out[c.name];
    auto& counts = seen[c.name];
    const size_t e = c.expert < 0 ? 0 : size_t(c.expert);
    if (samples.size() <= e) {
      samples.resize(e + 1);
      counts.resize(e + 1, 0);
    }
    ActivationSample& s = samples[e];
    s.cols = c.in;
    for (int64_t r = 0; r < c.rows && s.rows < opt.max_rows; ++r, ++counts[e]) {
      if (counts[e] % stride != 0) continue;
      s.x.insert(s.x.end(), c.input + r * c.in, c.input + (r + 1) * c.in);
      ++s.rows;
    }
  });
  try {
    model.forward(seqs, [](size_t, const float*, int64_t, int64_t) {});
  } catch (...) {
    model.set_linear_hook({});
    throw;
  }
  model.set_linear_hook({});
  return out;
}

std::vector<float> weight_values(const engine::Weight& w) {
  if (!w.quantized()) return w.f32;
  std::vector<float> v(size_t(w.numel()));
  dequantize_rows(w.type, w.blocks.data(), v.data(), w.rows(), w.cols());
  return v;
}

namespace {

int64_t expert_count(const engine::Weight& w) { return w.shape.size() == 3 ? w.shape[0] : 1; }

// Why `type` cannot hold this tensor, or "" when it can.
std::string not_applicable(const engine::Weight& w, GgmlType type, bool have_importance) {
  const TypeInfo& ti = type_info(type);
  if (w.shape.size() < 2) return "not a matrix (vectors stay in F32)";
  if (!ti.can_quantize || !ti.can_dequantize) return fmt::format("no {} codec", ti.name);
  if (!row_fits(type, w.cols()))
    return fmt::format("rows of {} cannot be stored in {} (blocks of {})", w.cols(), ti.name,
                       ti.block_size);
  if (ti.requires_imatrix && !have_importance)
    return fmt::format("{} needs an importance matrix for this tensor", ti.name);
  return "";
}

// Sums behind ErrorStats, so experts add up to the whole tensor.
struct Sums {
  double sq_err = 0, sq_w = 0, max_abs = 0, w_err = 0, w_w = 0, out_err = 0, out_ref = 0;
  int64_t n = 0, act_rows = 0;
  bool have_act = false;

  void add(const Sums& o) {
    sq_err += o.sq_err, sq_w += o.sq_w, max_abs = std::max(max_abs, o.max_abs);
    w_err += o.w_err, w_w += o.w_w, out_err += o.out_err, out_ref += o.out_ref;
    n += o.n, act_rows += o.act_rows, have_act = have_act || o.have_act;
  }
  ErrorStats stats() const {
    ErrorStats s;
    s.rmse = n ? std::sqrt(sq_err / double(n)) : 0;
    s.max_abs = max_abs;
    s.rel_frobenius = sq_w > 0 ? std::sqrt(sq_err / sq_w) : 0;
    s.rel_weighted = w_w > 0 ? w_err / w_w : 0;
    s.rel_output = have_act ? (out_ref > 0 ? std::sqrt(out_err / out_ref) : 0) : -1;
    s.activation_rows = act_rows;
    return s;
  }
};

// ||A X^T||_F^2 for A [out][in], X [rows][in], through the engine's GEMM.
double output_sq_norm(const float* a, int64_t out, int64_t in, const ActivationSample& x) {
  std::vector<float> y(size_t(x.rows * out));
  engine::sgemm(engine::default_gemm(), true, x.rows, out, in, x.x.data(), in, a, in, 0.0f, y.data(),
                out);
  double s = 0;
  for (float v : y) s += double(v) * v;
  return s;
}

Sums expert_sums(const float* w, const float* q, int64_t out, int64_t in, const float* importance,
                 const ActivationSample* act) {
  Sums s;
  std::vector<float> diff(size_t(out * in));
  for (int64_t i = 0; i < out * in; ++i) diff[i] = w[i] - q[i];
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t j = 0; j < in; ++j) {
      const double d = diff[r * in + j], v = w[r * in + j];
      const double imp = importance ? importance[j] : 1.0;
      s.sq_err += d * d;
      s.sq_w += v * v;
      s.w_err += imp * d * d;
      s.w_w += imp * v * v;
      s.max_abs = std::max(s.max_abs, std::abs(d));
    }
  }
  s.n = out * in;
  if (act && act->rows > 0) {
    if (act->cols != in) fail("activation sample has {} columns, the weight {}", act->cols, in);
    s.out_err = output_sq_norm(diff.data(), out, in, *act);
    s.out_ref = output_sq_norm(w, out, in, *act);
    s.act_rows = act->rows;
    s.have_act = true;
  }
  return s;
}

void check_importance(const engine::Weight& w, std::span<const float> importance) {
  if (importance.empty()) return;
  const int64_t per = w.cols(), n = int64_t(importance.size());
  if (n != per && n != per * expert_count(w))
    fail("importance has {} values, the weight {} columns x {} experts", n, per, expert_count(w));
}

// Importance of expert e: its own slice, or the shared one.
const float* importance_of(const engine::Weight& w, std::span<const float> imp, int64_t e) {
  if (imp.empty()) return nullptr;
  return int64_t(imp.size()) == w.cols() ? imp.data() : imp.data() + e * w.cols();
}

}  // namespace

engine::Weight quantize_weight(const engine::Weight& w, GgmlType type, std::span<const float> importance) {
  const std::string why = not_applicable(w, type, !importance.empty());
  if (!why.empty()) fail("{}: {}", type_name(type), why);
  check_importance(w, importance);
  const std::vector<float> values = weight_values(w);
  const int64_t experts = expert_count(w), cols = w.cols(), rows_per = w.rows() / experts;
  const size_t row_bytes = row_size(type, cols);
  std::vector<uint8_t> blocks(row_bytes * size_t(w.rows()));
  for (int64_t e = 0; e < experts; ++e)
    quantize_rows(type, values.data() + e * rows_per * cols, blocks.data() + e * rows_per * row_bytes,
                  rows_per, cols, importance_of(w, importance, e));
  engine::Weight q;
  q.shape = w.shape;
  q.type = GgmlType::F32;  // decoded once: the forward pass then runs at f32 speed
  q.f32.resize(values.size());
  dequantize_rows(type, blocks.data(), q.f32.data(), w.rows(), cols);
  return q;
}

LocalError measure_local(const std::string& name, const engine::Weight& w, GgmlType type,
                         std::span<const float> importance,
                         const std::vector<ActivationSample>* activations, engine::Weight* dequantized) {
  LocalError r;
  r.tensor = name;
  r.type = type;
  r.reason = not_applicable(w, type, !importance.empty());
  if (!r.reason.empty()) {
    r.applicable = false;
    return r;
  }
  r.bytes = int64_t(row_size(type, w.cols())) * w.rows();
  r.bits_per_weight = 8.0 * double(r.bytes) / double(w.numel());
  const std::vector<float> values = weight_values(w);
  engine::Weight q = quantize_weight(w, type, importance);
  const int64_t experts = expert_count(w), cols = w.cols(), rows_per = w.rows() / experts;
  Sums total;
  for (int64_t e = 0; e < experts; ++e) {
    const ActivationSample* act = nullptr;
    if (activations && size_t(e) < activations->size()) act = &(*activations)[size_t(e)];
    const Sums s = expert_sums(values.data() + e * rows_per * cols, q.f32.data() + e * rows_per * cols,
                               rows_per, cols, importance_of(w, importance, e), act);
    if (experts > 1) r.experts.push_back(s.stats());
    total.add(s);
  }
  r.total = total.stats();
  if (dequantized) *dequantized = std::move(q);
  return r;
}

}  // namespace tailor::analysis
