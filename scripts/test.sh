#!/usr/bin/env bash
# Installs what is needed, builds, and runs the whole test suite: unit and
# integration tests (ctest), then the parser fuzzers for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 900
if [ -f fuzz/run.sh ]; then bash fuzz/run.sh; fi
