"""The goal graph: a goal cost that goes around walls, from the latents of the training data.

The step metric (`goal_metric.py`) is local: in TwoRoom its distance grows with the agent's displacement for
about two steps and then saturates (sqrt q 6.4 at under 0.05 apart, 14-20 anywhere beyond 0.1, the far room
included), so from the wrong side of the wall every plan costs about the same and CEM cannot find the door; 58 of
the ensemble planner's 63 failures in 400 episodes were goals in the other room.

Where the metric is local it is right, so use it only there and chain it, as search on the replay buffer does
(Eysenbach et al., 2019). Nodes: latents of training frames, picked by farthest-point sampling in the step metric
so they cover what the data visits. Edges: node pairs less than `radius` apart (default: the 90th percentile of
one-step moves in the data, so an edge is about one step), weighted by their distance. For a goal g, Dijkstra gives
every node's path length D(n) to g (g itself joins the graph by the same rule). An imagined final latent z then
costs

    c(z) = min over nodes n with d(z, n) < radius of  d(z, n) + D(n),      d(a, b) = ||W a - W b||,

squared (so that it adds to the ensemble's disagreement, which is also a squared step distance). Near the goal
c(z) = d(z, g) exactly (D is a sum of edge lengths, so the triangle inequality makes the direct route the
shortest), so the graph cost agrees with the step metric where that one works and takes over where it saturates.
A z with no node within the radius (an imagined latent off the data) costs `FAR` plus its best route, so every
plan that stays on the data's manifold ranks ahead of it.

A wall is respected only if no edge jumps it: in TwoRoom the closest latents on the two sides of the wall are 13.4
apart against a radius of 9.8 (`benchmarks/lewm_goal_graph.py` measures it for a checkpoint and dataset).
Stored as `goal_graph.safetensors` beside the weights: the nodes (float16) and the radius; the edges are rebuilt at
load (for 3,000 nodes a 3,000 x 3,000 distance matrix, well under a second).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra

from paperclub.atomic import atomic_path
from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import first_line
from paperclub.worldmodel.model import frames_to_tensor

GRAPH_FILE = "goal_graph.safetensors"
FAR = 1e4  # added to the cost of a latent with no node within the radius


@dataclass
class GoalGraphConfig:
    nodes: int = 3000  # latents kept, by farthest-point sampling
    radius: float = 0.0  # edge length limit in the step metric; 0 = the 90th percentile of one-step moves
    max_episodes: int = 300  # evenly spaced over the dataset
    seed: int = 0  # the first node

    def __post_init__(self):
        if self.nodes < 2:
            raise UserError(f"the goal graph needs at least 2 nodes, got {self.nodes}")
        if self.radius < 0 or not np.isfinite(self.radius):
            raise UserError(f"goal graph radius must be >= 0 (0: from the data), got {self.radius}")
        if self.max_episodes < 1:
            raise UserError(f"goal graph max_episodes must be >= 1, got {self.max_episodes}")


def pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows of a (N, D) and b (M, D), float32, clamped at 0 before the root."""
    d2 = a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)
    return d2.clamp_min(0).sqrt()


def farthest_points(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Indices of k rows of x (N, D) by greedy farthest-point sampling (each next point the farthest from those
    picked): a cover of everything x visits, rare places included."""
    k = min(k, len(x))
    picked = torch.empty(k, dtype=torch.long)
    picked[0] = int(np.random.default_rng(seed).integers(len(x)))
    nearest = pairwise(x, x[picked[0]].unsqueeze(0)).squeeze(1)
    for i in range(1, k):
        picked[i] = int(torch.argmax(nearest))
        nearest = torch.minimum(nearest, pairwise(x, x[picked[i]].unsqueeze(0)).squeeze(1))
    return picked


def one_step_radius(episodes: list[torch.Tensor]) -> float:
    """The 90th percentile of one-step moves ||W z_{t+1} - W z_t|| over whitened episode latents."""
    moves = torch.cat([(e[1:] - e[:-1]).norm(dim=1) for e in episodes if len(e) > 1])
    if len(moves) == 0:
        raise UserError("the goal graph needs episodes of at least 2 frames")
    return float(torch.quantile(moves, 0.9))


@torch.no_grad()
def build_graph(model, data, whiten: torch.Tensor, cfg: GoalGraphConfig) -> tuple[torch.Tensor, float, dict]:
    """(nodes (N, D) latents, radius, stats) from `data`'s episodes (`Episodes`)."""
    picks = np.unique(np.linspace(0, data.num_episodes - 1, min(cfg.max_episodes, data.num_episodes)).astype(int))
    latents = []
    for i in picks:
        frames = data.episode(int(i))["frames"]
        latents.append(torch.cat([model.encode(frames_to_tensor(frames[j: j + 256]))
                                  for j in range(0, len(frames), 256)]).float())
    w = whiten.float()
    white = [z @ w.T for z in latents]
    radius = cfg.radius or one_step_radius(white)
    pool = torch.cat(white)
    idx = farthest_points(pool, cfg.nodes, cfg.seed)
    nodes = torch.cat(latents)[idx]
    graph = GoalGraph(nodes, radius, whiten)
    n_comp, labels = connected_components(graph.adjacency, directed=False)
    stats = {"frames": len(pool), "episodes": len(picks), "nodes": len(nodes), "radius": radius,
             "edges": int(graph.adjacency.nnz // 2), "components": int(n_comp),
             "largest_component": int(np.bincount(labels).max()), "config": asdict(cfg)}
    return nodes, radius, stats


class GoalGraph:
    """The graph over node latents; `toward(z_goal)` gives the cost of one goal."""

    def __init__(self, nodes: torch.Tensor, radius: float, whiten: torch.Tensor):
        if not radius > 0:
            raise UserError(f"goal graph radius must be > 0, got {radius}")
        self.whiten = whiten.float()
        self.radius = float(radius)
        self.white_nodes = nodes.float() @ self.whiten.T
        self.adjacency = self._edges(self.white_nodes, self.white_nodes)

    def _edges(self, a: torch.Tensor, b: torch.Tensor) -> csr_matrix:
        rows, cols, lengths = [], [], []
        for start in range(0, len(a), 1024):
            d = pairwise(a[start: start + 1024], b)
            r, c = torch.nonzero(d < self.radius, as_tuple=True)
            keep = (r + start) != c if a is b else torch.ones_like(r, dtype=torch.bool)
            rows.append(r[keep] + start)
            cols.append(c[keep])
            lengths.append(d[r[keep], c[keep]].clamp_min(1e-6))  # a zero weight would read as no edge
        r, c, v = (torch.cat(x).numpy() for x in (rows, cols, lengths))
        return csr_matrix((v.astype(np.float64), (r, c)), shape=(len(a), len(b)))

    def distances_to(self, z_goal: torch.Tensor) -> torch.Tensor:
        """D(n): each node's shortest path length to the goal (inf where no path), the goal joining the graph
        with an edge to every node within the radius."""
        g = z_goal.float().reshape(1, -1) @ self.whiten.T
        d = pairwise(self.white_nodes, g).squeeze(1)
        n = len(self.white_nodes)
        near = torch.nonzero(d < self.radius).squeeze(1).numpy()
        if len(near) == 0:  # a goal off the data: join it to its nearest node
            near = np.array([int(torch.argmin(d))])
        goal_edges = csr_matrix((d[near].clamp_min(1e-6).numpy().astype(np.float64), (near, np.full(len(near), n))),
                                shape=(n + 1, n + 1))
        adj = self.adjacency.copy()
        adj.resize((n + 1, n + 1))
        adj = adj + goal_edges + goal_edges.T
        dist = dijkstra(adj, directed=False, indices=n)[:n]
        return torch.from_numpy(dist).float()

    def toward(self, z_goal: torch.Tensor) -> GraphCost:
        return GraphCost(self, z_goal, self.distances_to(z_goal))


class GraphCost:
    """The goal cost c(z)^2 of one goal (see the module docstring); `whiten` is the step metric's, so that a
    predictor ensemble measures its members' disagreement in the same units."""

    def __init__(self, graph: GoalGraph, z_goal: torch.Tensor, to_goal: torch.Tensor):
        self.graph, self.whiten = graph, graph.whiten
        self.goal = z_goal.float().reshape(1, -1) @ graph.whiten.T
        reachable = torch.isfinite(to_goal)
        self.nodes = graph.white_nodes[reachable]
        self.to_goal = to_goal[reachable]

    def __call__(self, z: torch.Tensor, z_goal: torch.Tensor | None = None) -> torch.Tensor:
        """Squared graph cost of latents z (S, D) (z_goal: the goal this cost was built for; not read)."""
        wz = z.float() @ self.whiten.T
        # the goal itself is a route of length 0 beyond it
        d = torch.cat([pairwise(wz, self.nodes), (wz - self.goal).norm(dim=1, keepdim=True)], dim=1)  # (S, N + 1)
        route = d + torch.cat([self.to_goal, torch.zeros(1)])
        inf = torch.tensor(float("inf"))
        best = torch.where(d < self.graph.radius, route, inf).min(dim=1).values
        return torch.where(torch.isfinite(best), best, FAR + route.min(dim=1).values).pow(2)


def save_goal_graph(ckpt: str | os.PathLike, nodes: torch.Tensor, radius: float, stats: dict) -> Path:
    path = Path(ckpt) / GRAPH_FILE
    meta = {"radius": repr(float(radius)), "nodes": str(len(nodes)), "edges": str(stats.get("edges", "")),
            "components": str(stats.get("components", ""))}
    with atomic_path(path) as tmp:
        save_file({"nodes": nodes.to(torch.float16).contiguous()}, str(tmp), metadata=meta)
    return path


def load_goal_graph(ckpt: str | os.PathLike, latent_dim: int, whiten: torch.Tensor) -> GoalGraph | None:
    """The checkpoint's goal graph, or None when it has none. A corrupt file is a UserError."""
    path = Path(ckpt) / GRAPH_FILE
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            radius = float(f.metadata()["radius"])
        nodes = load_file(str(path))["nodes"].float()
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({first_line(e)}); rebuild it with `paperclub lewm graph`") from None
    if nodes.ndim != 2 or nodes.shape[1] != latent_dim or not torch.isfinite(nodes).all() or not radius > 0:
        raise UserError(f"{path} does not fit this checkpoint (nodes {tuple(nodes.shape)}, latent {latent_dim}, "
                        f"radius {radius}); rebuild it with `paperclub lewm graph`")
    return GoalGraph(nodes, radius, whiten)
