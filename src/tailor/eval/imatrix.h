// Importance matrix: for every linear layer, the sum over tokens of the
// squared input activation of each column (per expert for MoE 3-D weights)
// and the number of tokens seen. A quantizer weighs column j's rounding error
// by in_sum2[j] / count.
//
// Files (both written by llama-imatrix, read by llama-quantize --imatrix):
//  - GGUF (current): general.type = "imatrix", imatrix.datasets (string
//    array), imatrix.chunk_count and imatrix.chunk_size (u32); per weight
//    tensor W two F32 tensors "W.in_sum2" ne = [n_cols, n_experts] (raw sums)
//    and "W.counts" ne = [1, n_experts] (tokens per expert), trailing
//    dimensions of 1 dropped as ggml does.
//  - legacy .dat (read only): i32 n_entries, then per entry i32 name length,
//    name bytes, i32 ncall, i32 nval, f32 values[nval] holding mean*ncall,
//    then optionally i32 chunk_count and i32 length + last dataset name.
//    The mean is per column of the whole flattened entry (experts are not
//    told apart), so an entry read from .dat has one "expert" of nval columns.
#pragma once
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace tailor::eval {

struct ImatrixEntry {
  int64_t n_cols = 0;
  int64_t n_experts = 1;
  std::vector<double> sum2;     // [n_experts][n_cols]
  std::vector<int64_t> counts;  // [n_experts]

  // The importance a quantizer uses: sum2 / count per expert; 1 for experts
  // that saw no tokens (llama-quantize's rule for partial data).
  std::vector<float> values() const;
};

class Imatrix {
 public:
  // Activations x = [n_tokens][n_cols] entering the linear layer `name`
  // (named after its weight tensor, e.g. "blk.0.attn_q.weight").
  void add(const std::string& name, std::span<const float> x, int64_t n_cols);
  // MoE: the rows of x routed to `expert` of an n_experts 3-D weight.
  void add_expert(const std::string& name, int64_t expert, int64_t n_experts, std::span<const float> x,
                  int64_t n_cols);
  // Sums another accumulator into this one (datasets appended, chunk counts
  // added). An entry read from .dat (one flat expert) merges with a
  // per-expert entry of the same total size by taking the other's shape.
  void merge(const Imatrix& other);

  const std::map<std::string, ImatrixEntry>& entries() const { return entries_; }
  const ImatrixEntry* find(const std::string& name) const;
  // Inserts or replaces a whole entry (shape checked).
  void set_entry(const std::string& name, ImatrixEntry e);

  std::vector<std::string> datasets;
  uint32_t chunk_count = 0;
  uint32_t chunk_size = 0;

  void save_gguf(const std::string& path) const;
  // GGUF or legacy .dat (by magic). Legacy means are turned back into sums
  // and token counts assuming `legacy_chunk_size` tokens per call, as
  // llama-imatrix --in-file does with its context size.
  static Imatrix load(const std::string& path, int64_t legacy_chunk_size = 512);

 private:
  ImatrixEntry& entry(const std::string& name, int64_t n_experts, int64_t n_cols);
  std::map<std::string, ImatrixEntry> entries_;
};

}  // namespace tailor::eval
