// Internal: function attributes for the x86 kernels and the run-time choice
// among them. The library is built for plain x86-64; these attributes let single
// functions use wider instruction sets, reached only when simd_level() allows.
#pragma once

#include "tailor/quant/simd.h"

#if defined(__x86_64__)
#include <immintrin.h>
// GCC 12 reports its own AVX-512 intrinsics (_mm512_undefined_*) as "maybe
// uninitialized" once inlined into target() functions; that is a false alarm.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define TAILOR_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TAILOR_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))

namespace tailor::quant {
template <class Fn>
Fn simd_pick(Fn scalar, Fn avx2, Fn avx512) {
  switch (simd_level()) {
    case SimdLevel::avx512: return avx512;
    case SimdLevel::avx2: return avx2;
    default: return scalar;
  }
}
}  // namespace tailor::quant
// The kernel for the current level; elsewhere only the scalar one exists.
#define TAILOR_SIMD_PICK(scalar, avx2, avx512) ::tailor::quant::simd_pick(scalar, avx2, avx512)
#else
#define TAILOR_SIMD_PICK(scalar, avx2, avx512) (scalar)
#endif
