// What the planner chooses from: for every tensor of a model, the types it
// could be stored in, each with its size and its predicted damage (ΔKL, or a
// proxy error when nothing end to end was measured). Kept free of how the
// numbers were obtained so allocation, knees and strategy files can be tested
// on synthetic curves.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tailor/quant/types.h"

namespace tailor::plan {

struct TypeOption {
  GgmlType type = GgmlType::F16;
  int64_t bytes = 0;       // the whole tensor stored in `type`
  double cost = 0;         // predicted ΔKL (lower is better)
  double cost_error = 0;   // standard error of `cost`; 0 when unknown
  bool measured = false;   // cost measured end to end, not extrapolated
};

struct TensorOptions {
  std::string name;        // GGUF name, e.g. "blk.3.attn_q.weight"
  int64_t n_elements = 0;
  int64_t row_length = 0;  // ne[0]: types whose block does not divide it are unusable
  std::vector<TypeOption> options;
};

inline double bits_per_weight(int64_t bytes, int64_t n_elements) {
  return n_elements > 0 ? 8.0 * static_cast<double>(bytes) / static_cast<double>(n_elements) : 0.0;
}

// Indices into `options` of the efficient frontier's lower convex hull in the
// (bytes, cost) plane, from fewest bytes to most: options that cost more and
// save nothing, or that lie above the chord of their neighbours, are left out
// (points exactly on a chord are kept).
// Along the result, bytes rise and cost falls, and the cost saved per extra
// byte shrinks from one segment to the next.
std::vector<size_t> lower_hull(std::span<const TypeOption> options);

}  // namespace tailor::plan
