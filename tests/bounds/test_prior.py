"""The data-dependent prior: theta0 trained on one part of the training set, the bound taken on the other."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from paperclub.bounds import checkpoint
from paperclub.bounds.bounds import certify
from paperclub.bounds.classify import evaluate
from paperclub.bounds.compress import TrainConfig, train_compressed
from paperclub.bounds.data import ImageData
from paperclub.bounds.prior import FILE, PriorConfig, split, train_prior
from paperclub.bounds.subspace import NetConfig, error_rate
from paperclub.errors import UserError
from tests.bounds.conftest import separable_images

TINY = NetConfig(channels=(4, 8), hidden=16, num_classes=2)


def test_split_partitions_the_training_set_from_its_seed_alone():
    a, b = split(1000, PriorConfig(fraction=0.3, split_seed=4))
    assert len(a) == 300 and len(b) == 700
    assert torch.equal(torch.sort(torch.cat([a, b])).values, torch.arange(1000))
    a2, _ = split(1000, PriorConfig(fraction=0.3, split_seed=4))
    a3, _ = split(1000, PriorConfig(fraction=0.3, split_seed=5))
    assert torch.equal(a, a2) and not torch.equal(a, a3)
    with pytest.raises(UserError, match="fraction"):
        split(1000, PriorConfig(fraction=1.0))
    with pytest.raises(UserError, match="empty"):
        split(3, PriorConfig(fraction=0.1))


@pytest.fixture(scope="module")
def data():
    """Two separable classes: 800 training images, 200 test."""
    x, y = separable_images(1000, seed=1)
    return ImageData(x[:800], y[:800], x[800:], y[800:], num_classes=2)


@pytest.fixture(scope="module")
def with_prior(data):
    pcfg = PriorConfig(fraction=0.5, split_seed=2, epochs=3, batch_size=32, lr=3e-3)
    prior_idx, bound_idx = split(len(data.x_train), pcfg)
    prior = train_prior(data.x_train[prior_idx], data.y_train[prior_idx], TINY, pcfg, progress=False)
    cfg = TrainConfig(dim=20, levels=3, epochs=2, qat_epochs=1, lr=0.05, batch_size=32, net=TINY)
    return prior, train_compressed(data.x_train[bound_idx], data.y_train[bound_idx], cfg, progress=False,
                                   prior=prior), bound_idx


def test_the_prior_learns_and_the_posterior_sits_around_it(data, with_prior):
    prior, compressed, bound_idx = with_prior
    model = compressed.model()
    assert torch.equal(model.theta0, prior.theta0)
    x, y = data.x_train[bound_idx], data.y_train[bound_idx]
    assert error_rate(model, x, y, w=torch.zeros(20)) < 0.1  # theta0 alone already classifies the unseen part


def test_the_bound_counts_only_the_examples_the_prior_never_saw(tmp_path, data, with_prior):
    _, compressed, bound_idx = with_prior
    r = evaluate(compressed, data, 0.0)
    assert r["n_train"] == len(bound_idx) == 400
    assert r["prior"].startswith("data-dependent (theta0 trained on 400")
    train_error = error_rate(compressed.model(), data.x_train[bound_idx], data.y_train[bound_idx])
    assert r["train_error"] == train_error
    assert r["bound_error"] == certify(train_error, compressed.bits()["total"], 400).bound_error
    assert r["bound_error"] >= r["train_error"]
    e0 = error_rate(compressed.model(), data.x_train[bound_idx], data.y_train[bound_idx], w=torch.zeros(20))
    assert r["theta0_alone"]["train_error"] == e0 and r["theta0_alone"]["bits"] == 1.0  # search space 1, + 1 bit
    assert r["theta0_alone"]["bound_error"] == certify(e0, 1.0, 400).bound_error


def test_a_checkpoint_keeps_its_prior_and_refuses_a_missing_or_foreign_one(tmp_path, data, with_prior):
    prior, compressed, _ = with_prior
    folder = tmp_path / "ck"
    checkpoint.save(folder, compressed, {"dataset": "toy", "label_noise": 0.0})
    obj = json.loads((folder / checkpoint.FILE).read_text())
    assert obj["prior"]["file"] == FILE and obj["prior"]["fraction"] == 0.5 and obj["prior"]["split_seed"] == 2
    loaded, _ = checkpoint.load(folder)
    assert torch.equal(loaded.prior.theta0, prior.theta0) and loaded.prior.cfg == prior.cfg
    with torch.no_grad():
        assert torch.equal(loaded.model()(data.x_test), compressed.model()(data.x_test))
    assert evaluate(loaded, data, 0.0) == evaluate(compressed, data, 0.0)

    save_file({"theta0": prior.theta0[:-1].contiguous()}, str(folder / FILE))
    with pytest.raises(UserError, match="another architecture"):
        checkpoint.load(folder)
    (folder / FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="corrupt"):
        checkpoint.load(folder)
    (folder / FILE).unlink()
    with pytest.raises(UserError, match="missing"):
        checkpoint.load(folder)

    # saving a data-independent model into the folder removes the stale prior beside it
    checkpoint.save(folder, compressed, {})
    assert (folder / FILE).is_file()
    compressed.prior, kept = None, compressed.prior
    try:
        checkpoint.save(folder, compressed, {})
    finally:
        compressed.prior = kept
    assert not (folder / FILE).exists() and checkpoint.load(folder)[0].prior is None
