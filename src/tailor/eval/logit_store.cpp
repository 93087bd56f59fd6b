#include "tailor/eval/logit_store.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "tailor/eval/softmax.h"
#include "tailor/util/error.h"
#include "tailor/util/parallel.h"

namespace tailor::eval {

namespace {

constexpr char kTopKMagic[8] = {'T', 'L', 'R', 'L', 'O', 'G', 'P', '1'};
constexpr char kTopKEnd[8] = {'T', 'L', 'R', 'E', 'N', 'D', '0', '1'};
constexpr char kLlamaMagic[8] = {'_', 'l', 'o', 'g', 'i', 't', 's', '_'};
constexpr uint32_t kWindowTag = 0x57444e57u;  // "WNDW"
constexpr uint64_t kTopKHeader = 32, kTopKTrailer = 24, kWindowHeader = 16, kLlamaHeader = 20;
// Limits that keep every size product far below 2^63.
constexpr int64_t kMaxVocab = int64_t(1) << 28, kMaxCtx = int64_t(1) << 24;

template <typename T>
void put(std::vector<uint8_t>& b, T v) {
  const size_t n = b.size();
  b.resize(n + sizeof(T));
  std::memcpy(b.data() + n, &v, sizeof(T));
}

template <typename T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

int64_t llama_rows_per_chunk(int64_t n_ctx) { return n_ctx - 1 - n_ctx / 2; }
int64_t llama_record_u16(int64_t n_vocab) { return 2 * ((n_vocab + 1) / 2) + 4; }

void check_rows(const char* who, std::span<const int32_t> targets, std::span<const float> logits,
                int64_t n_vocab) {
  if (logits.size() != targets.size() * size_t(n_vocab))
    fail("{}: {} logits for {} rows of vocabulary {}", who, logits.size(), targets.size(), n_vocab);
  for (const int32_t t : targets)
    if (t < 0 || t >= n_vocab) fail("{}: token id {} outside vocabulary {}", who, t, n_vocab);
}

}  // namespace

// ---- Tailor top-k writer ----

TopKLogitsWriter::TopKLogitsWriter(std::string path, int64_t n_vocab, int64_t n_ctx, int64_t first_row,
                                   TopKOptions opt)
    : out_(std::move(path)), n_vocab_(n_vocab), opt_(opt) {
  if (n_vocab < 1 || n_vocab > kMaxVocab) fail("{}: vocabulary size {} out of range", out_.path(), n_vocab);
  opt_.max_k = std::min(opt_.max_k, n_vocab);
  opt_.min_k = std::min(opt_.min_k, opt_.max_k);
  if (opt_.min_k < 1 || !(opt_.coverage >= 0 && opt_.coverage <= 1))
    fail("{}: kept tokens [{}, {}] / coverage {} out of range", out_.path(), opt_.min_k, opt_.max_k, opt_.coverage);
  if (n_ctx < 2 || n_ctx > kMaxCtx || first_row < 0 || first_row >= n_ctx)
    fail("{}: context {} / first row {} out of range", out_.path(), n_ctx, first_row);
  std::vector<uint8_t> h(kTopKMagic, kTopKMagic + 8);
  put<uint32_t>(h, 1);
  put<uint32_t>(h, uint32_t(n_vocab));
  put<uint32_t>(h, uint32_t(opt_.max_k));
  put<uint32_t>(h, uint32_t(n_ctx));
  put<uint32_t>(h, uint32_t(first_row));
  put<uint32_t>(h, uint32_t(opt_.min_k));
  out_.write(h.data(), h.size());
}

void TopKLogitsWriter::encode_row(std::span<const float> row, int32_t target, std::vector<int32_t>& order,
                                  std::vector<uint8_t>& out) const {
  const RowSoftmax sm = row_softmax(row);
  const auto max_k = ptrdiff_t(opt_.max_k);
  auto more_likely = [&](int32_t a, int32_t b) {
    return row[size_t(a)] > row[size_t(b)] || (row[size_t(a)] == row[size_t(b)] && a < b);
  };
  std::iota(order.begin(), order.end(), 0);
  std::nth_element(order.begin(), order.begin() + max_k - 1, order.end(), more_likely);
  std::sort(order.begin(), order.begin() + max_k, more_likely);
  size_t n = 0;
  double mass = 0;
  while (n < size_t(max_k) && (n < size_t(opt_.min_k) || mass < opt_.coverage))
    mass += std::exp(sm.logprob(row[size_t(order[n++])]));
  // The tail is summed directly over the tokens left out, not as 1 - kept
  // mass, so a tiny tail keeps its relative precision.
  double tail = 0;
  for (size_t i = n; i < order.size(); ++i) tail += std::exp(double(row[size_t(order[i])]) - sm.max_logit);
  const float tail_lp = tail > 0 ? float(std::log(tail) - sm.log_sum_exp) : -std::numeric_limits<float>::infinity();
  out.clear();
  out.reserve(16 + 8 * n);
  put<int32_t>(out, target);
  put<float>(out, float(sm.logprob(row[size_t(target)])));
  put<float>(out, tail_lp);
  put<uint32_t>(out, uint32_t(n));
  for (size_t i = 0; i < n; ++i) put<int32_t>(out, order[i]);
  for (size_t i = 0; i < n; ++i) put<float>(out, float(sm.logprob(row[size_t(order[i])])));
}

void TopKLogitsWriter::add_window(int64_t start, std::span<const int32_t> targets, std::span<const float> logits) {
  check_rows(out_.path().c_str(), targets, logits, n_vocab_);
  if (start < 0) fail("{}: negative window start", out_.path());
  record_.clear();
  put<uint32_t>(record_, kWindowTag);
  put<uint32_t>(record_, uint32_t(targets.size()));
  put<uint64_t>(record_, uint64_t(start));
  out_.write(record_.data(), record_.size());
  // Rows are encoded in parallel (each thread with its own index buffer) and
  // written in order.
  std::vector<std::vector<uint8_t>> records(targets.size());
  parallel_for(int64_t(targets.size()), [&](int64_t b, int64_t e) {
    std::vector<int32_t> order(static_cast<size_t>(n_vocab_));
    for (int64_t r = b; r < e; ++r)
      encode_row(logits.subspan(size_t(r) * size_t(n_vocab_), size_t(n_vocab_)), targets[size_t(r)], order,
                 records[size_t(r)]);
  });
  for (const auto& rec : records) out_.write(rec.data(), rec.size());
  ++n_windows_;
  n_rows_ += targets.size();
}

void TopKLogitsWriter::commit() {
  std::vector<uint8_t> t(kTopKEnd, kTopKEnd + 8);
  put<uint64_t>(t, n_windows_);
  put<uint64_t>(t, n_rows_);
  out_.write(t.data(), t.size());
  out_.commit();
}

// ---- llama.cpp layout writer ----

LlamaLogitsWriter::LlamaLogitsWriter(std::string path, int64_t n_vocab, int64_t n_ctx,
                                     std::span<const int32_t> tokens)
    : out_(std::move(path)), n_vocab_(n_vocab), n_ctx_(n_ctx) {
  if (n_vocab < 1 || n_vocab > kMaxVocab) fail("{}: vocabulary size {} out of range", out_.path(), n_vocab);
  if (n_ctx < 3 || n_ctx > kMaxCtx) fail("{}: context {} out of range", out_.path(), n_ctx);
  if (tokens.empty() || tokens.size() % size_t(n_ctx) != 0)
    fail("{}: {} tokens is not a whole number of {}-token chunks", out_.path(), tokens.size(), n_ctx);
  n_chunk_ = int64_t(tokens.size()) / n_ctx;
  if (n_chunk_ > std::numeric_limits<int32_t>::max()) fail("{}: too many chunks", out_.path());
  std::vector<uint8_t> h(kLlamaMagic, kLlamaMagic + 8);
  put<uint32_t>(h, uint32_t(n_ctx));
  put<int32_t>(h, int32_t(n_vocab));
  put<int32_t>(h, int32_t(n_chunk_));
  out_.write(h.data(), h.size());
  out_.write(tokens.data(), tokens.size_bytes());
  record_.resize(size_t(llama_record_u16(n_vocab)));
}

void LlamaLogitsWriter::add_window(std::span<const float> logits) {
  const int64_t rows = llama_rows_per_chunk(n_ctx_);
  if (int64_t(logits.size()) != rows * n_vocab_)
    fail("{}: window needs {} rows of {} logits, got {} values", out_.path(), rows, n_vocab_, logits.size());
  if (written_ >= n_chunk_) fail("{}: more windows than the {} chunks declared", out_.path(), n_chunk_);
  for (int64_t r = 0; r < rows; ++r) {
    const auto row = logits.subspan(size_t(r * n_vocab_), size_t(n_vocab_));
    const RowSoftmax sm = row_softmax(row);
    float lo = *std::min_element(row.begin(), row.end());
    lo = std::max(lo, sm.max_logit - 16);
    const float min_log_prob = float(double(lo) - sm.max_logit - sm.log_sum_exp);
    const float scale = (sm.max_logit - lo) / 65535.f;
    std::memcpy(record_.data(), &scale, 4);
    std::memcpy(record_.data() + 2, &min_log_prob, 4);
    uint16_t* codes = record_.data() + 4;
    const float inv = scale > 0 ? 1 / scale : 0;
    for (int64_t i = 0; i < n_vocab_; ++i) {
      const float v = row[size_t(i)];
      codes[i] = v > lo ? uint16_t(std::lrint(inv * (v - lo))) : uint16_t(0);
    }
    out_.write(record_.data(), record_.size() * 2);
  }
  ++written_;
}

void LlamaLogitsWriter::commit() {
  if (written_ != n_chunk_) fail("{}: {} of {} chunks written", out_.path(), written_, n_chunk_);
  out_.commit();
}

// ---- reader ----

LogitStore LogitStore::open(const std::string& path) {
  LogitStore s;
  s.file_ = std::make_shared<MappedFile>(path);
  const uint8_t* d = s.file_->data();
  const uint64_t size = s.file_->size();
  if (size >= 8 && std::memcmp(d, kLlamaMagic, 8) == 0) {
    s.llama_ = true;
    if (size < kLlamaHeader) fail("{}: truncated header", path);
    const int64_t n_ctx = get<uint32_t>(d + 8), n_vocab = get<int32_t>(d + 12), n_chunk = get<int32_t>(d + 16);
    if (n_ctx < 3 || n_ctx > kMaxCtx) fail("{}: context {} out of range", path, n_ctx);
    if (n_vocab < 1 || n_vocab > kMaxVocab) fail("{}: vocabulary size {} out of range", path, n_vocab);
    if (n_chunk < 0) fail("{}: negative chunk count {}", path, n_chunk);
    const int64_t rows = llama_rows_per_chunk(n_ctx);
    s.record_bytes_ = uint64_t(llama_record_u16(n_vocab)) * 2;
    const unsigned __int128 need = (unsigned __int128)kLlamaHeader + (unsigned __int128)n_chunk * uint64_t(n_ctx) * 4 +
                                   (unsigned __int128)n_chunk * uint64_t(rows) * s.record_bytes_;
    if (need != size)
      fail("{}: size {} does not match {} chunks of {} tokens, vocabulary {}", path, size, n_chunk, n_ctx, n_vocab);
    s.n_ctx_ = n_ctx;
    s.n_vocab_ = n_vocab;
    s.first_row_ = n_ctx / 2;
    s.tokens_.resize(size_t(n_chunk * n_ctx));
    std::memcpy(s.tokens_.data(), d + kLlamaHeader, s.tokens_.size() * 4);
    uint64_t off = kLlamaHeader + uint64_t(n_chunk * n_ctx) * 4;
    for (int64_t c = 0; c < n_chunk; ++c) {
      s.windows_.push_back({off, rows, c * n_ctx});
      off += uint64_t(rows) * s.record_bytes_;
    }
    s.dense_.resize(size_t(n_vocab));
    return s;
  }
  if (size < kTopKHeader + kTopKTrailer || std::memcmp(d, kTopKMagic, 8) != 0)
    fail("{}: not a reference logits file (no Tailor or llama.cpp magic)", path);
  if (get<uint32_t>(d + 8) != 1) fail("{}: unsupported version {}", path, get<uint32_t>(d + 8));
  s.n_vocab_ = get<uint32_t>(d + 12);
  s.max_k_ = get<uint32_t>(d + 16);
  s.n_ctx_ = get<uint32_t>(d + 20);
  s.first_row_ = get<uint32_t>(d + 24);
  s.min_k_ = get<uint32_t>(d + 28);
  if (s.n_vocab_ < 1 || s.n_vocab_ > kMaxVocab) fail("{}: vocabulary size {} out of range", path, s.n_vocab_);
  if (s.max_k_ < 1 || s.max_k_ > s.n_vocab_ || s.min_k_ < 1 || s.min_k_ > s.max_k_)
    fail("{}: kept-token range [{}, {}] out of range", path, s.min_k_, s.max_k_);
  if (s.n_ctx_ < 2 || s.n_ctx_ > kMaxCtx || s.first_row_ >= s.n_ctx_)
    fail("{}: context {} / first row {} out of range", path, s.n_ctx_, s.first_row_);
  const uint64_t end = size - kTopKTrailer;
  uint64_t off = kTopKHeader;
  while (off < end) {
    if (end - off < kWindowHeader) fail("{}: truncated window header at offset {}", path, off);
    if (get<uint32_t>(d + off) != kWindowTag) fail("{}: bad window tag at offset {}", path, off);
    const int64_t n_rows = get<uint32_t>(d + off + 4);
    const uint64_t start = get<uint64_t>(d + off + 8);
    if (n_rows > s.n_ctx_) fail("{}: window at offset {} has {} rows, context is {}", path, off, n_rows, s.n_ctx_);
    if (start > uint64_t(std::numeric_limits<int64_t>::max())) fail("{}: bad window start at offset {}", path, off);
    s.windows_.push_back({uint64_t(s.row_offsets_.size()), n_rows, int64_t(start)});
    off += kWindowHeader;
    for (int64_t r = 0; r < n_rows; ++r) {
      if (end - off < 16) fail("{}: truncated record at offset {}", path, off);
      const uint64_t n = get<uint32_t>(d + off + 12);
      if (n < 1 || n > uint64_t(s.max_k_)) fail("{}: record at offset {} keeps {} tokens, limit {}", path, off, n, s.max_k_);
      if (16 + 8 * n > end - off) fail("{}: truncated record at offset {}", path, off);
      s.row_offsets_.push_back(off);
      off += 16 + 8 * n;
    }
  }
  const uint64_t rows_total = s.row_offsets_.size();
  const uint8_t* t = d + end;
  if (std::memcmp(t, kTopKEnd, 8) != 0) fail("{}: missing trailer (file incomplete?)", path);
  if (get<uint64_t>(t + 8) != s.windows_.size() || get<uint64_t>(t + 16) != rows_total)
    fail("{}: trailer counts ({} windows, {} rows) disagree with contents ({}, {})", path, get<uint64_t>(t + 8),
         get<uint64_t>(t + 16), s.windows_.size(), rows_total);
  return s;
}

int64_t LogitStore::n_rows(int64_t w) const {
  if (w < 0 || w >= n_windows()) fail("{}: window {} of {}", path(), w, n_windows());
  return windows_[size_t(w)].n_rows;
}

int64_t LogitStore::window_start(int64_t w) const {
  if (w < 0 || w >= n_windows()) fail("{}: window {} of {}", path(), w, n_windows());
  return windows_[size_t(w)].start;
}

int64_t LogitStore::total_rows() const {
  int64_t n = 0;
  for (const auto& w : windows_) n += w.n_rows;
  return n;
}

RefRow LogitStore::row(int64_t w, int64_t r) {
  if (r < 0 || r >= n_rows(w)) fail("{}: row {} of window {} out of range", path(), r, w);
  const Window& win = windows_[size_t(w)];
  RefRow row;
  if (llama_) {
    const uint8_t* p = file_->data() + win.offset + uint64_t(r) * record_bytes_;
    const float scale = get<float>(p), min_lp = get<float>(p + 4);
    if (!std::isfinite(scale) || !std::isfinite(min_lp) || scale < 0 || min_lp > 0)
      fail("{}: window {} row {}: bad scale {} / minimum {}", path(), w, r, scale, min_lp);
    const uint8_t* codes = p + 8;
    for (int64_t i = 0; i < n_vocab_; ++i) dense_[size_t(i)] = scale * float(get<uint16_t>(codes + 2 * i)) + min_lp;
    row.target = tokens_[size_t(win.start + first_row_ + r + 1)];
    if (row.target < 0 || row.target >= n_vocab_)
      fail("{}: window {} row {}: token {} outside vocabulary {}", path(), w, r, row.target, n_vocab_);
    row.target_logprob = dense_[size_t(row.target)];
    row.logprobs = dense_;
    return row;
  }
  const uint8_t* p = file_->data() + row_offsets_[size_t(win.offset) + size_t(r)];
  const size_t k = get<uint32_t>(p + 12);
  row.target = get<int32_t>(p);
  row.target_logprob = get<float>(p + 4);
  row.tail_logprob = get<float>(p + 8);
  row.ids = {reinterpret_cast<const int32_t*>(p + 16), k};
  row.logprobs = {reinterpret_cast<const float*>(p + 16 + 4 * k), k};
  // Log-probs are stored rounded to f32, so allow a hair above zero.
  constexpr float kSlack = 1e-4f;
  auto bad = [&](const char* what) { fail("{}: window {} row {}: {}", path(), w, r, what); };
  if (row.target < 0 || row.target >= n_vocab_) bad("target token outside vocabulary");
  if (!(std::isfinite(row.target_logprob) && row.target_logprob <= kSlack)) bad("target log-prob is not a log-probability");
  if (std::isnan(row.tail_logprob) || row.tail_logprob > kSlack) bad("tail log-mass is not a log-probability");
  double mass = std::exp(double(row.tail_logprob));
  for (size_t i = 0; i < k; ++i) {
    const int32_t id = row.ids[i];
    const float lp = row.logprobs[i];
    if (id < 0 || id >= n_vocab_) bad("token id outside vocabulary");
    if (!(std::isfinite(lp) && lp <= kSlack)) bad("log-prob is not a log-probability");
    // Distinct logits may round to one f32 log-prob, so equal neighbours are
    // accepted in any id order.
    if (i > 0 && lp > row.logprobs[i - 1]) bad("top-k entries are not in descending order");
    mass += std::exp(double(lp));
  }
  if (mass > 1.001) bad("probabilities sum above one");
  return row;
}

}  // namespace tailor::eval
