"""Writing our Llama back as an HF folder (transformers is the oracle), and K such folders served as one
logit-averaging ensemble through the engine's KV-cache path."""

from __future__ import annotations

import copy

import pytest
import torch

from paperclub.engine.kv_cache import KVCache, causal_meta
from paperclub.errors import UserError
from paperclub.models.ensemble import LogitEnsemble, write_ensemble
from paperclub.models.hf_export import save_hf_model
from paperclub.models.loader import load_model
from tests.conftest import make_pair

transformers = pytest.importorskip("transformers")


def perturbed(model, seed: int):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return other


@pytest.mark.parametrize("arch", ["llama2", "smollm2-tied", "llama-attention-bias"])
def test_saved_folder_loads_in_transformers_and_back_with_the_same_logits(arch, tmp_path):
    _, ours, _ = make_pair(arch)
    save_hf_model(ours, tmp_path / "m", {})
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    again = load_model(tmp_path / "m")
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89]])
    with torch.no_grad():
        ref = hf(ids).logits[0]
        assert (ours.logits(ours.causal_forward(ids))[0] - ref).abs().max() < 1e-4
        assert (again.logits(again.causal_forward(ids))[0] - ref).abs().max() < 1e-4


def test_ensemble_folder_predicts_the_mean_of_its_members_logits_through_the_kv_cache(tmp_path):
    _, base, _ = make_pair("llama2")
    members = [base, perturbed(base, 1), perturbed(base, 2)]
    for i, m in enumerate(members):
        save_hf_model(m, tmp_path / f"m{i}", {})
    write_ensemble([tmp_path / f"m{i}" for i in range(3)], tmp_path / "ens")
    ens = load_model(tmp_path / "ens")
    assert isinstance(ens, LogitEnsemble) and ens.cfg.num_layers == 3 * base.cfg.num_layers
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        want = torch.stack([m.logits(m.causal_forward(ids)) for m in members]).mean(0)
        cache = KVCache(ens.cfg, "cpu", torch.float32, 32)  # the engine's cache: one layer list for all members
        cache.ensure(1, 32)
        meta, pos = causal_meta([0], [0], [8], "cpu")
        got = ens.logits(ens(ids, pos, cache.k, cache.v, meta))
        assert (got - want).abs().max() < 1e-4
        # one more token, decoded against the cache
        meta, pos = causal_meta([0], [8], [1], "cpu")
        step = ens.logits(ens(torch.tensor([[13]]), pos, cache.k, cache.v, meta))
        full = torch.cat([ids, torch.tensor([[13]])], 1)
        want = torch.stack([m.logits(m.causal_forward(full)) for m in members]).mean(0)[:, -1:]
        assert (step - want).abs().max() < 1e-4


def test_members_of_different_shapes_are_refused(tmp_path):
    _, a, _ = make_pair("llama2")
    _, b, _ = make_pair("smollm2-tied")
    save_hf_model(a, tmp_path / "a", {})
    save_hf_model(b, tmp_path / "b", {})
    with pytest.raises(UserError, match="share one config"):
        write_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ens")
