// Writes the seed corpus for the fuzzers with Tailor's own writers: a few tiny
// valid files that exercise every value type, nested arrays and several types.
// Usage: fuzz_make_seeds <repo>/fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "tailor/formats/gguf.h"
#include "tailor/formats/safetensors.h"

using namespace tailor;

static void gguf_seed(const std::string& path, uint32_t alignment, bool nested) {
  GgufWriter w(path);
  w.set("general.architecture", GgufValue::str("llama"));
  if (alignment != 32) w.set("general.alignment", GgufValue::u32(alignment));
  w.set("a.u8", GgufValue::u8(7));
  w.set("a.i16", GgufValue::i16(-5));
  w.set("a.f64", GgufValue::f64(0.25));
  w.set("a.b", GgufValue::boolean(true));
  w.set("a.u64", GgufValue::u64(1));
  w.set("a.tok", GgufValue::strings({"<s>", "a", "\xe2\x96\x81"}));
  w.set("a.sc", GgufValue::floats({0.5f, -1.0f}));
  if (nested)
    w.set("a.nest", GgufValue::array(GgufType::ARRAY, {GgufValue::i32s({1, 2}), GgufValue::i32s({})}));
  w.add_tensor("w", {4, 2}, GgmlType::F32);
  w.add_tensor("q", {32}, GgmlType::Q8_0);
  std::vector<uint8_t> a(32, 1), b(34, 2);
  w.write_tensor_data(a.data(), a.size());
  w.write_tensor_data(b.data(), b.size());
  w.finish();
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  std::string dir = argv[1];
  gguf_seed(dir + "/gguf/basic.gguf", 32, false);
  gguf_seed(dir + "/gguf/nested_align64.gguf", 64, true);
  {
    GgufWriter w(dir + "/gguf/vocab_only.gguf", 2);
    w.set("tokenizer.ggml.model", GgufValue::str("gpt2"));
    w.finish();
  }
  float f[6] = {1, 2, 3, 4, 5, 6};
  uint16_t h[4] = {0x3c00, 0x4000, 0xbc00, 0};
  int64_t i[2] = {-1, 2};
  write_safetensors(dir + "/safetensors/basic.safetensors",
                    {{"a", "F32", {2, 3}, f, sizeof f}, {"b", "BF16", {4}, h, sizeof h}},
                    {{"format", "pt"}});
  write_safetensors(dir + "/safetensors/dtypes.safetensors",
                    {{"h", "F16", {2, 2}, h, sizeof h}, {"i", "I64", {2}, i, sizeof i},
                     {"e", "F32", {0}, nullptr, 0}});
  return 0;
}
