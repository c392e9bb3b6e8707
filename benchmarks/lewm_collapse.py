"""Collapse experiment: train LeWM with lambda = 0 and lambda = 0.1 under the same budget, from several training
seeds, then compare the effective rank of the latents (each seed's, and their spread) and planning success. An
untrained network of the same shape plans on the same episodes too: that is the chance level, what planning with
latents that carry no learned information gives. Planning uses the first training seed's model.

Resumable: an arm whose checkpoint already holds the asked-for steps is probed, not retrained, and the JSON is
rewritten after every arm.

    PYTHONPATH=src python benchmarks/lewm_collapse.py --data runs/tworoom600h5.h5 --steps 1500 --minutes 30 \
        --train-seeds 0 1 2 --plan-episodes 50 --plan-seeds 0 1 --out runs/collapse
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from paperclub.atomic import write_json
from paperclub.worldmodel.checkpoint import load_checkpoint
from paperclub.worldmodel.data import load, run_episode
from paperclub.worldmodel.envs import make_env
from paperclub.worldmodel.model import LeWM, preset
from paperclub.worldmodel.planner import CEMConfig, PlanConfig, evaluate_planning
from paperclub.worldmodel.plots import bar_plot
from paperclub.worldmodel.probe import probe_latents
from paperclub.worldmodel.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--config", default="small")
    p.add_argument("--minutes", type=float, default=6.0, help="training wall-time budget per arm")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--plan-episodes", type=int, default=10,
                   help="held-out episodes per planning seed (0: measure the ranks only)")
    p.add_argument("--plan-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0],
                   help="training seeds (init, batch order, SIGReg directions) per arm")
    p.add_argument("--probe-seeds", type=int, nargs="+", default=[0],
                   help="fresh frame sets the effective rank is measured on (each model on each)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    data = load(args.data)
    env = make_env(data.env)
    probe_sets = {  # fresh episodes, as `paperclub lewm probe --seed S` draws them
        s: np.concatenate([run_episode(data.env, env, 100, 10_000_000 + 1000 * s + i)["frames"] for i in range(10)])
        for s in args.probe_seeds
    }
    probe_frames = probe_sets[args.probe_seeds[0]]

    def plan(model) -> dict:
        if args.plan_episodes == 0:
            return {}
        runs = [
            evaluate_planning(
                model, data.env, PlanConfig(episodes=args.plan_episodes, seed=s, baseline_plans=0, cem=CEMConfig())
            )
            for s in args.plan_seeds
        ]
        return {
            "success_rate": sum(r["success_rate"] * r["episodes"] for r in runs) / sum(r["episodes"] for r in runs),
            "plan_episodes": sum(r["episodes"] for r in runs),
            "success_rate_per_seed": {str(s): r["success_rate"] for s, r in zip(args.plan_seeds, runs, strict=True)},
        }

    def save() -> None:
        write_json(
            out / "collapse.json",
            {"data": args.data, "config": args.config, "minutes": args.minutes, "steps": args.steps,
             "train_seeds": args.train_seeds, "probe_seeds": args.probe_seeds, "plan_seeds": args.plan_seeds,
             "results": results},
        )

    torch.manual_seed(0)
    untrained = LeWM(preset(args.config)).eval()
    results = {"untrained": {"probe": probe_latents(untrained, probe_frames), **plan(untrained)}}
    for w in args.weights:
        arm: dict = {"seeds": {}}
        results[str(w)] = arm
        for seed in args.train_seeds:
            ckpt = out / (f"lambda_{w}" if seed == 0 else f"lambda_{w}_seed{seed}")
            cfg = TrainConfig(steps=args.steps, sigreg_weight=w, max_minutes=args.minutes, eval_every=250, seed=seed)
            summary = _trained(ckpt, args.steps) or train(
                preset(args.config), cfg, data, ckpt, meta={"env": data.env, "command": "lewm_collapse"}
            )
            model, _ = load_checkpoint(ckpt)
            probes = {str(s): probe_latents(model, f) for s, f in probe_sets.items()}
            arm["seeds"][str(seed)] = {"train": summary, "probe": probes[str(args.probe_seeds[0])], "probes": probes}
            if seed == args.train_seeds[0]:
                arm.update(plan(model))
            fractions = [p["effective_rank_fraction"] for r in arm["seeds"].values() for p in r["probes"].values()]
            arm["effective_rank_fraction"] = {"mean": float(np.mean(fractions)), "min": min(fractions),
                                              "max": max(fractions), "sd": float(np.std(fractions, ddof=1))
                                              if len(fractions) > 1 else 0.0}
            logging.info("lambda=%s seed %d: %s", w, seed, json.dumps(arm["seeds"][str(seed)]))
            save()
    rank_plot(out / "collapse_effective_rank.png", results)
    if args.plan_episodes:
        bar_plot(
            out / "collapse_success",
            {_label(w): r["success_rate"] for w, r in results.items()},
            "planning success rate",
            "Planning success with and without SIGReg",
        )
    print(json.dumps(results, indent=2))


def rank_plot(path: Path, results: dict) -> None:
    """Effective rank / dim per arm: a bar at the mean, one dot per (training seed, probe set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, r in enumerate(results.values()):
        ax.bar(i, _rank(r), color=["tab:gray", "tab:red", "tab:blue", "tab:green"][i % 4], alpha=0.6)
        dots = [r["probe"]["effective_rank_fraction"]] if "probe" in r else [
            p["effective_rank_fraction"] for seed in r["seeds"].values() for p in seed["probes"].values()]
        ax.scatter([i] * len(dots), dots, color="black", s=12, zorder=3)
        ax.text(i, max(dots), f"{_rank(r):.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(results)), [_label(w) for w in results])
    ax.set_ylabel("effective rank / latent dim")
    ax.set_title("Latent effective rank (dots: training seed x probe set)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _trained(ckpt: Path, steps: int) -> dict | None:
    """The saved summary of an arm already trained for `steps` (a resumed experiment skips it), else None."""
    try:
        meta = json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("steps_done", 0) < steps:
        return None
    return {"steps_done": meta["steps_done"], **meta["final_eval"]}


def _rank(result: dict) -> float:
    """Effective rank / dim: the untrained network's, or the mean over an arm's training and probe seeds."""
    if "probe" in result:
        return result["probe"]["effective_rank_fraction"]
    return result["effective_rank_fraction"]["mean"]


def _label(key: str) -> str:
    return key if key == "untrained" else f"lambda={key}"


if __name__ == "__main__":
    main()
