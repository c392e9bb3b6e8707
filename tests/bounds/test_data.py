"""Fashion-MNIST from Debian's package, label noise, and the errors a missing or damaged copy gets."""

from __future__ import annotations

import gzip

import pytest
import torch

from paperclub.bounds.data import DEBIAN_DIR, FILES, load_dataset, load_fashion_mnist, randomize_labels, read_idx
from paperclub.errors import UserError

needs_data = pytest.mark.skipif(not (DEBIAN_DIR / FILES["y_test"]).is_file(),
                                reason="apt-get install dataset-fashion-mnist")


@needs_data
def test_the_real_data_set_loads_balanced():
    data = load_fashion_mnist()
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    assert torch.equal(torch.bincount(data.y_train), torch.full((10,), 6000))  # 6,000 per class by construction
    assert torch.equal(torch.bincount(data.y_test), torch.full((10,), 1000))


def test_label_noise_replaces_the_asked_fraction_reproducibly():
    y = torch.arange(10).repeat(1000)
    assert torch.equal(randomize_labels(y, 0.0, 10, 0), y)
    half = randomize_labels(y, 0.5, 10, 0)
    assert torch.equal(half, randomize_labels(y, 0.5, 10, 0))
    changed = (half != y).float().mean().item()
    assert abs(changed - 0.45) < 0.02  # half replaced, a tenth of those by chance with the true class
    full = randomize_labels(y, 1.0, 10, 0)
    assert abs((full != y).float().mean().item() - 0.9) < 0.02
    with pytest.raises(UserError, match="label-noise"):
        randomize_labels(y, 1.5, 10, 0)


def test_a_missing_or_damaged_copy_gets_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERCLUB_FASHION_MNIST", str(tmp_path))
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("cifar-10")
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0"))
    with pytest.raises(UserError, match="truncated"):
        read_idx(bad)
    bad.write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a readable"):
        read_idx(bad)
