// libFuzzer target: Safetensors::parse on arbitrary bytes must either succeed
// or throw tailor::Error; any other exception, crash or sanitizer report is a bug.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tailor/formats/safetensors.h"
#include "tailor/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    tailor::Safetensors st = tailor::Safetensors::parse("fuzz.safetensors", data, size);
    std::vector<float> out;
    size_t n = st.metadata().size();
    for (const auto& t : st.tensors()) {
      if (t.data < data || t.data + t.nbytes > data + size) __builtin_trap();
      if (t.dtype == tailor::StDtype::F32 || t.dtype == tailor::StDtype::F16 ||
          t.dtype == tailor::StDtype::BF16) {
        out.resize(static_cast<size_t>(t.numel()));  // bounded: nbytes fit in the input
        tailor::Safetensors::to_f32(t, out.data());
      }
      n += t.nbytes;
    }
    volatile size_t sink = n;
    (void)sink;
  } catch (const tailor::Error&) {
  }
  return 0;
}
