"""Shared fixtures of the speculative-decoding tests."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import make_pair


@pytest.fixture(scope="module")
def models():
    """(target, draft): a tiny random target and a perturbed copy that agrees with it often, not always."""
    _, target, _ = make_pair("smollm2-tied")
    draft = copy.deepcopy(target)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.03)
    return target, draft
