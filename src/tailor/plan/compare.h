// `tailor compare`: llama.cpp's recipes and Tailor's strategy files measured
// side by side on one model, one eval text and one importance matrix, so the
// only difference between two rows is the choice of types. The CLI parses and
// prints; loading, checking, measuring and the table/JSON/chart live here.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "tailor/plan/evaluate.h"
#include "tailor/plan/options.h"
#include "tailor/plan/recipes.h"
#include "tailor/plan/strategy.h"
#include "tailor/report/chart.h"

namespace tailor::plan {

// The tensors a strategy for `model` must list: its quantizable weights
// (llama.cpp's rule), with their row lengths and no options.
std::vector<TensorOptions> quantizable_tensors(const engine::Model& model);

// The recipe's type for every tensor of the HF folder `model_folder` that it
// quantizes (tensors it keeps F32 are left out). With `imatrix` the rules see
// an importance matrix; a type that needs one and finds none is an Error, as
// llama-quantize refuses.
TypeMap recipe_types(const std::string& model_folder, const Recipe& recipe, const eval::Imatrix* imatrix);

// The strategy's types, checked against `model` by check_strategy (its budget
// is not: compare measures whatever the file says). Problems are one Error
// naming `file`: the first problem and how many more there are.
TypeMap strategy_types(const Strategy& s, std::span<const TensorOptions> tensors, const std::string& file);

struct CompareRequest {
  std::string model;                    // Hugging Face folder
  std::string text;                     // eval text
  std::vector<std::string> baselines;   // recipe names (Q8_0, Q4_K_M, ...)
  std::vector<std::string> strategies;  // strategy files
  int64_t n_ctx = 512;
  int64_t windows = 32;
  std::string imatrix;                  // importance matrix file, or
  std::string calib;                    // a text to collect one from
  int64_t calib_chunks = 32;            // windows of n_ctx tokens of `calib`
  int threads = 0;
};

struct CompareEntry {
  std::string name;    // the recipe's name, or the strategy file's name without folder and extension
  std::string source;  // the strategy file; empty for a recipe
  bool baseline = false;
  AssignmentResult result;
};

struct CompareResult {
  std::vector<CompareEntry> entries;  // smallest first
  int64_t n_ctx = 0, windows = 0;
  int64_t n_elements = 0;             // weights in the model
  std::string imatrix;                // where the importance matrix came from; empty: none
};

// One line per step for a progress log (each measured entry with its time).
using CompareLog = std::function<void(const std::string&)>;

// Checks every input before the slow part (recipe names, strategy files
// against the model, the imatrix's coverage), then measures each entry.
CompareResult run_compare(const CompareRequest& req, const CompareLog& log = {});

// A fixed-width table, one row per entry, with the reference perplexity above it.
std::string format_compare_table(const CompareResult& r);
nlohmann::json compare_json(const CompareResult& r);
// Bits per weight (x) against mean KL divergence (y, log): recipes as
// labelled points, strategies as a labelled line (points for a single one).
report::Chart compare_chart(const CompareResult& r);

}  // namespace tailor::plan
