"""Projectors, quantization, and the whole compress -> save -> load -> certify path on a small problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from paperclub.bounds import checkpoint
from paperclub.bounds.bounds import certify
from paperclub.bounds.compress import TrainConfig, train_compressed
from paperclub.bounds.projectors import DenseProjector, KroneckerProjector, balanced_factors, make_projector
from paperclub.bounds.quantize import assign, kmeans_1d, straight_through
from paperclub.bounds.subspace import NetConfig, SubspaceNet, error_rate
from paperclub.errors import UserError
from tests.bounds.conftest import separable_images

TINY = NetConfig(channels=(4, 8), hidden=16)


def test_kronecker_applies_its_dense_matrix():
    p = KroneckerProjector(1000, 60, seed=3)
    w = torch.randn(60)
    assert torch.allclose(p(w), p.dense() @ w, atol=1e-5)
    assert (p.d1, p.d2) == balanced_factors(60) == (6, 10)


def test_projector_columns_have_unit_norm_on_average_and_come_from_the_seed():
    for kind in ("dense", "kronecker"):
        a, b = make_projector(kind, 20_000, 64, seed=7), make_projector(kind, 20_000, 64, seed=7)
        m = a.P if kind == "dense" else a.dense()
        norms = m.norm(dim=0)
        assert abs(norms.mean().item() - 1) < 0.05, kind  # E|column|^2 = 1; 20k rows keep the mean within 5%
        w = torch.randn(64)
        assert torch.equal(a(w), b(w))
        assert not torch.equal(a(w), make_projector(kind, 20_000, 64, seed=8)(w))


def test_bad_dimensions_and_kinds_are_refused():
    with pytest.raises(UserError, match="intrinsic dimension"):
        DenseProjector(10, 11, 0)
    with pytest.raises(UserError, match="unknown projector"):
        make_projector("fastfood", 10, 2, 0)


def test_kmeans_finds_three_clusters():
    g = torch.Generator().manual_seed(0)
    v = torch.cat([torch.randn(300, generator=g) * 0.01 + c for c in (-1.0, 0.0, 2.0)])
    c = kmeans_1d(v, 3)
    assert torch.allclose(c, torch.tensor([-1.0, 0.0, 2.0]), atol=0.01)
    assert torch.equal(torch.bincount(assign(v, c)), torch.tensor([300, 300, 300]))


def test_straight_through_quantizes_forward_and_passes_gradients():
    w = torch.tensor([-0.9, 0.1, 0.2, 1.7], requires_grad=True)
    c = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    q = straight_through(w, c)
    assert torch.equal(q.detach(), torch.tensor([-1.0, 0.0, 0.0, 2.0]))
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (q * g).sum().backward()
    assert torch.equal(w.grad, g)  # identity for w
    assert torch.equal(c.grad, torch.tensor([1.0, 5.0, 4.0]))  # summed per centre


def test_subspace_net_starts_at_theta0_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    net = SubspaceNet(TrainConfig(dim=50, net=TINY).subspace())
    assert torch.equal(torch.rand(1), before)
    assert torch.equal(net.theta(), net.theta0)
    assert net.num_params == sum(p.numel() for p in net.net.parameters())


@pytest.fixture(scope="module")
def toy_data():
    return separable_images(600, seed=0)


@pytest.fixture(scope="module")
def compressed(toy_data):
    x, y = toy_data
    cfg = TrainConfig(dim=40, levels=4, epochs=6, qat_epochs=1, lr=0.2, batch_size=64, net=TINY)
    return train_compressed(x, y, cfg, progress=False)


def test_a_compressed_model_learns_and_its_bound_holds_above_its_training_error(toy_data, compressed):
    x, y = toy_data
    model = compressed.model()
    train_error = error_rate(model, x, y)
    assert train_error < 0.1  # a separable problem: the 40-dimensional subspace model learns it
    bits = compressed.bits()
    assert 40 < bits["total"] < 40 * 2 + 200  # about 2 bits per weight for 4 levels, plus the fixed parts
    assert certify(train_error, bits["total"], len(y)).bound_error >= train_error


def test_save_load_round_trip_is_exact(tmp_path, toy_data, compressed):
    x, _ = toy_data
    checkpoint.save(tmp_path / "ck", compressed, {"dataset": "toy", "label_noise": 0.0})
    loaded, meta = checkpoint.load(tmp_path / "ck")
    assert meta == {"dataset": "toy", "label_noise": 0.0}
    assert torch.equal(loaded.weights(), compressed.weights())
    assert loaded.bits() == compressed.bits()
    with torch.no_grad():
        assert torch.equal(loaded.model()(x[:50]), compressed.model()(x[:50]))
    assert (tmp_path / "ck" / checkpoint.FILE).stat().st_size < 4096  # a few KB by construction


def test_corrupt_and_foreign_checkpoints_get_clear_errors(tmp_path, compressed):
    path = checkpoint.save(tmp_path / "ck", compressed, {})
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        checkpoint.load(tmp_path / "ck")
    obj = json.loads(text)
    path.write_text(json.dumps(obj | {"format": "something-else/1"}))
    with pytest.raises(UserError, match="not a compressed classifier"):
        checkpoint.load(tmp_path / "ck")
    bad_arch = obj | {"subspace": obj["subspace"] | {"net": obj["subspace"]["net"] | {"arch": "vit"}}}
    path.write_text(json.dumps(bad_arch))
    loaded, _ = checkpoint.load(tmp_path / "ck")
    with pytest.raises(UserError, match="unknown architecture"):
        loaded.model()
    stream = np.frombuffer(__import__("base64").b64decode(obj["stream_u32le"]), dtype="<u4")
    assert len(stream) > 0
    path.write_text(json.dumps(obj | {"counts": obj["counts"][:-1] + [obj["counts"][-1] + 1]}))
    with pytest.raises(UserError):
        checkpoint.load(tmp_path / "ck")
    with pytest.raises(UserError, match="no compressed classifier"):
        checkpoint.load(tmp_path / "nothing-here")
