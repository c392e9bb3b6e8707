"""The goal graph: path length through the data's latents, so that a goal behind a wall costs what the way round
it costs."""

import json
import shutil

import numpy as np
import pytest
import torch

from paperclub.cli import main
from paperclub.errors import UserError
from paperclub.worldmodel.goal_graph import (
    FAR,
    GRAPH_FILE,
    GoalGraph,
    farthest_points,
    load_goal_graph,
    save_goal_graph,
)
from paperclub.worldmodel.goal_metric import METRIC_FILE


def two_rooms(step: float = 0.1) -> torch.Tensor:
    """Grid latents (x, y) of two rooms, x < 0.45 and x > 0.55, with a door at y = 0.5 (the wall between)."""
    xs = np.round(np.arange(0, 1.0001, step), 6)
    pts = [(x, y) for x in xs for y in xs if x < 0.45 or x > 0.55 or abs(y - 0.5) < 1e-9]
    return torch.tensor(pts, dtype=torch.float32)


def test_the_cost_goes_round_the_wall():
    nodes = two_rooms()
    graph = GoalGraph(nodes, radius=0.12, whiten=torch.eye(2))  # edges to the 4 grid neighbours (0.1 apart)
    goal = torch.tensor([0.6, 0.9])  # right room, top
    c = graph.toward(goal)
    left_of_goal, at_door = torch.tensor([[0.4, 0.9]]), torch.tensor([[0.4, 0.5]])
    # across the wall: 0.2 from the goal as the crow flies, but the way is down to the door, through, and up:
    # 0.4 + 0.2 (door: 0.4 -> 0.5 -> 0.6) + 0.4 = 1.0
    assert float(c(left_of_goal)) == pytest.approx(1.0**2, abs=1e-5)
    assert float(c(at_door)) == pytest.approx(0.6**2, abs=1e-5)  # 0.2 through the door, 0.4 up
    assert float(c(at_door)) < float(c(left_of_goal))  # the door is the way
    # near the goal the graph cost is the direct distance, the step metric's own cost
    near = torch.tensor([[0.62, 0.87], [0.6, 0.9]])
    torch.testing.assert_close(c(near), ((near - goal) ** 2).sum(1))
    # a latent off the data (no node within the radius) ranks behind every latent on it
    assert float(c(torch.tensor([[5.0, 5.0]]))) > FAR**2


def test_the_metric_scales_the_graph():
    """A whitening W that doubles every length doubles every path (and the radius is in W's units)."""
    nodes = two_rooms()
    plain = GoalGraph(nodes, 0.12, torch.eye(2)).toward(torch.tensor([0.6, 0.9]))
    doubled = GoalGraph(nodes, 0.24, 2 * torch.eye(2)).toward(torch.tensor([0.6, 0.9]))
    z = torch.tensor([[0.4, 0.9], [0.0, 0.0], [0.9, 0.1]])
    torch.testing.assert_close(doubled(z), 4 * plain(z))


def test_farthest_points_cover_the_rare_places():
    rng = np.random.default_rng(0)
    crowd = rng.normal(0, 0.01, size=(2000, 2))
    rare = np.array([[5.0, 5.0], [-5.0, 5.0]])
    x = torch.tensor(np.concatenate([crowd, rare]), dtype=torch.float32)
    picked = set(farthest_points(x, 4).tolist())
    assert {2000, 2001} <= picked  # both outliers among 4 picks out of 2002


def test_save_load_and_bad_files(tmp_path):
    nodes = two_rooms()
    save_goal_graph(tmp_path, nodes, 0.15, {"edges": 1})
    g = load_goal_graph(tmp_path, 2, torch.eye(2))
    torch.testing.assert_close(g.white_nodes, nodes.half().float())
    assert g.radius == 0.15
    assert load_goal_graph(tmp_path / "none", 2, torch.eye(2)) is None
    with pytest.raises(UserError, match="does not fit"):
        load_goal_graph(tmp_path, 3, torch.eye(3))
    raw = (tmp_path / GRAPH_FILE).read_bytes()
    (tmp_path / GRAPH_FILE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="unreadable.*lewm graph"):
        load_goal_graph(tmp_path, 2, torch.eye(2))


def test_cli_graph_then_plan_with_it(tiny_ckpt, tworoom_data_path, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    small = ["--episodes", "2", "--samples", "8", "--elites", "2", "--iterations", "1", "--horizon", "1",
             "--max-steps", "5", "--baseline-plans", "0", "--quiet"]
    capsys.readouterr()
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--cost", "graph", *small]) == 2  # no step metric yet
    assert "lewm metric" in capsys.readouterr().err
    assert main(["lewm", "metric", "--ckpt", str(ckpt), "--data", str(tworoom_data_path)]) == 0
    capsys.readouterr()
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--cost", "graph", *small]) == 2  # no graph yet
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lewm graph" in err
    assert main(["lewm", "graph", "--ckpt", str(ckpt), "--data", str(tworoom_data_path), "--nodes", "200"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["nodes"] == 200 and stats["radius"] > 0 and stats["edges"] > 0
    out = tmp_path / "plan.json"
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--cost", "graph", "--json", str(out), *small]) == 0
    assert json.loads(out.read_text())["cost"] == "graph"
    # a refitted step metric makes the graph's radius stale: `lewm metric` removes it
    assert main(["lewm", "metric", "--ckpt", str(ckpt), "--data", str(tworoom_data_path)]) == 0
    assert not (ckpt / GRAPH_FILE).exists()
    (ckpt / METRIC_FILE).unlink()
    capsys.readouterr()
    assert main(["lewm", "graph", "--ckpt", str(ckpt), "--data", str(tworoom_data_path)]) == 2
    assert "lewm metric" in capsys.readouterr().err
    assert main(["lewm", "graph", "--ckpt", str(ckpt), "--data", str(tworoom_data_path), "--nodes", "1"]) == 2


def test_more_training_drops_the_graph(tworoom_data_path, tmp_path):
    """The nodes are the old encoder's latents: `lewm train --resume` removes the graph with the metric it is
    built on (the metric is fitted again; the graph is not, until `lewm graph` runs again)."""
    out = tmp_path / "run"
    assert main(["lewm", "train", "--env", "tworoom", "--config", "tiny", "--steps", "3", "--data",
                 str(tworoom_data_path), "--sigreg-directions", "16", "--out", str(out), "--quiet"]) == 0
    assert main(["lewm", "graph", "--ckpt", str(out), "--data", str(tworoom_data_path), "--nodes", "50"]) == 0
    assert (out / GRAPH_FILE).is_file()
    assert main(["lewm", "train", "--env", "tworoom", "--out", str(out), "--resume", "--steps", "6", "--quiet"]) == 0
    assert not (out / GRAPH_FILE).exists() and (out / METRIC_FILE).is_file()
