"""AR decoding speed of the engine on the embedded default model, side by side with transformers.

    .venv/bin/python benchmarks/ar_decode.py --repeats 5 --json benchmarks/results/ar_decode.json

Measures, in one run and interleaved (ours, transformers, ours, ...):
  * batch 1, greedy, 128 new tokens: tokens/s of our engine and of transformers `generate()`, same weights
    and dtype (bf16 by default), prefill included, model loading excluded;
  * our decode step time vs the memory-bandwidth floor (weight bytes per step / read bandwidth of a buffer of
    the same size, measured here with `torch.sum` on 2 threads);
  * batch 16 throughput against batch 1, a batch-16 run right after each batch-1 run (this machine's speed drifts
    by up to 1.5x within minutes: runs far apart would compare two different machines);
  * peak RSS of a process that only loads the default model and generates (a separate interpreter).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from paperclub.atomic import write_json
from paperclub.engine import LLM, SamplingParams
from paperclub.models.default_model import ensure_default_model

PROMPTS = [
    [{"role": "user", "content": "Describe how a bicycle works to a ten-year-old."}],
    [{"role": "user", "content": "Write a Python class for a stack with push, pop and peek."}],
    [{"role": "user", "content": "If a train travels 300 km in 2.5 hours, what is its average speed?"}],
    [{"role": "user", "content": "Write a short poem about autumn leaves."}],
]


def read_bandwidth(nbytes: int, repeats: int = 15) -> float:
    """Bytes/s of `torch.sum` over a float32 buffer of `nbytes` (the working set of one decode step)."""
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    x.sum()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times)


def ours_batch(llm: LLM, prompts, n: int) -> tuple[float, float]:
    """(tokens/s with prefill, median decode-step seconds) for all prompts decoded together."""
    params = SamplingParams(max_tokens=n, ignore_eos=True)
    engine = llm.engine
    ids = [llm.encode(p) for p in prompts]
    t0 = time.perf_counter()
    seqs = [engine.add_request(i, params) for i in ids]
    steps = []
    while engine.has_unfinished():
        t = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return sum(len(s.output_ids) for s in seqs) / wall, statistics.median(steps[1:])


def hf_batch1(hf, ids: list[int], n: int) -> float:
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=2)
    return (out.shape[1] - len(ids)) / (time.perf_counter() - t0)


def peak_rss_mb(model_dir: Path, dtype: str, n: int) -> float:
    # VmHWM, not ru_maxrss: the latter survives fork+exec and would report this (parent) process's peak
    code = (
        "from paperclub.engine import LLM, SamplingParams\n"
        f"llm = LLM(model={str(model_dir)!r}, dtype={dtype!r})\n"
        f"llm.generate(['Tell me about the moon.'], SamplingParams(max_tokens={n}, ignore_eos=True))\n"
        "print(next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/ar_decode.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    model_dir = ensure_default_model()
    dtype = getattr(torch, args.dtype)
    llm = LLM(model=str(model_dir), dtype=args.dtype, device="cpu", max_num_seqs=16)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in llm.model.parameters())
    ids = [llm.encode(p) for p in PROMPTS]

    ours_bs1, hf_bs1, steps, ours16 = [], [], [], []
    ours_batch(llm, PROMPTS[:1], 8)  # warm-up (allocations, kernels)
    ours_batch(llm, PROMPTS * 4, 8)
    hf_batch1(hf, ids[0], 8)
    for r in range(args.repeats):
        p = r % len(PROMPTS)
        tps, step = ours_batch(llm, [PROMPTS[p]], args.new_tokens)
        ours_bs1.append(tps)
        steps.append(step)
        ours16.append(ours_batch(llm, [PROMPTS[i % len(PROMPTS)] for i in range(16)], args.new_tokens)[0])
        hf_bs1.append(hf_batch1(hf, ids[p], args.new_tokens))
        print(f"run {r}: ours {tps:.1f} tok/s (step {step * 1e3:.1f} ms), batch 16 {ours16[-1]:.1f} tok/s, "
              f"transformers {hf_bs1[-1]:.1f} tok/s")
    bandwidth = statistics.median(read_bandwidth(weight_bytes) for _ in range(3))
    step = statistics.median(steps)
    floor = weight_bytes / bandwidth
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "transformers": transformers.__version__},
        "settings": {"dtype": args.dtype, "new_tokens": args.new_tokens, "repeats": args.repeats,
                     "date": time.strftime("%Y-%m-%d")},
        "ours_tokens_per_s": statistics.median(ours_bs1), "ours_runs": ours_bs1,
        "transformers_tokens_per_s": statistics.median(hf_bs1), "transformers_runs": hf_bs1,
        "speedup_vs_transformers": statistics.median(ours_bs1) / statistics.median(hf_bs1),
        "decode_step_ms": step * 1e3,
        "weight_bytes": weight_bytes, "read_bandwidth_gb_s": bandwidth / 1e9,
        "bandwidth_floor_ms": floor * 1e3, "fraction_of_floor": floor / step,
        "batch16_tokens_per_s": statistics.median(ours16), "batch16_runs": ours16,
        "batch16_over_batch1": statistics.median(ours16) / statistics.median(ours_bs1),
        "batch16_over_batch1_paired": statistics.median(b / a for a, b in zip(ours_bs1, ours16, strict=True)),
        "peak_rss_mb": peak_rss_mb(model_dir, args.dtype, args.new_tokens),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("runs")}, indent=2))


if __name__ == "__main__":
    main()
