"""What limits LeWM planning: the world model, the latent goal cost, or the search? One JSON.

The same MPC loop as `paperclub lewm plan` (CEM, the first block executed, re-plan; the same held-out episodes,
CEM settings and noise) is run with a choice of "imagination":

    model       LeWM: encode the frame, roll the predictor out, latent distance to the encoded goal (the real
                planner)
    model-all   LeWM, the latent distance summed over every predicted block instead of the last one only
    sim-latent  the simulator itself plays every candidate plan from the true state; cost: LeWM's latent
                distance between the encoded final frame and the encoded goal. A perfect world model with
                LeWM's goal cost.
    sim-state   the simulator; cost: the success test's own terms, squared and scaled by its tolerances (Push-T:
                the block's position / pos_tol and angle / angle_tol; TwoRoom: the agent's position /
                success_tol). A perfect model and a perfect cost: what the search can do.
    sim-full    Push-T only: as sim-state, plus the pusher's position error (/ pos_tol)^2: what matching the whole
                goal picture (pusher included, as a latent distance does) costs.

With --cost step, `model`, `model-all` and `sim-latent` score in the checkpoint's step metric (goal_metric.py, what
`lewm plan` uses where the checkpoint has one) instead of the squared latent distance, and so does --sensitivity.

Reading it: model << sim-latent means the predictor is what fails; sim-latent << sim-state, the goal cost;
sim-state low, the CEM budget or horizon.

With --sensitivity (Push-T) it first measures what the latent goal cost sees: the median squared latent distance
between a frame and the same frame with only the pusher moved 20 or 60 units, only the block moved 20 or 60
units (20 is the success tolerance), or only the block turned 20 degrees (the angle tolerance), over fresh starts.

    PYTHONPATH=src python benchmarks/lewm_planning_diagnostics.py --env pusht [--ckpt DIR] --episodes 50 \
        --seed 0 --json benchmarks/results/lewm/pusht_diag.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch
from tqdm import tqdm

from paperclub.atomic import write_json
from paperclub.worldmodel.checkpoint import load_checkpoint, resolve_checkpoint
from paperclub.worldmodel.defaults import ENV_DEFAULTS
from paperclub.worldmodel.envs import make_env
from paperclub.worldmodel.goal_metric import load_step_metric
from paperclub.worldmodel.model import frames_to_tensor
from paperclub.worldmodel.planner import CEMConfig, cem_plan, cost, encode_one, make_goal

PLANNERS = ("model", "model-all", "sim-latent", "sim-state", "sim-full")


class EveryStep:
    """LeWM whose `rollout` returns the latents after every block, concatenated, so that `cem_plan`'s cost (with
    the goal repeated) is the summed distance to the goal over the horizon rather than at its end."""

    def __init__(self, model):
        self.model = model

    def rollout(self, z0: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        return self.model.imagine(z0, plans).flatten(1)


class Simulated:
    """A stand-in for the world model in `cem_plan`: `rollout` plays each plan in a scratch simulator from
    `start` and returns one feature vector per plan (an encoded frame, or scaled true state)."""

    def __init__(self, kind: str, model, env_name: str, start: np.ndarray):
        self.kind, self.model, self.start = kind, model, start
        self.env = make_env(env_name, model.cfg.image_size, model.cfg.antialias)

    def rollout(self, z0s: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        finals = []
        for plan in plans.numpy():
            self.env.set_state(self.start)
            for a in plan.reshape(-1, self.model.cfg.action_dim):
                self.env.advance(a)
            finals.append(self.env.render() if self.kind == "sim-latent" else self.env.get_state())
        if self.kind == "sim-latent":
            return self.model.encode(frames_to_tensor(torch.from_numpy(np.stack(finals))))
        return torch.from_numpy(np.stack([features(s, self.env, self.kind) for s in finals])).float()


def features(state: np.ndarray, env, kind: str) -> np.ndarray:
    """State as a vector whose squared distances are the cost. Push-T: block position / pos_tol, the angle on a
    circle of radius 1 / angle_tol (chord ~ angle for small errors), and for sim-full the pusher position /
    pos_tol. TwoRoom: the agent position / success_tol."""
    if len(state) == 2:
        return np.asarray(state) / env.success_tol
    px, py, bx, by, a = state
    f = [bx / env.pos_tol, by / env.pos_tol, np.cos(a) / env.angle_tol, np.sin(a) / env.angle_tol]
    if kind == "sim-full":
        f += [px / env.pos_tol, py / env.pos_tol]
    return np.array(f)


@torch.no_grad()
def sensitivity(model, starts: int = 60, whiten: torch.Tensor | None = None) -> dict:
    """Median squared latent distance (in the step metric with `whiten`) caused by moving one thing in a Push-T
    frame (see the module docstring)."""

    def goal_cost(z_moved: torch.Tensor, z: torch.Tensor) -> float:
        return float(cost(z_moved[None], z, whiten)[0])

    env = make_env("pusht", model.cfg.image_size, model.cfg.antialias)
    rng = np.random.default_rng(0)
    moves = {"pusher_20": (0, 20.0), "pusher_60": (0, 60.0), "block_20": (2, 20.0), "block_60": (2, 60.0)}
    out: dict[str, list[float]] = {k: [] for k in [*moves, "block_turn_20deg"]}
    for i in range(starts):
        env.reset(seed=5_000_000 + i)
        state = env.get_state()
        z = encode_one(model, env.render())
        u = rng.normal(size=2)
        u /= np.linalg.norm(u)
        for name, (at, dist) in moves.items():
            moved = state.copy()
            moved[at : at + 2] += dist * u
            env.set_state(moved)
            out[name].append(goal_cost(encode_one(model, env.render()), z))
        moved = state.copy()
        moved[4] += np.radians(20) * rng.choice([-1, 1])
        env.set_state(moved)
        out["block_turn_20deg"].append(goal_cost(encode_one(model, env.render()), z))
        env.set_state(state)
    return {k: statistics.median(v) for k, v in out.items()} | {"starts": starts}


@torch.no_grad()
def run(model, env_name: str, kind: str, episodes: int, seed0: int, cem: CEMConfig, replan_every: int,
        progress: bool, whiten: torch.Tensor | None = None) -> dict:
    d = ENV_DEFAULTS[env_name]
    block_dim = model.cfg.action_block_dim
    env = make_env(env_name, model.cfg.image_size, model.cfg.antialias)
    rows, times = [], []
    seed = 1_000_000 + 1000 * seed0  # the held-out episodes of `lewm plan --seed seed0`
    bar = tqdm(total=episodes, desc=kind, disable=not progress)
    while len(rows) < episodes:
        seed += 1
        frame, goal_frame, goal_state = make_goal(env_name, env, seed, d["goal_offset"])
        if env.is_success(goal_state):
            continue
        zg = encode_one(model, goal_frame)
        goal = zg if kind in ("model", "sim-latent") else torch.from_numpy(features(goal_state, env, kind)).float()
        if kind == "model-all":
            goal = zg.repeat(cem.horizon)
        metric = None
        if whiten is not None and kind.startswith("model"):  # model-all: block-diagonal over the horizon
            metric = torch.block_diag(*[whiten] * (cem.horizon if kind == "model-all" else 1))
        elif whiten is not None and kind == "sim-latent":
            metric = whiten
        start_dist = env.goal_distance(goal_state)
        success, steps, warm = False, 0, None
        while steps < d["max_steps"] and not success:
            t0 = time.perf_counter()
            imagined = kind.startswith("model")
            world = {"model": model, "model-all": EveryStep(model)}.get(kind)
            world = world or Simulated(kind, model, env_name, env.get_state())
            z0 = encode_one(model, frame) if imagined else torch.zeros(1)
            plan, _ = cem_plan(world, z0, goal, cem, block_dim, torch.Generator().manual_seed(seed * 100 + steps),
                               warm, metric)
            times.append(time.perf_counter() - t0)
            flat = plan.reshape(-1, model.cfg.action_dim)  # (horizon * k, action_dim)
            warm = torch.cat([flat[replan_every:], torch.zeros_like(flat[:replan_every])]).reshape(plan.shape)
            for a in flat[:replan_every].numpy():
                frame, *_ = env.step(a)
                steps += 1
                if env.is_success(goal_state):
                    success = True
                    break
        row = {"seed": seed, "success": success, "steps": steps, "start_distance": start_dist,
               "final_distance": env.goal_distance(goal_state)}
        if env_name == "pusht":
            s, g = env.get_state(), goal_state
            row["final_position_error"] = float(np.hypot(*(s[2:4] - g[2:4])))
            row["final_angle_error_deg"] = float(np.degrees(abs((s[4] - g[4] + np.pi) % (2 * np.pi) - np.pi)))
        rows.append(row)
        bar.update(1)
        bar.set_postfix(success=f"{np.mean([r['success'] for r in rows]):.2f}")
    bar.close()
    return {"success_rate": float(np.mean([r["success"] for r in rows])), "episodes": len(rows),
            "median_plan_time_s": statistics.median(times),
            "median_final_distance": statistics.median(r["final_distance"] for r in rows), "per_episode": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", choices=sorted(ENV_DEFAULTS), required=True)
    ap.add_argument("--ckpt", default=None, help="checkpoint directory (default: the shipped one for --env)")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0, help="episode set, as `lewm plan --seed`")
    ap.add_argument("--planners", default="model,sim-latent,sim-state", help=f"comma-separated subset of {PLANNERS}")
    ap.add_argument("--horizon", type=int, default=None, help="action blocks (default: as `lewm plan`)")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--replan-every", type=int, default=5,
                    help="env steps executed between plans (default: one action block, as `lewm plan`)")
    ap.add_argument("--sensitivity", action="store_true", help="Push-T: also measure what the latent cost sees")
    ap.add_argument("--cost", choices=("latent", "step"), default="latent",
                    help="goal cost of the latent planners: squared latent distance (default) or the step metric")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    path = resolve_checkpoint(args.ckpt, args.env)
    model, meta = load_checkpoint(path)
    if meta["env"] != args.env:
        raise SystemExit(f"{args.ckpt} is a {meta['env']} checkpoint, not {args.env}")
    whiten = load_step_metric(path, model.cfg.latent_dim) if args.cost == "step" else None
    if args.cost == "step" and whiten is None:
        raise SystemExit(f"{path} has no step metric: make one with `paperclub lewm metric`")
    horizon = args.horizon or ENV_DEFAULTS[args.env]["horizon"]
    cem = CEMConfig(samples=args.samples, iterations=args.iterations, horizon=horizon)
    out = {"env": args.env, "ckpt": args.ckpt or "shipped", "seed": args.seed, "cem": vars(cem),
           "replan_every": args.replan_every, "cost": args.cost, "planners": {}}
    if args.sensitivity and args.env == "pusht":
        out["sensitivity"] = sensitivity(model, whiten=whiten)
        logging.info("latent distance by move: %s", out["sensitivity"])
        write_json(args.json, out)
    for kind in filter(None, args.planners.split(",")):
        if kind not in PLANNERS or (kind == "sim-full" and args.env != "pusht"):
            raise SystemExit(f"unknown planner {kind!r} for {args.env}: use {', '.join(PLANNERS)} (sim-full: pusht)")
        out["planners"][kind] = run(model, args.env, kind, args.episodes, args.seed, cem, args.replan_every,
                                    progress=True, whiten=whiten)
        logging.info("%s: %.0f%%", kind, 100 * out["planners"][kind]["success_rate"])
        write_json(args.json, out)  # after each planner: a long run keeps what it measured


if __name__ == "__main__":
    main()
