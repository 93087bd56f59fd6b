// The measurements behind `tailor eval` and `tailor imatrix`: a model (HF
// folder or GGUF), its tokenizer, a text file, and the eval layer's
// perplexity, KL divergence and importance-matrix accumulators tied together.
// The CLI only parses options and prints; everything here is reusable.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tailor/engine/model.h"
#include "tailor/eval/imatrix.h"
#include "tailor/eval/kld.h"
#include "tailor/eval/perplexity.h"
#include "tailor/tokenizer/tokenizer.h"

namespace tailor {
class GgufFile;
}

namespace tailor::eval {

// The tokenizer that belongs to a model: tokenizer.json / tokenizer.model in
// an HF folder, or the tokenizer.ggml.* keys of a .gguf file.
std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& model_path);
// From a GGUF's keys alone (tokenizer.ggml.model "llama" or "gpt2"); Error
// naming the file when a required key is missing or malformed.
std::unique_ptr<Tokenizer> tokenizer_from_gguf(const GgufFile& g);

// Reads and tokenizes a text file (with BOS when the vocabulary asks for it,
// as llama-perplexity does). Errors: missing or empty file, invalid UTF-8
// (with the byte offset), no tokens. max_tokens > 0 keeps the first ones.
std::vector<int32_t> tokenize_text_file(const Tokenizer& tok, const std::string& path,
                                        int64_t max_tokens = 0);

// Whitespace-separated token ids, as in the fixtures' val_ids_*.txt.
std::vector<int32_t> read_token_ids(const std::string& path);

// done/total in tokens processed by the model.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

struct EvalOptions {
  PplOptions ppl;               // bos is filled from the tokenizer by the caller
  int64_t batch = 1;            // windows per forward pass
  std::string save_logits;      // reference store to write ("" = none)
  bool llama_layout = false;    // save in llama-perplexity's --kl-divergence-base layout
  std::string kld_base;         // reference store to compare against ("" = none)
  std::string text_name;        // for error messages about the text
};

struct EvalResult {
  PplResult ppl;
  std::optional<KldReport> kld;
  int64_t n_tokens = 0;   // tokens in the text (after any cut)
  int64_t n_windows = 0;
  int64_t n_evaluated = 0;  // tokens run through the model
  double seconds = 0;
};

// Perplexity (and the store / KL divergence asked for) of `tokens`. A text
// too short for one window, or a base store made from another vocabulary,
// context or text, is an Error that says what differs.
EvalResult run_eval(engine::Model& model, const std::vector<int32_t>& tokens, const EvalOptions& opt,
                    const ProgressFn& progress = {});

struct ImatrixOptions {
  int64_t n_ctx = 512;
  int64_t max_chunks = -1;       // -1: every whole chunk
  int64_t batch = 1;             // chunks per forward pass
  std::optional<int32_t> bos;    // replaces each chunk's first token, as llama-imatrix does
  bool process_output = false;   // also collect output.weight (llama-imatrix --process-output)
  std::string dataset;           // recorded in imatrix.datasets
};

// Runs chunks of n_ctx tokens through the model with a hook on every linear
// layer and sums the squared inputs per column (per expert for MoE), into
// `into` (which may hold a loaded imatrix to extend).
void collect_imatrix(engine::Model& model, const std::vector<int32_t>& tokens, const ImatrixOptions& opt,
                     Imatrix& into, const ProgressFn& progress = {});

}  // namespace tailor::eval
