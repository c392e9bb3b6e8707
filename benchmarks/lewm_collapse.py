"""Collapse experiment: train LeWM with lambda = 0 and lambda = 0.1 under the same budget, then compare the
effective rank of the latents and planning success.

    PYTHONPATH=src python benchmarks/lewm_collapse.py --data runs/tworoom.h5 --minutes 6 --out runs/collapse
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
from paperclub.worldmodel.model import preset
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
    p.add_argument("--plan-episodes", type=int, default=10)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    data = load(args.data)
    env = make_env(data.env)
    probe_frames = np.concatenate(
        [run_episode(data.env, env, 100, 10_000_000 + i)["frames"] for i in range(10)]
    )
    results = {}
    for w in args.weights:
        ckpt = out / f"lambda_{w}"
        cfg = TrainConfig(steps=args.steps, sigreg_weight=w, max_minutes=args.minutes, eval_every=250)
        summary = train(
            preset(args.config), cfg, data, ckpt, meta={"env": data.env, "command": "lewm_collapse"}
        )
        model, _ = load_checkpoint(ckpt)
        probe = probe_latents(model, probe_frames)
        plan = evaluate_planning(
            model, data.env, PlanConfig(episodes=args.plan_episodes, baseline_plans=0, cem=CEMConfig())
        )
        results[str(w)] = {
            "train": summary,
            "probe": probe,
            "success_rate": plan["success_rate"],
            "plan_episodes": plan["episodes"],
        }
        logging.info("lambda=%s: %s", w, json.dumps(results[str(w)]))
    write_json(
        out / "collapse.json",
        {"data": args.data, "config": args.config, "minutes": args.minutes, "results": results},
    )
    bar_plot(
        out / "collapse_effective_rank",
        {f"lambda={w}": r["probe"]["effective_rank_fraction"] for w, r in results.items()},
        "effective rank / latent dim",
        "Latent effective rank with and without SIGReg",
    )
    bar_plot(
        out / "collapse_success",
        {f"lambda={w}": r["success_rate"] for w, r in results.items()},
        "planning success rate",
        "Planning success with and without SIGReg",
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
