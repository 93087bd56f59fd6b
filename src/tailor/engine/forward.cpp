// The forward pass: pre-norm decoder blocks (RMS norm, GQA attention with
// NeoX rope, SwiGLU MLP or routed experts) over a batch of whole sequences.
// The rows of every sequence are stacked so each linear is one GEMM over the
// batch; only attention runs per sequence. All arithmetic is f32 as in
// Hugging Face's float32 reference.
#include <algorithm>
#include <cmath>

#include "tailor/engine/model_state.h"
#include "tailor/quant/activations.h"
#include "tailor/quant/codec.h"
#include "tailor/util/error.h"

namespace tailor::engine {
namespace {

int64_t out_features(const Weight& w) { return w.shape[w.shape.size() - 2]; }

// At least n floats of a reused buffer; contents are whatever was left there.
float* scratch(std::vector<float>& buf, int64_t n) {
  if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// y[rows, out] = x[rows, in] W^T (+ bias), with W one expert's slice of a
// merged tensor when expert >= 0; then the hook sees it. same_input: x is
// the previous call's input, unchanged since (q/k/v, gate/up), so its
// rounding to the weight's vec_dot_type can be reused when the types agree.
void run_linear(Model::State& s, const Linear& l, const float* x, int64_t rows, float* y,
                int64_t expert = -1, bool same_input = false) {
  if (rows == 0) return;
  const Weight& w = *l.w;
  const int64_t in = w.cols(), out = out_features(w);
  const int64_t first_row = expert < 0 ? 0 : expert * out;
  const float* x_in = x;
  if (s.emulate_activations) {
    const GgmlType vt = ggml_vec_dot_type(w.stored_type());
    if (!same_input) s.rounded_type = GgmlType::F32;  // scratch.rounded holds another input
    if (vt != GgmlType::F32) {
      if (s.rounded_type != vt) {
        // On the calling thread: about 1% of the GEMM's work, and waking
        // threads beside the BLAS's spinning ones cost 10-20% of an eval.
        round_activation_rows(vt, x, scratch(s.scratch.rounded, rows * in), rows, in, 1);
        s.rounded_type = vt;
      }
      x = s.scratch.rounded.data();
    }
  }
  if (!w.quantized()) {
    s.backend->matmul(x, w.f32.data() + first_row * in, y, rows, in, out);
  } else {
    const QuantMatrix q{w.type, w.blocks.data() + first_row * row_size(w.type, in), out, in};
    s.backend->matmul(x, q, y, rows);
  }
  if (l.b != nullptr) s.backend->add_bias(y, l.b->f32.data(), rows, out);
  if (s.hook) s.hook(LinearCall{*l.name, l.layer, expert, x_in, y, rows, in, out});
}

// SwiGLU MLP: out[rows, d] = down(silu(gate(x)) * up(x)).
void run_mlp(Model::State& s, const Linear& gate, const Linear& up, const Linear& down,
             const float* x, int64_t rows, float* out, int64_t expert = -1) {
  const int64_t ff = out_features(*gate.w);
  float* g = scratch(s.scratch.gate, rows * ff);
  float* u = scratch(s.scratch.up, rows * ff);
  run_linear(s, gate, x, rows, g, expert);
  run_linear(s, up, x, rows, u, expert, true);
  s.backend->swiglu(g, u, g, rows * ff);
  run_linear(s, down, g, rows, out, expert);
}

// Routed experts (and a sigmoid-gated shared expert when the layer has one),
// as transformers' Mixtral / Qwen2-MoE / Qwen3-MoE blocks: softmax over the
// router logits, top-k, optional renormalisation, weighted sum of experts.
void run_moe(Model::State& s, const Layer& L, const float* x, int64_t rows, float* out) {
  const ModelConfig& c = s.cfg;
  const int64_t d = c.hidden_size, n_exp = c.num_experts;
  const int k = static_cast<int>(c.num_experts_used);
  std::vector<float> logits(static_cast<size_t>(rows * n_exp));
  run_linear(s, L.router, x, rows, logits.data());
  std::vector<int32_t> ids(static_cast<size_t>(rows * k));
  std::vector<float> weights(ids.size());
  s.backend->topk_gating(logits.data(), rows, n_exp, k, c.norm_topk_prob, ids.data(),
                         weights.data());

  std::fill(out, out + rows * d, 0.0f);
  std::vector<int64_t> picked;
  std::vector<float> picked_w, xe, ye;
  for (int64_t e = 0; e < n_exp; ++e) {
    picked.clear();
    picked_w.clear();
    for (int64_t r = 0; r < rows; ++r)
      for (int j = 0; j < k; ++j)
        if (ids[r * k + j] == e) {
          picked.push_back(r);
          picked_w.push_back(weights[r * k + j]);
        }
    if (picked.empty()) continue;
    const int64_t n = static_cast<int64_t>(picked.size());
    xe.resize(static_cast<size_t>(n * d));
    ye.resize(xe.size());
    for (int64_t i = 0; i < n; ++i) std::copy_n(x + picked[i] * d, d, xe.data() + i * d);
    run_mlp(s, L.gate_exps, L.up_exps, L.down_exps, xe.data(), n, ye.data(), e);
    for (int64_t i = 0; i < n; ++i) {
      float* o = out + picked[i] * d;
      const float* y = ye.data() + i * d;
      for (int64_t j = 0; j < d; ++j) o[j] += picked_w[i] * y[j];
    }
  }

  if (!L.gate_shexp) return;
  std::vector<float> shared(static_cast<size_t>(rows * d)), gate(static_cast<size_t>(rows));
  run_mlp(s, L.gate_shexp, L.up_shexp, L.down_shexp, x, rows, shared.data());
  run_linear(s, L.shexp_gate, x, rows, gate.data());
  for (int64_t r = 0; r < rows; ++r) {
    const float g = 1.0f / (1.0f + std::exp(-gate[r]));
    for (int64_t j = 0; j < d; ++j) out[r * d + j] += g * shared[r * d + j];
  }
}

void check_hidden(const Model::State& s, const Hidden& h) {
  if (h.dim != s.cfg.hidden_size || h.lengths.empty() ||
      std::any_of(h.lengths.begin(), h.lengths.end(), [](int64_t n) { return n <= 0; }) ||
      h.data.size() != static_cast<size_t>(h.rows() * h.dim))
    fail("model: hidden state of {} sequences and {} values does not fit hidden size {}",
         h.lengths.size(), h.data.size(), s.cfg.hidden_size);
}

// cos/sin rows for every stacked token; each sequence starts at position 0.
const RopeTable& rope_for(Model::State& s, const std::vector<int64_t>& lengths) {
  if (s.rope_lengths == lengths && !s.rope.cos.empty()) return s.rope;
  const size_t half = s.inv_freq.size();
  RopeTable t;
  t.rot_dim = static_cast<int64_t>(half * 2);
  for (int64_t len : lengths)
    for (int64_t pos = 0; pos < len; ++pos)
      for (size_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(pos) * s.inv_freq[i];
        t.cos.push_back(static_cast<float>(std::cos(angle)));
        t.sin.push_back(static_cast<float>(std::sin(angle)));
      }
  s.rope = std::move(t);
  s.rope_lengths = lengths;
  return s.rope;
}

}  // namespace

Hidden Model::embed(const Sequences& seqs) const {
  const ModelConfig& c = s_->cfg;
  const int64_t d = c.hidden_size;
  if (seqs.empty()) fail("model: the batch holds no sequences");
  Hidden h;
  h.dim = d;
  for (const auto& seq : seqs) {
    if (seq.empty()) fail("model: sequence {} of the batch is empty", h.lengths.size());
    if (c.sliding_window && static_cast<int64_t>(seq.size()) > *c.sliding_window)
      fail("model: sequence of {} tokens exceeds the sliding window of {} (not supported)",
           seq.size(), *c.sliding_window);
    h.lengths.push_back(static_cast<int64_t>(seq.size()));
  }
  h.data.resize(static_cast<size_t>(h.rows() * d));
  const Weight& emb = *s_->tok_embd;
  float* dst = h.data.data();
  for (const auto& seq : seqs)
    for (int32_t id : seq) {
      if (id < 0 || id >= c.vocab_size)
        fail("model: token id {} is outside the vocabulary of {}", id, c.vocab_size);
      if (emb.quantized())
        dequantize_row(emb.type, emb.blocks.data() + id * row_size(emb.type, d), dst, d);
      else
        std::copy_n(emb.f32.data() + static_cast<int64_t>(id) * d, d, dst);
      dst += d;
    }
  return h;
}

void Model::run_block(int64_t layer, Hidden& h) {
  State& s = *s_;
  const ModelConfig& c = s.cfg;
  if (layer < 0 || layer >= c.num_layers)
    fail("model: block {} is outside 0..{}", layer, c.num_layers - 1);
  check_hidden(s, h);
  const Layer& L = s.layers[static_cast<size_t>(layer)];
  Backend& be = *s.backend;
  const int64_t rows = h.rows(), d = c.hidden_size, hd = c.head_dim;
  const int64_t nh = c.num_heads, nkv = c.num_kv_heads;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const RopeTable& rope = rope_for(s, h.lengths);

  Model::State::Scratch& w = s.scratch;
  float* xn = scratch(w.xn, rows * d);
  float* tmp = scratch(w.tmp, rows * d);
  float* q = scratch(w.q, rows * nh * hd);
  float* att = scratch(w.att, rows * nh * hd);
  float* k = scratch(w.k, rows * nkv * hd);
  float* v = scratch(w.v, rows * nkv * hd);
  be.rms_norm(h.data.data(), L.attn_norm->f32.data(), xn, rows, d, eps);
  run_linear(s, L.q, xn, rows, q);
  run_linear(s, L.k, xn, rows, k, -1, true);
  run_linear(s, L.v, xn, rows, v, -1, true);
  if (L.q_norm != nullptr) {
    be.rms_norm(q, L.q_norm->f32.data(), q, rows * nh, hd, eps);
    be.rms_norm(k, L.k_norm->f32.data(), k, rows * nkv, hd, eps);
  }
  be.rope(q, rows, nh, hd, rope);
  be.rope(k, rows, nkv, hd, rope);
  int64_t off = 0;
  for (int64_t len : h.lengths) {
    AttentionShape shape{len, len, nh, nkv, hd, static_cast<float>(1.0 / std::sqrt(double(hd)))};
    be.attention(shape, q + off * nh * hd, k + off * nkv * hd, v + off * nkv * hd,
                 att + off * nh * hd);
    off += len;
  }
  run_linear(s, L.o, att, rows, tmp);
  be.add(h.data.data(), tmp, rows * d);

  be.rms_norm(h.data.data(), L.ffn_norm->f32.data(), xn, rows, d, eps);
  if (L.router)
    run_moe(s, L, xn, rows, tmp);
  else
    run_mlp(s, L.gate, L.up, L.down, xn, rows, tmp);
  be.add(h.data.data(), tmp, rows * d);
}

void Model::final_logits(const Hidden& h, const LogitsFn& on_logits) {
  State& s = *s_;
  check_hidden(s, h);
  const int64_t d = s.cfg.hidden_size, vocab = s.cfg.vocab_size;
  std::vector<float> xn, logits;
  int64_t off = 0;
  for (size_t b = 0; b < h.lengths.size(); ++b) {
    const int64_t len = h.lengths[b];
    xn.resize(static_cast<size_t>(len * d));
    logits.resize(static_cast<size_t>(len * vocab));
    s.backend->rms_norm(h.data.data() + off * d, s.out_norm->f32.data(), xn.data(), len, d,
                        static_cast<float>(s.cfg.rms_norm_eps));
    run_linear(s, s.output, xn.data(), len, logits.data());
    on_logits(b, logits.data(), len, vocab);
    off += len;
  }
}

void Model::forward(const Sequences& seqs, const LogitsFn& on_logits) {
  Hidden h = embed(seqs);
  for (int64_t i = 0; i < num_layers(); ++i) run_block(i, h);
  final_logits(h, on_logits);
}

std::vector<float> Model::forward(std::span<const int32_t> tokens, int64_t batch, int64_t length) {
  if (batch <= 0 || length <= 0 || static_cast<int64_t>(tokens.size()) != batch * length)
    fail("model: {} tokens do not form a batch of {} x {}", tokens.size(), batch, length);
  Sequences seqs;
  for (int64_t b = 0; b < batch; ++b)
    seqs.emplace_back(tokens.begin() + b * length, tokens.begin() + (b + 1) * length);
  std::vector<float> out(static_cast<size_t>(batch * length * vocab_size()));
  forward(seqs, [&](size_t b, const float* logits, int64_t len, int64_t vocab) {
    std::copy_n(logits, len * vocab, out.data() + static_cast<int64_t>(b) * len * vocab);
  });
  return out;
}

}  // namespace tailor::engine
