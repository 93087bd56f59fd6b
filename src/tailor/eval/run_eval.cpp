#include "tailor/eval/run_eval.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "tailor/eval/logit_store.h"
#include "tailor/formats/gguf.h"
#include "tailor/tokenizer/text.h"
#include "tailor/util/error.h"

namespace tailor::eval {
namespace fs = std::filesystem;

namespace {

const GgufValue& need(const GgufFile& g, const std::string& key) {
  const GgufValue* v = g.find(key);
  if (!v) fail("{}: missing key {} (needed for the tokenizer)", g.path(), key);
  return *v;
}

const GgufValue& need_array(const GgufFile& g, const std::string& key, GgufType elem) {
  const GgufValue& v = need(g, key);
  if (v.type != GgufType::ARRAY || v.elem != elem)
    fail("{}: key {} is not an array of {}", g.path(), key, gguf_type_name(elem));
  return v;
}

std::vector<std::string> strings_of(const GgufValue& v) {
  std::vector<std::string> out;
  out.reserve(v.arr.size());
  for (const GgufValue& x : v.arr) out.push_back(x.s);
  return out;
}

// Special ids and add_* flags present in the file override `s`.
void read_special(const GgufFile& g, SpecialTokens& s) {
  auto id = [&](const char* key, int32_t& dst) {
    if (const GgufValue* v = g.find(key)) {
      if (!v->is_integer()) fail("{}: key {} is not an integer", g.path(), key);
      dst = static_cast<int32_t>(std::clamp<int64_t>(v->as_int(), -1, INT32_MAX));
    }
  };
  id("tokenizer.ggml.bos_token_id", s.bos);
  id("tokenizer.ggml.eos_token_id", s.eos);
  id("tokenizer.ggml.unknown_token_id", s.unk);
  id("tokenizer.ggml.padding_token_id", s.pad);
  if (const GgufValue* v = g.find("tokenizer.ggml.add_bos_token")) s.add_bos = v->as_bool();
  if (const GgufValue* v = g.find("tokenizer.ggml.add_eos_token")) s.add_eos = v->as_bool();
}

std::vector<int32_t> token_types_of(const GgufFile& g, size_t n) {
  const GgufValue* v = g.find("tokenizer.ggml.token_type");
  if (!v) return {};
  if (v->type != GgufType::ARRAY || v->arr.size() != n)
    fail("{}: tokenizer.ggml.token_type does not hold {} values", g.path(), n);
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>(v->arr[i].as_int());
  return t;
}

}  // namespace

std::unique_ptr<Tokenizer> tokenizer_from_gguf(const GgufFile& g) {
  const std::string model = need(g, "tokenizer.ggml.model").as_string();
  std::vector<std::string> tokens = strings_of(need_array(g, "tokenizer.ggml.tokens", GgufType::STRING));
  if (tokens.empty()) fail("{}: tokenizer.ggml.tokens is empty", g.path());
  if (model == "llama") {
    SpmVocab v;
    v.scores.assign(tokens.size(), 0.0f);
    if (const GgufValue* s = g.find("tokenizer.ggml.scores")) {
      if (s->type != GgufType::ARRAY || s->arr.size() != tokens.size())
        fail("{}: tokenizer.ggml.scores does not hold {} values", g.path(), tokens.size());
      for (size_t i = 0; i < tokens.size(); ++i) v.scores[i] = static_cast<float>(s->arr[i].as_float());
    }
    v.types = token_types_of(g, tokens.size());
    v.tokens = std::move(tokens);
    read_special(g, v.special);
    if (const GgufValue* p = g.find("tokenizer.ggml.add_space_prefix")) v.add_space_prefix = p->as_bool();
    return make_spm_tokenizer(std::move(v), g.path());
  }
  if (model == "gpt2") {
    BpeVocab v;
    v.merges = strings_of(need_array(g, "tokenizer.ggml.merges", GgufType::STRING));
    v.types = token_types_of(g, tokens.size());
    v.tokens = std::move(tokens);
    if (const GgufValue* p = g.find("tokenizer.ggml.pre")) v.pre = p->as_string();
    // llama.cpp adds BOS for llama-3 vocabularies whose file does not say.
    v.special.add_bos = v.pre == "llama-bpe";
    read_special(g, v.special);
    return make_bpe_tokenizer(std::move(v), g.path());
  }
  fail("{}: tokenizer.ggml.model '{}' is not supported (llama, gpt2)", g.path(), model);
}

std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& model_path) {
  if (fs::is_directory(model_path)) return load_tokenizer(model_path);
  return tokenizer_from_gguf(GgufFile::open(model_path));
}

std::vector<int32_t> tokenize_text_file(const Tokenizer& tok, const std::string& path, int64_t max_tokens) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open the text file", path);
  std::string text{std::istreambuf_iterator<char>(f), {}};
  if (f.bad()) fail("{}: read error", path);
  if (text.empty()) fail("{}: the text file is empty", path);
  if (const size_t bad = tokdetail::find_invalid_utf8(text); bad != std::string::npos)
    fail("{}: not UTF-8 text (invalid byte 0x{:02x} at offset {})", path,
         static_cast<unsigned char>(text[bad]), bad);
  std::vector<int32_t> ids = tok.encode(text, /*add_special=*/true);
  if (ids.empty()) fail("{}: the text gives no tokens", path);
  if (max_tokens > 0 && int64_t(ids.size()) > max_tokens) ids.resize(size_t(max_tokens));
  return ids;
}

namespace {

// Serves evaluate_perplexity's one-window-at-a-time requests from forward
// passes over `batch` windows at once (the windows are requested in order).
class BatchedLogits {
 public:
  BatchedLogits(engine::Model& m, const std::vector<PplWindow>& plan, const std::vector<int32_t>& tokens,
                std::optional<int32_t> bos, int64_t batch, const ProgressFn& progress)
      : model_(m), plan_(plan), tokens_(tokens), bos_(bos), batch_(std::max<int64_t>(1, batch)),
        progress_(progress) {
    for (const PplWindow& w : plan_) total_ += w.length;
  }

  void operator()(std::span<const int32_t> window, int64_t first_row, int64_t n_rows, std::span<float> out) {
    const int64_t i = next_++;
    if (i >= int64_t(plan_.size()) || plan_[size_t(i)].length != int64_t(window.size()) ||
        plan_[size_t(i)].first_row != first_row)
      fail("eval: window {} requested out of order", i);
    if (i >= cached_to_) fill(i);
    const std::vector<float>& rows = cache_[size_t(i - cached_from_)];
    if (rows.size() != out.size() || size_t(n_rows) * size_t(model_.vocab_size()) != out.size())
      fail("eval: window {} has {} logits, {} expected", i, rows.size(), out.size());
    std::copy(rows.begin(), rows.end(), out.begin());
  }

  int64_t total_tokens() const { return total_; }
  int64_t done_tokens() const { return done_; }

 private:
  void fill(int64_t from) {
    const int64_t to = std::min<int64_t>(from + batch_, int64_t(plan_.size()));
    engine::Sequences seqs;
    for (int64_t i = from; i < to; ++i) {
      const PplWindow& w = plan_[size_t(i)];
      seqs.emplace_back(tokens_.begin() + w.start, tokens_.begin() + w.start + w.length);
      if (bos_) seqs.back()[0] = *bos_;
    }
    cache_.assign(size_t(to - from), {});
    model_.forward(seqs, [&](size_t s, const float* logits, int64_t length, int64_t vocab) {
      const PplWindow& w = plan_[size_t(from) + s];
      cache_[s].assign(logits + w.first_row * vocab, logits + (length - 1) * vocab);
    });
    cached_from_ = from;
    cached_to_ = to;
    for (int64_t i = from; i < to; ++i) done_ += plan_[size_t(i)].length;
    if (progress_) progress_(done_, total_);
  }

  engine::Model& model_;
  const std::vector<PplWindow>& plan_;
  const std::vector<int32_t>& tokens_;
  std::optional<int32_t> bos_;
  int64_t batch_, next_ = 0, cached_from_ = 0, cached_to_ = 0, total_ = 0, done_ = 0;
  std::vector<std::vector<float>> cache_;
  const ProgressFn& progress_;
};

// The base store must come from the same vocabulary, context, method and
// text: every scored target it holds is compared with the text's.
void check_base_store(LogitStore& store, const std::string& path, const std::vector<PplWindow>& plan,
                      const std::vector<int32_t>& tokens, int64_t n_vocab, const PplOptions& opt) {
  if (store.n_vocab() != n_vocab)
    fail("{}: reference logits over a vocabulary of {}, the model has {} (another model family?)", path,
         store.n_vocab(), n_vocab);
  if (store.n_ctx() != opt.n_ctx)
    fail("{}: made with context {}, this run uses {} (pass --ctx {})", path, store.n_ctx(), opt.n_ctx,
         store.n_ctx());
  if (store.first_row() != plan[0].first_row)
    fail("{}: made with another perplexity method (scores from row {}, this run from row {})", path,
         store.first_row(), plan[0].first_row);
  if (store.n_windows() < int64_t(plan.size()))
    fail("{}: holds {} windows, this run needs {} (pass --chunks {})", path, store.n_windows(), plan.size(),
         store.n_windows());
  auto mismatch = [&](int64_t pos, int32_t have, int32_t want) {
    fail("{}: made from another text or tokenizer (token {} is {} in the store, {} in this text)", path, pos,
         have, want);
  };
  if (store.is_llama()) {
    const auto st = store.tokens();
    for (const PplWindow& w : plan)
      for (int64_t p = w.start + 1; p < w.start + w.length; ++p)
        if (p >= int64_t(st.size()) || st[size_t(p)] != tokens[size_t(p)])
          mismatch(p, p < int64_t(st.size()) ? st[size_t(p)] : -1, tokens[size_t(p)]);
    return;
  }
  for (size_t wi = 0; wi < plan.size(); ++wi) {
    const PplWindow& w = plan[wi];
    if (store.window_start(int64_t(wi)) != w.start || store.n_rows(int64_t(wi)) != w.n_scored())
      fail("{}: window {} covers tokens {}+{}, this run's covers {}+{} (another text or context?)", path, wi,
           store.window_start(int64_t(wi)), store.n_rows(int64_t(wi)), w.start, w.n_scored());
    for (int64_t r = 0; r < w.n_scored(); ++r) {
      const int64_t pos = w.start + w.first_row + r + 1;
      const int32_t have = store.row(int64_t(wi), r).target;
      if (have != tokens[size_t(pos)]) mismatch(pos, have, tokens[size_t(pos)]);
    }
  }
}

int64_t tokens_needed(const PplOptions& opt) {
  return opt.method == PplMethod::LlamaCpp ? 2 * opt.n_ctx : opt.n_ctx;
}

}  // namespace

EvalResult run_eval(engine::Model& model, const std::vector<int32_t>& tokens, const EvalOptions& opt,
                    const ProgressFn& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n_vocab = model.vocab_size();
  const std::string text = opt.text_name.empty() ? std::string("text") : opt.text_name;
  PplOptions ppl = opt.ppl;
  if (ppl.n_ctx < 2) fail("eval: context {} is too small", ppl.n_ctx);
  if (int64_t(tokens.size()) < tokens_needed(ppl))
    fail("{}: {} tokens, fewer than the {} needed for one window of context {}{}", text, tokens.size(),
         tokens_needed(ppl), ppl.n_ctx,
         ppl.method == PplMethod::LlamaCpp ? " (llama.cpp's method needs two windows' worth)" : "");
  for (int32_t t : tokens)
    if (t < 0 || t >= n_vocab) fail("{}: token id {} outside the model's vocabulary of {}", text, t, n_vocab);

  std::optional<LogitStore> base;
  if (!opt.kld_base.empty()) {
    base = LogitStore::open(opt.kld_base);
    if (ppl.max_windows < 0) ppl.max_windows = base->n_windows();
  }
  const std::vector<PplWindow> plan = plan_windows(int64_t(tokens.size()), ppl);
  if (base) check_base_store(*base, opt.kld_base, plan, tokens, n_vocab, ppl);

  std::optional<TopKLogitsWriter> topk;
  std::optional<LlamaLogitsWriter> llama;
  if (!opt.save_logits.empty()) {
    if (opt.llama_layout) {
      if (ppl.method != PplMethod::LlamaCpp) fail("eval: the llama.cpp logits layout needs --method llamacpp");
      const size_t n = plan.size() * size_t(ppl.n_ctx);
      llama.emplace(opt.save_logits, n_vocab, ppl.n_ctx, std::span<const int32_t>(tokens.data(), n));
    } else {
      topk.emplace(opt.save_logits, n_vocab, ppl.n_ctx, plan[0].first_row);
    }
  }

  KldAccumulator kld;
  std::vector<RefRow> refs;
  auto sink = [&](const ScoredWindow& sw) {
    if (topk) topk->add_window(sw.window->start, sw.targets, sw.logits);
    if (llama) llama->add_window(sw.logits);
    if (!base) return;
    const int64_t rows = int64_t(sw.targets.size());
    if (base->is_llama()) {
      // Dense rows are decoded into one scratch buffer: one at a time.
      for (int64_t r = 0; r < rows; ++r)
        kld.add(sw.logits.subspan(size_t(r * n_vocab), size_t(n_vocab)), base->row(sw.index, r));
    } else {
      refs.clear();
      for (int64_t r = 0; r < rows; ++r) refs.push_back(base->row(sw.index, r));
      kld.add_rows(sw.logits, refs);
    }
  };

  BatchedLogits logits(model, plan, tokens, ppl.method == PplMethod::LlamaCpp ? ppl.bos : std::nullopt,
                       opt.batch, progress);
  EvalResult res;
  res.ppl = evaluate_perplexity(
      tokens, n_vocab, ppl,
      [&](std::span<const int32_t> w, int64_t first, int64_t n, std::span<float> out) { logits(w, first, n, out); },
      sink);
  if (topk) topk->commit();
  if (llama) llama->commit();
  if (base) res.kld = kld.report();
  res.n_tokens = int64_t(tokens.size());
  res.n_windows = int64_t(plan.size());
  res.n_evaluated = logits.done_tokens();
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

void collect_imatrix(engine::Model& model, const std::vector<int32_t>& tokens, const ImatrixOptions& opt,
                     Imatrix& into, const ProgressFn& progress) {
  if (opt.n_ctx < 2) fail("imatrix: context {} is too small", opt.n_ctx);
  const int64_t n_vocab = model.vocab_size();
  int64_t chunks = int64_t(tokens.size()) / opt.n_ctx;
  if (chunks == 0)
    fail("{}: {} tokens, fewer than the {} needed for one chunk (--ctx {})",
         opt.dataset.empty() ? std::string("text") : opt.dataset, tokens.size(), opt.n_ctx, opt.n_ctx);
  if (opt.max_chunks > 0) chunks = std::min(chunks, opt.max_chunks);
  for (int32_t t : tokens)
    if (t < 0 || t >= n_vocab) fail("imatrix: token id {} outside the model's vocabulary of {}", t, n_vocab);

  model.set_linear_hook([&](const engine::LinearCall& c) {
    if (c.layer < 0 && !opt.process_output) return;
    const std::span<const float> x(c.input, size_t(c.rows * c.in));
    if (c.expert >= 0)
      into.add_expert(c.name, c.expert, model.weight(c.name).shape.front(), x, c.in);
    else
      into.add(c.name, x, c.in);
  });
  struct Unhook {
    engine::Model& m;
    ~Unhook() { m.set_linear_hook({}); }
  } unhook{model};

  const int64_t batch = std::max<int64_t>(1, opt.batch);
  for (int64_t c = 0; c < chunks; c += batch) {
    engine::Sequences seqs;
    for (int64_t i = c; i < std::min(chunks, c + batch); ++i) {
      seqs.emplace_back(tokens.begin() + i * opt.n_ctx, tokens.begin() + (i + 1) * opt.n_ctx);
      if (opt.bos) seqs.back()[0] = *opt.bos;
    }
    model.forward(seqs, [](size_t, const float*, int64_t, int64_t) {});
    if (progress) progress(std::min(chunks, c + batch) * opt.n_ctx, chunks * opt.n_ctx);
  }
  into.chunk_count += uint32_t(chunks);
  into.chunk_size = uint32_t(opt.n_ctx);
  if (!opt.dataset.empty()) into.datasets.push_back(opt.dataset);
}

std::vector<int32_t> read_token_ids(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  std::vector<int32_t> ids;
  int64_t v = 0;
  while (in >> v) {
    if (v < 0 || v > INT32_MAX) fail("{}: token id {} is out of range", path, v);
    ids.push_back(static_cast<int32_t>(v));
  }
  if (!in.eof()) fail("{}: not a list of integer token ids (entry {})", path, ids.size() + 1);
  return ids;
}

}  // namespace tailor::eval
