"""What one SSR plan costs on walker2d: seconds per plan for E batched episodes and the actions/s that gives, per
denoiser size, number of candidates and DDIM steps. The weights are untrained: only the cost is measured.

    python benchmarks/dmpc_planning_speed.py --threads 1 --json benchmarks/results/dmpc/planning_speed.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date

import torch

from paperclub.atomic import write_json
from paperclub.dmpc.denoiser import DenoiserConfig
from paperclub.dmpc.models import ModelConfig, Normalizers, TrajectoryModel
from paperclub.dmpc.normalizer import Normalizer
from paperclub.dmpc.planner import PlannerConfig, SSRPlanner
from paperclub.dmpc.rewards import get_reward

OBS, ACT = 17, 6  # walker2d-v5
# (d_model, layers, candidates, proposal steps, dynamics steps)
SETTINGS = [(128, 3, 64, 32, 10), (128, 3, 64, 10, 5), (64, 2, 64, 10, 5), (64, 2, 32, 5, 5)]


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--horizon", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unit = Normalizer(torch.zeros(OBS), torch.ones(OBS))
    norms = Normalizers(unit, Normalizer(torch.zeros(ACT), torch.ones(ACT)),
                        Normalizer(torch.zeros(args.horizon * OBS), torch.ones(args.horizon * OBS)),
                        Normalizer(torch.zeros(1), torch.ones(1)))
    rows = []
    for d, layers, n, p_steps, d_steps in SETTINGS:
        cfg = ModelConfig("walker2d", OBS, ACT, horizon=args.horizon, history=1,
                          denoiser=DenoiserConfig(d_model=d, layers=layers, heads=4))
        model = TrajectoryModel(cfg, norms).eval()
        planner = SSRPlanner(model, get_reward("walker2d", "task"),
                             PlannerConfig(candidates=n, proposal_steps=p_steps, dynamics_steps=d_steps))
        states = torch.randn(args.episodes, 2, OBS)
        actions = torch.randn(args.episodes, 1, ACT)
        planner.plan(states, actions)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            planner.plan(states, actions)
            times.append(time.perf_counter() - t0)
        s = statistics.median(times)
        row = {"d_model": d, "layers": layers, "candidates": n, "proposal_steps": p_steps, "dynamics_steps": d_steps,
               "s_per_plan": round(s, 3), "actions_per_s": round(args.episodes / s, 2)}
        rows.append(row)
        print(row, flush=True)
    if args.json:
        write_json(args.json, {"cpu": cpu_name(), "date": date.today().isoformat(), "threads": args.threads,
                               "episodes": args.episodes, "horizon": args.horizon, "repeats": args.repeats,
                               "rows": rows})


if __name__ == "__main__":
    main()
