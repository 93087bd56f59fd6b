// libFuzzer target: GgufFile::parse on arbitrary bytes must either succeed or
// throw tailor::Error; any other exception, crash or sanitizer report is a bug.
#include <cstddef>
#include <cstdint>

#include "tailor/formats/gguf.h"
#include "tailor/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    tailor::GgufFile g = tailor::GgufFile::parse("fuzz.gguf", data, size);
    // Use the result the way consumers do: render metadata, touch tensor bytes.
    size_t n = 0;
    for (const auto& [key, v] : g.metadata()) n += key.size() + v.to_string(4).size();
    for (const auto& t : g.tensors()) {
      n += static_cast<size_t>(t.numel() + t.rows());
      if (t.nbytes > 0) n += t.data[0] + t.data[t.nbytes - 1];
      if (g.find_tensor(t.name) != &t) __builtin_trap();
    }
    if (g.data_offset() % g.alignment() != 0) __builtin_trap();
    volatile size_t sink = n;
    (void)sink;
  } catch (const tailor::Error&) {
  }
  return 0;
}
