#include "tailor/eval/kld.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include <fmt/format.h>

#include "tailor/eval/softmax.h"
#include "tailor/util/error.h"
#include "tailor/util/parallel.h"

namespace tailor::eval {

namespace {

// llama.cpp's log-prob floor for its 16-bit reference layout.
constexpr float kDenseFloor = -16.0f;

// Mean and standard error of the mean as llama.cpp computes them (no error
// for ten values or fewer).
Estimate mean_and_error(double sum, double sum2, int64_t n) {
  if (n < 1) return {};
  const double m = sum / double(n);
  const double var = sum2 / double(n) - m * m;
  return {m, var > 0 && n > 10 ? std::sqrt(var / double(n - 1)) : 0.0};
}

double covariance(double sa, double sb, double sab, int64_t n) {
  if (n < 10) return 0.0;
  const double c = sab / double(n) - (sa / double(n)) * (sb / double(n));
  return c / double(n - 1);
}

}  // namespace

KldPoint kld_point(std::span<const float> logits, const RefRow& ref) {
  const int64_t n_vocab = int64_t(logits.size());
  const RowSoftmax q = row_softmax(logits);
  if (ref.target < 0 || ref.target >= n_vocab)
    fail("kl-divergence: reference token {} outside vocabulary {}", ref.target, n_vocab);
  KldPoint pt;
  pt.nll = -q.logprob(logits[size_t(ref.target)]);
  pt.nll_base = -double(ref.target_logprob);
  pt.p_diff = std::exp(-pt.nll) - std::exp(-pt.nll_base);

  double kld = 0;
  if (ref.dense()) {
    if (int64_t(ref.logprobs.size()) != n_vocab)
      fail("kl-divergence: reference has {} tokens, model {}", ref.logprobs.size(), n_vocab);
    int32_t top = 0;
    for (int64_t i = 0; i < n_vocab; ++i) {
      const float lp = ref.logprobs[size_t(i)];
      if (lp > ref.logprobs[size_t(top)]) top = int32_t(i);
      if (lp > kDenseFloor) kld += std::exp(double(lp)) * (double(lp) - q.logprob(logits[size_t(i)]));
    }
    pt.same_top = top == q.argmax;
  } else {
    if (ref.ids.size() != ref.logprobs.size()) fail("kl-divergence: reference ids and log-probs differ in count");
    // Model mass inside the reference's top k, relative to the full sum; the
    // tail mass is its complement (clamped: its exact value only matters when
    // it is not tiny, and then the subtraction is accurate).
    double in_mass = 0;
    for (size_t k = 0; k < ref.ids.size(); ++k) {
      const int32_t id = ref.ids[k];
      if (id < 0 || id >= n_vocab) fail("kl-divergence: reference token {} outside vocabulary {}", id, n_vocab);
      const double lq = q.logprob(logits[size_t(id)]);
      const double lp = ref.logprobs[k];
      kld += std::exp(lp) * (lp - lq);
      in_mass += std::exp(lq);
    }
    if (std::isfinite(ref.tail_logprob)) {
      const double q_tail = std::max(1.0 - in_mass, DBL_MIN);
      pt.ref_tail = std::exp(double(ref.tail_logprob));
      kld += pt.ref_tail * (double(ref.tail_logprob) - std::log(q_tail));
    }
    pt.same_top = ref.ids[0] == q.argmax;
  }
  pt.kld = kld;
  return pt;
}

double percentile_sorted(std::span<const float> v, double fraction) {
  if (v.empty()) fail("percentile of no values");
  if (fraction <= 0) return v.front();
  if (fraction >= 1) return v.back();
  const double pos = fraction * double(v.size() - 1);
  const size_t i = size_t(pos);
  const double f = pos - double(i);
  return (1 - f) * v[i] + f * v[std::min(i + 1, v.size() - 1)];
}

double median_sorted(std::span<const float> v) {
  if (v.empty()) fail("median of no values");
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (double(v[n / 2]) + double(v[n / 2 - 1]));
}

void KldAccumulator::add(const KldPoint& p) {
  sum_nll_ += p.nll;
  sum_nll2_ += p.nll * p.nll;
  sum_base_ += p.nll_base;
  sum_base2_ += p.nll_base * p.nll_base;
  sum_nll_base_ += p.nll * p.nll_base;
  sum_kld_ += p.kld;
  sum_kld2_ += p.kld * p.kld;
  sum_dp_ += p.p_diff;
  const double dp2 = p.p_diff * p.p_diff;
  sum_dp2_ += dp2;
  sum_dp4_ += dp2 * dp2;
  same_top_ += p.same_top;
  sum_tail_ += p.ref_tail;
  ++count_;
  kld_values_.push_back(float(p.kld));
  p_diff_values_.push_back(float(p.p_diff));
}

void KldAccumulator::add_rows(std::span<const float> logits, std::span<const RefRow> refs) {
  if (refs.empty()) return;
  if (logits.size() % refs.size() != 0) fail("kl-divergence: {} logits for {} rows", logits.size(), refs.size());
  const size_t n_vocab = logits.size() / refs.size();
  std::vector<KldPoint> pts(refs.size());
  parallel_for(int64_t(refs.size()), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) pts[size_t(r)] = kld_point(logits.subspan(size_t(r) * n_vocab, n_vocab), refs[size_t(r)]);
  });
  for (const KldPoint& p : pts) add(p);
}

void KldAccumulator::merge(const KldAccumulator& o) {
  sum_nll_ += o.sum_nll_;
  sum_nll2_ += o.sum_nll2_;
  sum_base_ += o.sum_base_;
  sum_base2_ += o.sum_base2_;
  sum_nll_base_ += o.sum_nll_base_;
  sum_kld_ += o.sum_kld_;
  sum_kld2_ += o.sum_kld2_;
  sum_dp_ += o.sum_dp_;
  sum_dp2_ += o.sum_dp2_;
  sum_dp4_ += o.sum_dp4_;
  same_top_ += o.same_top_;
  sum_tail_ += o.sum_tail_;
  count_ += o.count_;
  kld_values_.insert(kld_values_.end(), o.kld_values_.begin(), o.kld_values_.end());
  p_diff_values_.insert(p_diff_values_.end(), o.p_diff_values_.begin(), o.p_diff_values_.end());
}

KldReport KldAccumulator::report() const {
  if (count_ < 1) fail("kl-divergence: no scored tokens");
  KldReport r;
  const int64_t n = count_;
  r.count = n;
  const Estimate lp = mean_and_error(sum_nll_, sum_nll2_, n);
  const Estimate lb = mean_and_error(sum_base_, sum_base2_, n);
  const double cov = covariance(sum_nll_, sum_base_, sum_nll_base_, n);
  r.ppl = {std::exp(lp.value), std::exp(lp.value) * lp.error};
  r.ppl_base = {std::exp(lb.value), std::exp(lb.value) * lb.error};
  r.ln_ppl_correlation = lp.error > 0 && lb.error > 0 ? cov / (lp.error * lb.error) : 0.0;
  r.ln_ppl_ratio = {lp.value - lb.value,
                    std::sqrt(std::max(0.0, lp.error * lp.error + lb.error * lb.error - 2 * cov))};
  r.ppl_ratio = {std::exp(r.ln_ppl_ratio.value), std::exp(r.ln_ppl_ratio.value) * r.ln_ppl_ratio.error};
  const double ppl_cov = r.ppl.value * r.ppl_base.value * cov;
  r.ppl_diff = {r.ppl.value - r.ppl_base.value,
                std::sqrt(std::max(0.0, r.ppl.error * r.ppl.error + r.ppl_base.error * r.ppl_base.error -
                                            2 * ppl_cov))};
  r.kld = mean_and_error(sum_kld_, sum_kld2_, n);
  r.p_diff = mean_and_error(sum_dp_, sum_dp2_, n);
  const Estimate mse = mean_and_error(sum_dp2_, sum_dp4_, n);
  const double rms = std::sqrt(mse.value);
  r.p_diff_rms = {rms, rms > 0 ? 0.5 / rms * mse.error : 0.0};
  const double top = double(same_top_) / double(n);
  r.mean_ref_tail = sum_tail_ / double(n);
  r.same_top = {top, n > 1 ? std::sqrt(top * (1 - top) / double(n - 1)) : 0.0};

  std::vector<float> k = kld_values_;
  std::sort(k.begin(), k.end());
  r.kld_max = k.back();
  r.kld_min = k.front();
  r.kld_median = median_sorted(k);
  r.kld_p999 = percentile_sorted(k, 0.999);
  r.kld_p99 = percentile_sorted(k, 0.99);
  r.kld_p95 = percentile_sorted(k, 0.95);
  r.kld_p90 = percentile_sorted(k, 0.90);
  r.kld_p10 = percentile_sorted(k, 0.10);
  r.kld_p05 = percentile_sorted(k, 0.05);
  r.kld_p01 = percentile_sorted(k, 0.01);
  r.kld_p001 = percentile_sorted(k, 0.001);

  std::vector<float> d = p_diff_values_;
  std::sort(d.begin(), d.end());
  r.p_diff_max = d.back();
  r.p_diff_min = d.front();
  r.p_diff_median = median_sorted(d);
  r.p_diff_p999 = percentile_sorted(d, 0.999);
  r.p_diff_p99 = percentile_sorted(d, 0.99);
  r.p_diff_p95 = percentile_sorted(d, 0.95);
  r.p_diff_p90 = percentile_sorted(d, 0.90);
  r.p_diff_p75 = percentile_sorted(d, 0.75);
  r.p_diff_p25 = percentile_sorted(d, 0.25);
  r.p_diff_p10 = percentile_sorted(d, 0.10);
  r.p_diff_p05 = percentile_sorted(d, 0.05);
  r.p_diff_p01 = percentile_sorted(d, 0.01);
  r.p_diff_p001 = percentile_sorted(d, 0.001);
  return r;
}

std::string format_kld_report(const KldReport& r) {
  std::string o;
  auto line = [&](const std::string& s) { o += s + "\n"; };
  line("====== Perplexity statistics ======");
  line(fmt::format("Mean PPL(Q)                   : {:10.6f} ± {:10.6f}", r.ppl.value, r.ppl.error));
  line(fmt::format("Mean PPL(base)                : {:10.6f} ± {:10.6f}", r.ppl_base.value, r.ppl_base.error));
  line(fmt::format("Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2f}%", 100 * r.ln_ppl_correlation));
  line(fmt::format("Mean ln(PPL(Q)/PPL(base))     : {:10.6f} ± {:10.6f}", r.ln_ppl_ratio.value, r.ln_ppl_ratio.error));
  line(fmt::format("Mean PPL(Q)/PPL(base)         : {:10.6f} ± {:10.6f}", r.ppl_ratio.value, r.ppl_ratio.error));
  line(fmt::format("Mean PPL(Q)-PPL(base)         : {:10.6f} ± {:10.6f}", r.ppl_diff.value, r.ppl_diff.error));
  line("");
  line("====== KL divergence statistics ======");
  line(fmt::format("Mean    KLD: {:10.6f} ± {:10.6f}", r.kld.value, r.kld.error));
  const std::pair<const char*, double> kld_rows[] = {
      {"Maximum KLD", r.kld_max}, {"99.9%   KLD", r.kld_p999}, {"99.0%   KLD", r.kld_p99},
      {"95.0%   KLD", r.kld_p95},  {"90.0%   KLD", r.kld_p90},  {"Median  KLD", r.kld_median},
      {"10.0%   KLD", r.kld_p10},  {" 5.0%   KLD", r.kld_p05},  {" 1.0%   KLD", r.kld_p01},
      {" 0.1%   KLD", r.kld_p001}, {"Minimum KLD", r.kld_min}};
  for (const auto& [name, v] : kld_rows) line(fmt::format("{}: {:10.6f}", name, v));
  if (r.mean_ref_tail > 0)
    line(fmt::format("Reference tail mass (KLD is a lower bound): {:.4f}%", 100 * r.mean_ref_tail));
  line("");
  line("====== Token probability statistics ======");
  line(fmt::format("Mean    Δp: {:6.3f} ± {:5.3f} %", 100 * r.p_diff.value, 100 * r.p_diff.error));
  const std::pair<const char*, double> dp_rows[] = {
      {"Maximum Δp", r.p_diff_max}, {"99.9%   Δp", r.p_diff_p999}, {"99.0%   Δp", r.p_diff_p99},
      {"95.0%   Δp", r.p_diff_p95}, {"90.0%   Δp", r.p_diff_p90},  {"75.0%   Δp", r.p_diff_p75},
      {"Median  Δp", r.p_diff_median}, {"25.0%   Δp", r.p_diff_p25}, {"10.0%   Δp", r.p_diff_p10},
      {" 5.0%   Δp", r.p_diff_p05}, {" 1.0%   Δp", r.p_diff_p01},  {" 0.1%   Δp", r.p_diff_p001},
      {"Minimum Δp", r.p_diff_min}};
  for (const auto& [name, v] : dp_rows) line(fmt::format("{}: {:6.3f}%", name, 100 * v));
  line(fmt::format("RMS Δp    : {:6.3f} ± {:5.3f} %", 100 * r.p_diff_rms.value, 100 * r.p_diff_rms.error));
  line(fmt::format("Same top p: {:6.3f} ± {:5.3f} %", 100 * r.same_top.value, 100 * r.same_top.error));
  return o;
}

}  // namespace tailor::eval
