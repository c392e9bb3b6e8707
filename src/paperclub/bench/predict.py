"""`paperclub bench --predict`: the cost model's tokens/s for the bench's modes on this machine, from a short
calibration (step times on the engine's runners, one short SD run for acceptance and per-round overhead), side by
side with measured figures when the bench also ran (`--measure`).

JSON: {"predicted": {"<mode>": {"tokens_per_s", "k", "fanout", "measured_tokens_per_s", "error"}}, "costs",
"calibration_s", "workload"}; measured and error are null without `--measure`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from paperclub.bench.bench import BenchSettings, load_prompts
from paperclub.speculative import auto
from paperclub.speculative import cost_model as cm
from paperclub.speculative.ssd import available_cores


def predict(s: BenchSettings, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    from paperclub.engine.llm import LLM

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    llm = LLM(model=s.model, draft=s.draft or "default", mode="sd", k=s.k, device=s.device, dtype=s.dtype)
    try:
        target, draft = llm.engine.decoder.runner, llm.engine.decoder.proposer.runner
        rows_t = sorted({1, s.k + 1, max(s.batch_sizes) * (s.k + 1)})
        rows_d = sorted({1, s.k + 1, 4 * (s.k + 1), max(s.batch_sizes) * 4 * (s.k + 1)})
        costs = cm.Costs(target=cm.calibrate_steps(target, rows_t, sorted({threads, max(1, threads - 1)})),
                         draft=cm.calibrate_steps(draft, rows_d, sorted({threads, 1})))
        sample = cm.sample_run(llm, new_tokens=48)
        from paperclub.engine.decoder import ARDecoder
        from paperclub.engine.scheduler import Engine

        sd_engine = llm.engine
        llm.engine = Engine(ARDecoder(target), tokenizer=llm.tokenizer, eos_token_ids=sd_engine.eos_token_ids)
        ar_sample = cm.sample_run(llm, new_tokens=48)
        llm.engine = sd_engine
        prompt_tokens = statistics.mean(len(llm.encode(p)) for p in load_prompts(s.prompts, s.num_prompts))
    finally:
        llm.close()
    acc = sample.acceptance or cm.Acceptance([0.0])
    bare = cm.predict_sd(costs, acc, s.k, cm.Workload(sample.new_tokens, sample.prompt_tokens), threads)
    costs.round_overhead_s = cm.overhead_from(sample, bare)
    costs.ar_overhead_s = cm.overhead_from(ar_sample, cm.predict_ar(
        costs, cm.Workload(ar_sample.new_tokens, ar_sample.prompt_tokens), threads))
    results = (measured or {}).get("results", {})
    w = cm.Workload(s.max_new_tokens, prompt_tokens, s.batch_sizes[0])
    out: dict[str, Any] = {}
    for mode in s.modes:
        m = results.get(mode, {})
        a = cm.Acceptance(m["acceptance_rate_per_pos"]) if m.get("acceptance_rate_per_pos") else acc
        if mode == "ar":
            p = cm.predict_ar(costs, w, threads)
        elif mode == "sd":
            p = cm.predict_sd(costs, a, s.k, w, threads)
        elif mode == "ssd":
            hits = cm.HitRate({1: m["cache_hit_rate"]}) if m.get("cache_hit_rate") is not None \
                else cm.HitRate(auto.PRIOR_HIT_RATES)
            place = cm.Placement(max(1, min(threads, available_cores() - 1)), 1, available_cores())
            p = cm.predict_ssd(costs, a, hits, s.k, 1, w, place)
        elif mode == "sd-ngram+draft" and m.get("num_drafts"):  # prompt lookup's share only from a measured run
            share = 1 - m.get("num_ngram_drafts", 0) / m["num_drafts"]
            p = cm.predict_sd(costs, a, s.k, w, threads, share, "ngram+draft")
        else:
            continue  # prompt lookup alone, trees, and prompt lookup without a measured run are not modelled here
        got = m.get("tokens_per_s")
        out[mode] = {"tokens_per_s": p.tokens_per_s, "k": p.k, "fanout": p.fanout, "measured_tokens_per_s": got,
                     "error": p.tokens_per_s / got - 1 if got else None, "detail": p.detail}
    return {"predicted": out, "costs": cm.to_json(costs), "calibration_s": time.perf_counter() - t0,
            "workload": cm.to_json(w), "calibration_sample": cm.to_json(sample)}


def lines(pred: dict[str, Any]) -> list[str]:
    rows = [f"{'mode':<6} {'predicted':>10} {'measured':>10} {'error':>8}"]
    for mode, r in pred["predicted"].items():
        got = f"{r['measured_tokens_per_s']:10.1f}" if r["measured_tokens_per_s"] else f"{'-':>10}"
        err = f"{r['error']:+8.1%}" if r["error"] is not None else f"{'-':>8}"
        rows.append(f"{mode:<6} {r['tokens_per_s']:10.1f} {got} {err}")
    return rows
