import numpy as np
import pytest

from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import load_checkpoint
from paperclub.worldmodel.envs import make_env
from paperclub.worldmodel.surprise import SurpriseConfig, prediction_errors, run_twin, surprise_experiment


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
    assert errs.shape == (6,) and (errs >= 0).all()


def test_experiment_reports_tests_for_both_perturbations(tiny_ckpt):
    model, _ = load_checkpoint(tiny_ckpt)
    r = surprise_experiment(
        model, "tworoom", SurpriseConfig(episodes=3, blocks=5, perturb_block=2), progress=False
    )
    for kind in ("teleport", "color"):
        assert 0 <= r[kind]["wilcoxon_p_value"] <= 1
    assert len(r["traces_mean"]["clean"]) == 5


def test_config_validation():
    with pytest.raises(UserError):
        SurpriseConfig(blocks=4, perturb_block=4)
