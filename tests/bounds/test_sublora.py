"""SubLoRA: the merged model is theta0 + B A per matrix with the adapter a0 + P w, the coded message is w alone and
decodes to the model that is scored, and `bounds lm --train --sublora-dim` trains, certifies and recertifies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from paperclub.bounds import lm_message, sublora
from paperclub.bounds.cli import load_lm
from paperclub.bounds.coding import decode
from paperclub.bounds.lm_train import LMTrainConfig
from paperclub.cli import main
from paperclub.errors import UserError
from tests.bounds.test_lm import V, make_corpus

CONFIG = LMTrainConfig(hidden=32, layers=1, seq_len=16, levels=5, search_space=2).model_config(V)


def test_the_merged_weights_are_theta0_plus_the_low_rank_update():
    cfg = sublora.SubLoRAConfig(rank=2, dim=64, projector="dense", seed=3)
    m = sublora.SubLoRALM(CONFIG, cfg)
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(v, m.base[n]) for n, v in m.merged(torch.zeros(64)).items())  # B = 0: the update is 0
    a = m.a0 + m.projector.P @ w  # the adapter by hand, in layout order
    merged, i = m.merged(w), 0
    for name, shape in m.layout:
        if len(shape) == 2:
            out_dim, in_dim = shape
            A = a[i: i + 2 * in_dim].view(2, in_dim)
            B = a[i + 2 * in_dim: i + 2 * in_dim + 2 * out_dim].view(out_dim, 2)
            torch.testing.assert_close(merged[name], m.base[name] + B @ A)
            assert torch.linalg.matrix_rank(merged[name] - m.base[name]) <= 2
            i += 2 * in_dim + 2 * out_dim
        else:
            torch.testing.assert_close(merged[name], m.base[name] + a[i: i + shape.numel()].view(shape))
            i += shape.numel()
    assert i == m.adapter_size
    # theta0 comes from the seed alone: another instance with the same config merges to the same weights
    again = sublora.SubLoRALM(CONFIG, cfg).merged(w)
    assert all(torch.equal(again[n], v) for n, v in merged.items())


def test_the_coded_w_decodes_to_the_model_that_is_scored(tmp_path):
    m = sublora.SubLoRALM(CONFIG, sublora.SubLoRAConfig(rank=2, dim=96, seed=1))
    with torch.no_grad():
        m.w.normal_(generator=torch.Generator().manual_seed(2))
    lm = LMTrainConfig(hidden=32, layers=1, seq_len=16, levels=5, search_space=2)
    compressed = sublora.quantize_sublora(m, None, lm)
    sublora.save(tmp_path, compressed, {"corpus_fingerprint": "x"})
    loaded, meta = load_lm(tmp_path)  # what `bounds lm --ckpt` loads: the format picks the loader
    assert isinstance(loaded, sublora.CompressedSubLoRA) and meta == {"corpus_fingerprint": "x"}
    with pytest.raises(UserError, match="not a compressed language model"):
        lm_message.load(tmp_path)
    assert loaded.bits() == compressed.bits() and compressed.bits()["search"] == 1.0
    assert loaded.num_params() == 96 and compressed.bits()["tensors"] >= 32 * len(compressed.w.stream)
    indices, centres = decode(compressed.w)
    w = torch.from_numpy(centres.astype(np.float32))[torch.from_numpy(indices)]
    assert len(np.unique(indices)) <= 5 and torch.equal(loaded.decoded_w(), w)
    tokens = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(4))
    scored = loaded.model(max_positions=16)
    want = m(tokens, w)
    torch.testing.assert_close(scored.logits(scored.causal_forward(tokens)), want, rtol=1e-5, atol=1e-5)


def test_bad_sublora_settings_are_refused(tmp_path, capsys):
    with pytest.raises(UserError, match="exceeds the adapter"):
        sublora.SubLoRALM(CONFIG, sublora.SubLoRAConfig(rank=1, dim=10**7))
    with pytest.raises(UserError, match="rank >= 1"):
        sublora.SubLoRAConfig(rank=0).check()
    corpus = make_corpus(tmp_path / "corpus")
    assert main(["bounds", "lm", "--corpus", str(corpus), "--quiet", "--sublora-dim", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "add --train" in err[0]


def test_lm_trains_a_sublora_model_certifies_and_recertifies_it(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    args = ["bounds", "lm", "--corpus", str(corpus), "--threads", "1", "--quiet"]
    out = tmp_path / "r.json"
    assert main([*args, "--train", "--sublora-dim", "512", "--sublora-rank", "4", "--hidden", "32", "--layers", "1",
                 "--seq-len", "32", "--tokens", "60000", "--levels", "8", "--save", str(tmp_path / "ckpt"),
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["model"]["compression"] == "sublora" and r["model"]["sublora"]["dim"] == 512
    assert r["num_params"] == 512 and r["compressed_bits"] < 512 * 8 + 2000  # w alone is coded
    assert r["train_smoothed_bits_per_token"] < r["bound_bits_per_token"] < r["vacuous_bits_per_token"]
    assert r["train_bits_per_token"] < 4.0  # 512 numbers learn the pattern (uniform: 6 bits)
    again = tmp_path / "again.json"
    assert main([*args, "--ckpt", str(tmp_path / "ckpt"), "--json", str(again)]) == 0
    assert json.loads(again.read_text())["bound_bits_per_token"] == r["bound_bits_per_token"]
