#!/usr/bin/env bash
# Installs what is needed, builds, and runs the whole test suite: the parser
# fuzzers for a bounded time, then unit, integration and end-to-end tests (ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
bash fuzz/run.sh
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 900
