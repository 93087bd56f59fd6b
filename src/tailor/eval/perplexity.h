// Perplexity over a token stream, model-agnostic: the caller supplies a
// function that returns logits for one window of tokens.
//
// Two protocols:
//  - LlamaCpp (llama-perplexity's default): non-overlapping windows of n_ctx
//    tokens, as many whole windows as fit; the first token of each window is
//    replaced by BOS when a BOS id is given; only the second half is scored:
//    logits rows first = n_ctx/2 .. n_ctx-2 predict tokens first+1 .. n_ctx-1,
//    i.e. n_ctx-1-n_ctx/2 tokens per window. Needs at least 2*n_ctx tokens, as
//    llama.cpp does. Results match llama.cpp's "Final estimate: PPL = x +/- e".
//  - HuggingFace: non-overlapping windows of n_ctx tokens (the last one may be
//    shorter), no BOS substitution, every position after the first of each
//    window is scored (rows 0 .. len-2).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

namespace tailor::eval {

enum class PplMethod { LlamaCpp, HuggingFace };

struct PplOptions {
  PplMethod method = PplMethod::LlamaCpp;
  int64_t n_ctx = 512;
  std::optional<int32_t> bos;  // LlamaCpp: replaces each window's first token
  int64_t max_windows = -1;    // -1: all (llama.cpp's --chunks)
  bool keep_token_nll = false; // fill PplResult::token_nll (tests compare per token with llama.cpp)
};

// One window: tokens [start, start+length); logits rows [first_row, length-1)
// are scored, row r predicting token start+r+1.
struct PplWindow {
  int64_t start = 0;
  int64_t length = 0;
  int64_t first_row = 0;
  int64_t n_scored() const { return length - 1 - first_row; }
};

// Throws Error when the stream is too short for the protocol or n_ctx < 2.
std::vector<PplWindow> plan_windows(int64_t n_tokens, const PplOptions& opt);

// Running sum of negative log-likelihoods with llama.cpp's statistics:
// PPL = exp(mean), error = PPL * sqrt((E[nll^2] - mean^2) / (count-1)).
class NllAccumulator {
 public:
  void add(double nll) {
    sum_ += nll;
    sum2_ += nll * nll;
    ++count_;
  }
  void merge(const NllAccumulator& o) {
    sum_ += o.sum_;
    sum2_ += o.sum2_;
    count_ += o.count_;
  }
  int64_t count() const { return count_; }
  double mean_nll() const { return count_ ? sum_ / double(count_) : 0.0; }
  double ppl() const;
  double ppl_error() const;  // 0 when fewer than 2 values or zero variance
  double sum() const { return sum_; }
  double sum2() const { return sum2_; }

 private:
  double sum_ = 0, sum2_ = 0;
  int64_t count_ = 0;
};

// Fills `out` with logits for rows [first_row, first_row + n_rows) of the
// window (row-major, n_vocab per row). `window` already has BOS substituted.
using LogitsFn = std::function<void(std::span<const int32_t> window, int64_t first_row,
                                    int64_t n_rows, std::span<float> out)>;

// What a window produced, for consumers that need the whole rows (the
// reference-logits store, KL divergence). Rows are the scored rows only.
struct ScoredWindow {
  int64_t index = 0;
  const PplWindow* window = nullptr;
  std::span<const int32_t> targets;  // n_scored next tokens
  std::span<const float> logits;     // n_scored * n_vocab
  int64_t n_vocab = 0;
};
using WindowSink = std::function<void(const ScoredWindow&)>;

struct PplResult {
  double ppl = 0, ppl_error = 0, mean_nll = 0;
  int64_t n_scored = 0;
  std::vector<double> running_ppl;    // after each window, as llama.cpp prints "[i]x"
  std::vector<double> running_error;  // its +/- after each window (0 until two tokens)
  std::vector<double> token_nll;      // every scored token in order, when keep_token_nll
};

// Evaluates windows one at a time: memory holds one window's scored logits.
PplResult evaluate_perplexity(std::span<const int32_t> tokens, int64_t n_vocab, const PplOptions& opt,
                              const LogitsFn& logits_fn, const WindowSink& sink = {});

// Adds -log p(target) of each scored row to acc (helper shared with callers
// that produce logits themselves).
// `keep`, when given, receives each row's value too.
void accumulate_nll(std::span<const float> logits, std::span<const int32_t> targets, int64_t n_vocab,
                    NllAccumulator& acc, std::vector<double>* keep = nullptr);

}  // namespace tailor::eval
