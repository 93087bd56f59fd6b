// How much each block (and each matrix, "layer") of a dense llama-family
// model matters to its output distribution, by four probes measured as the
// end-to-end mean KL divergence against the unquantized model on fixed
// calibration windows:
//  - noise:   Gaussian noise of std sigma * rms(W) added to the weights;
//  - rtn:     round-to-nearest at 8, 4 and 2 bits (Q8_0, Q4_K, Q2_K, no
//             importance), scored by the mean KLD of the three;
//  - disable: the block skipped (its output = its input), a layer zeroed;
//  - upgrade: everything at Q4_K, then this block (layer) back unquantized;
//             score = baseline KLD - upgraded KLD.
// Each method's scores are normalized to sum 1 (over blocks, and over all
// layers) and combined with configurable weights. Per-block budgets for the
// gradual walk come from block_thresholds().
//
// Every probe swaps tensors through engine::Model::swap_weight and puts the
// originals back (moved, so byte-identical), also when an exception leaves.
// Only the blocks from the changed one onward are re-run (analysis::BlockCache).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tailor/engine/model.h"

namespace tailor::gradual {

struct ImportanceOptions {
  int64_t n_ctx = 256;    // tokens per window
  int64_t windows = 8;    // fixed; every probe sees the same windows
  int64_t top_k = 64;     // reference tokens kept per position (BlockCache)
  double noise_sigma = 0.05;
  double w_rtn = 0.40, w_upgrade = 0.25, w_disable = 0.20, w_noise = 0.15;
  uint64_t seed = 1;      // noise; the same tensor gets the same noise at block and layer level
  bool layers = true;     // also score every matrix on its own
};

// Per method: `raw` holds what was measured (KLD in nats; upgrade as the KLD
// reduction), `s` the normalized shares and the weighted combination.
struct MethodScores {
  double noise = 0, rtn = 0, disable = 0, upgrade = 0, combined = 0;
};

struct BlockImportance {
  int64_t block = 0;
  MethodScores raw, s;
  // By bits (8, 4, 2): end-to-end KLD with the whole block rounded, and the
  // block output's relative error ||y_q - y||^2 / ||y||^2 over the cached
  // unquantized inputs, y being the residual stream after the block (what
  // engine::Model::run_block leaves in the Hidden).
  std::map<int, double> rtn_kld, rtn_err;
  double gain = 0;  // KLD per unit of relative output error (median over bit levels)
};

struct LayerImportance {
  std::string name;  // GGUF name, e.g. blk.3.ffn_down.weight
  int64_t block = 0;
  MethodScores raw, s;
};

// The options as JSON (job settings, stored analyses); from_json throws on a
// missing or mistyped field.
nlohmann::json importance_options_json(const ImportanceOptions& o);
ImportanceOptions importance_options_from_json(const nlohmann::json& j);

struct Importance {
  std::vector<BlockImportance> blocks;
  std::vector<LayerImportance> layers;
  double baseline4_kld = 0;  // everything at Q4_K
  ImportanceOptions options;
  double seconds = 0;

  nlohmann::json to_json() const;
  // Throws Error on a missing or mistyped field.
  static Importance from_json(const nlohmann::json& j);
};

using ImportanceProgress = std::function<void(const std::string& step, int64_t done, int64_t total)>;

// The matrices of block b (2-D weights named blk.b.*), in name order.
std::vector<std::string> block_matrices(const engine::Model& model, int64_t block);

Importance analyze_importance(engine::Model& model, const std::vector<int32_t>& tokens,
                              const ImportanceOptions& o, const ImportanceProgress& progress = {});

// Fills s.* from raw.* (each method normalized to sum 1 over the blocks and
// over the layers) and s.combined from the option weights; analyze_importance
// calls it, callers may re-weight a stored result with other options.
void combine_scores(Importance& imp);

// Per block: a relative output-error threshold. The total KLD budget divided
// by `safety` is shared among blocks inversely to their combined importance,
// then each share is divided by the block's gain (KLD per unit of error).
std::vector<double> block_thresholds(const Importance& imp, double total_kld_budget, double safety = 2.0);
// The KLD shares block_thresholds() converts (they sum to total / safety).
std::vector<double> block_kld_budgets(const Importance& imp, double total_kld_budget, double safety = 2.0);

}  // namespace tailor::gradual
