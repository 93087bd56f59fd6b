// Minimal data parallelism: split [0, n) into contiguous chunks over threads.
#pragma once
#include <cstdint>
#include <functional>

namespace tailor {

// Number of worker threads to use by default (hardware concurrency, >= 1).
int default_threads();

// Calls fn(begin, end) on disjoint chunks covering [0, n), using up to
// `threads` threads (0 = default_threads()). Exceptions propagate to the caller.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int threads = 0);

}  // namespace tailor
