"""Training throughput of the scaling ladder: paperclub's Llama against transformers' LlamaForCausalLM of the same
shape, same batch, same optimizer, interleaved in one process (so both see the same machine load).

    python benchmarks/scaling_throughput.py --threads 1 --repeats 5 --json benchmarks/results/scaling/throughput.json

Per size and model: tokens/s of full training steps (forward, cross-entropy, backward, AdamW step), the median of
`--repeats` timings of `--steps` steps each, after warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date

import torch
import torch.nn.functional as F

from paperclub.atomic import write_json
from paperclub.scaling.ladder import LADDER, model_config, non_embedding_params
from paperclub.scaling.train import RunConfig, build_model, optimizer


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hf_twin(size: str, vocab: int, seq_len: int):
    import transformers

    cfg = model_config(size, vocab, seq_len)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=seq_len, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=False, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(hf_cfg)


def make_step(model, opt, ours: bool, compile: bool = False):
    def loss_of(batch):
        if ours:
            logits = model.logits(model.causal_forward(batch[:, :-1]))
        else:
            logits = model(batch[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))

    loss_fn = torch.compile(loss_of) if compile else loss_of

    def step(batch):
        loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["s0", "s1", "s2", "s3"], choices=list(LADDER))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true",
                    help="also time paperclub through torch.compile (what `scaling sweep` does by default)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        run = RunConfig(size=size, tokens=10**6, epochs=1, lr=1e-3, weight_decay=0.1, batch_size=args.batch_size,
                        seq_len=args.seq_len)
        ours = build_model(run, args.vocab).train().requires_grad_(True)
        peer = hf_twin(size, args.vocab, args.seq_len).train()
        steps = {"paperclub": make_step(ours, optimizer(ours, run), True),
                 "transformers": make_step(peer, torch.optim.AdamW(peer.parameters(), lr=1e-3, betas=(0.9, 0.95)),
                                           False)}
        if args.compile:
            twin = build_model(run, args.vocab).train().requires_grad_(True)
            steps["paperclub+compile"] = make_step(twin, optimizer(twin, run), True, compile=True)
        gen = torch.Generator().manual_seed(0)
        batch = torch.randint(0, args.vocab, (args.batch_size, args.seq_len + 1), generator=gen)
        for step in steps.values():  # warm-up
            for _ in range(3):
                step(batch)
        times = {name: [] for name in steps}
        for _ in range(args.repeats):  # interleaved: both see the same load
            for name, step in steps.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(batch)
                times[name].append(time.perf_counter() - t0)
        tokens = args.steps * args.batch_size * args.seq_len
        tps = {name: tokens / statistics.median(t) for name, t in times.items()}
        row = {"size": size, "non_embedding_params": non_embedding_params(ours.cfg), "params": ours.cfg.num_params(),
               "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
               "ratio": round(tps["paperclub"] / tps["transformers"], 3)}
        if args.compile:
            row["ratio_compiled"] = round(tps["paperclub+compile"] / tps["transformers"], 3)
        rows.append(row)
        print(f"{size}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in tps.items()) + f"; ratio {row['ratio']:.2f}",
              flush=True)
    import transformers

    result = {"cpu": cpu_name(), "date": date.today().isoformat(), "threads": args.threads, "torch": torch.__version__,
              "transformers": transformers.__version__, "batch": [args.batch_size, args.seq_len],
              "vocab": args.vocab, "steps": args.steps, "repeats": args.repeats, "rows": rows}
    if args.json:
        write_json(args.json, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
