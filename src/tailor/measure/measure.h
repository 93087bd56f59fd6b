// `tailor measure` as a library: every quantizable tensor of a model against
// every candidate type, one job in the job store with one unit per
// (tensor, type), so a killed run resumes where it stopped.
//
// Levels:
//  - proxy: local errors only (weights, importance-weighted, and the layer's
//    output error on sampled real activations);
//  - kld:   local errors for every pair, the end-to-end KL divergence for a
//    few types per tensor, and a per-tensor gain calibrated on those that
//    predicts the rest; every `holdout_every`-th tensor is measured at a
//    second type too, so the prediction's error is known;
//  - full:  the end-to-end KL divergence of every pair.
// The end-to-end cost of one pair re-runs only the blocks after the tensor
// from cached block inputs and stops as soon as the estimate is precise
// enough (analysis/block_cache.h).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tailor/engine/model.h"
#include "tailor/eval/imatrix.h"
#include "tailor/jobs/job_store.h"
#include "tailor/quant/types.h"

namespace tailor::measure {

enum class Level { Proxy, Kld, Full };
const char* level_name(Level l);
Level parse_level(const std::string& s);  // Error on an unknown name

// Everything that decides the results (and so the job's identity).
struct Settings {
  Level level = Level::Kld;
  std::vector<GgmlType> types;  // empty: default_types()
  std::string text;             // calibration text: importance matrix, activation samples
  std::string eval;             // eval text for the end-to-end measurement ("" = text)
  std::string imatrix;          // "" = collect from `text`, "none", or an imatrix file
  int64_t n_ctx = 512;
  int64_t windows = 16;         // eval windows cached (the adaptive stop may use fewer)
  int64_t calib_chunks = 16;    // windows of `text` for the importance matrix
  int64_t sample_rows = 256;    // activation rows kept per linear layer
  int64_t top_k = 64;           // reference tokens kept per position
  double max_rel_error = 0.10;  // adaptive stop: standard error / KLD
  double noise_floor = 1e-5;    // adaptive stop: KLD + 2 se below this
  int64_t min_windows = 4;      // windows before a "precise" stop is trusted
  // kld level: the types measured end to end for every tensor (empty: the
  // type nearest 4.5 bits per weight among `types`), and one more for every
  // holdout_every-th tensor (0: none) to report the prediction's error.
  std::vector<GgmlType> calibrate;
  int64_t holdout_every = 6;
  // kld level: the measured types only calibrate a gain whose prediction is
  // itself good to ~10%, so they stop at a looser precision than `full`.
  double calib_max_rel_error = 0.25;
  int64_t calib_min_windows = 2;
  double exponent = 1.0;        // ΔKL ≈ gain · proxy^exponent

  nlohmann::json to_json() const;
  static Settings from_json(const nlohmann::json& j);  // Error on a malformed object
};

std::vector<GgmlType> default_types();  // Q8_0 Q6_K Q5_K Q4_K IQ4_XS Q3_K Q2_K
std::vector<GgmlType> parse_types(const std::string& comma_list);

// A deterministic slice of the tensors: tensor i belongs to shard i % n + 1.
struct Shard {
  int64_t k = 1, n = 1;
};
Shard parse_shard(const std::string& s);  // "K/N"

struct Progress {
  int64_t done = 0, total = 0;  // units of this job (all shards' units in this database)
  int64_t done_this_run = 0, left_at_start = 0;
  std::string last_key;
};

struct RunOptions {
  Shard shard;
  const std::atomic<bool>* stop = nullptr;   // set (e.g. by SIGINT): pause after the unit in flight
  std::function<void(const std::string& line)> log;  // preparation steps, for the user
  std::function<void(const Progress&)> on_unit;
  // The job's id, as soon as it is known (before the slow preparation), for
  // callers such as the web server that answer with it while the work goes on.
  std::function<void(int64_t job)> on_job;
};

enum class Outcome { Done, Paused, Cancelled };

struct RunResult {
  int64_t job_id = 0;
  Outcome outcome = Outcome::Done;
  int64_t units_run = 0, units_failed = 0;
  double seconds = 0;
};

// Creates (or finds, by model hash + settings) the job for this model and
// works on it until it is done, paused or cancelled.
RunResult run_measure(jobs::JobStore& store, const std::string& model_path, const Settings& settings,
                      const RunOptions& opt = {});
// Continues job `job_id` with the settings it was created with. The model
// must still hash as it did (Error otherwise).
RunResult resume_measure(jobs::JobStore& store, int64_t job_id, const std::string& model_path,
                         const RunOptions& opt = {});

// The importance matrix a measurement used (loaded or collected again from
// its calibration text, deterministically); nullopt for imatrix "none".
std::optional<eval::Imatrix> settings_imatrix(engine::Model& model, const std::string& model_path,
                                              const Settings& settings);

// The newest finished measure job of the model at `model_path` (same content
// hash) in `store`, or 0.
int64_t find_measurement(jobs::JobStore& store, const std::string& model_path);

// Tables for people and scripts from a job's export (JobStore::export_json):
// per tensor and type the best ΔKL estimate ("cost": measured, predicted or
// proxy), and for the kld level the prediction's error on the holdout pairs.
nlohmann::json summarize(const nlohmann::json& exported);

}  // namespace tailor::measure
