"""Does a TwoRoom goal graph respect the wall? Distances in the step metric across the wall and between
neighbours, the graph's edges that jump the wall, and its path lengths against the true shortest way round.

    .venv/bin/python benchmarks/lewm_goal_graph.py --ckpt CKPT --data runs/tworoom600h5.h5 \
        --json benchmarks/results/lewm/tworoom_goal_graph.json

Nodes are picked as `paperclub lewm graph` picks them (farthest points in the step metric, same seed), but from
frames whose agent positions are known, so every edge can be checked against the map.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

from paperclub.atomic import write_json
from paperclub.worldmodel.checkpoint import load_checkpoint
from paperclub.worldmodel.data import load
from paperclub.worldmodel.envs.tworoom import DOOR_HALF, STEP, WALL_HALF
from paperclub.worldmodel.goal_graph import GoalGraph, farthest_points, one_step_radius, pairwise
from paperclub.worldmodel.goal_metric import require_step_metric
from paperclub.worldmodel.model import frames_to_tensor


def geodesic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shortest way in TwoRoom between positions a (N, 2) and b (2,): straight within a room, else through the
    door's nearer edge (agent radius ignored)."""
    same = (a[:, 0] < 0.5) == (b[0] < 0.5)
    door_y = np.clip(np.clip(a[:, 1], 0.5 - DOOR_HALF, 0.5 + DOOR_HALF), 0.5 - DOOR_HALF, 0.5 + DOOR_HALF)
    door = np.stack([np.full(len(a), 0.5), door_y], axis=1)
    via = np.linalg.norm(a - door, axis=1) + np.linalg.norm(door - b, axis=1)
    return np.where(same, np.linalg.norm(a - b, axis=1), via)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--nodes", type=int, default=3000)
    ap.add_argument("--max-episodes", type=int, default=300)
    ap.add_argument("--goals", type=int, default=200)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, _ = load_checkpoint(args.ckpt)
    model.eval()
    w = require_step_metric(args.ckpt, model.cfg.latent_dim, "lewm_goal_graph.py")
    data = load(args.data)
    picks = np.unique(np.linspace(0, data.num_episodes - 1, min(args.max_episodes, data.num_episodes)).astype(int))
    latents, states = [], []
    for i in picks:
        ep = data.episode(int(i))
        frames = ep["frames"]
        z = torch.cat([model.encode(frames_to_tensor(frames[j: j + 256])) for j in range(0, len(frames), 256)])
        latents.append(z.float())
        states.append(ep["state"][:, :2])
    white = [z @ w.T for z in latents]
    radius = one_step_radius(white)
    pool, pos = torch.cat(white), np.concatenate(states)
    idx = farthest_points(pool, args.nodes, 0).numpy()
    nodes = torch.cat(latents)[idx]
    graph = GoalGraph(nodes, radius, w)
    npos = pos[idx]

    room = npos[:, 0] > 0.5
    in_door = np.abs(npos[:, 1] - 0.5) <= DOOR_HALF
    adj = graph.adjacency.tocoo()
    jumps = (room[adj.row] != room[adj.col]) & ~(in_door[adj.row] & in_door[adj.col])
    d = pairwise(graph.white_nodes, graph.white_nodes).numpy()
    xy = np.linalg.norm(npos[:, None] - npos[None], axis=-1)
    cross = (room[:, None] != room[None]) & ~(in_door[:, None] | in_door[None])
    out = {"ckpt": args.ckpt, "data": args.data, "nodes": len(idx), "radius": radius,
           "edges": int(adj.nnz // 2), "edges_jumping_the_wall": int(jumps.sum() // 2),
           "closest_across_the_wall": float(d[cross].min()),
           "neighbours_within_one_step": {"median": float(np.median(d[(xy < STEP) & ~cross & (xy > 0)])),
                                          "p95": float(np.percentile(d[(xy < STEP) & ~cross & (xy > 0)], 95))},
           "wall_half_width": WALL_HALF}
    # path length to a goal against the true shortest way: rank agreement over nodes, per goal
    rng = np.random.default_rng(0)
    rho_same, rho_other = [], []
    for g in rng.choice(len(idx), args.goals, replace=False):
        dist = graph.distances_to(nodes[g]).numpy()
        true = geodesic(npos, npos[g])
        ok = np.isfinite(dist)
        for mask, store in (((room == room[g]) & ok, rho_same), ((room != room[g]) & ok, rho_other)):
            a, b = dist[mask], true[mask]
            ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
            store.append(float(np.corrcoef(ra, rb)[0, 1]))
    out["spearman_path_vs_true_way"] = {"goal_room": float(np.mean(rho_same)),
                                        "other_room": float(np.mean(rho_other)), "goals": args.goals}
    logging.info("%s", out)
    write_json(args.json, out)


if __name__ == "__main__":
    main()
