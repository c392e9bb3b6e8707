"""AR vs SD vs SSD on a CUDA GPU, with real-shaped random models and a draft that agrees with the target at a
chosen rate.

    python benchmarks/gpu_sd_ssd.py --json gpu_sd_ssd.json [--agreement 0.8] [--k 4] [--repeats 3]

Models. The target is a Llama-3-8B-shaped model with random bf16 weights. The draft is the target's own embedding,
first `--draft-layers` blocks, final norm and output head (a shallow "early-exit" copy, 1.5B parameters, saved as a
normal HF directory so the SSD draft process loads it like any draft). The target's deeper blocks have their output
projections (attention o and MLP down) scaled by alpha: alpha = 0 makes the target equal to the draft (every token
agrees), alpha = 1 is the plain random model (almost none agree). alpha is set by bisection so that the draft's
greedy next token matches the target's on `--agreement` of the target's own greedy continuations: a draft that
agrees at a known rate, which random weights otherwise never give.

Runs. Greedy, `--prompts` random 32-token prompts, 128 new tokens each, batch 1 and 4, interleaved repeats: AR,
SD (draft in-process, same GPU, same stream) and SSD (draft in its own process on the same GPU: the target and the
draft process share the GPU by time-slicing, there is one GPU). Also the target's decode and verify step times
and the draft's step time, which bound what SD and SSD can reach.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import common_prefix, engine_run, hf_random_llama, machine, ours_from_hf, sync  # noqa: E402

from paperclub.atomic import write_json  # noqa: E402
from paperclub.engine.decoder import ARDecoder  # noqa: E402
from paperclub.engine.llm import speculation_stats  # noqa: E402
from paperclub.engine.runner import ModelRunner  # noqa: E402
from paperclub.models.loader import load_model  # noqa: E402
from paperclub.speculative.config import SSDConfig  # noqa: E402
from paperclub.speculative.sd import SpeculativeDecoder  # noqa: E402
from paperclub.speculative.ssd import SSDDecoder  # noqa: E402


def save_shallow_draft(hf, layers: int, out: Path) -> None:
    """The target's embedding, first `layers` blocks, norm and head as a stand-alone HF checkpoint."""
    import transformers

    cfg = transformers.LlamaConfig(**{**hf.config.to_dict(), "num_hidden_layers": layers})
    with torch.device("meta"):
        draft = transformers.LlamaForCausalLM(cfg)
    state = {k: v for k, v in hf.state_dict().items()
             if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    draft.load_state_dict(state, assign=True)
    draft.save_pretrained(out)


class DepthScale:
    """Scales the target's blocks from `first` on: their residual contributions (o and down projections) x alpha."""

    def __init__(self, model, first: int):
        self.weights = [w for layer in model.layers[first:] for w in (layer.attn.o.weight, layer.mlp.down.weight)]
        self.original = [w.detach().clone() for w in self.weights]

    @torch.no_grad()
    def set(self, alpha: float) -> None:
        for w, w0 in zip(self.weights, self.original, strict=True):
            w.copy_(w0 * alpha)


def agreement(target, draft, prompts: list[list[int]], n: int) -> float:
    """Fraction of the target's greedy continuation tokens that the draft's greedy next token matches
    (teacher-forced on the target's text)."""
    _, seqs = engine_run(ARDecoder(ModelRunner(target, 1024)), prompts, n, len(prompts))
    runner = ModelRunner(draft, 1024)
    runner.reserve(len(prompts), 32 + n + 1)
    full = [s.prompt_ids + s.output_ids for s in seqs]
    logits = runner.append(list(range(len(full))), [0] * len(full), full, last_only=False)
    hits = total = 0
    for b, s in enumerate(seqs):
        p = len(s.prompt_ids)
        pred = logits[b, p - 1 : p - 1 + n].argmax(-1).tolist()
        hits += sum(x == y for x, y in zip(pred, s.output_ids, strict=True))
        total += n
    return hits / total


def step_times(target, draft, k: int, reps: int = 20) -> dict[str, float]:
    """Median ms of one target decode step (1 token), one verify step (k + 1 tokens), one draft step (1 token),
    batch 1, after a 160-token context; replayed as CUDA graphs and eager."""
    out = {}
    for (name, model, t), graphs in itertools.product(
            (("target_decode_ms", target, 1), ("target_verify_ms", target, k + 1), ("draft_step_ms", draft, 1)),
            (True, False)):
        runner = ModelRunner(model, 1024, cuda_graphs=graphs)
        runner.reserve(1, 200)
        runner.append([0], [0], [list(range(1, 161))], last_only=True)
        times = []
        for _ in range(reps + 3):
            sync()
            t0 = time.perf_counter()
            runner.append([0], [160], [[5] * t], last_only=True)
            sync()
            times.append(time.perf_counter() - t0)
        out[name if graphs else name.replace("_ms", "_eager_ms")] = statistics.median(times[3:]) * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--draft-layers", type=int, default=2)
    ap.add_argument("--agreement", type=float, default=0.8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test the script")
    args = ap.parse_args()
    dev, n, k = torch.device(args.device), args.max_new_tokens, args.k
    tmp = Path(tempfile.mkdtemp(prefix="gpu-sd-ssd-"))
    t0 = time.perf_counter()
    hf = hf_random_llama(args.layers, seed=0, device=args.device)
    save_shallow_draft(hf, args.draft_layers, tmp / "draft")
    target = ours_from_hf(hf)
    del hf
    draft = load_model(tmp / "draft", dev, torch.bfloat16)
    print(f"models ready in {time.perf_counter() - t0:.0f}s", flush=True)

    # alpha by bisection: agreement falls as the deeper blocks' contributions grow
    g = torch.Generator().manual_seed(2)
    calib = torch.randint(0, 128000, (4, 32), generator=g).tolist()
    scale = DepthScale(target, args.draft_layers)
    lo, hi, trace = 0.0, 1.0, []
    for _ in range(7):
        mid = (lo + hi) / 2
        scale.set(mid)
        a = agreement(target, draft, calib, 48)
        trace.append((mid, a))
        lo, hi = (mid, hi) if a > args.agreement else (lo, mid)
    alpha = min(trace, key=lambda t: abs(t[1] - args.agreement))[0]
    scale.set(alpha)
    prompts = torch.randint(0, 128000, (args.prompts, 32), generator=g).tolist()
    measured_agreement = agreement(target, draft, prompts, n)
    print(f"alpha {alpha:.4f}: agreement {measured_agreement:.3f} on the benchmark prompts (trace {trace})",
          flush=True)
    steps = step_times(target, draft, k)
    print(steps, flush=True)

    config = SSDConfig(k=k, draft_device=str(dev), draft_dtype=torch.bfloat16)
    ssd = SSDDecoder(ModelRunner(target, 1024), tmp / "draft", None, config)
    results: dict = {}
    try:
        for batch in [int(b) for b in args.batches.split(",")]:
            decoders = {"ar": ARDecoder(ModelRunner(target, 1024)),
                        "sd": SpeculativeDecoder(ModelRunner(target, 1024), ModelRunner(draft, 1024), k=k),
                        "ssd": ssd}
            for d in decoders.values():  # warm-up (and CUDA graph capture) at the measured lengths
                engine_run(d, prompts[:batch], n, batch)
            runs: dict[str, list[float]] = {m: [] for m in decoders}
            stats: dict[str, dict] = {}
            outs: dict[str, list[list[int]]] = {}
            for _ in range(args.repeats):
                for mode, d in decoders.items():
                    wall, seqs = engine_run(d, prompts, n, batch)
                    runs[mode].append(len(prompts) * n / wall)
                    outs[mode] = [s.output_ids for s in seqs]
                    st = speculation_stats(seqs)
                    if mode == "ssd":
                        tot = {c: sum(s.stats[c] for s in seqs) for c in ("hits", "misses", "wait_s", "hidden_s",
                                                                          "fallback_jit", "fallback_fast")}
                        st["cache_hit_rate"] = tot["hits"] / max(1, tot["hits"] + tot["misses"])
                        st.update({c: tot[c] for c in ("wait_s", "hidden_s", "fallback_jit", "fallback_fast")})
                        st["wall_s"] = wall
                    stats[mode] = st
            med = {m: statistics.median(v) for m, v in runs.items()}
            identical = {m: [common_prefix(a, b) for a, b in zip(outs["ar"], outs[m], strict=True)]
                         for m in ("sd", "ssd")}
            results[f"batch{batch}"] = {"tokens_per_s": med, "tokens_per_s_runs": runs, "stats": stats,
                                        "ssd_over_sd": med["ssd"] / med["sd"], "ssd_over_ar": med["ssd"] / med["ar"],
                                        "sd_over_ar": med["sd"] / med["ar"], "agreeing_prefix_with_ar": identical}
            print(f"batch {batch}: " + ", ".join(f"{m} {v:.1f} tok/s" for m, v in med.items())
                  + f"; SSD/SD {med['ssd'] / med['sd']:.2f}x, SSD/AR {med['ssd'] / med['ar']:.2f}x; {stats}",
                  flush=True)
    finally:
        ssd.close()
    summary = {"machine": machine(), "target": f"Llama-3-8B shape, {args.layers} layers, random bf16",
               "draft": f"target's embedding + first {args.draft_layers} blocks + head", "alpha": alpha,
               "calibration": trace, "agreement": measured_agreement, "k": k, "max_new_tokens": n,
               "prompts": args.prompts, "repeats": args.repeats, "step_times": steps,
               "ssd_config": {k2: str(v) for k2, v in vars(config).items()}, "results": results}
    print(json.dumps(summary, indent=1))
    if args.json:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
