// Reference distributions saved from a base model (`--save-logits FILE`) for
// later KL divergence runs, written one window at a time.
//
// Why our own top-k format: llama.cpp's --kl-divergence-base file keeps every
// vocabulary entry as a 16-bit code, 2*n_vocab bytes per scored token (about
// 300 KB at a 152k vocabulary, 7.7 GB for 100 windows of 512). We keep, per
// scored token, the most likely tokens until they cover `coverage` of the
// probability (at least min_k, at most max_k of them) plus the log of the
// remaining mass: 16 + 8n bytes per token, n = 32..2048 by default, so two to
// four orders of magnitude less. The KL divergence computed with the tail as
// one bucket is a lower bound of the exact value (coarse-graining never
// raises a divergence); the gap is roughly the divergence carried by the tail
// tokens, roughly (tail mass) x (KLD), which is why the number of kept tokens
// adapts to the mass rather than being a fixed k. Measured on synthetic rows
// over 32k tokens (tests/test_eval_metrics.cpp prints the table): fixed k = 32
// loses 15% of the KLD on Zipf(1.5)-shaped logits and 53% on Zipf(1.1); the
// default (coverage 0.999, at most 2048) loses 1.9% and 16%; llama.cpp's
// 16-bit layout 0.2% and 0.01%. So this store is for peaked distributions and
// for size; KldReport::mean_ref_tail says how loose the bound is on a run,
// and the llama.cpp layout is the choice when exactness matters more than
// space. For compatibility both directions of llama.cpp's layout are
// supported: LlamaLogitsWriter makes a file llama-perplexity --kl-divergence accepts and
// LogitStore reads files written by llama-perplexity --kl-divergence-base.
//
// Tailor top-k layout, little-endian, every field 4-byte aligned:
//   header   char[8] "TLRLOGP1", u32 version = 1, u32 n_vocab, u32 max_k,
//            u32 n_ctx, u32 first_row, u32 min_k                  (32 bytes)
//   window   u32 tag 0x57444e57 ("WNDW"), u32 n_rows, u64 start token
//            then n_rows records:
//              i32 target, f32 log p(target), f32 log(tail mass) (-inf if none),
//              u32 n (min(min_k, n_vocab) <= n <= max_k),
//              i32 ids[n], f32 logprobs[n]   (descending by logit; ties: lower id first)
//   trailer  char[8] "TLREND01", u64 n_windows, u64 n_rows in all   (24 bytes)
// Log-probs are computed in double from the f32 logits and stored as f32.
//
// llama.cpp layout (tools/perplexity): char[8] "_logits_", u32 n_ctx,
// i32 n_vocab, i32 n_chunk, i32 tokens[n_chunk*n_ctx], then for each chunk
// n_ctx-1-n_ctx/2 records of nv = 2*((n_vocab+1)/2)+4 u16: f32 scale and f32
// min_log_prob in the first four, then one code per token:
// log p = scale*code + min_log_prob, codes span [max-16, max] of the logits.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tailor/eval/kld.h"
#include "tailor/util/atomic_file.h"
#include "tailor/util/mapped_file.h"

namespace tailor::eval {

// How many tokens each record keeps: the fewest, within [min_k, max_k],
// whose probabilities add up to at least `coverage`.
struct TopKOptions {
  int64_t min_k = 32;
  int64_t max_k = 2048;
  double coverage = 0.999;
};

class TopKLogitsWriter {
 public:
  TopKLogitsWriter(std::string path, int64_t n_vocab, int64_t n_ctx, int64_t first_row,
                   TopKOptions opt = {});
  // One window: n_rows = targets.size(), logits holds n_rows * n_vocab.
  void add_window(int64_t start, std::span<const int32_t> targets, std::span<const float> logits);
  void commit();  // writes the trailer and renames into place

 private:
  void encode_row(std::span<const float> row, int32_t target, std::vector<int32_t>& order,
                  std::vector<uint8_t>& out) const;
  AtomicFile out_;
  int64_t n_vocab_;
  TopKOptions opt_;
  uint64_t n_windows_ = 0, n_rows_ = 0;
  std::vector<uint8_t> record_;
};

class LlamaLogitsWriter {
 public:
  // tokens: the original stream, n_chunk * n_ctx of them (before BOS substitution).
  LlamaLogitsWriter(std::string path, int64_t n_vocab, int64_t n_ctx, std::span<const int32_t> tokens);
  // Exactly n_ctx-1-n_ctx/2 scored rows per window, in window order.
  void add_window(std::span<const float> logits);
  void commit();  // throws Error unless every chunk was written

 private:
  AtomicFile out_;
  int64_t n_vocab_, n_ctx_, n_chunk_, written_ = 0;
  std::vector<uint16_t> record_;
};

// Reads either layout (detected by its magic). Structure is checked at open;
// each row's values when it is read. Any problem: Error("<path>: ...").
class LogitStore {
 public:
  static LogitStore open(const std::string& path);

  bool is_llama() const { return llama_; }
  int64_t n_vocab() const { return n_vocab_; }
  int64_t max_k() const { return max_k_; }  // 0 for llama.cpp's dense layout
  int64_t min_k() const { return min_k_; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t first_row() const { return first_row_; }
  int64_t n_windows() const { return int64_t(windows_.size()); }
  int64_t n_rows(int64_t window) const;
  int64_t window_start(int64_t window) const;
  int64_t total_rows() const;
  // llama.cpp layout only: the evaluation tokens stored in the file.
  std::span<const int32_t> tokens() const { return tokens_; }
  // Views stay valid until the next call on this object (dense rows are
  // decoded into a scratch buffer).
  RefRow row(int64_t window, int64_t r);

 private:
  struct Window {
    uint64_t offset;  // llama layout: first record; top-k: index into row_offsets_
    int64_t n_rows, start;
  };
  const std::string& path() const { return file_->path(); }
  std::shared_ptr<MappedFile> file_;
  bool llama_ = false;
  int64_t n_vocab_ = 0, max_k_ = 0, min_k_ = 0, n_ctx_ = 0, first_row_ = 0;
  uint64_t record_bytes_ = 0;  // llama layout
  std::vector<Window> windows_;
  std::vector<uint64_t> row_offsets_;  // top-k layout: every record's file offset
  std::vector<int32_t> tokens_;
  std::vector<float> dense_;
};

}  // namespace tailor::eval
