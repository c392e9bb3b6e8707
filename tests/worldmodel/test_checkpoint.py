import pytest
import torch

from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import (
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    shipped_checkpoint,
    state_dict_size_bytes,
)
from paperclub.worldmodel.model import LeWM, preset


def test_roundtrip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    m = LeWM(preset("tiny")).eval()
    save_checkpoint(m, tmp_path / "c", {"env": "tworoom"})
    m2, meta = load_checkpoint(tmp_path / "c")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(m.encode(x), m2.encode(x)) and meta["env"] == "tworoom"


def test_checkpoint_from_before_the_latent_batchnorm_loads_without_it(tmp_path):
    import json

    torch.manual_seed(0)
    m = LeWM(preset("tiny", latent_batchnorm=False)).eval()
    save_checkpoint(m, tmp_path / "c", {"env": "tworoom"})
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    del cfg["model"]["latent_batchnorm"]  # as written by versions before the option
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    m2, _ = load_checkpoint(tmp_path / "c")
    x = torch.randn(2, 3, 64, 64)
    assert not m2.cfg.latent_batchnorm and torch.equal(m.encode(x), m2.encode(x))


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        load_checkpoint(tmp_path)
    with pytest.raises(UserError):
        resolve_checkpoint(None, None)


@pytest.mark.parametrize("env", ["tworoom", "pusht"])
def test_shipped_checkpoints_are_small_and_load(env):
    path = shipped_checkpoint(env)
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"no shipped {env} checkpoint in this checkout")
    model, meta = load_checkpoint(path)
    assert meta["env"] == env and meta.get("command")
    assert state_dict_size_bytes(model) < 8e6


def test_shipped_tworoom_plans_with_its_goal_graph_by_default(tmp_path):
    """The shipped TwoRoom defaults (BENCHMARKS "TwoRoom: the goal graph"): its ensemble scores plans by the goal
    graph's path length, with the disagreement weight tuned for that cost."""
    import json

    from paperclub.cli import main
    from paperclub.worldmodel.goal_graph import load_goal_graph
    from paperclub.worldmodel.goal_metric import load_step_metric

    path = shipped_checkpoint("tworoom")
    if not (path / "goal_graph.safetensors").is_file():
        pytest.skip("no shipped TwoRoom goal graph in this checkout")
    model, _ = load_checkpoint(path)
    graph = load_goal_graph(path, model.cfg.latent_dim, load_step_metric(path, model.cfg.latent_dim))
    assert len(graph.white_nodes) == 3000 and graph.adjacency.nnz > 0
    out = tmp_path / "plan.json"
    assert main(["lewm", "plan", "--env", "tworoom", "--episodes", "1", "--samples", "16", "--elites", "4",
                 "--iterations", "1", "--max-steps", "5", "--baseline-plans", "0", "--quiet",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["cost"] == "graph" and result["ensemble_members"] == 3 and result["disagreement_weight"] == 1.0
