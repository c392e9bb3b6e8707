"""`mode="auto"`: a short calibration on the engine's own runners, then the cost model picks AR, SD or SSD and K.

Calibration (a few seconds): step times of the target and the draft at the thread counts each mode would use
(`cost_model.calibrate_steps`), and one short greedy SD run with K = 8 on a fixed calibration prompt, which gives
the draft's acceptance per position and SD's per-round overhead. The SSD cache's hit rate is not measured (that
would mean starting the draft process): `PRIOR_HIT_RATES`, measured on a 2-core AMD EPYC with the shipped draft,
stand in for it. The choice is stored per (target, draft, dtype, device, threads, CPU) under
`$PAPERCLUB_HOME/calibration/`, so the next start reuses it (and a seeded request samples the same way each time).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from paperclub.speculative import cost_model as cm

log = logging.getLogger(__name__)

# SSD cache hit rate by uniform fan-out F, greedy, shipped draft (BENCHMARKS.md, "adaptive fan-out" section:
# F=1 0.47, F=2 0.61, F=3 0.69). A prior, not a measurement of the machine auto runs on.
PRIOR_HIT_RATES = {1: 0.47, 2: 0.61, 3: 0.69}
CALIBRATION_K = 8
WORKLOAD = cm.Workload(new_tokens=128, prompt_tokens=64)  # what auto optimises for: a chat turn, batch 1


@dataclass
class AutoChoice:
    mode: str
    k: int
    fanout: int | None
    reason: str
    predictions: dict[str, float]


def cache_path(key: dict) -> Path:
    from paperclub.models.store import paperclub_home

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return paperclub_home() / "calibration" / f"auto-{digest}.json"


def load(key: dict) -> AutoChoice | None:
    path = cache_path(key)
    try:
        data = json.loads(path.read_text())
        return AutoChoice(**data["choice"]) if data.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(key: dict, choice: AutoChoice, detail: dict) -> None:
    from paperclub.atomic import write_json

    try:
        cache_path(key).parent.mkdir(parents=True, exist_ok=True)
        write_json(cache_path(key), {"key": key, "choice": choice.__dict__, "detail": detail})
    except OSError as e:  # a read-only home only costs the next start a calibration
        log.warning("auto: could not store the calibration (%s)", e)


def calibrate_and_choose(llm, target, draft, threads: int, make_sd_engine) -> AutoChoice:
    """`target`, `draft`: the engine's runners; `make_sd_engine(k)` installs an SD engine with K = k on `llm`
    (for the sample run)."""
    ssd_threads = max(1, threads - 1)
    costs = cm.Costs(target=cm.calibrate_steps(target, rows=[1, 5, 9], threads=sorted({threads, ssd_threads})),
                     draft=cm.calibrate_steps(draft, rows=[1, 5, 10, 20], threads=sorted({threads, 1})))
    make_sd_engine(CALIBRATION_K)
    sample = cm.sample_run(llm, new_tokens=40)
    acc = sample.acceptance or cm.Acceptance([0.0])
    bare = cm.predict_sd(costs, acc, CALIBRATION_K, cm.Workload(sample.new_tokens, sample.prompt_tokens), threads)
    costs.round_overhead_s = cm.overhead_from(sample, bare)  # SSD gets SD's: a lower bound of its own
    result = cm.choose(costs, acc, cm.HitRate(PRIOR_HIT_RATES), WORKLOAD, threads)
    best = result.best
    preds = {cm.describe(p): round(p.tokens_per_s, 2) for p in result.candidates}
    return AutoChoice(best.mode, best.k or CALIBRATION_K, best.fanout,
                      f"{result.reason} (acceptance per position {[round(a, 2) for a in acc.per_pos]}, "
                      f"per-round overhead {costs.round_overhead_s * 1e3:.1f} ms, {threads} threads)", preds)
