// tailor eval / imatrix / generate / convert --imatrix through the CLI, on the
// trained llama-30m fixture: real numbers checked against independent
// computations and the fixture's references, and every bad input a one-line error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "tailor/eval/imatrix.h"
#include "tailor/eval/logit_store.h"
#include "tailor/eval/run_eval.h"
#include "tailor/formats/gguf.h"
#include "tailor/formats/safetensors.h"
#include "tailor/tokenizer/tokenizer.h"
#include "tailor/util/progress.h"

namespace fs = std::filesystem;
using nlohmann::json;
using tailor::test::run_cli;

namespace {

const std::string kShared = TAILOR_SHARED_DIR;
const std::string kModel = kShared + "/models/llama-30m";
// Small slices keep each test to seconds on two cores: 1024 tokens in
// windows of 128 = 8 llama.cpp windows, 63 scored tokens each.
const std::string kSlice = "--ctx 128 --max-tokens 1024 -q";

// Artifacts shared by the tests (each test runs in its own process under
// ctest): made once per build, written atomically.
std::string work_dir() {
  static const std::string d = [] {
    // Inside the build tree, so artifacts never outlive a change of the code that made them.
    const std::string p = (fs::path(TAILOR_CLI_PATH).parent_path() / "test-work" / "cli-eval").string();
    fs::create_directories(p);
    return p;
  }();
  return d;
}

void write_file(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  std::ofstream f(tmp, std::ios::binary);
  f << data;
  f.close();
  fs::rename(tmp, path);
}

// The first `bytes` of a shared text, cut after a newline or space.
std::string text_slice(const std::string& name, size_t bytes) {
  const std::string path = work_dir() + "/" + name + "." + std::to_string(bytes);
  if (!fs::exists(path)) {
    std::string t = tailor::test::slurp(kShared + "/text/" + name);
    t.resize(std::min(t.size(), bytes));
    t.resize(t.find_last_of("\n ") + 1);  // never inside a UTF-8 sequence
    write_file(path, t);
  }
  return path;
}

std::string converted(const std::string& type, const std::string& extra = "", const std::string& tag = "") {
  const std::string path = work_dir() + "/llama30m-" + type + tag + ".gguf";
  if (!fs::exists(path)) {
    auto r = run_cli("convert " + kModel + " -o " + path + " -t " + type + " -q " + extra);
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  return path;
}

json eval_json(const std::string& args) {
  auto r = run_cli("eval " + args + " --json");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (r.exit_code != 0) return json::object();
  return json::parse(r.out);
}

// Reference store of the HF folder over the eval slice.
std::string reference_store() {
  const std::string path = work_dir() + "/ref-f32.topk";
  if (!fs::exists(path)) eval_json(kModel + " --text " + text_slice("eval.txt", 16384) + " " + kSlice +
                                   " --save-logits " + path);
  return path;
}

std::string calibration_imatrix() {
  const std::string path = work_dir() + "/calib.imatrix.gguf";
  if (!fs::exists(path)) {
    auto r = run_cli("imatrix " + kModel + " --text " + text_slice("calibration.txt", 16384) +
                     " -o " + path + " --ctx 128 --chunks 8 -q");
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  return path;
}

// One-line error, non-zero exit, message containing `want`.
void expect_error(const std::string& args, const std::string& want) {
  auto r = run_cli(args);
  EXPECT_NE(r.exit_code, 0) << args;
  EXPECT_EQ(tailor::test::count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(want), std::string::npos) << "stderr: " << r.err;
}

// ---------------------------------------------------------------- numbers

TEST(CliEval, HfFolderAndF32GgufGiveTheSamePerplexity) {
  const std::string store = reference_store();
  const std::string text = text_slice("eval.txt", 16384);
  json hf = eval_json(kModel + " --text " + text + " " + kSlice);
  json gg = eval_json(converted("F32") + " --text " + text + " " + kSlice);
  ASSERT_TRUE(hf.contains("ppl") && gg.contains("ppl"));
  const double p_hf = hf["ppl"], p_gg = gg["ppl"];
  std::printf("llama-30m eval slice: PPL HF %.6f +/- %.4f, F32 GGUF %.6f, %lld scored, %.1f tok/s\n", p_hf,
              double(hf["ppl_error"]), p_gg, (long long)hf["scored"], double(hf["tokens_per_second"]));
  EXPECT_NEAR(p_gg / p_hf, 1.0, 1e-4);
  EXPECT_EQ(hf["windows"], 8);
  EXPECT_EQ(hf["scored"], 8 * 63);
  // Far better than chance (8192) on text of its training distribution (the
  // start of eval.txt is quotations and essays, harder than the fixture's
  // validation ids, whose full HF-style figure is 15.8).
  EXPECT_GT(p_hf, 2.0);
  EXPECT_LT(p_hf, 200.0);

  // Independent check of the reported figure: the store holds every scored
  // token's log-probability, whose mean must give back the same perplexity.
  auto s = tailor::eval::LogitStore::open(store);
  double sum = 0;
  int64_t n = 0;
  for (int64_t w = 0; w < s.n_windows(); ++w)
    for (int64_t r = 0; r < s.n_rows(w); ++r, ++n) sum -= s.row(w, r).target_logprob;
  EXPECT_EQ(n, 8 * 63);
  EXPECT_NEAR(std::exp(sum / double(n)) / p_hf, 1.0, 1e-5);
}

// --dump-tokens: the ids are the tokenizer's, and the per-token NLLs are the
// reported perplexity's and the reference store's (HF folder) one by one.
TEST(CliEval, DumpTokensHoldsIdsAndPerTokenNll) {
  const std::string text = text_slice("eval.txt", 16384);
  const std::string gguf = converted("F32");
  const std::string dump = work_dir() + "/dump" + std::to_string(::getpid()) + ".json";
  json r = eval_json(gguf + " --text " + text + " " + kSlice + " --dump-tokens " + dump);
  ASSERT_TRUE(r.contains("ppl"));
  const json d = json::parse(tailor::test::slurp(dump));
  fs::remove(dump);
  auto tok = tailor::eval::load_model_tokenizer(kModel);
  EXPECT_EQ(d["ids"].get<std::vector<int32_t>>(), tailor::eval::tokenize_text_file(*tok, text, 1024));
  EXPECT_EQ(d["bos"], tok->bos_id());
  const auto nll = d["token_nll"].get<std::vector<double>>();
  ASSERT_EQ(int64_t(nll.size()), r["scored"].get<int64_t>());
  double sum = 0;
  for (const double v : nll) sum += v;
  EXPECT_NEAR(std::exp(sum / double(nll.size())) / r["ppl"].get<double>(), 1.0, 1e-9);
  auto s = tailor::eval::LogitStore::open(reference_store());
  size_t i = 0;
  double worst = 0;
  for (int64_t w = 0; w < s.n_windows(); ++w)
    for (int64_t row = 0; row < s.n_rows(w) && i < nll.size(); ++row, ++i)
      worst = std::max(worst, std::abs(nll[i] + s.row(w, row).target_logprob));
  EXPECT_EQ(i, nll.size());
  EXPECT_LT(worst, 1e-3);
  expect_error("eval " + gguf + " --text " + text + " " + kSlice + " --dump-tokens /nonexistent-dir/d.json",
               "/nonexistent-dir/d.json");
}

TEST(CliEval, Q8_0KldAgainstF32StoreIsSmall) {
  const std::string store = reference_store();
  json j = eval_json(converted("Q8_0") + " --text " + text_slice("eval.txt", 16384) + " " + kSlice +
                     " --kld-base " + store);
  ASSERT_TRUE(j.contains("kld"));
  const json& k = j["kld"];
  std::printf("Q8_0 vs F32: PPL %.4f (base %.4f), KLD %.6f +/- %.6f, median %.6f, p99 %.6f, max %.5f, "
              "same top %.4f, mean dp %.5f\n",
              double(j["ppl"]), double(k["ppl_base"]["value"]), double(k["kld"]["value"]),
              double(k["kld"]["error"]), double(k["kld_median"]), double(k["kld_p99"]), double(k["kld_max"]),
              double(k["same_top"]["value"]), double(k["p_diff"]["value"]));
  EXPECT_GT(double(k["kld"]["value"]), 0.0);
  EXPECT_LT(double(k["kld"]["value"]), 0.01);
  EXPECT_GT(double(k["same_top"]["value"]), 0.95);
  EXPECT_EQ(k["count"], 8 * 63);
  // Percentiles are ordered and the base PPL is the store's.
  EXPECT_LE(double(k["kld_median"]), double(k["kld_p90"]));
  EXPECT_LE(double(k["kld_p90"]), double(k["kld_p99"]));
  EXPECT_LE(double(k["kld_p99"]), double(k["kld_max"]));
  json base = eval_json(kModel + " --text " + text_slice("eval.txt", 16384) + " " + kSlice);
  EXPECT_NEAR(double(k["ppl_base"]["value"]) / double(base["ppl"]), 1.0, 1e-5);
  EXPECT_NEAR(double(k["ppl"]["value"]) / double(j["ppl"]), 1.0, 1e-9);
}

TEST(CliEval, LlamaLayoutStoreAgreesWithTopKStore) {
  // The same reference in llama-perplexity's dense 16-bit layout: the top-k
  // store's KLD is a lower bound of it, close when the tail mass is small.
  const std::string text = text_slice("eval.txt", 16384);
  const std::string dense = work_dir() + "/ref-f32.llama";
  if (!fs::exists(dense))
    eval_json(kModel + " --text " + text + " " + kSlice + " --save-logits " + dense + " --logits-format llama");
  const std::string q8 = converted("Q8_0");
  json a = eval_json(q8 + " --text " + text + " " + kSlice + " --kld-base " + reference_store());
  json b = eval_json(q8 + " --text " + text + " " + kSlice + " --kld-base " + dense);
  ASSERT_TRUE(a.contains("kld") && b.contains("kld"));
  const double k_topk = a["kld"]["kld"]["value"], k_dense = b["kld"]["kld"]["value"];
  std::printf("Q8_0 KLD: %.6f from the top-k store, %.6f from the llama.cpp layout\n", k_topk, k_dense);
  EXPECT_NEAR(k_topk / k_dense, 1.0, 0.05);
  EXPECT_EQ(b["kld"]["count"], 8 * 63);
  EXPECT_NEAR(double(b["kld"]["same_top"]["value"]), double(a["kld"]["same_top"]["value"]), 0.01);
  auto s = tailor::eval::LogitStore::open(dense);
  EXPECT_TRUE(s.is_llama());
  EXPECT_EQ(s.n_windows(), 8);
}

TEST(CliEval, TextReportAndProgressLines) {
  const std::string text = text_slice("eval.txt", 16384);
  auto r = run_cli("eval " + kModel + " --text " + text + " --ctx 128 --max-tokens 512");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("PPL = "), std::string::npos) << r.out;
  // stderr is a file here: plain lines, the last one the whole run's rate.
  EXPECT_NE(r.err.find("eval: 512/512 tok (100%)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tok/s"), std::string::npos);
  EXPECT_EQ(r.err.find('\r'), std::string::npos);
  auto q = run_cli("eval " + kModel + " --text " + text + " --ctx 128 --max-tokens 512 -q");
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_TRUE(q.err.empty()) << q.err;
}

TEST(Progress, LinesAndDurations) {
  EXPECT_EQ(tailor::Progress::format_duration(0), "0:00");
  EXPECT_EQ(tailor::Progress::format_duration(61.4), "1:01");
  EXPECT_EQ(tailor::Progress::format_duration(3725), "1:02:05");
  tailor::Progress p("eval", "tok", tailor::Progress::Mode::Quiet);
  EXPECT_EQ(p.line(50, 200, 10.0), "eval: 50/200 tok (25%), 5.0 tok/s, ETA 0:30");
  EXPECT_EQ(p.line(200, 200, 40.0), "eval: 200/200 tok (100%), 5.0 tok/s, 0:40");
}

// A bar first updated at 100 done (a resumed job) counts its rate from there:
// 50 more in 10 s is 5/s, not 15/s.
TEST(Progress, RateCountsFromTheFirstUpdate) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    tailor::Progress p("gradual", "units", tailor::Progress::Mode::Plain, f);
    p.update(100, 400);
    EXPECT_EQ(p.line(150, 400, 10.0), "gradual: 150/400 units (38%), 5.0 units/s, ETA 0:50");
    p.clear();  // plain mode: nothing drawn, nothing to erase
  }
  std::fclose(f);
}

// What a terminal-mode bar writes while `use` drives it, its final line included.
std::string terminal_output(const char* label, const char* unit, const std::function<void(tailor::Progress&)>& use) {
  std::FILE* f = std::tmpfile();
  if (f == nullptr) return "(no temporary file)";
  {
    tailor::Progress p(label, unit, tailor::Progress::Mode::Tty, f);
    use(p);
  }  // the destructor ends the line
  std::rewind(f);
  std::string s(4096, '\0');
  s.resize(std::fread(s.data(), 1, s.size(), f));
  std::fclose(f);
  return s;
}

// clear() erases a drawn terminal line once, so a log line can take its place.
TEST(Progress, ClearErasesTheDrawnLine) {
  const std::string text = terminal_output("gradual", "units", [](tailor::Progress& p) {
    p.update(1, 10);
    p.clear();
    p.clear();
  });
  const std::string drawn = "\rgradual: 1/10 units (10%), 0.0 units/s\x1b[K", erase = "\r\x1b[K";
  EXPECT_EQ(text.substr(0, drawn.size() + erase.size()), drawn + erase);
  EXPECT_NE(text.substr(drawn.size() + erase.size(), erase.size()), erase) << "erased twice";
}

TEST(Progress, TerminalRedrawsOneLine) {
  const std::string s = terminal_output("imatrix", "tok", [](tailor::Progress& p) {
    p.update(10, 100);
    p.update(100, 100);  // the last update always draws
  });
  EXPECT_EQ(s.rfind("\rimatrix: 10/100 tok (10%)", 0), 0u) << s;
  EXPECT_NE(s.find("\rimatrix: 100/100 tok (100%)"), std::string::npos) << s;
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 1) << s;
  EXPECT_EQ(s.back(), '\n');
}

TEST(CliEval, GgufTokenizerMatchesTheFolders) {
  auto hf = tailor::eval::load_model_tokenizer(kModel);
  auto gg = tailor::eval::load_model_tokenizer(converted("Q8_0"));
  const std::string text = tailor::test::slurp(text_slice("tinystories-sample.txt", 16384)) +
                           tailor::test::slurp(text_slice("eval.txt", 16384));
  EXPECT_EQ(gg->encode(text), hf->encode(text));
  EXPECT_EQ(gg->bos_id(), 1);
  EXPECT_TRUE(gg->add_bos());
  EXPECT_EQ(gg->eos_id(), hf->eos_id());
}

// ---------------------------------------------------------------- imatrix

TEST(CliImatrix, LlamaLayoutNamesShapesAndSums) {
  const std::string path = calibration_imatrix();
  auto im = tailor::eval::Imatrix::load(path);
  EXPECT_EQ(im.chunk_count, 8u);
  EXPECT_EQ(im.chunk_size, 128u);
  ASSERT_EQ(im.entries().size(), 8u * 7u);  // 8 blocks x q, k, v, o, gate, up, down
  for (int l = 0; l < 8; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    for (const char* t : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}) {
      const auto* e = im.find(b + t + ".weight");
      ASSERT_NE(e, nullptr) << b << t;
      EXPECT_EQ(e->n_cols, std::string(t) == "ffn_down" ? 1280 : 512) << b << t;
      EXPECT_EQ(e->n_experts, 1);
      EXPECT_EQ(e->counts[0], 8 * 128);
    }
    // q, k and v read the same normed input (and so do gate and up).
    EXPECT_EQ(im.find(b + "attn_q.weight")->sum2, im.find(b + "attn_v.weight")->sum2);
    EXPECT_EQ(im.find(b + "ffn_gate.weight")->sum2, im.find(b + "ffn_up.weight")->sum2);
  }
  // The file is llama-imatrix's layout: W.in_sum2 [512] and W.counts [1].
  auto g = tailor::GgufFile::open(path);
  const auto* t = g.find_tensor("blk.0.attn_q.weight.in_sum2");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->ne, std::vector<int64_t>{512});
  ASSERT_NE(g.find_tensor("blk.0.attn_q.weight.counts"), nullptr);
  ASSERT_NE(g.find("general.type"), nullptr);
  EXPECT_EQ(g.find("general.type")->as_string(), "imatrix");

  // Independent check of layer 0's sums from the checkpoint itself: the
  // input of attn_q is RMSNorm(embedding) * input_layernorm for each token of
  // the 8 chunks (first token replaced by BOS, as llama-imatrix does).
  auto tok = tailor::load_tokenizer(kModel);
  std::vector<int32_t> ids = tok->encode(tailor::test::slurp(text_slice("calibration.txt", 16384)));
  ASSERT_GE(ids.size(), 1024u);
  auto st = tailor::Safetensors::open(kModel);
  const auto* emb = st.find("model.embed_tokens.weight");
  const auto* norm = st.find("model.layers.0.input_layernorm.weight");
  ASSERT_TRUE(emb && norm);
  std::vector<float> E(size_t(emb->numel())), w(512);
  tailor::Safetensors::to_f32(*emb, E.data());
  tailor::Safetensors::to_f32(*norm, w.data());
  std::vector<double> want(512, 0.0);
  for (size_t i = 0; i < 1024; ++i) {
    const int32_t id = i % 128 == 0 ? tok->bos_id() : ids[i];
    const float* x = E.data() + size_t(id) * 512;
    double ms = 0;
    for (int j = 0; j < 512; ++j) ms += double(x[j]) * x[j];
    const double inv = 1.0 / std::sqrt(ms / 512 + 1e-5);
    for (int j = 0; j < 512; ++j) {
      const double y = x[j] * inv * w[size_t(j)];
      want[size_t(j)] += y * y;
    }
  }
  const auto& got = im.find("blk.0.attn_q.weight")->sum2;
  for (int j = 0; j < 512; ++j) EXPECT_NEAR(got[size_t(j)] / want[size_t(j)], 1.0, 1e-4) << j;
}

TEST(CliImatrix, ImportanceWeightedQ4KIsCloserThanPlainQ4K) {
  const std::string store = reference_store();
  const std::string im = calibration_imatrix();
  const std::string plain = converted("Q4_K");
  const std::string weighted_path = work_dir() + "/llama30m-Q4_K-imatrix.gguf";
  auto c = run_cli("convert " + kModel + " -o " + weighted_path + " -t Q4_K --imatrix " + im + " --json");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  // The embedding (a lookup, no matmul) and output.weight (llama-imatrix's
  // default skips it) have no values: warned about, quantized unweighted.
  EXPECT_NE(c.err.find("output.weight has no importance values"), std::string::npos) << c.err;
  json cj = json::parse(c.out);
  EXPECT_EQ(cj["missing_importance"], json::array({"token_embd.weight", "output.weight"}));
  int weighted = 0;
  for (const auto& t : cj["tensors"]) weighted += t["imatrix"].get<bool>();
  EXPECT_EQ(weighted, 56);

  const std::string text = text_slice("eval.txt", 16384);
  json a = eval_json(plain + " --text " + text + " " + kSlice + " --kld-base " + store);
  json b = eval_json(weighted_path + " --text " + text + " " + kSlice + " --kld-base " + store);
  ASSERT_TRUE(a.contains("kld") && b.contains("kld"));
  const double ka = a["kld"]["kld"]["value"], kb = b["kld"]["kld"]["value"];
  std::printf("Q4_K vs F32: KLD %.6f plain, %.6f with imatrix (%.1f%% lower); PPL %.4f / %.4f\n", ka, kb,
              100.0 * (1 - kb / ka), double(a["ppl"]), double(b["ppl"]));
  EXPECT_GT(kb, 0.0);
  EXPECT_LT(kb, ka);
}

TEST(CliImatrix, InFileAddsChunks) {
  const std::string base = calibration_imatrix();
  const std::string out = work_dir() + "/calib2.imatrix.gguf";
  auto r = run_cli("imatrix " + kModel + " --text " + text_slice("eval.txt", 16384) + " -o " + out +
                   " --ctx 128 --chunks 2 -q --in-file " + base);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto a = tailor::eval::Imatrix::load(base), b = tailor::eval::Imatrix::load(out);
  EXPECT_EQ(b.chunk_count, 10u);
  EXPECT_EQ(b.datasets.size(), 2u);
  const auto* ea = a.find("blk.3.ffn_down.weight");
  const auto* eb = b.find("blk.3.ffn_down.weight");
  ASSERT_TRUE(ea && eb);
  EXPECT_EQ(eb->counts[0], 10 * 128);
  for (size_t j = 0; j < ea->sum2.size(); ++j) EXPECT_GT(eb->sum2[j], ea->sum2[j]) << j;
}

TEST(CliImatrix, MoePerExpertAndWeightedConversion) {
  const std::string moe = kShared + "/models/moe-26m";
  const std::string im = work_dir() + "/moe.imatrix.gguf";
  auto r = run_cli("imatrix " + moe + " --text " + text_slice("calibration.txt", 16384) + " -o " + im +
                   " --ctx 128 --chunks 2 -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto m = tailor::eval::Imatrix::load(im);
  for (int l = 0; l < 4; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    for (const char* t : {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"}) {
      const auto* e = m.find(b + t + ".weight");
      ASSERT_NE(e, nullptr) << b << t;
      EXPECT_EQ(e->n_experts, 4);
      EXPECT_EQ(e->n_cols, std::string(t) == "ffn_down_exps" ? 768 : 512);
      // Every token goes to two of the four experts.
      int64_t routed = 0;
      for (int64_t c : e->counts) routed += c;
      EXPECT_EQ(routed, 2 * 2 * 128) << b << t;
    }
    // The router sees every token once.
    ASSERT_NE(m.find(b + "ffn_gate_inp.weight"), nullptr);
    EXPECT_EQ(m.find(b + "ffn_gate_inp.weight")->counts[0], 2 * 128);
  }
  auto g = tailor::GgufFile::open(im);
  ASSERT_NE(g.find_tensor("blk.0.ffn_up_exps.weight.in_sum2"), nullptr);
  EXPECT_EQ(g.find_tensor("blk.0.ffn_up_exps.weight.in_sum2")->ne, (std::vector<int64_t>{512, 4}));
  EXPECT_EQ(g.find_tensor("blk.0.ffn_up_exps.weight.counts")->ne, (std::vector<int64_t>{1, 4}));

  const std::string out = work_dir() + "/moe-Q4_K-imatrix.gguf";
  auto c = run_cli("convert " + moe + " -o " + out + " -t Q4_K --imatrix " + im + " --json");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  const json cj = json::parse(c.out);
  int weighted = 0;
  for (const auto& t : cj["tensors"]) weighted += t["imatrix"].get<bool>();
  EXPECT_EQ(weighted, 4 * 7);  // q, k, v, o and the three merged expert tensors
}

// ---------------------------------------------------------------- generate

TEST(CliGenerate, GreedyMatchesTransformersReference) {
  // No KV cache: each step re-runs the sequence, so the test checks the
  // first 20 of the reference's 40 greedy tokens (seconds, not a minute).
  const json ref = json::parse(tailor::test::slurp(kModel + "/reference.json"));
  const std::string prompt = ref["greedy_prompt"];
  auto r = run_cli("generate " + kModel + " --prompt \"" + prompt + "\" -n 20 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json j = json::parse(r.out);
  std::vector<int32_t> all = j["prompt_ids"];
  const size_t n_prompt = all.size();
  for (int32_t t : j["ids"]) all.push_back(t);
  const std::vector<int32_t> want = ref["greedy_ids"];
  ASSERT_EQ(all.size(), n_prompt + 20);
  EXPECT_EQ(all, std::vector<int32_t>(want.begin(), want.begin() + std::ptrdiff_t(all.size())));
  const std::string text = j["text"], want_text = ref["greedy_text"];
  EXPECT_EQ(want_text.substr(0, text.size()), text);
  EXPECT_GT(text.size(), prompt.size() + 40);
  // Plain output streams the same text after the prompt.
  auto p = run_cli("generate " + kModel + " --prompt \"" + prompt + "\" -n 6");
  ASSERT_EQ(p.exit_code, 0) << p.err;
  ASSERT_GT(p.out.size(), prompt.size() + 10);
  EXPECT_EQ(want_text.substr(0, p.out.size() - 1) + "\n", p.out);
}

TEST(CliGenerate, SamplingIsReproducibleAndTopK1IsGreedy) {
  const std::string base = "generate " + kModel + " --prompt \"The king\" -n 5 --json";
  auto a = run_cli(base + " --temp 0.8 --top-p 0.9 --seed 7");
  auto b = run_cli(base + " --temp 0.8 --top-p 0.9 --seed 7");
  auto g = run_cli(base);
  auto k1 = run_cli(base + " --temp 1.5 --top-k 1 --seed 3");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(json::parse(a.out)["ids"], json::parse(b.out)["ids"]);
  EXPECT_EQ(json::parse(g.out)["ids"], json::parse(k1.out)["ids"]);
}

// ---------------------------------------------------------------- bad input

TEST(CliEvalErrors, EmptyText) {
  const std::string p = work_dir() + "/empty.txt";
  write_file(p, "");
  expect_error("eval " + kModel + " --text " + p, "the text file is empty");
  expect_error("imatrix " + kModel + " --text " + p + " -o " + work_dir() + "/x.gguf", "the text file is empty");
}

TEST(CliEvalErrors, NotUtf8) {
  const std::string p = work_dir() + "/latin1.txt";
  write_file(p, "caf\xe9 au lait\n");
  expect_error("eval " + kModel + " --text " + p, "not UTF-8 text (invalid byte 0xe9 at offset 3)");
}

TEST(CliEvalErrors, TextShorterThanOneWindow) {
  const std::string p = work_dir() + "/short.txt";
  write_file(p, "Once upon a time there was a short text.\n");
  expect_error("eval " + kModel + " --text " + p + " --ctx 128", "fewer than the 256 needed");
  expect_error("eval " + kModel + " --text " + p + " --ctx 128 --method hf", "fewer than the 128 needed");
  expect_error("imatrix " + kModel + " --text " + p + " -o " + work_dir() + "/x.gguf --ctx 128",
               "fewer than the 128 needed for one chunk");
}

TEST(CliEvalErrors, KldBaseFromAnotherVocabulary) {
  // A store over a 100-token vocabulary.
  const std::string p = work_dir() + "/vocab100.topk";
  {
    tailor::eval::TopKLogitsWriter w(p, 100, 128, 64);
    std::vector<float> logits(63 * 100);
    std::mt19937 rng(1);
    for (float& x : logits) x = std::normal_distribution<float>()(rng);
    std::vector<int32_t> targets(63, 5);
    w.add_window(0, targets, logits);
    w.commit();
  }
  expect_error("eval " + kModel + " --text " + text_slice("eval.txt", 16384) + " " + kSlice + " --kld-base " + p,
               "reference logits over a vocabulary of 100, the model has 8192");
}

TEST(CliEvalErrors, KldBaseFromAnotherTextOrContext) {
  const std::string store = reference_store();
  const std::string other = text_slice("tinystories-sample.txt", 16384);
  expect_error("eval " + kModel + " --text " + other + " " + kSlice + " --kld-base " + store,
               "made from another text or tokenizer");
  expect_error("eval " + kModel + " --text " + text_slice("eval.txt", 16384) +
                   " --ctx 64 --max-tokens 1024 --kld-base " + store,
               "made with context 128, this run uses 64");
  expect_error("eval " + kModel + " --text " + text_slice("eval.txt", 16384) + " " + kSlice +
                   " --method hf --kld-base " + store,
               "made with another perplexity method");
}

// A copy of `src` without the metadata key `drop`.
std::string gguf_without(const std::string& src, const std::string& drop) {
  const std::string out = work_dir() + "/no-" + drop + ".gguf";
  if (fs::exists(out)) return out;
  auto g = tailor::GgufFile::open(src);
  tailor::GgufWriter w(out);
  for (const auto& [k, v] : g.metadata())
    if (k != drop) w.set(k, v);
  for (const auto& t : g.tensors()) w.add_tensor(t.name, t.ne, t.type);
  for (const auto& t : g.tensors()) w.write_tensor_data(t.data, t.nbytes);
  w.finish();
  return out;
}

TEST(CliEvalErrors, GgufMissingRequiredKeys) {
  const std::string q8 = converted("Q8_0");
  const std::string text = text_slice("eval.txt", 16384);
  expect_error("eval " + gguf_without(q8, "llama.block_count") + " --text " + text + " " + kSlice,
               "missing key llama.block_count");
  expect_error("eval " + gguf_without(q8, "tokenizer.ggml.tokens") + " --text " + text + " " + kSlice,
               "missing key tokenizer.ggml.tokens");
  expect_error("generate " + gguf_without(q8, "tokenizer.ggml.model") + " --prompt hi",
               "missing key tokenizer.ggml.model");
}

TEST(CliEvalErrors, ConvertWithBadImatrix) {
  const std::string p = work_dir() + "/not-an-imatrix.gguf";
  write_file(p, "definitely not a gguf file");
  expect_error("convert " + kModel + " -o " + work_dir() + "/never.gguf -t Q4_K --imatrix " + p, p);
  EXPECT_FALSE(fs::exists(work_dir() + "/never.gguf"));
}

}  // namespace
