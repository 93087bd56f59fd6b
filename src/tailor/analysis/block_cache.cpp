#include "tailor/analysis/block_cache.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <numeric>

#include "tailor/eval/softmax.h"
#include "tailor/util/error.h"

namespace tailor::analysis {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Precise: return "precise";
    case StopReason::BelowFloor: return "below noise floor";
    case StopReason::Exhausted: return "all windows used";
  }
  return "?";
}

BlockCache::BlockCache(engine::Model& model, const std::vector<int32_t>& tokens, const CacheOptions& opt)
    : model_(model), opt_(opt) {
  if (opt.n_ctx < 2) fail("block cache: n_ctx {} is below 2", opt.n_ctx);
  if (opt.top_k < 1) fail("block cache: top_k {} is below 1", opt.top_k);
  const int64_t available = int64_t(tokens.size()) / opt.n_ctx;
  if (available < 1) fail("block cache: {} tokens hold no window of {}", tokens.size(), opt.n_ctx);
  int64_t n = opt.max_windows < 0 ? available : std::min(available, opt.max_windows);
  const int64_t layers = model.num_layers();
  const int64_t dim = model.config().hidden_size;
  const int64_t per_window =
      opt.keep_block_inputs ? (layers + 1) * opt.n_ctx * dim * int64_t(sizeof(float)) : opt.n_ctx * opt.top_k * 8;
  const int64_t fit = std::max<int64_t>(1, opt.max_cache_bytes / std::max<int64_t>(1, per_window));
  if (n > fit) dropped_ = n - fit, n = fit;
  windows_.resize(size_t(n));
  for (int64_t w = 0; w < n; ++w) {
    Window& win = windows_[size_t(w)];
    win.tokens.assign(tokens.begin() + w * opt.n_ctx, tokens.begin() + (w + 1) * opt.n_ctx);
    engine::Hidden h = model.embed({win.tokens});
    for (int64_t i = 0; i < layers; ++i) {
      if (opt.keep_block_inputs) win.inputs.push_back(h.data);
      model.run_block(i, h);
    }
    if (opt.keep_block_inputs) win.inputs.push_back(h.data);
    model.final_logits(h, [&](size_t, const float* logits, int64_t length, int64_t vocab) {
      add_window_refs(win, logits, length, vocab);
    });
  }
}

int64_t BlockCache::bytes() const {
  int64_t b = 0;
  for (const Window& w : windows_) {
    for (const auto& v : w.inputs) b += int64_t(v.size() * sizeof(float));
    b += int64_t(w.ids.size() * 4 + w.logprobs.size() * 4 + w.tails.size() * 4 +
                 w.target_logprobs.size() * 4);
  }
  return b;
}

void BlockCache::add_window_refs(Window& w, const float* logits, int64_t length, int64_t vocab) {
  const int64_t k = std::min(opt_.top_k, vocab);
  std::vector<double> lp(static_cast<size_t>(vocab));
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  for (int64_t r = 0; r + 1 < length; ++r) {
    const float* row = logits + r * vocab;
    const eval::RowSoftmax sm = eval::row_softmax(std::span<const float>(row, size_t(vocab)));
    for (int64_t v = 0; v < vocab; ++v) lp[size_t(v)] = sm.logprob(row[v]);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return lp[size_t(a)] != lp[size_t(b)] ? lp[size_t(a)] > lp[size_t(b)] : a < b;
    });
    double rest = 0;  // mass outside the top k, summed directly for precision
    for (int64_t i = k; i < vocab; ++i) rest += std::exp(lp[size_t(order[size_t(i)])]);
    for (int64_t i = 0; i < k; ++i) {
      w.ids.push_back(order[size_t(i)]);
      w.logprobs.push_back(float(lp[size_t(order[size_t(i)])]));
    }
    w.tails.push_back(rest > 0 ? float(std::log(rest)) : -INFINITY);
    w.target_logprobs.push_back(float(lp[size_t(w.tokens[size_t(r + 1)])]));
  }
}

double BlockCache::score(const Window& w, const float* logits, int64_t length, int64_t vocab,
                         eval::KldAccumulator& acc) const {
  const int64_t rows = length - 1, k = std::min(opt_.top_k, vocab);
  std::vector<eval::RefRow> refs(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    eval::RefRow& ref = refs[size_t(r)];
    ref.target = w.tokens[size_t(r + 1)];
    ref.target_logprob = w.target_logprobs[size_t(r)];
    ref.ids = std::span<const int32_t>(w.ids.data() + r * k, size_t(k));
    ref.logprobs = std::span<const float>(w.logprobs.data() + r * k, size_t(k));
    ref.tail_logprob = w.tails[size_t(r)];
  }
  eval::KldAccumulator one;
  one.add_rows(std::span<const float>(logits, size_t(rows * vocab)), refs);
  acc.merge(one);
  return one.report().kld.value;
}

int64_t BlockCache::entry_block(const std::string& name) const {
  const int64_t layers = model_.num_layers();
  if (name == "output.weight" || name == "output_norm.weight") return layers;
  if (name.starts_with("blk.")) {
    int64_t i = -1;
    const char* b = name.data() + 4;
    const auto [p, ec] = std::from_chars(b, name.data() + name.size(), i);
    if (ec == std::errc() && *p == '.' && i >= 0 && i < layers) return i;
  }
  return -1;  // the embedding, or anything else: re-run everything
}

eval::KldReport BlockCache::measure_model() {
  eval::KldAccumulator acc;
  std::vector<double> window_klds;
  const int64_t batch = 4;
  for (int64_t first = 0; first < windows(); first += batch)
    run_batch(-1, first, std::min(batch, windows() - first), acc, window_klds);
  return acc.report();
}

void BlockCache::run_batch(int64_t entry, int64_t first, int64_t count, eval::KldAccumulator& acc,
                           std::vector<double>& window_klds, const InputFn& input,
                           const AfterBlockFn& after_block) {
  engine::Hidden h;
  int64_t start = entry;
  if (entry < 0) {
    engine::Sequences seqs;
    for (int64_t w = first; w < first + count; ++w) seqs.push_back(windows_[size_t(w)].tokens);
    h = model_.embed(seqs);
    start = 0;
  } else {
    h.dim = model_.config().hidden_size;
    for (int64_t w = first; w < first + count; ++w) {
      const auto& in = input ? input(w) : windows_[size_t(w)].inputs[size_t(entry)];
      if (int64_t(in.size()) != opt_.n_ctx * h.dim)
        fail("block cache: window {} input holds {} floats, not {} x {}", w, in.size(), opt_.n_ctx, h.dim);
      h.lengths.push_back(opt_.n_ctx);
      h.data.insert(h.data.end(), in.begin(), in.end());
    }
  }
  for (int64_t i = start; i < model_.num_layers(); ++i) {
    model_.run_block(i, h);
    if (after_block) after_block(first, i, h);
  }
  model_.final_logits(h, [&](size_t seq, const float* logits, int64_t length, int64_t vocab) {
    window_klds.push_back(score(windows_[size_t(first) + seq], logits, length, vocab, acc));
  });
}

const std::vector<float>& BlockCache::block_input(int64_t window, int64_t block) const {
  if (!opt_.keep_block_inputs) fail("block cache: block inputs were not kept");
  if (window < 0 || window >= windows() || block < 0 || block > model_.num_layers())
    fail("block cache: no cached input for window {} of block {}", window, block);
  return windows_[size_t(window)].inputs[size_t(block)];
}

namespace {

// Standard error of the mean of the per-window values (windows hold equal token counts).
double window_error(const std::vector<double>& v) {
  const size_t n = v.size();
  if (n < 2) return 0;
  double mean = 0, ss = 0;
  for (double x : v) mean += x;
  mean /= double(n);
  for (double x : v) ss += (x - mean) * (x - mean);
  return std::sqrt(ss / double(n - 1) / double(n));
}

EndToEnd result_of(const eval::KldAccumulator& acc, const std::vector<double>& window_klds) {
  const eval::KldReport r = acc.report();
  EndToEnd e;
  e.kld = r.kld;
  e.ppl_diff = r.ppl_diff;
  e.ppl = r.ppl.value;
  e.ppl_base = r.ppl_base.value;
  e.tokens = r.count;
  e.kld_window_error = window_error(window_klds);
  return e;
}

// Puts the original tensor back however the measurement ends.
class SwapGuard {
 public:
  SwapGuard(engine::Model& m, const std::string& name, engine::Weight w)
      : m_(m), name_(name), old_(m.swap_weight(name, std::move(w))) {}
  ~SwapGuard() { m_.swap_weight(name_, std::move(old_)); }
  SwapGuard(const SwapGuard&) = delete;
  SwapGuard& operator=(const SwapGuard&) = delete;

 private:
  engine::Model& m_;
  std::string name_;
  engine::Weight old_;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

EndToEnd BlockCache::measure(const std::string& name, engine::Weight replacement, const AdaptiveOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  int64_t entry = entry_block(name);
  if (!opt_.keep_block_inputs) entry = -1;  // no hidden states: run from the embedding
  const int64_t n = opt.max_windows < 0 ? windows() : std::min(windows(), opt.max_windows);
  eval::KldAccumulator acc;
  std::vector<double> window_klds;
  StopReason stop = StopReason::Exhausted;
  int64_t done = 0;
  {
    SwapGuard guard(model_, name, std::move(replacement));
    int64_t target = std::max<int64_t>(1, opt.first_batch);
    while (done < n) {
      const int64_t count = std::min(target, n) - done;
      run_batch(entry, done, count, acc, window_klds);
      done += count;
      target = done * 2;
      if (acc.count() < 2) continue;
      const double mean = acc.report().kld.value;
      const double se = std::max(acc.report().kld.error, window_error(window_klds));
      if (mean + 2 * se < opt.noise_floor) {
        stop = StopReason::BelowFloor;
        break;
      }
      const int64_t need = std::max<int64_t>(2, opt.min_windows_precise);
      if (int64_t(window_klds.size()) >= need && mean > 0 && se / mean < opt.max_rel_error) {
        stop = StopReason::Precise;
        break;
      }
    }
  }
  EndToEnd e = result_of(acc, window_klds);
  e.windows = done;
  e.stop = stop;
  e.seconds = seconds_since(t0);
  return e;
}

EndToEnd BlockCache::measure_naive(const std::string& name, engine::Weight replacement, int64_t n_windows) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = std::clamp<int64_t>(n_windows, 1, windows());
  eval::KldAccumulator acc;
  std::vector<double> window_klds;
  {
    SwapGuard guard(model_, name, std::move(replacement));
    engine::Sequences seqs;
    for (int64_t w = 0; w < n; ++w) seqs.push_back(windows_[size_t(w)].tokens);
    model_.forward(seqs, [&](size_t seq, const float* logits, int64_t length, int64_t vocab) {
      window_klds.push_back(score(windows_[seq], logits, length, vocab, acc));
    });
  }
  EndToEnd e = result_of(acc, window_klds);
  e.windows = n;
  e.seconds = seconds_since(t0);
  return e;
}

EndToEnd BlockCache::measure_from(int64_t first_block, int64_t input_block, int64_t n_windows,
                                  const InputFn& inputs, const AfterBlockFn& after_block) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t layers = model_.num_layers();
  if (first_block < 0 || first_block > layers)
    fail("block cache: first block {} is outside 0..{}", first_block, layers);
  if (input_block < 0) input_block = first_block;
  if (input_block > layers) fail("block cache: input block {} is outside 0..{}", input_block, layers);
  if (!inputs && !opt_.keep_block_inputs) fail("block cache: block inputs were not kept");
  const int64_t n = n_windows < 0 ? windows() : std::clamp<int64_t>(n_windows, 1, windows());
  // The windows' own inputs when the caller gives none; the batch starts at
  // first_block whichever block the input was cached for.
  const InputFn cached = [&](int64_t w) -> const std::vector<float>& {
    return windows_[size_t(w)].inputs[size_t(input_block)];
  };
  eval::KldAccumulator acc;
  std::vector<double> window_klds;
  const int64_t batch = 8;  // windows per pass: bigger products, bounded memory
  for (int64_t first = 0; first < n; first += batch)
    run_batch(first_block, first, std::min(batch, n - first), acc, window_klds, inputs ? inputs : cached,
              after_block);
  EndToEnd e = result_of(acc, window_klds);
  e.windows = n;
  e.seconds = seconds_since(t0);
  return e;
}

}  // namespace tailor::analysis
