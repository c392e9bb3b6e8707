#!/usr/bin/env bash
# The GPU checks of the engine (issues 2 and 4) in one script, for a CUDA machine whose python3 already has torch
# and transformers (no network needed). Missing pure-Python dependencies may sit as wheels in .whl/.
#
#   bash benchmarks/gpu_checks.sh OUTDIR
#
# 1. the CUDA tests (tests/gpu, marker `gpu`); 2. AR on a random Llama-3-8B-shaped bf16 model vs transformers;
# 3. AR vs SD vs SSD with a real-shaped draft at a known agreement rate; 4. the whole test suite on that machine.
# Every step has its own time limit and log, so one failure does not hide the others.
set -u
OUT=${1:-gpu_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 PAPERCLUB_HOME=/tmp/paperclub-home TORCH_EXTENSIONS_DIR=/tmp/paperclub-ext PIP_NO_INDEX=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/nvidia_smi.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/nvidia_smi.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/nvidia_smi.txt"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? in $((SECONDS - t0)) s"
    grep -v "^ " "$OUT/$name.log" | tail -n 12
}

step pytest_gpu 90 python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider -n 4 -o addopts="--import-mode=importlib"
step gpu_ar_8b 100 python3 benchmarks/gpu_ar_8b.py --json "$OUT/gpu_ar_8b.json"
step gpu_sd_ssd 135 python3 benchmarks/gpu_sd_ssd.py --json "$OUT/gpu_sd_ssd.json"
if [ "${FULL_SUITE:-1}" = 1 ]; then
    step pytest_all 300 python3 -m pytest -q -p no:cacheprovider -n 8 -m "not slow"
fi
