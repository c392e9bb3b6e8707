import pytest
import torch

from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import load_checkpoint
from paperclub.worldmodel.planner import CEMConfig, PlanConfig, cem_plan, evaluate_planning


class IntegratorModel:
    """A world model whose latent is a position and each block adds its mean: CEM's optimum is known."""

    def rollout(self, z0, plans):
        return (
            z0 + plans.view(*plans.shape[:2], 2, -1).mean(-1).sum(1)
            if plans.shape[-1] > 2
            else z0 + plans.sum(1)
        )


def test_cem_reaches_a_known_goal():
    goal = torch.tensor([1.5, -2.0])
    plan, cost = cem_plan(
        IntegratorModel(),
        torch.zeros(2),
        goal,
        CEMConfig(samples=200, elites=20, iterations=10, horizon=4),
        block_dim=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert plan.shape == (4, 2) and plan.abs().max() <= 1
    assert cost < 0.05
    assert torch.allclose(plan.sum(0), goal, atol=0.2)


def test_more_iterations_do_not_hurt():
    goal = torch.tensor([2.5, 2.5])
    costs = [
        cem_plan(
            IntegratorModel(),
            torch.zeros(2),
            goal,
            CEMConfig(samples=64, elites=8, iterations=it, horizon=3),
            2,
            torch.Generator().manual_seed(1),
        )[1]
        for it in (1, 8)
    ]
    assert costs[1] <= costs[0]


class MirrorModel:
    """1-D latent = |sum of actions|: every goal has two mirror-image optima, the landscape LeWM's local latent
    distance gives CEM in miniature (separate wells with nothing between them)."""

    def rollout(self, z0, plans):
        return z0 + plans.sum(dim=(1, 2)).abs().unsqueeze(-1)


def test_execute_best_returns_the_plan_it_scored():
    goal = torch.tensor([0.7, -0.3])
    model = IntegratorModel()
    for execute in ("best", "mean"):
        cfg = CEMConfig(samples=32, elites=8, iterations=3, horizon=3, execute=execute)
        plan, c = cem_plan(model, torch.zeros(2), goal, cfg, 2, torch.Generator().manual_seed(3))
        # the cost returned is the imagined cost of the plan returned, in both modes
        assert c == pytest.approx(float((model.rollout(torch.zeros(1, 2), plan[None])[0] - goal).pow(2).sum()))


def test_best_beats_the_elite_mean_between_two_wells():
    costs = {
        ex: cem_plan(
            MirrorModel(),
            torch.zeros(1),
            torch.tensor([1.5]),
            CEMConfig(samples=64, elites=16, iterations=2, horizon=2, execute=ex),
            1,
            torch.Generator().manual_seed(0),
        )[1]
        for ex in ("best", "mean")
    }
    assert costs["best"] < 0.01 and costs["mean"] > 10 * costs["best"]


def test_evaluate_planning_contract(tiny_ckpt):
    model, _ = load_checkpoint(tiny_ckpt)
    cfg = PlanConfig(
        episodes=2,
        goal_offset=10,
        max_steps=10,
        cem=CEMConfig(samples=16, elites=4, iterations=2, horizon=2),
        baseline_plans=0,
    )
    r = evaluate_planning(model, "tworoom", cfg, progress=False)
    assert r["episodes"] == 2 and 0 <= r["success_rate"] <= 1 and r["mean_plan_time_s"] > 0
    assert len(r["per_episode"]) == 2 and all(e["steps"] <= 10 for e in r["per_episode"])
    assert "speedup_vs_patch_baseline" not in r


def test_bad_cem_config():
    with pytest.raises(UserError):
        CEMConfig(samples=4, elites=8)
    with pytest.raises(UserError, match="best"):
        CEMConfig(execute="median")
