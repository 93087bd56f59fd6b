#include "tailor/eval/perplexity.h"

#include <algorithm>
#include <cmath>

#include "tailor/eval/softmax.h"
#include "tailor/util/error.h"
#include "tailor/util/parallel.h"

namespace tailor::eval {

std::vector<PplWindow> plan_windows(int64_t n_tokens, const PplOptions& opt) {
  if (opt.n_ctx < 2) fail("perplexity: context {} is too small (need at least 2 tokens)", opt.n_ctx);
  if (n_tokens < 0) fail("perplexity: negative token count");
  std::vector<PplWindow> out;
  if (opt.method == PplMethod::LlamaCpp) {
    if (opt.n_ctx < 3) fail("perplexity: context {} scores no token with second-half scoring", opt.n_ctx);
    if (n_tokens < 2 * opt.n_ctx)
      fail("perplexity: {} tokens, need at least {} for a context of {}", n_tokens, 2 * opt.n_ctx,
           opt.n_ctx);
    int64_t n = n_tokens / opt.n_ctx;
    if (opt.max_windows >= 0) n = std::min(n, opt.max_windows);
    for (int64_t i = 0; i < n; ++i) out.push_back({i * opt.n_ctx, opt.n_ctx, opt.n_ctx / 2});
  } else {
    for (int64_t s = 0; s + 1 < n_tokens; s += opt.n_ctx) {
      if (opt.max_windows >= 0 && int64_t(out.size()) >= opt.max_windows) break;
      out.push_back({s, std::min(opt.n_ctx, n_tokens - s), 0});
    }
    if (out.empty()) fail("perplexity: {} tokens, need at least 2", n_tokens);
  }
  return out;
}

double NllAccumulator::ppl() const { return std::exp(mean_nll()); }

double NllAccumulator::ppl_error() const {
  if (count_ < 2) return 0.0;
  const double m = mean_nll();
  const double var = sum2_ / double(count_) - m * m;
  return var > 0 ? ppl() * std::sqrt(var / double(count_ - 1)) : 0.0;
}

void accumulate_nll(std::span<const float> logits, std::span<const int32_t> targets, int64_t n_vocab,
                    NllAccumulator& acc, std::vector<double>* keep) {
  if (n_vocab < 1 || logits.size() != targets.size() * size_t(n_vocab))
    fail("perplexity: {} logits for {} targets of vocabulary {}", logits.size(), targets.size(), n_vocab);
  for (const int32_t t : targets)
    if (t < 0 || t >= n_vocab) fail("perplexity: token id {} outside vocabulary {}", t, n_vocab);
  // Rows in parallel, sums in row order: the result does not depend on the thread count.
  std::vector<double> nll(targets.size());
  parallel_for(int64_t(targets.size()), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const auto row = logits.subspan(size_t(r) * size_t(n_vocab), size_t(n_vocab));
      nll[size_t(r)] = -row_softmax(row).logprob(row[size_t(targets[size_t(r)])]);
    }
  });
  for (const double v : nll) acc.add(v);
  if (keep) keep->insert(keep->end(), nll.begin(), nll.end());
}

PplResult evaluate_perplexity(std::span<const int32_t> tokens, int64_t n_vocab, const PplOptions& opt,
                              const LogitsFn& logits_fn, const WindowSink& sink) {
  if (n_vocab < 1) fail("perplexity: vocabulary size {}", n_vocab);
  if (opt.bos && (*opt.bos < 0 || *opt.bos >= n_vocab))
    fail("perplexity: BOS id {} outside vocabulary {}", *opt.bos, n_vocab);
  const auto windows = plan_windows(int64_t(tokens.size()), opt);
  NllAccumulator acc;
  PplResult res;
  std::vector<int32_t> win;
  std::vector<float> logits;
  for (size_t w = 0; w < windows.size(); ++w) {
    const PplWindow& pw = windows[w];
    win.assign(tokens.begin() + pw.start, tokens.begin() + pw.start + pw.length);
    if (opt.method == PplMethod::LlamaCpp && opt.bos) win[0] = *opt.bos;
    const int64_t n_rows = pw.n_scored();
    logits.assign(size_t(n_rows) * size_t(n_vocab), 0.0f);
    logits_fn(win, pw.first_row, n_rows, logits);
    // Targets come from the original stream, never from the BOS-substituted copy.
    const auto targets = tokens.subspan(size_t(pw.start + pw.first_row + 1), size_t(n_rows));
    accumulate_nll(logits, targets, n_vocab, acc, opt.keep_token_nll ? &res.token_nll : nullptr);
    res.running_ppl.push_back(acc.ppl());
    res.running_error.push_back(acc.ppl_error());
    if (sink) sink(ScoredWindow{int64_t(w), &pw, targets, logits, n_vocab});
  }
  res.ppl = acc.ppl();
  res.ppl_error = acc.ppl_error();
  res.mean_nll = acc.mean_nll();
  res.n_scored = acc.count();
  return res;
}

}  // namespace tailor::eval
