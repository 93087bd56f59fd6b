#!/usr/bin/env bash
# The main job: build Tailor, then convert a model (default: the llama-30m
# fixture) to a Q8_0 GGUF and inspect the result. Usage: scripts/run.sh [MODEL] [TYPE]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-../shared/models/llama-30m}"
TYPE="${2:-Q8_0}"
bash scripts/install-deps.sh
bash scripts/build.sh
mkdir -p out
name="$(basename "$MODEL")"
./build/tailor inspect "$MODEL"
./build/tailor convert "$MODEL" -o "out/$name-$TYPE.gguf" --type "$TYPE"
./build/tailor inspect "out/$name-$TYPE.gguf"
