import json

import numpy as np
import pytest

from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import load_checkpoint
from paperclub.worldmodel.model import preset
from paperclub.worldmodel.probe import effective_rank, probe_latents
from paperclub.worldmodel.train import TrainConfig, lr_at, train


def test_effective_rank_extremes():
    rng = np.random.default_rng(0)
    assert effective_rank(rng.standard_normal((4000, 16))) > 15
    line = rng.standard_normal((500, 1)) @ rng.standard_normal((1, 16))
    assert effective_rank(line + 1e-6 * rng.standard_normal((500, 16))) < 1.1
    # hand-computed: variances 3 and 1 on two axes give eigenvalue shares 3/4 and 1/4, so the effective rank is
    # exp(-(3/4 ln 3/4 + 1/4 ln 1/4)) = (4/3)^(3/4) * 4^(1/4) = 1.7548
    a, b = 3**0.5 * 1.5**0.5, 1.5**0.5  # +-a on x, +-b on y: sample variances 2a^2/3 = 3 and 2b^2/3 = 1
    z = np.array([[a, 0, 0], [-a, 0, 0], [0, b, 0], [0, -b, 0]])
    assert effective_rank(z) == pytest.approx((4 / 3) ** 0.75 * 4**0.25, rel=1e-9)
    assert effective_rank(np.kron(np.eye(3), [[1.0], [-1.0]])) == pytest.approx(3.0)  # 3 equal axes of 3


def test_training_writes_checkpoint_log_and_plot(tiny_ckpt):
    for name in (
        "config.json",
        "model.safetensors",
        "train_log.json",
        "training_curve.png",
        "training_curve.json",
    ):
        assert (tiny_ckpt / name).is_file()
    log = json.loads((tiny_ckpt / "train_log.json").read_text())
    assert log["history"]["step"][0] == 0 and log["evals"][-1]["step"] == 29
    model, meta = load_checkpoint(tiny_ckpt)
    assert meta["env"] == "tworoom" and meta["steps_done"] == 30 and not model.training


def test_sigreg_prevents_the_collapse_that_lambda_zero_allows(tworoom_data, tmp_path):
    """The collapse experiment on a tiny run (150 steps). The latent BatchNorm keeps every latent at unit scale,
    so without SIGReg the prediction loss is driven down by making the latents alike: the effective rank falls
    to a few of 32 dimensions (2.9 when written). With SIGReg it stays above half (20.6 when written)."""
    results = {}
    for w in (0.0, 0.1):
        cfg = TrainConfig(
            steps=150,
            batch_size=32,
            sigreg_weight=w,
            sigreg_directions=128,
            eval_every=150,
            warmup=20,
            lr=3e-3,
            weight_decay=0.1,
        )
        train(preset("tiny"), cfg, tworoom_data, tmp_path / str(w), progress=False)
        model, _ = load_checkpoint(tmp_path / str(w))
        results[w] = probe_latents(model, tworoom_data.frames[::2])
    collapsed, regularised = results[0.0], results[0.1]
    assert collapsed["effective_rank_fraction"] < 0.2
    assert regularised["effective_rank_fraction"] > 0.5
    assert regularised["effective_rank"] > 4 * collapsed["effective_rank"]
    # a collapse of dimension, not of scale: both keep unit-scale latents
    assert min(collapsed["mean_latent_std"], regularised["mean_latent_std"]) > 0.5


def test_lr_schedule_and_config_validation():
    cfg = TrainConfig(steps=1000, warmup=100, lr=1e-3, max_minutes=10)
    assert lr_at(0, cfg) < lr_at(99, cfg) <= 1e-3
    assert lr_at(500, cfg, elapsed_s=0) > lr_at(500, cfg, elapsed_s=540)  # wall-time budget also decays it
    assert lr_at(999, cfg) < 1e-5
    with pytest.raises(UserError):
        TrainConfig(sigreg_weight=-1)
    with pytest.raises(UserError, match="rollout-weight"):
        TrainConfig(rollout_weight=-0.5)


def test_rollout_weight_adds_the_imagined_latents_loss(tworoom_data, tmp_path):
    """Same seed, same first batch: the first step's total loss with the multi-step term exceeds the plain one by
    rollout_weight x (a positive MSE), while the teacher-forced term is identical; both runs log the validation
    rollout loss."""
    logs = {}
    for w in (0.0, 2.0):
        cfg = TrainConfig(steps=60, batch_size=16, sigreg_directions=64, eval_every=60, warmup=5, lr=3e-3,
                          rollout_weight=w)
        final = train(preset("tiny"), cfg, tworoom_data, tmp_path / str(w), progress=False)
        assert final["val_rollout_loss"] > 0
        logs[w] = json.loads((tmp_path / str(w) / "train_log.json").read_text())["history"] | {"final": final}
    plain, multi = logs[0.0], logs[2.0]
    assert multi["pred_loss"][0] == pytest.approx(plain["pred_loss"][0], rel=1e-5)
    assert multi["loss"][0] > plain["loss"][0] + 1e-3


def test_interrupted_and_resumed_run_ends_where_an_uninterrupted_one_does(tworoom_data, tmp_path, monkeypatch):
    """Ctrl-C stops after the current step and saves model, optimizer and random streams; --resume continues
    with the same batches and SIGReg directions: the final weights are bit-identical to a run that went through."""
    import os
    import signal

    import torch

    from paperclub.worldmodel.data import WindowSampler

    cfg = TrainConfig(steps=12, batch_size=8, sigreg_directions=32, eval_every=5, warmup=3)
    train(preset("tiny"), cfg, tworoom_data, tmp_path / "through", progress=False)

    real_sample, calls = WindowSampler.sample, []

    def sample(self, n, rng):
        if n == cfg.batch_size:
            calls.append(1)
            if len(calls) == 7:  # Ctrl-C while step 6 draws its batch
                os.kill(os.getpid(), signal.SIGINT)
        return real_sample(self, n, rng)

    monkeypatch.setattr(WindowSampler, "sample", sample)
    first = train(preset("tiny"), cfg, tworoom_data, tmp_path / "resumed", progress=False)
    assert first["interrupted"] and first["steps_done"] == 7
    monkeypatch.setattr(WindowSampler, "sample", real_sample)
    _, meta = load_checkpoint(tmp_path / "resumed")
    assert meta["steps_done"] == 7
    second = train(preset("tiny"), cfg, tworoom_data, tmp_path / "resumed", progress=False, resume=True)
    assert second["steps_done"] == 12 and "interrupted" not in second
    a, _ = load_checkpoint(tmp_path / "through")
    b, _ = load_checkpoint(tmp_path / "resumed")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    with pytest.raises(UserError, match="already ran 12 steps"):
        train(preset("tiny"), cfg, tworoom_data, tmp_path / "resumed", progress=False, resume=True)
    with pytest.raises(UserError, match="another model configuration"):
        train(preset("tiny", latent_dim=8), TrainConfig(steps=20), tworoom_data, tmp_path / "resumed",
              progress=False, resume=True)


def test_resume_refuses_a_trainer_state_without_the_run_in_it(tworoom_data, tmp_path):
    """A readable torch file that is not a trainer state (another tool's, or a hand-made one) is a UserError too."""
    import torch

    from paperclub.worldmodel.train import TRAINER_STATE

    torch.save({"steps_done": 3}, tmp_path / TRAINER_STATE)
    with pytest.raises(UserError, match=r"trainer_state.pt is corrupt \(it lacks elapsed_s, evals"):
        train(preset("tiny"), TrainConfig(steps=2, batch_size=4), tworoom_data, tmp_path, progress=False, resume=True)
