#include "tailor/eval/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "tailor/eval/softmax.h"
#include "tailor/util/error.h"

namespace tailor::eval {

int32_t sample_token(std::span<const float> logits, const SampleOptions& opt, double u) {
  const RowSoftmax sm = row_softmax(logits);  // also refuses NaN / inf
  if (opt.temperature <= 0) return sm.argmax;
  const int64_t n = int64_t(logits.size());
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = opt.top_k > 0 ? std::min(opt.top_k, n) : n;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), by_logit);
  order.resize(size_t(k));
  // Probabilities at the temperature, over the kept tokens, in double.
  std::vector<double> p(static_cast<size_t>(k));
  const double top = logits[size_t(order[0])];
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) sum += p[size_t(i)] = std::exp((logits[size_t(order[size_t(i)])] - top) / opt.temperature);
  // Nucleus: keep the shortest prefix whose mass reaches top_p.
  int64_t keep = k;
  if (opt.top_p < 1.0) {
    double acc = 0;
    for (int64_t i = 0; i < k; ++i) {
      acc += p[size_t(i)] / sum;
      if (acc >= opt.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double mass = 0;
  for (int64_t i = 0; i < keep; ++i) mass += p[size_t(i)];
  double target = u * mass;
  for (int64_t i = 0; i < keep; ++i) {
    target -= p[size_t(i)];
    if (target < 0) return order[size_t(i)];
  }
  return order[size_t(keep - 1)];
}

std::vector<int32_t> generate(engine::Model& model, std::vector<int32_t> seq, const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token) {
  if (seq.empty()) fail("generate: the prompt gives no tokens");
  const int64_t vocab = model.vocab_size();
  for (int32_t t : seq)
    if (t < 0 || t >= vocab) fail("generate: prompt token {} outside the vocabulary of {}", t, vocab);
  std::mt19937_64 rng(opt.sample.seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<int32_t> out;
  std::vector<float> last(static_cast<size_t>(vocab));
  for (int64_t step = 0; step < opt.max_new_tokens; ++step) {
    // No KV cache: the whole sequence runs again; only the last row is used.
    model.forward(engine::Sequences{seq}, [&](size_t, const float* logits, int64_t length, int64_t v) {
      std::copy(logits + (length - 1) * v, logits + length * v, last.begin());
    });
    const int32_t t = sample_token(last, opt.sample, uniform(rng));
    seq.push_back(t);
    out.push_back(t);
    if (on_token) on_token(t);
    if (t == opt.stop_token) break;
  }
  return out;
}

}  // namespace tailor::eval
