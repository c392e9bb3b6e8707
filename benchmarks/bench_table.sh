#!/usr/bin/env bash
# The BENCHMARKS table and plot: our AR/SD/SSD against transformers (AR and assisted) and, when
# $PAPERCLUB_LLAMACPP_PYTHON names a python with llama-cpp-python, llama.cpp; every batch size and temperature
# in one run. About 2 hours on the 2-core CPU machine at the defaults. Any setting can be overridden:
#
#   PROMPTS=humaneval NUM_PROMPTS=4 TOKENS=64 REPEATS=1 BATCH=1 TEMPS=0 benchmarks/bench_table.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PROMPTS=${PROMPTS:-instruct}
NUM_PROMPTS=${NUM_PROMPTS:-16}
TOKENS=${TOKENS:-128}
REPEATS=${REPEATS:-3}
BATCH=${BATCH:-1,4,16}
TEMPS=${TEMPS:-0,0.7}
K=${K:-4}
MODES=${MODES:-ar,sd,ssd}
if [[ -n "${PAPERCLUB_LLAMACPP_PYTHON:-}" ]]; then
    PEERS=${PEERS:-hf,hf-assisted,llamacpp}
else
    PEERS=${PEERS:-hf,hf-assisted}
fi
OUT=${OUT:-benchmarks/results/bench_table.json}

exec .venv/bin/paperclub bench --prompts "$PROMPTS" --num-prompts "$NUM_PROMPTS" --modes "$MODES" --peers "$PEERS" \
    --k "$K" --max-new-tokens "$TOKENS" --batch-size "$BATCH" --temperature "$TEMPS" --repeats "$REPEATS" \
    --json "$OUT" --plot "${OUT%.json}.png"
