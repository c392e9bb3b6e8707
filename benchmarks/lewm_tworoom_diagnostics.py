"""Why TwoRoom planning fails: three measurements on a checkpoint, written to one JSON.

1. Locality: squared latent distance between frames whose agent positions are d apart, for a range of d. When it
   reaches the level of two unrelated frames (2 * latent_dim for unit-variance latents), the goal cost is flat
   beyond that distance and gives CEM no direction.
2. Search or model: the imagined cost, from each held-out start, of the scripted expert's own 25 actions (which
   do reach the goal), of CEM's lowest-cost sample and of CEM's final elite mean.
3. Wall contact: push straight into the wall for 25 steps and compare the imagined final latent with the encoded
   real final frame (the agent stopped at the wall).

    python benchmarks/lewm_tworoom_diagnostics.py [--ckpt DIR] --json benchmarks/results/lewm/tworoom_diag.json
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from paperclub.atomic import write_json
from paperclub.worldmodel.checkpoint import load_checkpoint, resolve_checkpoint
from paperclub.worldmodel.envs import make_env, make_policy
from paperclub.worldmodel.planner import CEMConfig, cem_plan, cost, encode_one

DISTANCES = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)


def locality(model, env, rng, points: int) -> dict:
    def enc(p):
        env.set_state(p)
        return encode_one(model, env.render())

    by_d = {d: [] for d in DISTANCES}
    for _ in range(points):
        p = env.sample_free_position(rng)
        z = enc(p)
        for d in DISTANCES:
            ang = rng.uniform(0, 2 * np.pi)
            q = p + d * np.array([np.cos(ang), np.sin(ang)])
            if env.is_free(q) and 0.045 <= q.min() and q.max() <= 0.955:
                by_d[d].append(float((enc(q) - z).pow(2).sum()))
    return {str(d): {"median": statistics.median(v), "pairs": len(v)} for d, v in by_d.items() if v}


def search_or_model(model, env, episodes: int, goal_offset: int) -> list[dict]:
    k = model.cfg.frameskip
    blocks = goal_offset // k
    rows = []
    for seed in range(1_000_001, 1_000_001 + episodes):  # the held-out seeds `lewm plan --seed 0` uses
        obs, info = env.reset(seed=seed)
        start = info["state"]
        policy = make_policy("tworoom", env, np.random.default_rng(seed))
        actions = []
        for _ in range(blocks * k):
            actions.append(policy())
            env.step(actions[-1])
        goal = env.render()
        env.set_state(start)
        z0, zg = encode_one(model, obs), encode_one(model, goal)
        expert = torch.from_numpy(np.stack(actions)).float().view(1, blocks, -1)
        row = {"seed": seed, "start_cost": float((z0 - zg).pow(2).sum())}
        row["expert_cost"] = float(cost(model.rollout(z0[None], expert), zg)[0])
        for execute in ("best", "mean"):
            cfg = CEMConfig(horizon=blocks, execute=execute)
            _, c = cem_plan(model, z0, zg, cfg, expert.shape[-1], torch.Generator().manual_seed(seed))
            row[f"cem_{execute}_cost"] = c
        rows.append(row)
    return rows


def wall_contact(model, env) -> list[dict]:
    rows = []
    for y in (0.15, 0.25, 0.75, 0.85):  # beside the door, never through it
        for x0 in (0.3, 0.4):
            env.set_state(np.array([x0, y]))
            z0 = encode_one(model, env.render())
            plan = torch.zeros(1, 5, model.cfg.action_block_dim)
            plan[..., 0::2] = 1.0  # full speed to the right, 25 steps
            imagined = model.rollout(z0[None], plan)[0]
            for a in plan[0].reshape(-1, 2).numpy():
                env.step(a)
            real = encode_one(model, env.render())
            gap = float((imagined - real).pow(2).sum())
            rows.append({"start": [x0, y], "end": env.get_state().tolist(), "imagined_vs_real": gap})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None, help="TwoRoom checkpoint (default: the shipped one)")
    p.add_argument("--points", type=int, default=60)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, meta = load_checkpoint(resolve_checkpoint(args.ckpt, "tworoom"))
    model.eval()
    env = make_env("tworoom", model.cfg.image_size)
    rows = search_or_model(model, env, args.episodes, goal_offset=25)
    walls = wall_contact(model, env)
    out = {
        "ckpt": str(args.ckpt or "shipped"),
        "latent_dim": model.cfg.latent_dim,
        "unrelated_frames_level": 2 * model.cfg.latent_dim,
        "locality_sq_latent_distance_by_position_distance": locality(model, env, np.random.default_rng(0), args.points),
        "imagined_cost_medians": {
            key: statistics.median(r[key] for r in rows)
            for key in ("start_cost", "expert_cost", "cem_best_cost", "cem_mean_cost")
        },
        "episodes": rows,
        "wall_push_median_imagined_vs_real": statistics.median(r["imagined_vs_real"] for r in walls),
        "wall_push": walls,
    }
    write_json(args.json, out)
    print({k: v for k, v in out.items() if k not in ("episodes", "wall_push")})


if __name__ == "__main__":
    main()
