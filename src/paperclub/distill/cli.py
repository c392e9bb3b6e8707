"""`paperclub distill`: train a draft model for speculative decoding (see `paperclub.distill.train`)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from paperclub.errors import UserError


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "40m", "1.5h"."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise UserError(f"bad duration {text!r}: use seconds or a number with s, m or h (e.g. 40m)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--init-layers must be comma-separated layer indices, got {text!r}") from None


def parse_temperatures(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--data-temperatures must be comma-separated numbers, e.g. 0,0.8,0.8, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="train a draft model for speculative decoding by distillation",
                       description=__doc__)
    p.add_argument("--target", default=None, help="target model dir, .gguf or cached name (default: embedded)")
    p.add_argument("--out", required=True, help="output draft directory")
    p.add_argument("--init", default=None, help="target (copy target layers, default), random, or a draft dir")
    p.add_argument("--init-layers", default=None,
                   help="target layers to copy, e.g. 0,29 (default: evenly spaced); with a draft --init and a "
                        "larger --layers, the target layers of the added blocks")
    p.add_argument("--layers", type=int, default=None, help="draft depth (default 2)")
    p.add_argument("--draft-vocab", type=int, default=None, help="draft output vocabulary size (default 8192)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 2000)")
    p.add_argument("--time-budget", default=None, help="training wall-time budget, e.g. 40m (default: none)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 8)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1.5e-3)")
    p.add_argument("--prompts", default=None, help="JSONL prompts (default: shipped set + HumanEval)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="target continuation length (default 192)")
    p.add_argument("--data-temperatures", default=None,
                   help="teacher continuations per prompt, by temperature: 0 = greedy, repeat a value for more "
                        "samples (default 0)")
    p.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts to evaluate (default all)")
    p.add_argument("--k", type=int, default=None, help="draft tokens per round for the evaluation (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--train-dtype", default=None, choices=["auto", "bfloat16", "float32"],
                   help="training precision: bf16 autocast with fp32 master weights, or fp32 throughout (default "
                        "auto: bf16 on CUDA and on CPUs with native bf16 matmuls (AVX512-BF16, AMX), else fp32, "
                        "since CPUs without them run bf16 matmuls many times slower)")
    p.add_argument("--extra-prompts", default=None,
                   help="JSONL of training-only prompts, several comma-separated (one greedy continuation each, never "
                        "held out)")
    p.add_argument("--self-prompts", type=int, default=None,
                   help="N prompts the target writes for itself (Magpie-style user turns, decontaminated against "
                        "the held-out and category evaluation prompts), one greedy continuation each (default 0)")
    p.add_argument("--reuse-data", default=None,
                   help="another distill --out made with the same data settings: link its teacher data, including "
                        "that of its --extra-prompts (only --extra-prompts given here are generated)")
    p.add_argument("--arch", default=None, choices=["lm", "head"],
                   help="lm: a draft LM of a few target layers (default); head: a feature draft head (EAGLE-style) "
                        "that drafts from the target's hidden states (SD only)")
    p.add_argument("--reg-weight", type=float, default=None,
                   help="head: weight of the hidden-state regression loss (default 1.0)")
    p.add_argument("--feature-noise", type=float, default=None,
                   help="head: Gaussian noise on the input features, fraction of their RMS (default 0)")
    p.add_argument("--unroll", type=int, default=None,
                   help="head: train on N drafting steps, each fed the head's own previous prediction "
                        "(training-time test; default 1 = teacher forcing only)")
    p.add_argument("--average", default=None, metavar="A,B",
                   help="no training: write the weighted mean of two drafts of one shape into --out (a model soup, "
                        "e.g. a draft and its continuation on new data)")
    p.add_argument("--average-weight", type=float, default=0.5,
                   help="with --average: the weight of B (default 0.5)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--force", action="store_true", help="delete an existing --out first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from paperclub.distill.train import DistillConfig, prepare_out, run_distill, saved_config
    from paperclub.models.resolve import resolve_model

    if args.resume and args.force:
        raise UserError("--resume and --force contradict each other: pick one")
    out = Path(args.out)
    if args.average is not None:
        from paperclub.distill.soup import average_drafts

        parts = [x for x in args.average.split(",") if x]
        if len(parts) != 2 or args.resume:
            raise UserError("--average takes two draft directories, A,B (and no --resume)")
        prepare_out(out, False, args.force)
        print(json.dumps(average_drafts(Path(parts[0]), Path(parts[1]), args.average_weight, out)))
        return 0
    prepare_out(out, args.resume, args.force)
    given = {
        "layers": args.layers, "init": args.init, "draft_vocab": args.draft_vocab, "steps": args.steps,
        "time_budget_s": parse_duration(args.time_budget) if args.time_budget else None,
        "batch_size": args.batch_size, "lr": args.lr, "max_new_tokens": args.max_new_tokens,
        "eval_prompts": args.eval_prompts, "k": args.k, "threads": args.threads, "seed": args.seed,
        "bf16": {"auto": "auto", "bfloat16": True, "float32": False}.get(args.train_dtype),
        "init_layers": parse_layers(args.init_layers) if args.init_layers else None,
        "data_temperatures": parse_temperatures(args.data_temperatures) if args.data_temperatures else None,
        "prompts": str(Path(args.prompts).resolve()) if args.prompts else None,
        "reuse_data": str(Path(args.reuse_data).resolve()) if args.reuse_data else None,
        "extra_prompts": ",".join(str(Path(f).resolve()) for f in args.extra_prompts.split(","))
        if args.extra_prompts else None,
        "arch": args.arch, "reg_weight": args.reg_weight, "feature_noise": args.feature_noise,
        "unroll": args.unroll, "self_prompts": args.self_prompts,
    }
    if args.arch == "head" and args.layers is None and not args.resume:
        given["layers"] = 1  # a head is one block by default
    given = {k: v for k, v in given.items() if v is not None}
    base = saved_config(out) if args.resume else {}
    # on resume the saved settings hold; only the budget (steps, time) and evaluation may be changed
    changeable = {"steps", "time_budget_s", "eval_prompts", "threads", "bf16"}
    for key, value in given.items():
        if args.resume and key not in changeable and base.get(key) != value:
            raise UserError(f"--resume cannot change {key} (saved {base.get(key)!r}, given {value!r}): "
                            "drop the option or start over with --force")
    cfg = DistillConfig.from_dict({**base, **given})
    from paperclub.distill.head_train import run_head_distill

    summary = run_distill(resolve_model(args.target), out, cfg, resume=args.resume,
                          trainer=run_head_distill if cfg.arch == "head" else None)
    print(json.dumps(summary, indent=2))
    return 0
