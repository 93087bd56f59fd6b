// Single-precision GEMM behind one call, so the engine can switch BLAS
// libraries (and measure them against each other) without touching the ops.
#pragma once
#include <cstdint>
#include <string_view>

namespace tailor::engine {

enum class GemmImpl { Dnnl, OpenBlas, Naive };

std::string_view gemm_name(GemmImpl g);
// "dnnl", "openblas" or "naive"; throws Error for anything else.
GemmImpl parse_gemm(std::string_view name);
// TAILOR_GEMM when set, else the implementation measured fastest here
// (bench/bench_gemm.cpp: oneDNN).
GemmImpl default_gemm();

// Row-major C[m,n] = A[m,k] * op(B) + beta * C, where op(B) = B^T for B stored
// [n,k] (b_transposed, the PyTorch Linear layout) or B for B stored [k,n].
// Leading dimensions are row strides in elements, so views into wider rows
// (one head of a [T, heads, head_dim] batch) need no copies.
// threads: 0 = default_threads(); the BLAS runs that many threads itself.
void sgemm(GemmImpl impl, bool b_transposed, int64_t m, int64_t n, int64_t k, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
           int threads = 0);
// The same with op(A) = A^T for A stored [k,m] (a_transposed, lda >= m), as
// weight gradients dW = dY^T X need.
void sgemm_ex(GemmImpl impl, bool a_transposed, bool b_transposed, int64_t m, int64_t n,
              int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
              float* c, int64_t ldc, int threads = 0);

}  // namespace tailor::engine
