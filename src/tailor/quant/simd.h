// Run-time choice between the scalar kernels and their SIMD versions. The SIMD
// kernels give bit-identical results; switching them off exists so that tests
// and benchmarks can compare both paths in one process. TAILOR_NO_SIMD=1 in the
// environment starts the process with SIMD off.
#pragma once
#include <string_view>

namespace tailor::quant {

enum class SimdLevel { scalar = 0, avx2 = 1, avx512 = 2 };

// What this CPU supports (AVX2 means AVX2+F16C+FMA; AVX-512 means F+BW+VL+DQ).
SimdLevel cpu_simd_level();
// What the kernels use now: cpu_simd_level(), capped by set_simd_enabled / set_simd_limit.
SimdLevel simd_level();
void set_simd_enabled(bool on);
// Cap the level (e.g. avx2 on an AVX-512 machine, to test both paths).
void set_simd_limit(SimdLevel max);
std::string_view simd_level_name(SimdLevel level);

}  // namespace tailor::quant
