// Text continuation: greedy or sampled (temperature, top-k, top-p, seed).
// The engine has no KV cache yet, so every step re-runs the whole sequence:
// cost grows with the square of the length; fine for short checks.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "tailor/engine/model.h"

namespace tailor::eval {

struct SampleOptions {
  double temperature = 0;  // <= 0: greedy (argmax, lowest id on ties)
  int64_t top_k = 0;       // 0: no limit
  double top_p = 1.0;      // nucleus: smallest set of tokens with this much mass
  uint64_t seed = 0;
};

// Picks the next token from one row of logits. `u` is a uniform draw in
// [0, 1) (ignored when greedy), so the choice is a pure function.
int32_t sample_token(std::span<const float> logits, const SampleOptions& opt, double u);

struct GenerateOptions {
  int64_t max_new_tokens = 40;
  SampleOptions sample;
  int32_t stop_token = -1;  // e.g. EOS; -1: never stop early
};

// Returns the new tokens (not the prompt). on_token sees each one as it comes.
std::vector<int32_t> generate(engine::Model& model, std::vector<int32_t> prompt, const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace tailor::eval
