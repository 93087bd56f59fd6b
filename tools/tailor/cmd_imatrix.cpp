// tailor imatrix <model> --text FILE -o imatrix.gguf: importance matrix (sum of
// squared inputs per column of every linear layer) in llama-imatrix's GGUF layout.
#include <chrono>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "tailor/hub/hub.h"
#include "tailor/eval/run_eval.h"
#include "tailor/util/error.h"
#include "tailor/util/progress.h"

namespace tailor::cli {
namespace {

struct ImatrixArgs {
  std::string model, text, output;
  std::vector<std::string> in_files;
  int64_t ctx = 512, chunks = -1, batch = 1, max_tokens = 0;
  int threads = 0;
  bool process_output = false, json = false, quiet = false;
};

void run(const ImatrixArgs& a) {
  if (a.ctx < 2 || a.ctx > (1 << 20)) fail("imatrix: --ctx {} is outside 2..1048576", a.ctx);
  if (a.batch < 1 || a.batch > 4096) fail("imatrix: --batch {} is outside 1..4096", a.batch);
  eval::Imatrix im;
  for (const std::string& f : a.in_files) im.merge(eval::Imatrix::load(f, a.ctx));

  auto tok = eval::load_model_tokenizer(a.model);
  const std::vector<int32_t> ids = eval::tokenize_text_file(*tok, a.text, a.max_tokens);
  engine::LoadOptions lo;
  lo.cpu.threads = a.threads;
  engine::Model model = engine::Model::load(a.model, lo);

  eval::ImatrixOptions o;
  o.n_ctx = a.ctx;
  o.max_chunks = a.chunks;
  o.batch = a.batch;
  if (tok->bos_id() >= 0 && tok->add_bos()) o.bos = tok->bos_id();
  o.process_output = a.process_output;
  o.dataset = std::filesystem::path(a.text).filename().string();
  Progress bar("imatrix", "tok", a.quiet || a.json ? Progress::Mode::Quiet : Progress::Mode::Auto);
  const uint32_t chunks_before = im.chunk_count;
  const auto t0 = std::chrono::steady_clock::now();
  eval::collect_imatrix(model, ids, o, im, [&](int64_t d, int64_t t) { bar.update(d, t); });
  bar.finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  im.save_gguf(a.output);

  const uint32_t chunks = im.chunk_count - chunks_before;
  if (a.json) {
    nlohmann::json j;
    j["output"] = a.output;
    j["entries"] = im.entries().size();
    j["chunks"] = chunks;
    j["chunk_count"] = im.chunk_count;
    j["ctx"] = a.ctx;
    j["seconds"] = secs;
    j["datasets"] = im.datasets;
    std::printf("%s\n", j.dump(2).c_str());
  } else if (!a.quiet) {
    std::printf("wrote %s: %zu tensors, %u chunks of %lld tokens (%u in all), %.1f s\n", a.output.c_str(),
                im.entries().size(), chunks, static_cast<long long>(a.ctx), im.chunk_count, secs);
  }
}

}  // namespace

void register_imatrix(CLI::App& app) {
  auto a = std::make_shared<ImatrixArgs>();
  auto* cmd = app.add_subcommand("imatrix", "Importance matrix of a model over a calibration text (llama.cpp GGUF layout)");
  cmd->add_option("model", a->model, "Hugging Face model folder or .gguf file")->required();
  cmd->add_option("--text", a->text, "UTF-8 calibration text")->required();
  cmd->add_option("-o,--output", a->output, "Output imatrix .gguf")->required();
  cmd->add_option("-c,--ctx", a->ctx, "Chunk size in tokens")->capture_default_str();
  cmd->add_option("--chunks", a->chunks, "Process at most N chunks (default: all)");
  cmd->add_option("-b,--batch", a->batch, "Chunks per forward pass")->capture_default_str();
  cmd->add_option("--max-tokens", a->max_tokens, "Use only the first N tokens of the text");
  cmd->add_option("--in-file", a->in_files, "Existing imatrix (GGUF or legacy .dat) to extend; repeatable");
  cmd->add_flag("--process-output", a->process_output, "Also collect output.weight");
  cmd->add_option("-j,--threads", a->threads, "Threads (0 = all cores)")->capture_default_str();
  cmd->add_flag("--json", a->json, "Print a JSON summary on stdout");
  cmd->add_flag("-q,--quiet", a->quiet, "No progress or summary");
  cmd->callback([a] {
    a->model = hub::resolve_model_path(a->model);  // ORG/NAME: pulled into the Hub cache
    run(*a);
  });
}

}  // namespace tailor::cli
