// `tailor gradual` as a library: one resumable job in the job store that
//  1. analyses the importance of every block and layer (importance.h) and
//     turns the quality limit into a budget per block;
//  2. walks each block, least important first, down the precision ladder
//     (8 -> 4 -> 2 bits, each level's types coarse to fine): plain rounding,
//     then trained rounding when the block's output error is over budget,
//     then layer-level recovery; the lowest configuration within budget wins;
//  3. trades types between layers under the memory target (greedy, optionally
//     genetic), with each tensor's measured cost scaled by what training
//     achieved on its block;
//  4. trains every block once more in its final types, in model order, on the
//     inputs the quantized blocks before it produce;
//  5. optionally trains all of them together on the model's own KL
//     divergence (the block-wise error is a proxy for it);
//  6. validates the whole model end to end, upgrades tensors while the limits
//     are violated, and writes a standard GGUF.
// Units: "importance", "block.N", "trade", "final.N", "final.output",
// "end_to_end", "validate"; a killed
// job resumes from the last finished unit. Trained blocks live in files
// beside the job database until the GGUF is written.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tailor/gradual/importance.h"
#include "tailor/gradual/trainer.h"
#include "tailor/jobs/job_store.h"
#include "tailor/measure/measure.h"

namespace tailor::gradual {

struct Settings {
  std::string text;  // calibration text
  std::string eval;  // validation text ("" = text); every decision uses `text` only
  int64_t n_ctx = 128;    // tokens per calibration sequence
  int64_t samples = 512;  // calibration sequences (the full sample)
  TrainOptions train;
  // The final training of every block decays its rates (TrainOptions::decay);
  // the walk's short runs keep them constant.
  bool final_lr_decay = true;
  std::vector<int> ladder = {8, 4, 2};
  // Types per bit level, coarse to fine (least scale overhead first).
  std::map<int, std::vector<GgmlType>> levels;
  int max_recover = 3;    // layers reverted per attempt
  int output_epochs = 4;  // training of the output matrix on the KL divergence (0: none)
  // End-to-end training of every trained matrix on the model's KL divergence
  // (e2e_trainer.h), after the block-wise final training (0 epochs: none).
  // Off by default: on llama-30m at Q3_K_M's size it lowered the eval KLD
  // of plainly rounded types by 21%, but from the block-trained state no
  // step (lr 1e-5 .. 4e-3, with or without momentum) lowered the held-out KL.
  int e2e_epochs = 0;
  float e2e_lr = 4e-3f;
  int64_t e2e_samples = 0;  // sequences of n_ctx tokens (0: twice `samples`)
  float e2e_norm_lr = 1e-3f;  // relative step of the F32 norm weights (0: left as they are)
  // The token embedding's rounding trained on the model's KL divergence with
  // every other matrix in its final state (0 epochs: plain rounding). At
  // Q2_K's size on llama-30m its IQ2_S rows alone cost 0.020 of the 0.068 KLD.
  int embd_epochs = 2;
  float embd_lr = 1e-2f;
  ImportanceOptions importance;
  double safety = 2.0;
  std::optional<double> max_ppl_increase;  // percent
  std::optional<int64_t> target_bytes;     // all weights
  bool genetic = false;
  int64_t eval_ctx = 512, eval_windows = 16;
  // Per-tensor costs for type trading (empty texts and types: the gradual
  // texts and eleven types from Q8_0 to IQ2_XS).
  measure::Settings measure;

  nlohmann::json to_json() const;
  static Settings from_json(const nlohmann::json& j);
};

std::map<int, std::vector<GgmlType>> default_levels();

struct Progress {
  int64_t done = 0, total = 0;
  std::string unit, line;
};

struct RunOptions {
  std::string output;  // GGUF written when the job is done ("" = none)
  const std::atomic<bool>* stop = nullptr;
  std::function<void(const std::string&)> log;
  std::function<void(const Progress&)> on_unit;
  // Steps within a long unit (end-to-end training): done of total.
  std::function<void(const std::string& unit, int64_t done, int64_t total)> on_steps;
  std::function<void(int64_t job)> on_job;
};

enum class Outcome { Done, Paused, Cancelled };

struct RunResult {
  int64_t job_id = 0;
  Outcome outcome = Outcome::Done;
  double seconds = 0;
  nlohmann::json report;  // the job's units' results, when done
};

RunResult run_gradual(jobs::JobStore& store, const std::string& model_path, const Settings& s,
                      const RunOptions& opt = {});
RunResult resume_gradual(jobs::JobStore& store, int64_t job_id, const std::string& model_path,
                         const RunOptions& opt = {});

// Folder of a job's trained blocks (beside the database).
std::string parts_dir(const jobs::JobStore& store, int64_t job_id);

}  // namespace tailor::gradual
