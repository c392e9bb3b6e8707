"""The token-level language-model bound: its formula by hand, the scorer against a direct computation, the coded
model round trip, and `paperclub bounds lm` end to end on a small corpus, with its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paperclub.bounds import lm_message
from paperclub.bounds.coding import decode
from paperclub.bounds.lm_certify import LMCorpus, load_corpus, score
from paperclub.bounds.lm_train import LMTrainConfig, quantize_lm
from paperclub.bounds.token_bound import certify_tokens, loss_range
from paperclub.cli import main
from paperclub.errors import UserError
from paperclub.models.llama import Llama

V = 64


def test_the_bound_matches_a_hand_computed_value():
    # every token scored: 5.0 + log2(1 + 0.9 * 2048 / 0.1) * sqrt((1000 ln 2 + ln(1 / 0.05)) / (2 * 10^6))
    cert = certify_tokens({0.1: 5.0}, 0.4, 1000, 2048, 10**6, 10**6, 0.05)
    assert cert.bound_bits_per_token == pytest.approx(5.0 + math.log2(18433) * math.sqrt(
        (693.1471805599453 + 2.995732273553991) / 2e6), rel=1e-12)
    assert cert.bound_top1_error == pytest.approx(0.4 + math.sqrt((693.1471805599453 + 2.995732273553991) / 2e6))
    # a sample of 10^4 of them: delta halves between the martingale and Hoeffding's sampling term
    sub = certify_tokens({0.1: 5.0}, 0.4, 1000, 2048, 10**6, 10**4, 0.05)
    ln40 = math.log(40)
    assert sub.bound_bits_per_token == pytest.approx(5.0 + math.log2(18433) * (
        math.sqrt((1000 * math.log(2) + ln40) / 2e6) + math.sqrt(ln40 / 2e4)), rel=1e-12)


def test_the_smoothing_grid_is_paid_for():
    alone = certify_tokens({0.1: 5.0}, 0.4, 1000, 2048, 10**6, 10**6, 0.05)
    among = certify_tokens({0.1: 5.0, 0.01: 9.0, 0.5: 9.0}, 0.4, 1000, 2048, 10**6, 10**6, 0.05)
    assert among.alpha == 0.1 and among.bound_bits_per_token > alone.bound_bits_per_token  # delta / 3 for each
    assert among.bound_bits_per_token == pytest.approx(5.0 + math.log2(18433) * math.sqrt(
        (1000 * math.log(2) + math.log(3 / 0.05)) / 2e6))


@pytest.mark.parametrize("kwargs, message", [
    ({"delta": 0.0}, "delta"), ({"delta": 1.0}, "delta"), ({"n_sample": 0}, "evaluated"),
    ({"n_sample": 11}, "evaluated"), ({"bits": -1.0}, "description length"),
])
def test_bad_arguments_are_refused(kwargs, message):
    args = {"smoothed_bits": {0.1: 3.0}, "top1_error": 0.5, "bits": 10.0, "vocab_size": V, "n_train": 10,
            "n_sample": 10, "delta": 0.05} | kwargs
    with pytest.raises(UserError, match=message):
        certify_tokens(**args)


@settings(max_examples=200, deadline=None)
@given(p=st.floats(0.0, 1.0), alpha=st.sampled_from([0.001, 0.01, 0.1, 0.5, 0.9]), vocab=st.integers(2, 200_000))
def test_the_smoothed_loss_stays_in_its_range(p, alpha, vocab):
    loss = -math.log2((1 - alpha) * p + alpha / vocab)
    low = -math.log2(1 - alpha + alpha / vocab)
    assert low - 1e-9 <= loss <= low + loss_range(alpha, vocab) + 1e-9


def tiny_model(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(LMTrainConfig(hidden=32, layers=1, seq_len=16).model_config(V)).float()
    for p in model.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.5)
    return model.eval().requires_grad_(False)


def direct_losses(model: Llama, tokens: np.ndarray, seq_len: int, alpha: float):
    """Each position's loss from its own forward pass over the tokens before it in its window."""
    out = []
    for i in range(1, len(tokens)):
        start = (i - 1) // seq_len * seq_len
        ctx = torch.from_numpy(tokens[start:i].astype(np.int64))[None]
        logits = model.logits(model.causal_forward(ctx))[0, -1].double()
        p = torch.softmax(logits, -1)[int(tokens[i])].item()
        out.append((-math.log2(p), -math.log2((1 - alpha) * p + alpha / V), int(logits.argmax() != tokens[i])))
    return np.array(out)


def test_the_scorer_agrees_with_one_forward_per_token():
    model = tiny_model()
    tokens = np.random.default_rng(0).integers(0, V, size=70).astype(np.uint16)  # 4 full windows and a short one
    direct = direct_losses(model, tokens, 16, 0.1)
    s = score(model, tokens, 16, batch=3, alphas=(0.1,))
    assert s.scored == 69
    assert s.bits_per_token == pytest.approx(direct[:, 0].mean(), rel=1e-5)
    assert s.smoothed_bits[0.1] == pytest.approx(direct[:, 1].mean(), rel=1e-5)
    assert s.top1_error == pytest.approx(direct[:, 2].mean())
    drawn = np.random.default_rng(5).integers(0, 69, size=40)  # the subsample: positions drawn with repeats
    sampled = score(model, tokens, 16, sample=40, seed=5, alphas=(0.1,))
    assert sampled.scored == 40
    assert sampled.smoothed_bits[0.1] == pytest.approx(direct[drawn, 1].mean(), rel=1e-5)


def test_the_coded_model_is_the_model_that_is_scored(tmp_path):
    model = tiny_model()
    compressed = quantize_lm(model, None, LMTrainConfig(hidden=32, layers=1, seq_len=16, levels=5, search_space=4))
    lm_message.save(tmp_path, compressed, {"corpus_fingerprint": "x"})
    loaded, meta = lm_message.load(tmp_path)
    assert meta == {"corpus_fingerprint": "x"}
    assert loaded.bits() == compressed.bits() and compressed.bits()["search"] == 2.0
    decoded = dict(loaded.model().named_parameters())
    for name, enc in compressed.tensors:
        indices, centres = decode(enc)
        assert len(np.unique(indices)) <= 5
        expected = torch.from_numpy(centres.astype(np.float32))[torch.from_numpy(indices)]
        assert torch.equal(decoded[name].reshape(-1), expected)
        # the quantized weight is the nearest float16 centre to the original one
        original = dict(model.named_parameters())[name].reshape(-1)
        assert (decoded[name].reshape(-1) - original).abs().max() <= (original.max() - original.min()) / 2
    # what is counted is the real message: 32 bits per stream word plus headers, counts and centres
    assert compressed.bits()["tensors"] >= sum(32 * len(enc.stream) for _, enc in compressed.tensors)


def test_broken_checkpoints_get_a_clear_error(tmp_path):
    compressed = quantize_lm(tiny_model(), None, LMTrainConfig(hidden=32, layers=1, seq_len=16, levels=3))
    file = lm_message.save(tmp_path, compressed, {})
    file.write_text(file.read_text()[:500])
    with pytest.raises(UserError, match="corrupt or truncated"):
        lm_message.load(tmp_path)
    with pytest.raises(UserError, match="no compressed language model"):
        lm_message.load(tmp_path / "missing")
    (tmp_path / "compressed.json").write_text('{"format": "paperclub-bounds-compressed/1"}')
    with pytest.raises(UserError, match="not a compressed language model"):
        lm_message.load(tmp_path)
    wider = LMTrainConfig(hidden=64, layers=1, seq_len=16).model_config(V)
    with pytest.raises(UserError, match="another model"):
        lm_message.CompressedLM(wider, compressed.tensors[:3])


def make_corpus(root: Path, fingerprint: str = "abc") -> Path:
    """A corpus a small model can learn: a repeating pattern with noise, in the layout `scaling prepare` writes."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, n in (("train", 40_000), ("val", 4_000)):
        base = np.arange(n) % 7 + 1
        noise = rng.random(n) < 0.1
        splits[split] = np.where(noise, rng.integers(0, V, n), base).astype(np.uint16)
        splits[split].tofile(root / f"{split}.u16")
    (root / "corpus.json").write_text(json.dumps({"vocab_size": V, "fingerprint": fingerprint,
                                                  "tokens": {s: len(a) for s, a in splits.items()}}))
    return root


def test_lm_trains_certifies_and_recertifies_from_its_checkpoint(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    args = ["bounds", "lm", "--corpus", str(corpus), "--threads", "1", "--quiet"]
    out = tmp_path / "r.json"
    assert main([*args, "--train", "--hidden", "32", "--layers", "1", "--seq-len", "32", "--tokens", "60000",
                 "--levels", "4", "--lr", "0.01", "--save", str(tmp_path / "ckpt"), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("bound_bits_per_token", "bound_top1_error", "test_bits_per_token"):
        assert key in r, key
    assert r["n_train"] == 39_999 and r["n_evaluated"] == 39_999 and r["vacuous_bits_per_token"] == 6.0
    assert r["train_smoothed_bits_per_token"] < r["bound_bits_per_token"]
    assert r["train_top1_error"] < r["bound_top1_error"] <= 1.0
    assert r["train_bits_per_token"] < 3.0  # it learned the pattern (uniform would be 6 bits)
    assert "bound" in capsys.readouterr().out
    again = tmp_path / "again.json"
    assert main([*args, "--ckpt", str(tmp_path / "ckpt"), "--json", str(again)]) == 0
    r2 = json.loads(again.read_text())
    assert r2["bound_bits_per_token"] == r["bound_bits_per_token"] and r2["seq_len"] == 32


def test_lm_refuses_another_corpus_and_bad_input_with_one_line(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    compressed = quantize_lm(tiny_model(), None, LMTrainConfig(hidden=32, layers=1, seq_len=16, levels=3))
    lm_message.save(tmp_path / "ckpt", compressed, {"corpus_fingerprint": "other", "seq_len": 16})
    cases = [
        (["--ckpt", str(tmp_path / "ckpt")], "trained on corpus other"),
        (["--corpus", str(tmp_path / "nothing")], "scaling prepare"),
        (["--delta", "1.5"], "--delta"),
        (["--train", "--hidden", "48"], "hidden 48"),
    ]
    for argv, message in cases:
        base = ["bounds", "lm", "--corpus", str(corpus), "--quiet", "--threads", "1"]
        assert main([*base, *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    (corpus / "val.u16").write_bytes(b"\0\0")
    with pytest.raises(UserError, match="truncated"):
        load_corpus(corpus)


def test_a_model_for_another_vocabulary_is_refused(tmp_path):
    from paperclub.bounds.lm_certify import certify_lm

    compressed = quantize_lm(tiny_model(), None, LMTrainConfig(hidden=32, layers=1, seq_len=16, levels=3))
    corpus = LMCorpus(tmp_path, np.zeros(100, np.uint16), np.zeros(100, np.uint16), 128, "f")
    with pytest.raises(UserError, match="vocabulary of 128"):
        certify_lm(compressed, corpus, 16)


def test_the_shipped_language_model_decodes_to_its_architecture():
    from paperclub.bounds.cli import SHIPPED_LM

    compressed, meta = lm_message.load(SHIPPED_LM)
    assert meta["corpus_fingerprint"] and meta["seq_len"] == 128
    assert compressed.config.vocab_size == 2048 and compressed.config.tie_word_embeddings
    assert compressed.num_params() == sum(p.numel() for p in compressed.model().parameters())
    assert compressed.bits()["total"] < 8 * (SHIPPED_LM / "compressed.json").stat().st_size  # base64 and JSON


@pytest.mark.slow
def test_the_shipped_language_model_bound_is_non_vacuous(tmp_path):
    """On the corpus `scaling prepare` makes from this Python's standard library (minutes)."""
    from paperclub.bounds.cli import SHIPPED_LM

    _, meta = lm_message.load(SHIPPED_LM)
    assert main(["scaling", "prepare", "--out", str(tmp_path / "corpus")]) == 0
    if load_corpus(tmp_path / "corpus").fingerprint != meta["corpus_fingerprint"]:
        pytest.skip("this Python's standard library is not the one the shipped model was trained on")
    out = tmp_path / "r.json"
    assert main(["bounds", "lm", "--corpus", str(tmp_path / "corpus"), "--eval-tokens", "20000", "--quiet",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["bound_bits_per_token"] < r["vacuous_bits_per_token"] and r["bound_top1_error"] < 1.0
    assert r["train_smoothed_bits_per_token"] < r["bound_bits_per_token"]


def test_lm_quantizes_a_hugging_face_model_trained_on_the_corpus(tmp_path):
    from paperclub.models.hf_export import save_hf_model

    corpus = make_corpus(tmp_path / "corpus")
    model = tiny_model()
    save_hf_model(model, tmp_path / "hf", {})
    out = tmp_path / "q.json"
    assert main(["bounds", "lm", "--corpus", str(corpus), "--ckpt", str(tmp_path / "hf"), "--levels", "6",
                 "--seq-len", "16", "--tokens", "20000", "--save", str(tmp_path / "q"), "--json", str(out),
                 "--quiet", "--threads", "1"]) == 0
    compressed, meta = lm_message.load(tmp_path / "q")
    assert meta["source"] == str(tmp_path / "hf") and meta["seq_len"] == 16
    assert all(enc.levels == 6 for _, enc in compressed.tensors)
    assert [n for n, _ in compressed.tensors] == [n for n, _ in model.named_parameters()]
    assert json.loads(out.read_text())["compressed_bits"] == compressed.bits()["total"]
