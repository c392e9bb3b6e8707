from types import SimpleNamespace

import numpy as np
import pytest
import torch

from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import load_checkpoint
from paperclub.worldmodel.envs import make_env
from paperclub.worldmodel.envs.render import pixel_centres
from paperclub.worldmodel.envs.tworoom import AGENT_COLOR, ALT_AGENT_COLOR, STEP
from paperclub.worldmodel.surprise import (
    SurpriseConfig,
    paired_p_value,
    prediction_errors,
    run_twin,
    surprise_experiment,
)


def test_twins_match_before_the_perturbation_and_differ_at_it(tiny_ckpt):
    model, _ = load_checkpoint(tiny_ckpt)
    env = make_env("tworoom")
    cfg = SurpriseConfig(episodes=2, blocks=6, perturb_block=3)
    clean_f, clean_a = run_twin("tworoom", env, model.cfg, 11, "clean", cfg)
    tele_f, tele_a = run_twin("tworoom", env, model.cfg, 11, "teleport", cfg)
    col_f, _ = run_twin("tworoom", env, model.cfg, 11, "color", cfg)
    assert clean_f.shape == (7, 64, 64, 3) and clean_a.shape == (6, 10)
    assert np.array_equal(clean_f[:3], tele_f[:3]) and np.array_equal(clean_a[:3], tele_a[:3])
    assert not np.array_equal(clean_f[3], tele_f[3]) and not np.array_equal(clean_f[3], col_f[3])
    errs = prediction_errors(model, clean_f, clean_a)
    tele = prediction_errors(model, tele_f, tele_a)
    # transitions 0 and 1 see the same frames in both twins; transition 2 ends in the teleported frame
    assert errs.shape == tele.shape == (6,)
    assert np.array_equal(errs[:2], tele[:2]) and errs[2] != tele[2]


class StubModel:
    """A model whose errors are easy to work out by hand: the latent of a frame is (m, 2m) for its mean pixel m in
    [-1, 1]; output token i of the predictor is the sum of the latents up to i plus the sum of action block i."""

    cfg = SimpleNamespace(history=2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([m, 2 * m], 1)

    def predict(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return z.cumsum(1) + a.sum(-1, keepdim=True)


def test_prediction_errors_use_the_last_history_latents_and_the_next_one_as_target():
    frames = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (0, 255, 0, 255)])  # m = -1, 1, -1, 1
    blocks = np.array([[0.5], [0.0], [1.0]], np.float32)
    # t=0: window z0       pred (-1, -2) + 0.5 = (-0.5, -1.5), target z1 = (1, 2):   2.25 + 12.25 = 14.5
    # t=1: window z0..z1   pred (0, 0) + 0                     target z2 = (-1, -2): 1 + 4 = 5
    # t=2: window z1..z2 (history 2): pred (0, 0) + 1          target z3 = (1, 2):   0 + 1 = 1
    assert prediction_errors(StubModel(), frames, blocks) == pytest.approx([14.5, 5.0, 1.0])


class PositionOracle:
    """A perfect TwoRoom world model: the latent is the agent's position (the centroid of its pixels, in either
    colour), plus its colour if `sees_color`; the prediction moves it by the actions (walls aside). A teleport is
    surprising to it; a colour change only if it sees colour."""

    def __init__(self, sees_color: bool):
        self.sees_color = sees_color
        self.cfg = SimpleNamespace(image_size=64, frameskip=5, history=3)
        self.xy = torch.from_numpy(np.stack(pixel_centres(64, 1.0))).float()  # (2, H, W) world coordinates

    def eval(self):
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pixels = ((x + 1) * 127.5).round()
        red, green = ((pixels == torch.tensor(c).view(3, 1, 1)).all(1).float() for c in (AGENT_COLOR, ALT_AGENT_COLOR))
        agent = red + green
        pos = (agent[:, None] * self.xy).sum((2, 3)) / agent.sum((1, 2))[:, None]
        colour = green.sum((1, 2)) / agent.sum((1, 2))
        return torch.cat([pos, colour[:, None]], 1) if self.sees_color else pos

    def predict(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        moved = z[..., :2] + STEP * a.view(*a.shape[:2], -1, 2).sum(2)
        return torch.cat([moved, z[..., 2:]], -1)


@pytest.mark.parametrize("sees_color", [False, True])
def test_experiment_finds_the_surprises_a_perfect_model_has(sees_color):
    """8 episodes. The teleport puts every episode's error above its clean twin's, so the one-sided Wilcoxon
    p-value is exactly 2^-8 (the one sign pattern in 256 that is all positive). The colour change is as
    surprising to an oracle that sees colour; one that does not errs exactly as on the clean twin: p = 1."""
    r = surprise_experiment(
        PositionOracle(sees_color), "tworoom", SurpriseConfig(episodes=8, blocks=4, perturb_block=2), progress=False
    )
    assert r["teleport"]["fraction_episodes_higher"] == 1.0
    assert r["teleport"]["wilcoxon_p_value"] == pytest.approx(2**-8) and r["teleport"]["significant_at_0.01"]
    colour = r["color"]
    if sees_color:
        assert colour["fraction_episodes_higher"] == 1.0 and colour["wilcoxon_p_value"] == pytest.approx(2**-8)
    else:
        assert colour["fraction_episodes_higher"] == 0.0 and colour["wilcoxon_p_value"] == 1.0
        assert colour["median_ratio_to_clean_twin"] == 1.0 and not colour["significant_at_0.01"]
    assert len(r["traces_mean"]["clean"]) == 4


def test_paired_p_value_matches_hand_computed_values():
    """Exact one-sided signed-rank p-values, P(T+ >= observed) over the 2^n equally likely sign patterns."""
    base = np.zeros(4)
    assert paired_p_value(np.array([1.0, 2.0, 3.0, 4.0]), base) == pytest.approx(1 / 16)  # all higher
    # differences +1, -2, +3, -4: T+ = 1 + 3 = 4; 11 of the 16 subsets of ranks {1, 2, 3, 4} sum to 4 or more
    assert paired_p_value(np.array([1.0, -2.0, 3.0, -4.0]), base) == pytest.approx(11 / 16)
    assert paired_p_value(np.array([-1.0, -2.0, -3.0, -4.0]), base) == pytest.approx(1.0)  # all lower
    assert paired_p_value(base, base) == 1.0  # no pair differs: no evidence


def test_config_validation():
    with pytest.raises(UserError):
        SurpriseConfig(blocks=4, perturb_block=4)
