"""Certify a compressed image classifier: decode it, measure its errors, bound its true error.

The bound covers the distribution the training set was drawn from: with label noise, that is the noisy-label
distribution, so `test_error` is measured on test labels randomized the same way (another seed), and
`test_error_clean` on the original ones. With a data-dependent prior the training error and n are those of the
bound part of the training set only (`prior.split`), and `prior` says so.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from paperclub.bounds.bounds import certify
from paperclub.bounds.compress import Compressed
from paperclub.bounds.data import ImageData, randomize_labels
from paperclub.bounds.prior import split
from paperclub.bounds.subspace import error_rate

SHIPPED = Path(__file__).parent / "checkpoints"
NOISE_SEED, TEST_NOISE_SEED = 0, 1


def shipped_checkpoint(dataset: str, label_noise: float) -> Path | None:
    """The checkpoint shipped for this dataset and noise level, if there is one."""
    path = SHIPPED / f"{dataset}-noise{label_noise:g}"
    return path if path.is_dir() else None


def training_labels(data: ImageData, label_noise: float):
    return randomize_labels(data.y_train, label_noise, data.num_classes, NOISE_SEED)


def evaluate(compressed: Compressed, data: ImageData, label_noise: float, delta: float = 0.05) -> dict:
    """The classify JSON: the bound and what it is made of."""
    model = compressed.model()
    x_train, y_train = data.x_train, training_labels(data, label_noise)
    prior = "data-independent"
    if compressed.prior is not None:
        prior_idx, bound_idx = split(len(x_train), compressed.prior.cfg)
        x_train, y_train = x_train[bound_idx], y_train[bound_idx]
        prior = f"data-dependent (theta0 trained on {len(prior_idx)} of the training images, not in n)"
    y_test = randomize_labels(data.y_test, label_noise, data.num_classes, TEST_NOISE_SEED)
    train_error = error_rate(model, x_train, y_train)
    test_error = error_rate(model, data.x_test, y_test)
    bits = compressed.bits()
    cert = certify(train_error, bits["total"], len(y_train), delta)
    result = {
        "bound_error": cert.bound_error,
        "bound": cert.bound,
        "train_error": train_error,
        "test_error": test_error,
        "test_error_clean": error_rate(model, data.x_test, data.y_test) if label_noise else test_error,
        "compressed_bits": bits["total"],
        "bits": bits,
        "n_train": len(y_train),
        "delta": delta,
        "bounds": {"occam": cert.occam, "mcallester": cert.mcallester, "catoni": cert.catoni,
                   "catoni_c": cert.catoni_c, "each_at_delta": delta / 3},
        "label_noise": label_noise,
        "prior": prior,
        "subspace": asdict(compressed.subspace),
        "num_params": model.num_params,
        "levels": compressed.encoded.levels,
    }
    if compressed.prior is not None:
        # The prior's own weights (w = 0) as a hypothesis of its own: the held-out bound the data-dependent prior
        # starts from; what the compressed w adds is the difference. Charged the search plus one bit, the price of
        # choosing between the two (quote the better one with that bit added to the other too).
        w0 = torch.zeros_like(model.w)
        e0, charge = error_rate(model, x_train, y_train, w=w0), bits["search"] + 1.0
        result["theta0_alone"] = {"train_error": e0, "test_error": error_rate(model, data.x_test, y_test, w=w0),
                                  "bound_error": certify(e0, charge, len(y_train), delta).bound_error, "bits": charge}
    return result
