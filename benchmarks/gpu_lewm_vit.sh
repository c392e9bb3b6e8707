#!/usr/bin/env bash
# Issue 6, GPU: the paper-size LeWM (ViT-tiny encoder on 224 px frames, ~15M parameters) trained on Push-T for a
# fixed wall time on one CUDA device, then MPC planning success and plan time against the patch-token baseline
# (256 tokens per frame, as DINO-WM at 224 px) on the same device. The dataset is collected beforehand on any
# machine, so device time goes to training:
#
#   paperclub lewm collect --env pusht --episodes 300 --steps 100 --seed 0 --explore 0.3 --image-size 224 \
#       --out runs/pusht224x.h5                                     # ~5 min on one CPU core, ~20 MB
#   bash benchmarks/gpu_lewm_vit.sh runs/pusht224x.h5 OUTDIR MINUTES  # on the GPU machine
#
# Needs a python3 with torch (CUDA) and the pure-Python dependencies (see gpu_checks.sh for the .whl/ route).
set -u
DATA=$1 OUT=${2:-gpu_lewm_out} MINUTES=${3:-6} DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
PC="python3 -m paperclub.cli"
t0=$SECONDS
$PC -v lewm train --env pusht --config vit-tiny --data "$DATA" --steps 1000000 --max-minutes "$MINUTES" \
    --batch-size 64 --sigreg-weight 0.1 --seed 0 --device "$DEVICE" --threads 8 --out "$OUT/ckpt" --quiet \
    >"$OUT/train.log" 2>&1
echo "== train: exit $? in $((SECONDS - t0)) s"; tail -n 3 "$OUT/train.log"
t0=$SECONDS
$PC lewm plan --ckpt "$OUT/ckpt" --episodes "${EPISODES:-20}" --seed 0 --baseline-plans "${BASELINE_PLANS:-3}" --device "$DEVICE" \
    --threads 8 --json "$OUT/pusht_vit_tiny_plan.json" --quiet >"$OUT/plan.log" 2>&1
echo "== plan: exit $? in $((SECONDS - t0)) s"; tail -n 3 "$OUT/plan.log"
python3 - "$OUT" <<'PY'
import json, sys
r = json.load(open(f"{sys.argv[1]}/pusht_vit_tiny_plan.json"))
print({k: r.get(k) for k in ("success_rate", "episodes", "median_plan_time_s", "baseline_median_plan_time_s",
                             "speedup_vs_patch_baseline")})
PY
