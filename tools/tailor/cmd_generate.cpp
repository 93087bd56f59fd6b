// tailor generate <model> --prompt "...": greedy or sampled continuation.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "tailor/hub/hub.h"
#include "tailor/eval/generate.h"
#include "tailor/eval/run_eval.h"
#include "tailor/util/error.h"

namespace tailor::cli {
namespace {

struct GenerateArgs {
  std::string model, prompt;
  int64_t n = 40, top_k = 0;
  double temp = 0, top_p = 1.0;
  uint64_t seed = 0;
  int threads = 0;
  bool json = false, no_stop = false;
};

void run(const GenerateArgs& a) {
  if (a.n < 0 || a.n > 100000) fail("generate: -n {} is outside 0..100000", a.n);
  if (!(a.top_p > 0 && a.top_p <= 1)) fail("generate: --top-p {} is outside (0, 1]", a.top_p);
  if (a.top_k < 0) fail("generate: --top-k {} is negative", a.top_k);
  auto tok = eval::load_model_tokenizer(a.model);
  engine::LoadOptions lo;
  lo.cpu.threads = a.threads;
  engine::Model model = engine::Model::load(a.model, lo);
  const std::vector<int32_t> prompt = tok->encode(a.prompt, /*add_special=*/true);
  if (prompt.empty()) fail("generate: the prompt gives no tokens");

  eval::GenerateOptions o;
  o.max_new_tokens = a.n;
  o.sample = {.temperature = a.temp, .top_k = a.top_k, .top_p = a.top_p, .seed = a.seed};
  o.stop_token = a.no_stop ? -1 : tok->eos_id();
  if (!a.json) {
    std::printf("%s", a.prompt.c_str());
    std::fflush(stdout);
  }
  // Decode the running continuation and print what is new, so multi-token
  // characters and sentencepiece spaces come out right.
  std::vector<int32_t> out;
  std::string shown;
  const std::vector<int32_t> ids = eval::generate(model, prompt, o, [&](int32_t t) {
    if (a.json) return;
    out.push_back(t);
    const std::string text = tok->decode(out, /*special=*/false);
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
      std::fwrite(text.data() + shown.size(), 1, text.size() - shown.size(), stdout);
      std::fflush(stdout);
      shown = text;
    }
  });
  if (a.json) {
    nlohmann::json j;
    j["prompt_ids"] = prompt;
    j["ids"] = ids;
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), ids.begin(), ids.end());
    j["text"] = tok->decode(all, /*special=*/false);
    j["continuation"] = tok->decode(ids, /*special=*/false);
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("\n");
  }
}

}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand(
      "generate",
      "Continue a prompt, greedy (--temp 0) or sampled. No KV cache yet: each new token re-runs the whole "
      "sequence, so cost grows with the square of the length");
  cmd->add_option("model", a->model, "Hugging Face model folder or .gguf file")->required();
  cmd->add_option("-p,--prompt", a->prompt, "Prompt text (BOS is added when the vocabulary asks for it)")
      ->required();
  cmd->add_option("-n,--n-predict", a->n, "New tokens to generate")->capture_default_str();
  cmd->add_option("--temp", a->temp, "Temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", a->top_k, "Sample among the k most likely tokens (0 = all)")->capture_default_str();
  cmd->add_option("--top-p", a->top_p, "Nucleus sampling mass")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Random seed for sampling")->capture_default_str();
  cmd->add_flag("--ignore-eos", a->no_stop, "Do not stop at the end-of-sequence token");
  cmd->add_option("-j,--threads", a->threads, "Threads (0 = all cores)")->capture_default_str();
  cmd->add_flag("--json", a->json, "Print prompt ids, new ids and text as JSON");
  cmd->callback([a] {
    a->model = hub::resolve_model_path(a->model);  // ORG/NAME: pulled into the Hub cache
    run(*a);
  });
}

}  // namespace tailor::cli
