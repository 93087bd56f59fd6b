#include "tailor/quant/simd.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace tailor::quant {
namespace {

SimdLevel detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("f16c");
  bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return avx512 ? SimdLevel::avx512 : avx2 ? SimdLevel::avx2 : SimdLevel::scalar;
#else
  return SimdLevel::scalar;
#endif
}

SimdLevel initial_limit() {
  const char* v = std::getenv("TAILOR_NO_SIMD");
  bool off = v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
  return off ? SimdLevel::scalar : SimdLevel::avx512;
}

std::atomic<int> g_limit{static_cast<int>(initial_limit())};

}  // namespace

SimdLevel cpu_simd_level() {
  static const SimdLevel level = detect();
  return level;
}

SimdLevel simd_level() {
  int cap = g_limit.load(std::memory_order_relaxed);
  int cpu = static_cast<int>(cpu_simd_level());
  return static_cast<SimdLevel>(cap < cpu ? cap : cpu);
}

void set_simd_enabled(bool on) { set_simd_limit(on ? SimdLevel::avx512 : SimdLevel::scalar); }

void set_simd_limit(SimdLevel max) { g_limit.store(static_cast<int>(max), std::memory_order_relaxed); }

std::string_view simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx512: return "avx512";
    case SimdLevel::avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace tailor::quant
