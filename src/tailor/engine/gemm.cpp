#include "tailor/engine/gemm.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <cstdlib>
#include <string>

#include <cblas.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include "tailor/util/error.h"
#include "tailor/util/parallel.h"

namespace tailor::engine {
namespace {

// Eight independent partial sums let the compiler keep several FMA chains in
// flight; a single accumulator serialises on its own latency.
float dot(const float* x, const float* y, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += x[i + j] * y[i + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

// Portable loops without a BLAS: the baseline the benchmark compares against
// and the fallback that needs no library. Threads split the output columns,
// so a single-row product (T = 1) still uses every thread. op(A) = A^T
// (at) walks A with a stride, but only the fallback and the tests take it.
void naive_sgemm(bool at, bool bt, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int threads) {
  parallel_for(n, [&](int64_t j0, int64_t j1) {
    for (int64_t i = 0; i < m; ++i) {
      float* crow = c + i * ldc;
      for (int64_t j = j0; j < j1; ++j) crow[j] = beta == 0.0f ? 0.0f : beta * crow[j];
      const float* arow = a + i * lda;
      if (at) {
        for (int64_t p = 0; p < k; ++p) {
          const float av = a[p * lda + i];
          for (int64_t j = j0; j < j1; ++j) crow[j] += av * (bt ? b[j * ldb + p] : b[p * ldb + j]);
        }
      } else if (bt) {
        for (int64_t j = j0; j < j1; ++j) crow[j] += dot(arow, b + j * ldb, k);
      } else {
        for (int64_t p = 0; p < k; ++p) {
          const float av = arow[p];
          const float* brow = b + p * ldb;
          for (int64_t j = j0; j < j1; ++j) crow[j] += av * brow[j];
        }
      }
    }
  }, threads);
}

// OpenBLAS keeps one process-wide thread count; setting it costs a lock, so
// only change it when a caller asks for a different count.
void openblas_threads(int t) {
  static std::atomic<int> current{-1};
  if (current.exchange(t) != t) openblas_set_num_threads(t);
}

}  // namespace

std::string_view gemm_name(GemmImpl g) {
  switch (g) {
    case GemmImpl::Dnnl: return "dnnl";
    case GemmImpl::OpenBlas: return "openblas";
    case GemmImpl::Naive: return "naive";
  }
  return "?";
}

GemmImpl parse_gemm(std::string_view name) {
  for (GemmImpl g : {GemmImpl::Dnnl, GemmImpl::OpenBlas, GemmImpl::Naive})
    if (name == gemm_name(g)) return g;
  fail("TAILOR_GEMM: unknown GEMM '{}' (expected dnnl, openblas or naive)", name);
}

GemmImpl default_gemm() {
  const char* env = std::getenv("TAILOR_GEMM");
  if (env != nullptr && *env != '\0') return parse_gemm(env);
  return GemmImpl::Dnnl;
}

void sgemm(GemmImpl impl, bool bt, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int threads) {
  sgemm_ex(impl, false, bt, m, n, k, a, lda, b, ldb, beta, c, ldc, threads);
}

void sgemm_ex(GemmImpl impl, bool at, bool bt, int64_t m, int64_t n, int64_t k, const float* a,
              int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
              int threads) {
  if (m < 0 || n < 0 || k < 0 || lda < (at ? m : k) || ldb < (bt ? k : n) || ldc < n)
    fail("sgemm: bad shape m={} n={} k={} lda={} ldb={} ldc={}", m, n, k, lda, ldb, ldc);
  if (m == 0 || n == 0) return;
  int t = threads > 0 ? threads : default_threads();
  // BLAS libraries reject zero leading dimensions even when k == 0.
  if (k == 0 || impl == GemmImpl::Naive) {
    naive_sgemm(at, bt, m, n, k, a, lda, b, ldb, beta, c, ldc, t);
    return;
  }
  if (impl == GemmImpl::Dnnl) {
    // oneDNN runs on OpenMP; the thread count is a per-calling-thread setting.
    omp_set_num_threads(t);
    dnnl_status_t st = dnnl_sgemm(at ? 'T' : 'N', bt ? 'T' : 'N', m, n, k, 1.0f, a, lda, b, ldb,
                                  beta, c, ldc);
    if (st != dnnl_success) fail("sgemm: oneDNN failed (status {}) for m={} n={} k={}",
                                 static_cast<int>(st), m, n, k);
    return;
  }
  // CBLAS takes int dimensions.
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (std::max({m, n, k, lda, ldb, ldc}) > kIntMax)
    fail("sgemm: m={} n={} k={} exceed OpenBLAS's int dimensions", m, n, k);
  openblas_threads(t);
  cblas_sgemm(CblasRowMajor, at ? CblasTrans : CblasNoTrans, bt ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0f, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

}  // namespace tailor::engine
