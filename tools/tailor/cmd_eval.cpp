// tailor eval <model> --text FILE: perplexity (llama.cpp's method by default),
// optionally saving the reference logits or comparing against saved ones (KLD).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "tailor/hub/hub.h"
#include "tailor/eval/logit_store.h"
#include "tailor/eval/run_eval.h"
#include "tailor/util/error.h"
#include "tailor/util/progress.h"

namespace tailor::cli {
namespace {

struct EvalArgs {
  std::string model, text, method = "llamacpp", save_logits, logits_format = "topk", kld_base, dump_tokens;
  int64_t ctx = 512, batch = 1, chunks = -1, max_tokens = 0;
  int threads = 0;
  bool json = false, quiet = false, exact_activations = false;
};

nlohmann::json estimate(const eval::Estimate& e) { return {{"value", e.value}, {"error", e.error}}; }

nlohmann::json kld_json(const eval::KldReport& r) {
  return {{"count", r.count},
          {"ppl", estimate(r.ppl)},
          {"ppl_base", estimate(r.ppl_base)},
          {"ppl_diff", estimate(r.ppl_diff)},
          {"ppl_ratio", estimate(r.ppl_ratio)},
          {"ln_ppl_ratio", estimate(r.ln_ppl_ratio)},
          {"kld", estimate(r.kld)},
          {"kld_median", r.kld_median},
          {"kld_p90", r.kld_p90},
          {"kld_p95", r.kld_p95},
          {"kld_p99", r.kld_p99},
          {"kld_p999", r.kld_p999},
          {"kld_max", r.kld_max},
          {"same_top", estimate(r.same_top)},
          {"p_diff", estimate(r.p_diff)},
          {"p_diff_rms", estimate(r.p_diff_rms)},
          {"mean_ref_tail", r.mean_ref_tail}};
}

void run(const EvalArgs& a) {
  if (a.ctx < 2 || a.ctx > (1 << 20)) fail("eval: --ctx {} is outside 2..1048576", a.ctx);
  if (a.batch < 1 || a.batch > 4096) fail("eval: --batch {} is outside 1..4096", a.batch);
  if (a.logits_format != "topk" && a.logits_format != "llama")
    fail("eval: --logits-format '{}' is not topk or llama", a.logits_format);
  eval::EvalOptions o;
  o.ppl.method = a.method == "hf" ? eval::PplMethod::HuggingFace : eval::PplMethod::LlamaCpp;
  o.ppl.n_ctx = a.ctx;
  o.ppl.max_windows = a.chunks;
  o.batch = a.batch;
  o.save_logits = a.save_logits;
  o.llama_layout = a.logits_format == "llama";
  o.kld_base = a.kld_base;
  o.text_name = a.text;
  o.ppl.keep_token_nll = !a.dump_tokens.empty();

  auto tok = eval::load_model_tokenizer(a.model);
  const std::vector<int32_t> ids = eval::tokenize_text_file(*tok, a.text, a.max_tokens);
  if (tok->bos_id() >= 0 && tok->add_bos()) o.ppl.bos = tok->bos_id();
  engine::LoadOptions lo;
  lo.cpu.threads = a.threads;
  // A GGUF is evaluated as llama.cpp runs it: activations rounded to each
  // weight's vec_dot_type (a no-op for F32 tensors), so the numbers are the
  // ones llama.cpp users see. Hugging Face folders stay exact.
  const bool gguf = std::filesystem::path(a.model).extension() == ".gguf";
  lo.emulate_ggml_activations = gguf && !a.exact_activations;
  engine::Model model = engine::Model::load(a.model, lo);
  if (tok->vocab_size() > model.vocab_size())
    fail("{}: the tokenizer has {} tokens, the model's vocabulary only {}", a.model, tok->vocab_size(),
         model.vocab_size());

  Progress bar("eval", "tok", a.quiet || a.json ? Progress::Mode::Quiet : Progress::Mode::Auto);
  const eval::EvalResult r = eval::run_eval(model, ids, o, [&](int64_t d, int64_t t) { bar.update(d, t); });
  bar.finish();
  const double tps = r.seconds > 0 ? double(r.n_evaluated) / r.seconds : 0.0;
  // The exact token stream and per-token NLLs, so another implementation can
  // score the same windows (tests/e2e compares with llama.cpp).
  if (!a.dump_tokens.empty()) {
    const nlohmann::json d = {{"ctx", a.ctx}, {"method", a.method}, {"bos", o.ppl.bos ? *o.ppl.bos : -1},
                              {"windows", r.n_windows}, {"ids", ids}, {"token_nll", r.ppl.token_nll}};
    std::ofstream f(a.dump_tokens);
    f << d.dump() << '\n';
    if (!f) fail("{}: cannot write the token dump", a.dump_tokens);
  }

  if (a.json) {
    nlohmann::json j;
    j["model"] = a.model;
    j["text"] = a.text;
    j["method"] = a.method;
    j["ctx"] = a.ctx;
    j["ggml_activations"] = lo.emulate_ggml_activations;
    j["tokens"] = r.n_tokens;
    j["windows"] = r.n_windows;
    j["scored"] = r.ppl.n_scored;
    j["ppl"] = r.ppl.ppl;
    j["ppl_error"] = r.ppl.ppl_error;
    j["mean_nll"] = r.ppl.mean_nll;
    j["seconds"] = r.seconds;
    j["tokens_per_second"] = tps;
    if (!a.save_logits.empty()) j["saved_logits"] = a.save_logits;
    if (r.kld) j["kld"] = kld_json(*r.kld);
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("%s: %lld tokens, %lld windows of %lld (%s), %lld scored\n", a.text.c_str(),
              static_cast<long long>(r.n_tokens), static_cast<long long>(r.n_windows),
              static_cast<long long>(a.ctx), a.method == "hf" ? "hf" : "llama.cpp",
              static_cast<long long>(r.ppl.n_scored));
  std::printf("PPL = %.4f +/- %.5f\n", r.ppl.ppl, r.ppl.ppl_error);
  if (r.kld) std::printf("\n%s", eval::format_kld_report(*r.kld).c_str());
  if (!a.save_logits.empty()) std::printf("saved reference logits to %s\n", a.save_logits.c_str());
  if (!a.quiet) std::printf("%.1f s, %.1f tokens/s\n", r.seconds, tps);
}

}  // namespace

void register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "Perplexity of a model on a text; KL divergence against saved logits");
  cmd->add_option("model", a->model, "Hugging Face model folder or .gguf file")->required();
  cmd->add_option("--text", a->text, "UTF-8 text file to evaluate on")->required();
  cmd->add_option("-c,--ctx", a->ctx, "Context (window) size in tokens")->capture_default_str();
  cmd->add_option("-b,--batch", a->batch, "Windows per forward pass")->capture_default_str();
  cmd->add_option("--method", a->method,
                  "llamacpp: llama-perplexity's (BOS first, second half scored); hf: every position after the first")
      ->check(CLI::IsMember({"llamacpp", "hf"}))
      ->capture_default_str();
  cmd->add_option("--chunks", a->chunks, "Evaluate at most this many windows (default: all)");
  cmd->add_option("--max-tokens", a->max_tokens, "Use only the first N tokens of the text");
  cmd->add_option("--save-logits", a->save_logits, "Write the reference logits (for --kld-base) to FILE");
  cmd->add_option("--logits-format", a->logits_format,
                  "topk: Tailor's compact store; llama: llama-perplexity --kl-divergence-base layout")
      ->capture_default_str();
  cmd->add_option("--kld-base", a->kld_base,
                  "Compare against reference logits saved by --save-logits (or llama-perplexity)");
  cmd->add_option("--dump-tokens", a->dump_tokens,
                  "Write the token ids and each scored token's NLL to FILE (JSON)");
  cmd->add_option("-j,--threads", a->threads, "Threads (0 = all cores)")->capture_default_str();
  cmd->add_flag("--exact-activations", a->exact_activations,
               "For a GGUF: multiply the dequantized weights by float activations instead of rounding "
               "each layer's input to the weight type's ggml vec_dot_type (Q8_K, Q8_0, Q8_1, F16, BF16) "
               "as llama.cpp's CPU backend does (the default for GGUF files)");
  cmd->add_flag("--json", a->json, "Print the results as JSON on stdout");
  cmd->add_flag("-q,--quiet", a->quiet, "No progress line");
  cmd->callback([a] {
    a->model = hub::resolve_model_path(a->model);  // ORG/NAME: pulled into the Hub cache
    run(*a);
  });
}

}  // namespace tailor::cli
