#include "tailor/engine/perplexity.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "tailor/util/error.h"

namespace tailor::engine {

double log_sum_exp(const float* x, int64_t n) {
  const float mx = *std::max_element(x, x + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - mx);
  return mx + std::log(sum);
}

PerplexityResult perplexity(Model& model, std::span<const int32_t> ids, int64_t window,
                            int64_t batch, int64_t max_windows) {
  if (window < 2 || batch < 1) fail("perplexity: window {} or batch {} is too small", window, batch);
  int64_t windows = static_cast<int64_t>(ids.size()) / window;
  if (max_windows >= 0) windows = std::min(windows, max_windows);
  if (windows == 0) fail("perplexity: {} ids do not fill one window of {}", ids.size(), window);
  double nll = 0;
  int64_t scored = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    Sequences seqs;
    for (int64_t w = w0; w < std::min(windows, w0 + batch); ++w)
      seqs.emplace_back(ids.begin() + w * window, ids.begin() + (w + 1) * window);
    model.forward(seqs, [&](size_t b, const float* logits, int64_t len, int64_t vocab) {
      const std::vector<int32_t>& seq = seqs[b];
      // Position t predicts token t + 1.
      for (int64_t t = 0; t + 1 < len; ++t) {
        const float* row = logits + t * vocab;
        nll += log_sum_exp(row, vocab) - row[seq[static_cast<size_t>(t + 1)]];
        ++scored;
      }
    });
  }
  PerplexityResult r;
  r.scored = scored;
  r.windows = windows;
  r.mean_nll = nll / static_cast<double>(scored);
  r.ppl = std::exp(r.mean_nll);
  return r;
}

std::vector<int32_t> read_token_ids(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  std::vector<int32_t> ids;
  int64_t v = 0;
  while (in >> v) {
    if (v < 0 || v > INT32_MAX) fail("{}: token id {} is out of range", path, v);
    ids.push_back(static_cast<int32_t>(v));
  }
  if (!in.eof()) fail("{}: not a list of integer token ids (entry {})", path, ids.size() + 1);
  return ids;
}

}  // namespace tailor::engine
