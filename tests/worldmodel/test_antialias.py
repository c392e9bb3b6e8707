import json

import numpy as np
import pytest

from paperclub.cli import main
from paperclub.errors import UserError
from paperclub.worldmodel.data import CollectConfig, collect, load
from paperclub.worldmodel.envs import make_env
from paperclub.worldmodel.envs.pusht import WORLD
from paperclub.worldmodel.envs.render import disc_coverage, pixel_centres, rect_coverage


@pytest.mark.parametrize("r", [1.3, 4.0, 9.5])
def test_disc_coverage_sums_to_the_disc_area(r):
    xs, ys = pixel_centres(64, 64.0)  # one world unit per pixel
    cov = disc_coverage(xs, ys, 30.3, 31.7, r, 1.0)
    # the one-pixel ramp around the circle integrates to pi r^2 + pi / 12 (the outer half ring is the larger)
    assert cov.sum() == pytest.approx(np.pi * (r * r + 1 / 12), rel=0.02)
    assert cov.max() == 1.0 and cov.min() == 0.0


@pytest.mark.parametrize("angle", [0.0, 0.3, 1.2])
def test_rect_coverage_sums_to_the_rectangle_area(angle):
    xs, ys = pixel_centres(64, 64.0)
    cov = rect_coverage(xs, ys, 32.2, 30.9, 10.0, 3.5, angle, 1.0)
    assert cov.sum() == pytest.approx(4 * 10.0 * 3.5, rel=0.03)


def _block_centroid_x(frame: np.ndarray) -> float:
    blueness = np.clip(frame[..., 2].astype(float) - frame[..., 0], 0, None)  # the block is blue, the rest not
    return float((blueness.sum(0) * np.arange(frame.shape[1])).sum() / blueness.sum())


def test_antialiased_frames_follow_a_sub_pixel_move_of_the_block():
    """Move the block 0..1 pixel in tenths: in antialiased frames its centroid moves with it (to 0.05 px); in
    hard-edged frames it jumps."""
    shifts = np.linspace(0.0, 1.0, 11)
    errors = {}
    for aa in (True, False):
        env = make_env("pusht", 64, antialias=aa)
        env.reset(seed=3)
        state = env.get_state()
        state[4] = 0.0  # upright: the centroid's x moves by exactly the shift
        xs = []
        for s in shifts:
            moved = state.copy()
            moved[2] += s * WORLD / 64
            env.set_state(moved)
            xs.append(_block_centroid_x(env.render()))
        errors[aa] = np.abs(np.array(xs) - xs[0] - shifts).max()
    assert errors[True] < 0.05 and errors[False] > 0.2


def test_antialias_is_push_t_only_and_recorded_in_the_dataset(tmp_path):
    with pytest.raises(UserError, match="Push-T option"):
        make_env("tworoom", antialias=True)
    with pytest.raises(UserError, match="Push-T option"):
        CollectConfig(env="tworoom", antialias=True)
    path = collect(CollectConfig(env="pusht", episodes=2, steps=4, antialias=True), tmp_path / "aa.h5", progress=False)
    hard = collect(CollectConfig(env="pusht", episodes=2, steps=4), tmp_path / "hard.h5", progress=False)
    aa, plain = load(path), load(hard)
    assert aa.antialias and not plain.antialias
    np.testing.assert_array_equal(aa.state, plain.state)  # the same episodes, rendered two ways
    assert not np.array_equal(aa.frames, plain.frames)


def test_a_model_trained_on_antialiased_frames_plans_on_them(tmp_path, capsys, monkeypatch):
    import paperclub.worldmodel.planner as planner

    made = []
    monkeypatch.setattr(planner, "make_env", lambda *a: made.append(a) or make_env(*a))
    data = tmp_path / "aa.h5"
    assert main(["lewm", "collect", "--env", "pusht", "--episodes", "3", "--steps", "20", "--antialias",
                 "--out", str(data), "--quiet"]) == 0
    out = tmp_path / "run"
    assert main(["lewm", "train", "--env", "pusht", "--config", "tiny", "--steps", "2", "--data", str(data),
                 "--sigreg-directions", "16", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["antialias"] is True
    plan = tmp_path / "plan.json"
    assert main(["lewm", "plan", "--ckpt", str(out), "--episodes", "1", "--samples", "8", "--elites", "2",
                 "--iterations", "1", "--horizon", "1", "--max-steps", "5", "--baseline-plans", "0",
                 "--json", str(plan), "--quiet"]) == 0
    assert made == [("pusht", 64, True)]  # the planner renders antialiased frames, as the model was trained on
    hard = tmp_path / "hard.h5"
    assert main(["lewm", "collect", "--env", "pusht", "--episodes", "2", "--steps", "5", "--out", str(hard),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["lewm", "train", "--env", "pusht", "--out", str(out), "--resume", "--data", str(hard),
                 "--steps", "3"]) == 2
    assert "hard-edged frames" in capsys.readouterr().err
