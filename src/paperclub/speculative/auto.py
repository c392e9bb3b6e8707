"""`mode="auto"`: a short calibration on the engine's own runners, then the cost model picks AR, SD or SSD, K, and
how SD drafts.

Calibration (several seconds, once per machine): step times of the target and the draft at the thread counts
each mode would use (`cost_model.calibrate_steps`), then short greedy SD runs on four fixed calibration prompts
(two chat questions, a code edit, a summary: `cost_model.CALIBRATION_PROMPTS`), one per drafter:

    draft         the draft model's chain, K = 8: its acceptance per position (SD's and SSD's) and the
                  per-round overhead
    ngram+draft   prompt lookup first and the draft model where nothing matched, K = 5: the combined acceptance
                  and the share of rounds the draft ran (the rest cost no draft time); K up to 5 is weighed
    tree          token trees (`speculative.tree_proposer`, its default shape, K = 5): tokens and nodes per round

The two drafters that compete most closely run at the same K, so that each one's prediction is anchored by its
per-round overhead where it was measured rather than extrapolated from K = 8.

The SSD cache's hit rate is not measured (that would mean starting the draft process): `PRIOR_HIT_RATES`,
measured on a 2-core AMD EPYC with the shipped draft, stand in for it. The choice is stored per (target, draft,
dtype, device, threads, CPU, CPU kernels: `cpu_kernels.kernel_signature`) under `$PAPERCLUB_HOME/calibration/`, so
the next start reuses it (and a seeded request samples the same way each time).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from paperclub.speculative import cost_model as cm

log = logging.getLogger(__name__)

# SSD cache hit rate by uniform fan-out F, greedy, shipped draft (BENCHMARKS.md, "adaptive fan-out" section:
# F=1 0.47, F=2 0.61, F=3 0.69). A prior, not a measurement of the machine auto runs on.
PRIOR_HIT_RATES = {1: 0.47, 2: 0.61, 3: 0.69}
CALIBRATION_K = 8
CALIBRATION_TOKENS = 40  # new tokens per calibration prompt
TREE_K = 5  # the depth trees are calibrated and run with (their shape was chosen at K = 5)
DRAFTERS = ("draft", "ngram+draft", "tree")
WORKLOAD = cm.Workload(new_tokens=128, prompt_tokens=64)  # what auto optimises for: a chat turn, batch 1


@dataclass
class AutoChoice:
    mode: str
    k: int
    fanout: int | None
    reason: str
    predictions: dict[str, float]
    drafter: str = "draft"  # with mode "sd": "draft", "ngram+draft" or "tree"


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


def calibrate_and_choose(llm, target, draft, threads: int, make_sd_engine,
                         drafters: tuple[str, ...] = DRAFTERS) -> AutoChoice:
    """`target`, `draft`: the engine's runners; `make_sd_engine(k, drafter)` installs an SD engine with K = k
    drafting with `drafter` (one of `DRAFTERS`) on `llm`, for the sample runs."""
    ssd_threads = max(1, threads - 1)
    costs = cm.Costs(target=cm.calibrate_steps(target, rows=[1, 5, 9, 17], threads=sorted({threads, ssd_threads})),
                     draft=cm.calibrate_steps(draft, rows=[1, 4, 10, 20], threads=sorted({threads, 1})))
    samples = {}
    for drafter in drafters:
        make_sd_engine(CALIBRATION_K if drafter == "draft" else TREE_K, drafter)
        samples[drafter] = cm.sample_run(llm, new_tokens=CALIBRATION_TOKENS, prompts=cm.CALIBRATION_PROMPTS)
    chain = samples["draft"]
    acc = chain.acceptance or cm.Acceptance([0.0])
    costs.round_overhead_s = cm.overhead_from(chain, cm.predict_sd(costs, acc, CALIBRATION_K, chain.workload,
                                                                   threads))  # SSD gets SD's: a lower bound
    extra, seen = [], {"draft": _seen(chain)}
    if "ngram+draft" in samples:
        s = samples["ngram+draft"]
        a = s.acceptance or cm.Acceptance([0.0])
        c = replace(costs, round_overhead_s=0.0)
        c.round_overhead_s = cm.overhead_from(s, cm.predict_sd(c, a, TREE_K, s.workload, threads, s.draft_share))
        extra += [cm.predict_sd(c, a, k, WORKLOAD, threads, s.draft_share, "ngram+draft")
                  for k in range(1, TREE_K + 1)]
        seen["ngram+draft"] = _seen(s)
    if "tree" in samples and samples["tree"].tree is not None:
        s = samples["tree"]
        c = replace(costs, round_overhead_s=0.0)
        c.round_overhead_s = cm.overhead_from(s, cm.predict_tree(c, s.tree, TREE_K, s.workload, threads))
        extra.append(cm.predict_tree(c, s.tree, TREE_K, WORKLOAD, threads))
        seen["tree"] = _seen(s) | {"nodes_per_round": round(s.tree.nodes, 1)}
    result = cm.choose(costs, acc, cm.HitRate(PRIOR_HIT_RATES), WORKLOAD, threads, extra=extra)
    best = result.best
    preds = {cm.describe(p): round(p.tokens_per_s, 2) for p in result.candidates}
    mode, drafter = ("sd", "tree") if best.mode == "tree" else (best.mode, best.drafter or "draft")
    return AutoChoice(mode, best.k or CALIBRATION_K, best.fanout,
                      f"{result.reason} (calibration runs: {seen}; {threads} threads)", preds, drafter)


def _seen(sample: cm.RunSample) -> dict:
    """What a calibration run measured, for the log line."""
    acc = sample.acceptance
    out = {"tok/s": round(sample.new_tokens / sample.wall_s, 1),
           "tokens/forward": round(acc.tokens_per_round(len(acc.per_pos)), 2) if acc else 1.0}
    share = sample.tree.draft_share if sample.tree is not None else sample.draft_share
    if share < 1:
        out["draft share"] = round(share, 2)
    return out
