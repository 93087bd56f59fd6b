#!/usr/bin/env bash
# The main job: build Tailor, convert a model (default: the llama-30m fixture)
# to a GGUF of the given type (default Q8_0), and verify it against the
# original: perplexity and KL divergence on an evaluation text, and a greedy
# continuation. Usage: scripts/run.sh [MODEL_DIR] [TYPE]
# Environment: TEXT (evaluation text), CHUNKS (512-token windows, default 16).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-../shared/models/llama-30m}"
TYPE="${2:-Q8_0}"
TEXT="${TEXT:-../shared/text/eval.txt}"
CHUNKS="${CHUNKS:-16}"
bash scripts/install-deps.sh
bash scripts/build.sh
mkdir -p out
name="$(basename "$MODEL")"
gguf="out/$name-$TYPE.gguf"
./build/tailor inspect "$MODEL" | tail -n 4
./build/tailor convert "$MODEL" -o "$gguf" --type "$TYPE"
./build/tailor inspect "$gguf" | tail -n 4
if [ -f "$TEXT" ]; then
  echo "== reference: $MODEL on $TEXT ($CHUNKS windows of 512)"
  ./build/tailor eval "$MODEL" --text "$TEXT" --chunks "$CHUNKS" --save-logits "out/$name.base"
  echo "== $gguf against the reference"
  ./build/tailor eval "$gguf" --text "$TEXT" --chunks "$CHUNKS" --kld-base "out/$name.base"
fi
./build/tailor generate "$gguf" --prompt "Once upon a time" -n 24
