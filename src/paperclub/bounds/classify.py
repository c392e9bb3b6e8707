"""Certify a compressed image classifier: decode it, measure its errors, bound its true error.

The bound covers the distribution the training set was drawn from: with label noise, that is the noisy-label
distribution, so `test_error` is measured on test labels randomized the same way (another seed), and
`test_error_clean` on the original ones.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from paperclub.bounds.bounds import certify
from paperclub.bounds.compress import Compressed
from paperclub.bounds.data import ImageData, randomize_labels
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
    y_train = training_labels(data, label_noise)
    y_test = randomize_labels(data.y_test, label_noise, data.num_classes, TEST_NOISE_SEED)
    train_error = error_rate(model, data.x_train, y_train)
    test_error = error_rate(model, data.x_test, y_test)
    bits = compressed.bits()
    cert = certify(train_error, bits["total"], len(y_train), delta)
    return {
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
        "prior": "data-independent",
        "subspace": asdict(compressed.subspace),
        "num_params": model.num_params,
        "levels": compressed.encoded.levels,
    }
