// End-to-end cost of quantizing ONE tensor, fast: the unquantized model's
// residual stream at every block input and its reference distributions are
// cached once for a set of eval windows; a tensor of block i is then measured
// by re-running blocks i..L-1 and the output layer from the cached input
// (the output layer alone for output.weight, everything from the lookup for
// token_embd). Windows are evaluated in growing batches and a unit stops as
// soon as its mean KL divergence is precise enough or clearly negligible.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tailor/engine/model.h"
#include "tailor/eval/kld.h"

namespace tailor::analysis {

struct CacheOptions {
  int64_t n_ctx = 256;      // tokens per window; every position after the first is scored
  int64_t max_windows = 16;
  int64_t top_k = 64;       // reference tokens kept per position (tail as one bucket)
  // Hidden-state cache bound: windows beyond it are dropped (at least one is kept).
  int64_t max_cache_bytes = int64_t(2) << 30;
  // Off: keep only the reference distributions (for measure_model, which
  // always runs from the embedding) and spend no memory on hidden states.
  bool keep_block_inputs = true;
};

struct AdaptiveOptions {
  int64_t first_batch = 2;        // windows in the first batch; each later batch doubles the total
  // se = max(per-token, per-window standard error).
  double max_rel_error = 0.10;    // stop when se / KLD falls below this
  // ... but only once this many windows are in: the spread of two or three
  // window means is too noisy to trust (bench_measure saw 25% misses with two).
  int64_t min_windows_precise = 4;
  double noise_floor = 1e-4;      // stop when KLD + 2 se is below this (nats)
  int64_t max_windows = -1;       // -1: all cached windows
};

enum class StopReason { Precise, BelowFloor, Exhausted };
const char* stop_reason_name(StopReason r);

struct EndToEnd {
  // Mean KL(base || quantized) and PPL(Q) - PPL(base), errors as llama.cpp
  // computes them (tokens taken as independent).
  eval::Estimate kld, ppl_diff;
  // Standard error of the KLD from the spread of per-window means (0 with one
  // window). Tokens of one window are correlated, so the per-token error
  // understates the uncertainty; stopping uses the larger of the two.
  double kld_window_error = 0;
  double ppl = 0, ppl_base = 0;
  int64_t tokens = 0, windows = 0;
  StopReason stop = StopReason::Exhausted;
  double seconds = 0;
};

class BlockCache {
 public:
  // Runs the unquantized model once over the first windows of `tokens`.
  BlockCache(engine::Model& model, const std::vector<int32_t>& tokens, const CacheOptions& opt = {});

  int64_t windows() const { return int64_t(windows_.size()); }
  int64_t bytes() const;
  int64_t dropped_windows() const { return dropped_; }

  // Swaps `replacement` in for tensor `name`, measures against the cached
  // reference, and restores the original weights (also on error).
  EndToEnd measure(const std::string& name, engine::Weight replacement, const AdaptiveOptions& opt = {});
  // The same with a full forward pass over windows [0, n_windows): the naive
  // method, for checks and benchmarks.
  EndToEnd measure_naive(const std::string& name, engine::Weight replacement, int64_t n_windows);

  // The model as it is now (any number of tensors swapped by the caller)
  // against the reference, over every cached window from the embedding.
  eval::KldReport measure_model();

  // The model as it is now (any tensors swapped or blocks changed by the
  // caller) against the reference over windows [0, n_windows) (-1: all),
  // running blocks [first_block, L) and the output layer. Each window starts
  // from `inputs(w)` when given (n_ctx x hidden floats, e.g. the residual
  // stream of a differently quantized model), else from the cached
  // unquantized input of `input_block` (-1: of first_block). With
  // input_block = i and first_block = i + 1, block i is skipped.
  // `after_block(first_window, block, h)` sees the batch's residual stream
  // after every block run (windows first_window.. stacked in h).
  using InputFn = std::function<const std::vector<float>&(int64_t window)>;
  using AfterBlockFn = std::function<void(int64_t first_window, int64_t block, const engine::Hidden& h)>;
  EndToEnd measure_from(int64_t first_block, int64_t input_block = -1, int64_t n_windows = -1,
                        const InputFn& inputs = {}, const AfterBlockFn& after_block = {});

  // The cached unquantized residual stream of window w at the input of block
  // b (0..L-1) or of the output layer (b = L), n_ctx x hidden floats.
  const std::vector<float>& block_input(int64_t window, int64_t block) const;
  int64_t n_ctx() const { return opt_.n_ctx; }

  // Where a change to `name` enters: the block index (0..L-1), L for the
  // output layer alone, -1 for the embedding (everything re-runs).
  int64_t entry_block(const std::string& name) const;

 private:
  struct Window {
    std::vector<int32_t> tokens;
    std::vector<std::vector<float>> inputs;  // [L+1]: block inputs, then the output layer's input
    std::vector<int32_t> ids;                 // [rows][k] reference top-k
    std::vector<float> logprobs;              // [rows][k]
    std::vector<float> tails, target_logprobs;
  };
  void add_window_refs(Window& w, const float* logits, int64_t length, int64_t vocab);
  // Adds the window's rows to acc and returns the window's mean KLD.
  double score(const Window& w, const float* logits, int64_t length, int64_t vocab,
               eval::KldAccumulator& acc) const;
  // Runs windows [first, first + count) from block `entry` (-1: from the
  // embedding), each starting from input(w) (empty: the cached input of entry).
  void run_batch(int64_t entry, int64_t first, int64_t count, eval::KldAccumulator& acc,
                 std::vector<double>& window_klds, const InputFn& input = {},
                 const AfterBlockFn& after_block = {});

  engine::Model& model_;
  CacheOptions opt_;
  std::vector<Window> windows_;
  int64_t dropped_ = 0;
};

}  // namespace tailor::analysis
