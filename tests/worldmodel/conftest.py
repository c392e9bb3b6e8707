import numpy as np
import pytest
import torch

from paperclub.worldmodel.data import CollectConfig, collect, load
from paperclub.worldmodel.model import preset
from paperclub.worldmodel.train import TrainConfig, train

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tworoom_data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tworoom.h5"
    collect(CollectConfig(env="tworoom", episodes=10, steps=60, seed=3), path, progress=False)
    return path


@pytest.fixture(scope="session")
def tworoom_data(tworoom_data_path):
    return load(tworoom_data_path)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tworoom_data):
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    train(
        preset("tiny"),
        TrainConfig(steps=30, batch_size=16, sigreg_directions=64, eval_every=30, warmup=5),
        tworoom_data,
        out,
        progress=False,
    )
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)
