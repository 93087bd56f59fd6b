// Perplexity the way Hugging Face evaluation scripts compute it: the ids are
// cut into consecutive windows of `window` tokens (a trailing partial window
// is dropped), each window runs as its own sequence, and every position
// after the first of each window is scored (not llama.cpp's second half).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tailor/engine/model.h"

namespace tailor::engine {

struct PerplexityResult {
  double ppl = 0;
  double mean_nll = 0;   // natural log
  int64_t scored = 0;    // positions scored
  int64_t windows = 0;
};

// `batch` windows share one forward pass; max_windows < 0 takes them all.
PerplexityResult perplexity(Model& model, std::span<const int32_t> ids, int64_t window,
                            int64_t batch, int64_t max_windows = -1);

// Whitespace-separated token ids, as in the fixtures' val_ids_*.txt.
std::vector<int32_t> read_token_ids(const std::string& path);

// log(sum(exp(x))) of one row, accumulated in double.
double log_sum_exp(const float* x, int64_t n);

}  // namespace tailor::engine
