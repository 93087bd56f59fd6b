#!/usr/bin/env bash
# The main job: build Tailor and make a tailor-made GGUF of a model (default:
# the llama-30m fixture) at the size of llama.cpp's Q4_K_M recipe, then verify
# it against the uniform recipes.
#   1. measure every weight matrix against every candidate type (a resumable
#      job in out/jobs.db: run the script again after a Ctrl-C to continue),
#   2. plan a type per tensor no larger than Q4_K_M (out/NAME.strategy.yaml),
#   3. quantize by that plan (out/NAME-tailor.gguf, loads in llama.cpp),
#   4. compare with Q8_0, Q6_K, Q4_K_M and Q3_K_M: table + out/NAME-compare.svg/.png,
#   5. a greedy continuation from the file.
# Usage: scripts/run.sh [MODEL_DIR] [SIZE]   (SIZE: a recipe name or e.g. 18MB; default Q4_K_M)
# Environment: CALIB (calibration text), TEXT (evaluation text), WINDOWS (default 16).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-../shared/models/llama-30m}"
SIZE="${2:-Q4_K_M}"
CALIB="${CALIB:-../shared/text/calibration.txt}"
TEXT="${TEXT:-../shared/text/eval.txt}"
WINDOWS="${WINDOWS:-16}"
bash scripts/install-deps.sh
bash scripts/build.sh
mkdir -p out
name="$(basename "$MODEL")"
db="out/jobs.db"
./build/tailor inspect "$MODEL" | tail -n 4
echo "== 1. measure (kld level): $MODEL on $CALIB"
./build/tailor measure "$MODEL" --text "$CALIB" --types Q8_0,Q6_K,Q5_K,Q4_K,IQ4_XS,Q3_K,IQ3_S,IQ3_XXS,Q2_K,IQ2_S,IQ2_XS \
  --db "$db" | tail -n 6
echo "== 2. plan: no larger than $SIZE, verified on $TEXT"
./build/tailor plan "$MODEL" --db "$db" --target-size "$SIZE" --eval "$TEXT" --windows "$WINDOWS" \
  -o "out/$name.strategy.yaml"
echo "== 3. quantize by the plan"
./build/tailor imatrix "$MODEL" --text "$CALIB" --chunks 16 -o "out/$name.imatrix.gguf" >/dev/null
./build/tailor quantize "$MODEL" --strategy "out/$name.strategy.yaml" --imatrix "out/$name.imatrix.gguf" \
  -o "out/$name-tailor.gguf" | tail -n 1
echo "== 4. compare with llama.cpp's recipes on $TEXT"
./build/tailor compare "$MODEL" --text "$TEXT" --windows "$WINDOWS" --baselines Q8_0,Q6_K,Q4_K_M,Q3_K_M \
  --strategy "out/$name.strategy.yaml" --imatrix "out/$name.imatrix.gguf" \
  --chart "out/$name-compare.svg" --chart "out/$name-compare.png"
echo "== 5. a continuation from out/$name-tailor.gguf"
./build/tailor generate "out/$name-tailor.gguf" --prompt "Once upon a time" -n 24
