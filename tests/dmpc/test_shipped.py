"""The checkpoints that ship with the package: `paperclub dmpc eval --env ENV` runs on a fresh checkout."""

import json

import pytest
import torch

from paperclub.cli import main
from paperclub.dmpc import bc, checkpoint, mbop
from paperclub.dmpc.envs import make_env
from paperclub.dmpc.planner import History, PlannerConfig, SSRPlanner
from paperclub.dmpc.rewards import get_reward

SHIPPED = {"hopper": ("dmpc", "mbop", "bc"), "walker2d": ("dmpc", "mbop", "bc", "distilled"),
           "halfcheetah": ("dmpc", "mbop", "bc")}


@pytest.mark.parametrize("env", sorted(SHIPPED))
def test_each_env_ships_its_planners_trained_on_its_medium_data(env):
    for kind in SHIPPED[env]:
        path = checkpoint.shipped(env, kind)
        assert path is not None, (env, kind)
        if kind == "dmpc":
            model, config = checkpoint.load(path, env=env)
            assert config["step"] == 20_000 and model.cfg.prediction == "sample" and model.cfg.horizon == 8
        elif kind == "mbop":
            _, config = mbop.load(path, env=env)
        else:
            _, config = bc.load(path, kind=kind, env=env)
        assert config["data"].endswith(f"{env}-medium.h5"), (kind, config["data"])
        assert not (path / "train_state.pt").exists()  # what planning needs, nothing more
    assert checkpoint.shipped(env, "random") is None and checkpoint.shipped("pendulum", "dmpc") is None


def test_the_shipped_dmpc_plans_actions_inside_the_bounds():
    model, _ = checkpoint.load(checkpoint.shipped("hopper", "dmpc"), env="hopper")
    env = make_env("hopper")
    space = env.action_space
    hist = [History(model.cfg.history, env.reset(seed=s)[0], space.shape[0]) for s in (0, 1)]
    states, actions = (torch.stack(x) for x in zip(*(h.tensors() for h in hist), strict=True))
    planner = SSRPlanner(model, get_reward("hopper", None), PlannerConfig(
        candidates=8, proposal_steps=2, dynamics_steps=2, low=tuple(space.low.tolist()),
        high=tuple(space.high.tolist())))
    plan = planner.plan(states, actions)
    assert plan.shape == (2, 1, 3)
    assert bool((plan >= torch.tensor(space.low)).all() and (plan <= torch.tensor(space.high)).all())


def test_eval_without_ckpt_uses_the_shipped_checkpoint(tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["dmpc", "eval", "--env", "hopper", "--planner", "bc", "--episodes", "2", "--quiet", "--json",
                 str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ckpt"] == str(checkpoint.shipped("hopper", "bc")) and result["episodes"] == 2
    # the behaviour-cloning policy of hopper-medium hops: about the data's own 59 (BENCHMARKS: 55.4 on seeds 100-109)
    assert 40 < result["normalized_score"]["mean"] < 70, result["normalized_score"]
