// KL divergence of a model against a saved reference distribution, with
// llama.cpp's statistics (llama-perplexity --kl-divergence): mean KLD and its
// standard error, percentiles, "same top p", PPL(Q) vs PPL(base) as a log
// ratio and a difference with covariance-aware errors, and Δp = p - p_base of
// the actual next token.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tailor::eval {

// The reference (base model) distribution at one scored position.
//  - sparse (top-k store): ids/logprobs hold the k most likely tokens, sorted
//    by descending probability (ties: lower id first); tail_logprob is the log
//    of the remaining mass, -inf when none.
//  - dense (llama.cpp's file): ids is empty and logprobs has one entry per
//    vocabulary token.
struct RefRow {
  int32_t target = 0;        // the token that actually followed
  float target_logprob = 0;  // base log p(target), exact even when target is not in the top k
  std::span<const int32_t> ids;
  std::span<const float> logprobs;
  float tail_logprob = 0;
  bool dense() const { return ids.empty(); }
};

// KL(P_ref || Q_model) for one position, in double. Sparse rows treat the
// tail as a single bucket, which never exceeds the exact divergence (a
// coarse-graining of both distributions). Dense rows skip tokens with log
// p_ref <= -16 as llama.cpp does (its 16-bit layout cannot represent them).
struct KldPoint {
  double kld = 0;
  double nll = 0, nll_base = 0;  // -log q(target), -log p(target)
  bool same_top = false;
  double p_diff = 0;             // q(target) - p(target)
  double ref_tail = 0;           // reference mass outside the stored tokens (0 for dense rows)
};
KldPoint kld_point(std::span<const float> logits, const RefRow& ref);

struct Estimate {
  double value = 0, error = 0;
};

// Percentile with linear interpolation between sorted neighbours, the rule
// llama.cpp uses (fraction in [0,1]; values must be sorted and non-empty).
double percentile_sorted(std::span<const float> sorted, double fraction);
// Median: the middle value or the mean of the two middle values.
double median_sorted(std::span<const float> sorted);

struct KldReport {
  int64_t count = 0;
  Estimate ppl, ppl_base, ln_ppl_ratio, ppl_ratio, ppl_diff;
  double ln_ppl_correlation = 0;
  Estimate kld;
  double kld_max = 0, kld_p999 = 0, kld_p99 = 0, kld_p95 = 0, kld_p90 = 0, kld_median = 0,
         kld_p10 = 0, kld_p05 = 0, kld_p01 = 0, kld_p001 = 0, kld_min = 0;
  Estimate p_diff;      // mean Δp (a fraction, not percent)
  Estimate p_diff_rms;
  double p_diff_max = 0, p_diff_p999 = 0, p_diff_p99 = 0, p_diff_p95 = 0, p_diff_p90 = 0,
         p_diff_p75 = 0, p_diff_median = 0, p_diff_p25 = 0, p_diff_p10 = 0, p_diff_p05 = 0,
         p_diff_p01 = 0, p_diff_p001 = 0, p_diff_min = 0;
  Estimate same_top;    // fraction of positions whose argmax agrees
  // Mean reference mass outside the stored top tokens. The top-k KLD is a
  // lower bound whose relative gap is of this order: report it next to the KLD.
  double mean_ref_tail = 0;
};

// The report in llama-perplexity's wording and order (three sections:
// perplexity, KL divergence, token probability), one statistic per line.
std::string format_kld_report(const KldReport& r);

// Sums and per-position values. Memory: two floats per scored token (the
// percentiles need them all), as in llama.cpp.
class KldAccumulator {
 public:
  void add(const KldPoint& p);
  void add(std::span<const float> logits, const RefRow& ref) { add(kld_point(logits, ref)); }
  // A window of rows (logits: refs.size() * n_vocab) computed in parallel and
  // added in order, so results do not depend on the thread count.
  void add_rows(std::span<const float> logits, std::span<const RefRow> refs);
  void merge(const KldAccumulator& o);
  int64_t count() const { return count_; }
  // Throws Error when nothing was added.
  KldReport report() const;

 private:
  double sum_nll_ = 0, sum_nll2_ = 0, sum_base_ = 0, sum_base2_ = 0, sum_nll_base_ = 0;
  double sum_kld_ = 0, sum_kld2_ = 0, sum_dp_ = 0, sum_dp2_ = 0, sum_dp4_ = 0, sum_tail_ = 0;
  int64_t same_top_ = 0, count_ = 0;
  std::vector<float> kld_values_, p_diff_values_;
};

}  // namespace tailor::eval
