#include "tailor/gradual/trainer.h"

#include <algorithm>
#include <cmath>

#include "tailor/gradual/loss_curve.h"
#include "tailor/quant/codec.h"
#include "tailor/util/clock.h"
#include "tailor/util/error.h"

namespace tailor::gradual {
namespace {


const std::vector<int> kAttn = {kQ, kK, kV, kO};
const std::vector<int> kMlp = {kGate, kUp, kDown};
const std::vector<int> kAll = {kQ, kK, kV, kO, kGate, kUp, kDown};

}  // namespace

nlohmann::json TrainReport::to_json() const {
  nlohmann::json j = {{"before", before}, {"after", after}, {"steps", steps}, {"seconds", seconds},
                      {"stopped_early", stopped_early}, {"full_run", full_run}};
  if (small_after >= 0) j["small_after"] = small_after;
  if (predicted >= 0) j["predicted"] = predicted;
  return j;
}

// A layer in its type: trainable rounding where the format has one, else the
// plain quantizer's blocks and their decoded values.
struct BlockQuantizer::Layer {
  GgmlType type = GgmlType::F32;
  std::unique_ptr<TrainableMatrix> tm;
  std::vector<uint8_t> blocks;
  std::vector<float> w;

  const std::vector<float>& weights() const { return tm ? tm->weights() : w; }
  const std::vector<uint8_t>& data() const { return tm ? tm->blocks() : blocks; }
};

BlockQuantizer::BlockQuantizer(engine::Model& model, int64_t layer, const eval::Imatrix* imatrix,
                               TrainOptions opt)
    : model_(model), layer_(layer), imatrix_(imatrix), opt_(opt), dims_(block_dims(model)),
      fp_(block_params(model, layer)), tape_(dims_) {
  for (int i = 0; i < kNumLin; ++i) layers_.push_back(std::make_unique<Layer>());
}

BlockQuantizer::~BlockQuantizer() = default;

std::string BlockQuantizer::tensor_name(int lin) const {
  return "blk." + std::to_string(layer_) + "." + lin_name(lin) + ".weight";
}

void BlockQuantizer::set_type(int lin, GgmlType type) {
  Layer& L = *layers_[size_t(lin)];
  const engine::Weight& w = model_.weight(tensor_name(lin));
  const int64_t rows = w.rows(), cols = w.cols();
  std::vector<float> imp;
  if (imatrix_ != nullptr)
    if (const eval::ImatrixEntry* e = imatrix_->find(tensor_name(lin))) imp = e->values();
  const float* importance = imp.size() == size_t(cols) ? imp.data() : nullptr;
  L = Layer{};
  L.type = type;
  if (rounding_trainable(type)) {
    L.tm = std::make_unique<TrainableMatrix>(type, fp_.w[size_t(lin)], rows, cols, importance);
  } else {
    L.blocks.resize(size_t(rows * row_size(type, cols)));
    quantize_rows(type, fp_.w[size_t(lin)], L.blocks.data(), rows, cols, importance);
    L.w.resize(size_t(rows * cols));
    dequantize_rows(type, L.blocks.data(), L.w.data(), rows, cols);
  }
  types_[size_t(lin)] = type;
}

double BlockQuantizer::probe(int lin, GgmlType type, const BlockData& d, int64_t seqs) {
  std::unique_ptr<Layer> kept = std::move(layers_[size_t(lin)]);
  const GgmlType kept_type = types_[size_t(lin)];
  layers_[size_t(lin)] = std::make_unique<Layer>();
  double e = 0;
  try {
    set_type(lin, type);
    e = error(d, seqs);
  } catch (...) {
    layers_[size_t(lin)] = std::move(kept);
    types_[size_t(lin)] = kept_type;
    throw;
  }
  layers_[size_t(lin)] = std::move(kept);
  types_[size_t(lin)] = kept_type;
  return e;
}

void BlockQuantizer::set_types(const LayerTypes& types) {
  for (int i = 0; i < kNumLin; ++i)
    if (layers_[size_t(i)]->type != types[size_t(i)] || layers_[size_t(i)]->weights().empty())
      set_type(i, types[size_t(i)]);
}

const std::vector<uint8_t>& BlockQuantizer::blocks(int lin) const { return layers_[size_t(lin)]->data(); }
const std::vector<float>& BlockQuantizer::weights(int lin) const { return layers_[size_t(lin)]->weights(); }
const TrainableMatrix* BlockQuantizer::trainable(int lin) const { return layers_[size_t(lin)]->tm.get(); }

int64_t BlockQuantizer::bytes() const {
  int64_t total = 0;
  for (const auto& L : layers_) total += int64_t(L->data().size());
  return total;
}

BlockParams BlockQuantizer::params() const {
  BlockParams p = fp_;
  for (int i = 0; i < kNumLin; ++i) p.w[size_t(i)] = layers_[size_t(i)]->weights().data();
  return p;
}

void BlockQuantizer::accumulate(const BlockData& d, int64_t off, int64_t count, double& num,
                                double& den) const {
  for (int64_t i = 0; i < count; ++i) {
    const double w = d.channel_weight != nullptr ? d.channel_weight[i % d.dim] : 1.0;
    const double t = d.y[off + i], e = y_[size_t(i)] - t;
    num += w * e * e;
    den += w * t * t;
  }
}

double BlockQuantizer::error(const BlockData& d, int64_t seqs) {
  if (seqs < 0 || seqs > d.seqs) seqs = d.seqs;
  const BlockParams p = params();
  double num = 0, den = 0;
  for (int64_t s0 = 0; s0 < seqs; s0 += opt_.batch) {
    const int64_t n = std::min(opt_.batch, seqs - s0);
    const std::vector<int64_t> lengths(size_t(n), d.n_ctx);
    const int64_t count = n * d.n_ctx * d.dim, off = s0 * d.n_ctx * d.dim;
    y_.resize(size_t(count));
    tape_.forward(p, d.x + off, lengths, y_.data());
    accumulate(d, off, count, num, den);
  }
  return den > 0 ? num / den : 0.0;
}

float scheduled_rate(const TrainPhase& phase, bool decay, int e, int64_t step, int64_t steps) {
  if (!decay || phase.epochs <= 0 || steps <= 0) return phase.lr;
  const float first = phase.lr * (1.0f - float(e) / float(phase.epochs));  // this epoch's first rate
  const float next = phase.lr * (1.0f - float(e + 1) / float(phase.epochs));  // the next epoch's
  return first + (next - first) * float(step) / float(steps);
}

void BlockQuantizer::epoch(const BlockData& d, int64_t seqs, const std::vector<int>& lins,
                           const TrainPhase& phase, int e, TrainReport& rep, std::vector<double>* curve_steps,
                           std::vector<double>* curve_loss) {
  std::array<float*, kNumLin> g{};
  for (int i : lins)
    if (layers_[size_t(i)]->tm) {
      const engine::Weight& w = model_.weight(tensor_name(i));
      grads_[size_t(i)].resize(size_t(w.numel()));
      g[size_t(i)] = grads_[size_t(i)].data();
    }
  if (std::all_of(g.begin(), g.end(), [](float* p) { return p == nullptr; })) return;
  const int64_t steps = seqs / opt_.batch;
  for (int64_t s0 = 0; s0 + opt_.batch <= seqs; s0 += opt_.batch) {
    const float lr = scheduled_rate(phase, opt_.decay, e, s0 / opt_.batch, steps);
    const std::vector<int64_t> lengths(size_t(opt_.batch), d.n_ctx);
    const int64_t count = opt_.batch * d.n_ctx * d.dim, off = s0 * d.n_ctx * d.dim;
    y_.resize(size_t(count));
    dy_.resize(size_t(count));
    const BlockParams p = params();
    tape_.forward(p, d.x + off, lengths, y_.data());
    double num = 0, den = 0;
    accumulate(d, off, count, num, den);
    const float scale = den > 0 ? float(2.0 / den) : 0.0f;
    for (int64_t i = 0; i < count; ++i) {
      const float w = d.channel_weight != nullptr ? d.channel_weight[i % d.dim] : 1.0f;
      dy_[size_t(i)] = scale * w * (y_[size_t(i)] - d.y[off + i]);
    }
    tape_.backward(p, dy_.data(), g);
    for (int i : lins)
      if (g[size_t(i)] != nullptr)
        layers_[size_t(i)]->tm->step(g[size_t(i)], lr, lr * opt_.scale_lr_factor);
    ++rep.steps;
    if (curve_steps != nullptr && den > 0) {
      curve_steps->push_back(double(rep.steps));
      curve_loss->push_back(num / den);
    }
  }
}

void BlockQuantizer::run_schedule(const BlockData& d, int64_t seqs, TrainReport& rep,
                                  std::vector<double>* curve_steps, std::vector<double>* curve_loss) {
  // The best iterate is chosen on a fixed set of sequences after each epoch,
  // as AutoRound keeps its best step: signed steps do not settle.
  const int64_t eval_seqs = std::min(opt_.eval_sequences, d.seqs);
  std::vector<std::pair<int, TrainableMatrix::Params>> best;
  auto save = [&] {
    best.clear();
    for (int i = 0; i < kNumLin; ++i)
      if (layers_[size_t(i)]->tm) best.emplace_back(i, layers_[size_t(i)]->tm->save());
  };
  double best_err = error(d, eval_seqs);
  save();
  const std::pair<const std::vector<int>*, TrainPhase> phases[] = {
      {&kAttn, opt_.attn}, {&kMlp, opt_.mlp}, {&kAll, opt_.joint}};
  for (const auto& [lins, phase] : phases)
    for (int e = 0; e < phase.epochs; ++e) {
      epoch(d, seqs, *lins, phase, e, rep, curve_steps, curve_loss);
      const double err = error(d, eval_seqs);
      if (err < best_err) {
        best_err = err;
        save();
      }
    }
  for (auto& [i, p] : best) layers_[size_t(i)]->tm->restore(p);
}

TrainReport BlockQuantizer::train(const BlockData& d, double threshold) {
  TrainReport rep;
  const double t0 = now_seconds();
  rep.before = error(d);
  const bool any = std::any_of(layers_.begin(), layers_.end(), [](const auto& L) { return L->tm != nullptr; });
  if (!any || d.seqs < opt_.batch) {
    rep.after = rep.before;
    rep.seconds = now_seconds() - t0;
    return rep;
  }
  const int64_t small = std::max(opt_.batch, std::min(opt_.small_sample, d.seqs));
  if (opt_.adaptive && small < d.seqs) {
    std::vector<double> xs, ls;
    run_schedule(d, small, rep, &xs, &ls);
    rep.small_after = error(d);
    const int64_t small_steps = rep.steps;
    if (rep.small_after <= threshold) {
      rep.stopped_early = true;  // the small sample was enough
    } else {
      // The full run repeats the schedule with d.seqs / small times the steps.
      const double full_steps = double(small_steps) * (1.0 + double(d.seqs) / double(small));
      const CurveFit fit = fit_loss_curve(xs, ls);
      if (fit.ok) {
        // The curve is of per-batch training losses; scale it to the error on
        // all sequences by their ratio at the end of the small run.
        const double at_end = fit.predict(double(small_steps));
        const double ratio = at_end > 0 ? rep.small_after / at_end : 1.0;
        rep.predicted = fit.predict(full_steps) * ratio;
      }
      if (fit.ok && rep.predicted > threshold) rep.stopped_early = true;
    }
    if (rep.stopped_early) {
      rep.after = rep.small_after;
      rep.seconds = now_seconds() - t0;
      return rep;
    }
  }
  run_schedule(d, d.seqs, rep, nullptr, nullptr);
  rep.full_run = true;
  rep.after = error(d);
  rep.seconds = now_seconds() - t0;
  return rep;
}

}  // namespace tailor::gradual
