"""Fashion-MNIST, read from Debian's `dataset-fashion-mnist` package (IDX files, no download), with optional
label noise: a fixed fraction of the training labels replaced by uniformly random classes."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from paperclub.errors import UserError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
DATASETS = ("fashion-mnist",)
NUM_CLASSES = 10


@dataclass(frozen=True)
class ImageData:
    """Images as float32 in [0, 1], shape (n, 1, 28, 28); labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = NUM_CLASSES


def data_dir() -> Path:
    """`$PAPERCLUB_FASHION_MNIST`, or Debian's package folder."""
    env = os.environ.get("PAPERCLUB_FASHION_MNIST")
    return Path(env).expanduser() if env else DEBIAN_DIR


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped): a magic number naming the element type and rank, the dimensions, then the data."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise UserError(f"{path} is not a readable gzipped IDX file ({e}); reinstall dataset-fashion-mnist") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes; reinstall dataset-fashion-mnist")
    rank = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path} holds {body.size} bytes for shape {dims}: truncated; reinstall dataset-fashion-mnist")
    return body.reshape(dims)


def load_fashion_mnist(root: Path | None = None) -> ImageData:
    root = root or data_dir()
    missing = [name for name in FILES.values() if not (root / name).is_file()]
    if missing:
        raise UserError(f"Fashion-MNIST not found in {root} (missing {missing[0]}): install it with "
                        "`apt-get install dataset-fashion-mnist`, or point PAPERCLUB_FASHION_MNIST at its files")
    a = {key: read_idx(root / name) for key, name in FILES.items()}
    if len(a["x_train"]) != len(a["y_train"]) or len(a["x_test"]) != len(a["y_test"]):
        raise UserError(f"Fashion-MNIST in {root}: images and labels differ in number")

    def images(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)

    return ImageData(images(a["x_train"]), torch.from_numpy(a["y_train"].astype(np.int64)),
                     images(a["x_test"]), torch.from_numpy(a["y_test"].astype(np.int64)))


def load_dataset(name: str) -> ImageData:
    if name != "fashion-mnist":
        raise UserError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return load_fashion_mnist()


def randomize_labels(labels: torch.Tensor, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """Replace `fraction` of the labels (a random subset of that size) by uniformly random classes; a replaced
    label may by chance equal the true one. The same (fraction, seed) always picks the same labels, so a bound
    computed later evaluates the data the model was trained on."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"--label-noise {fraction}: expected a fraction in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    chosen = torch.randperm(n, generator=g)[: round(fraction * n)]
    noisy = labels.clone()
    noisy[chosen] = torch.randint(num_classes, (len(chosen),), generator=g)
    return noisy
