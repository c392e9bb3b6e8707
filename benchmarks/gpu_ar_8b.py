"""AR decoding on a CUDA GPU: a randomly initialised Llama-3-8B-shaped model in bf16, our engine against
transformers `generate()` on the same weights, same GPU, one run, interleaved.

    python benchmarks/gpu_ar_8b.py --json gpu_ar_8b.json [--layers 32] [--repeats 3]

Greedy, 128 new tokens after a 32-token prompt (random ids), prefill included; batch 1 and batch 16. Also the
decode step against the bandwidth floor (weight bytes / measured read bandwidth) and how long each engine's
greedy tokens agree (random weights make near-ties common, so bf16 round-off can flip an argmax).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_common as common  # noqa: E402

from paperclub.atomic import write_json  # noqa: E402
from paperclub.engine.decoder import ARDecoder  # noqa: E402
from paperclub.engine.runner import ModelRunner  # noqa: E402


def hf_run(hf, prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
    import time

    ids = torch.tensor(prompts, device=next(hf.parameters()).device)
    common.sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                          min_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    common.sync()
    return time.perf_counter() - t0, out[:, ids.shape[1]:].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test the script")
    args = ap.parse_args()
    hf = common.hf_random_llama(args.layers, seed=0, device=args.device)
    ours = common.ours_from_hf(hf)
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    bw = common.read_bandwidth_gpu(device=args.device, nbytes=(4 << 30) if args.device == "cuda" else (1 << 28))
    g = torch.Generator().manual_seed(1)
    n = args.max_new_tokens
    results: dict = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts = torch.randint(0, 128000, (batch, 32), generator=g).tolist()
        runners = {graphs: ModelRunner(ours, 1024, cuda_graphs=graphs) for graphs in (True, False)}

        def ours_run(cuda_graphs: bool, p=prompts, b=batch, runners=runners):
            wall, seqs = common.engine_run(ARDecoder(runners[cuda_graphs]), p, n, b)
            return wall, [s.output_ids for s in seqs]

        systems = {"paperclub": lambda: ours_run(True), "paperclub-eager": lambda: ours_run(False),
                   "transformers": lambda p=prompts: hf_run(hf, p, n)}
        for f in systems.values():  # warm-up: allocator, kernels' autotuning
            f()
        runs: dict[str, list[float]] = {k: [] for k in systems}
        outs = {}
        for _ in range(args.repeats):
            for name, f in systems.items():
                wall, outs[name] = f()
                runs[name].append(batch * n / wall)
        agree = [common.common_prefix(a, b) for a, b in zip(outs["paperclub"], outs["transformers"], strict=True)]
        agree_eager = [common.common_prefix(a, b)
                       for a, b in zip(outs["paperclub"], outs["paperclub-eager"], strict=True)]
        med = {k: statistics.median(v) for k, v in runs.items()}
        results[f"batch{batch}"] = {
            "tokens_per_s": med, "tokens_per_s_runs": runs, "ratio": med["paperclub"] / med["transformers"],
            "eager_ratio": med["paperclub-eager"] / med["transformers"], "greedy_agreeing_prefix": agree,
            "greedy_agreeing_prefix_graphs_vs_eager": agree_eager,
            "cuda_graph_replays": runners[True].graphs.replays if runners[True].graphs is not None else 0}
        print(f"batch {batch}: " + ", ".join(f"{k} {v:.1f} tok/s" for k, v in med.items())
              + f"; ratio {med['paperclub'] / med['transformers']:.2f}x; agreeing prefix {agree[:4]}", flush=True)
    step_s = 1 / results["batch1"]["tokens_per_s"]["paperclub"] if "batch1" in results else None
    floor_s = weight_bytes / bw
    summary = {"machine": common.machine(), "model": f"Llama-3-8B shape, {args.layers} layers, random bf16",
               "weight_bytes": weight_bytes, "read_bandwidth_GBps": bw / 1e9, "floor_ms": floor_s * 1e3,
               "paperclub_ms_per_token_b1": None if step_s is None else step_s * 1e3,
               "fraction_of_floor_b1": None if step_s is None else floor_s / step_s,
               "max_new_tokens": n, "prompt_tokens": 32, "repeats": args.repeats,
               "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
               "results": results}
    print(json.dumps(summary, indent=1))
    if args.json:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
