#!/usr/bin/env bash
# Builds the parser fuzzers (clang, libFuzzer, ASan+UBSan) in build-fuzz/ and
# runs each for FUZZ_SECONDS (default 60). Fails on any crash, sanitizer
# report, uncaught exception, leak, timeout or out-of-memory.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-60}"
cxx="${FUZZ_CXX:-clang++}"
cc="${FUZZ_CC:-clang}"
if ! command -v "$cxx" >/dev/null; then
  echo "fuzz/run.sh: $cxx not found (install clang)" >&2
  exit 1
fi
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_C_COMPILER="$cc" -DTAILOR_BUILD_FUZZ=ON -DTAILOR_BUILD_TESTS=OFF \
  -DTAILOR_BUILD_BENCH=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_gguf fuzz_safetensors
for target in gguf safetensors; do
  work="build-fuzz/corpus-$target"   # new inputs go here; the committed seeds stay as they are
  mkdir -p "$work"
  echo "fuzz/run.sh: fuzz_$target for ${secs}s"
  log="build-fuzz/fuzz_$target.log"
  # libFuzzer is chatty: keep its log, show the final stats, and the tail on failure.
  if ! "./build-fuzz/fuzz/fuzz_$target" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -max_len=8192 -print_final_stats=1 -dict="fuzz/$target.dict" \
      -artifact_prefix="build-fuzz/crash-$target-" "$work" "fuzz/corpus/$target" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz/run.sh: fuzz_$target failed (log: $log)" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" || true
done
echo "fuzz/run.sh: no crashes"
