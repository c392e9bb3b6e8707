"""`paperclub scaling ...`: prepare a corpus, run a data-constrained study, fit its scaling laws."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from paperclub.atomic import check_writable, write_json
from paperclub.errors import UserError

log = logging.getLogger(__name__)


def cmd_prepare(args) -> int:
    from paperclub.scaling.corpus import CorpusConfig, prepare_corpus

    out = Path(args.out)
    if (out / "corpus.json").is_file() and not args.force:
        raise UserError(f"{out} already holds a corpus: give --force to rebuild it")
    info = prepare_corpus(out, CorpusConfig(source=args.source, pattern=args.pattern, vocab_size=args.vocab_size,
                                            val_fraction=args.val_fraction))
    print(json.dumps({k: info[k] for k in ("source", "documents", "tokens", "vocab_size", "fingerprint")}, indent=2))
    return 0


def cmd_sweep(args) -> int:
    import torch

    from paperclub.scaling.sweep import SweepConfig, sweep

    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected at least 1")
    if not Path(args.study).is_file():
        raise UserError(f"study file {args.study} does not exist")
    cfg = SweepConfig(workers=args.workers, threads=args.threads, ray_address=args.ray_address or "",
                      checkpoint_every_s=args.checkpoint_every, max_jobs=args.max_jobs, compile=args.compile)
    torch.set_num_threads(cfg.threads_per_job())
    summary = sweep(Path(args.study), Path(args.out), cfg)
    print(json.dumps(summary, indent=2))
    return 0 if not summary["jobs_failed"] else 1


def cmd_fit(args) -> int:
    from paperclub.scaling.analysis import analyze

    if args.json:
        check_writable(args.json, "--json")
    if args.bootstrap < 10:
        raise UserError(f"--bootstrap {args.bootstrap}: use at least 10 replicates (500 is the default)")
    result, point, boots = analyze(Path(args.runs), n_boot=args.bootstrap, seed=args.seed)
    if args.json:
        write_json(args.json, result)
    if args.plots:
        from paperclub.scaling.plots import write_plots

        result["plots"] = write_plots(Path(args.plots), result, point, boots)
    print(summary_table(result), file=sys.stdout)
    return 0


def summary_table(result: dict) -> str:
    def fmt(entry) -> str:
        lo, hi = entry["ci95"]
        return f"{entry['value']:.4g}  [{lo:.4g}, {hi:.4g}]"

    lines = [f"{result['runs']} runs, {result['ensembles']} ensembles; 95% intervals from "
             f"{result['bootstrap']['replicates']} bootstrap replicates over {result['bootstrap']['documents']} "
             "validation documents"]
    for name, per_budget in result["best_loss"].items():
        for mult, per_size in per_budget.items():
            row = "  ".join(f"{s} {v['value']:.4f}" for s, v in per_size.items())
            lines.append(f"best loss  {name:<12} {mult}x D: {row}")
    for name, entry in result["asymptotes"].items():
        lines.append(f"asymptote  {name:<20} {fmt(entry)}  (vs {entry['x']})")
    for name, entry in result["comparisons"].items():
        lines.append(f"difference  {name:<40} {fmt(entry)}")
    for name, entry in result["data_efficiency"].items():
        lines.append(f"data efficiency  {name:<18} {fmt(entry)}x  (loss {entry['loss']:.4f})")
    if result["skipped"]:
        lines.append(f"skipped (damaged): {len(result['skipped'])}: " + "; ".join(result["skipped"]))
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scaling", help="data-constrained pre-training: recipes, ensembles, scaling-law asymptotes",
                       description="Pre-training under a fixed token budget (Kim et al., 2025): tune a regularized "
                                   "recipe, ensembles and distillation, and fit their asymptotes.")
    s = p.add_subparsers(dest="scaling_command", metavar="COMMAND")

    q = s.add_parser("prepare", help="build a tokenized corpus (deduplicated, split by document, BPE trained here)")
    q.add_argument("--out", required=True, help="folder for tokenizer.json, train.u16, val.u16, corpus.json")
    q.add_argument("--source", default="python-stdlib",
                   help="'python-stdlib' (the running Python's standard library) or a folder of text files")
    q.add_argument("--pattern", default="*.py", help="which files of a --source folder are documents")
    q.add_argument("--vocab-size", type=int, default=2048)
    q.add_argument("--val-fraction", type=float, default=0.1)
    q.add_argument("--force", action="store_true", help="rebuild an existing corpus")
    q.set_defaults(func=cmd_prepare)

    q = s.add_parser("sweep", help="run a study file's jobs until every search is certified (resumable)")
    q.add_argument("--study", required=True, help="the study (TOML; see benchmarks/scaling/study.toml)")
    q.add_argument("--out", required=True, help="the study's folder: corpus, runs, ensembles (rerun to resume)")
    q.add_argument("--workers", type=int, default=1, help="jobs at once (processes, or Ray tasks)")
    q.add_argument("--threads", type=int, default=0, help="torch threads per job (default: CPUs / workers)")
    q.add_argument("--ray-address", default="", help="run the jobs on this Ray cluster ('auto', 'ray://host:10001')")
    q.add_argument("--checkpoint-every", type=float, default=120.0, help="seconds between run checkpoints")
    q.add_argument("--max-jobs", type=int, default=0, help="stop after starting this many jobs (0: no limit)")
    q.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="train through torch.compile (about 1.2x on CPU; the first compile of a shape takes a minute)")
    q.set_defaults(func=cmd_sweep)

    q = s.add_parser("fit", help="fit power laws with bootstrap intervals; asymptotes and data efficiency")
    q.add_argument("--runs", required=True, help="a sweep's --out folder")
    q.add_argument("--json", help="write the figures here (asymptotes, data_efficiency, runs, ...)")
    q.add_argument("--plots", help="write PNG plots into this folder")
    q.add_argument("--bootstrap", type=int, default=500, help="bootstrap replicates")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_fit)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
