"""A tiny corpus (Python's `email` package: 29 files) shared by the scaling tests."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from paperclub.scaling.corpus import CorpusConfig, load_corpus, prepare_corpus

EMAIL = str(Path(sysconfig.get_paths()["stdlib"]) / "email")
TINY = CorpusConfig(source=EMAIL, vocab_size=320, val_fraction=0.2)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "email"
    prepare_corpus(root, TINY)
    return load_corpus(root)
