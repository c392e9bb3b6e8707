"""`paperclub distill --average A,B`: the weighted mean of two drafts, exact per tensor, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from paperclub.cli import main
from paperclub.distill.soup import average_drafts
from paperclub.errors import UserError
from paperclub.models.draft import init_draft, load_draft, save_draft
from paperclub.models.loader import load_model
from tests.distill.test_train import target_dir  # noqa: F401 (a fixture)

VOCAB_IDS = torch.tensor([1, 3, 5, 8, 13, 21, 34, 55])


def make_draft(target, target_dir, path, seed, layers=2, vocab_ids=VOCAB_IDS):  # noqa: F811
    draft = init_draft(target, layers, vocab_ids, random_init=True, seed=seed)
    save_draft(draft, path, target_dir)
    return path


def test_the_average_is_the_weighted_mean_of_each_tensor_and_loads_as_a_draft(tmp_path, target_dir):  # noqa: F811
    target = load_model(target_dir)
    a, b = make_draft(target, target_dir, tmp_path / "a", 1), make_draft(target, target_dir, tmp_path / "b", 2)
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert main(["distill", "--average", f"{a},{b}", "--average-weight", "0.25", "--out", str(tmp_path / "s")]) == 0
    ts = load_file(str(tmp_path / "s" / "model.safetensors"))
    assert ts.keys() == ta.keys()
    for k, x in ta.items():
        if x.is_floating_point():
            want = (0.75 * x.float() + 0.25 * tb[k].float()).to(torch.bfloat16)
            assert ts[k].dtype == torch.bfloat16 and torch.equal(ts[k], want), k
        else:
            assert torch.equal(ts[k], x), k
    record = json.loads((tmp_path / "s" / "config.json").read_text())["paperclub_draft"]["averaged"]
    assert record == {"a": "a", "b": "b", "weight_b": 0.25}
    loaded = load_draft(tmp_path / "s", target)
    assert torch.equal(loaded.vocab_ids.cpu(), VOCAB_IDS)
    for w, same in [(0.0, ta), (1.0, tb)]:  # the ends are the parents, bit for bit
        out = tmp_path / f"end{w}"
        average_drafts(a, b, w, out)
        got = load_file(str(out / "model.safetensors"))
        assert all(torch.equal(got[k], same[k]) for k in same)


def test_drafts_that_cannot_be_averaged_are_one_line_errors(tmp_path, target_dir, capsys):  # noqa: F811
    target = load_model(target_dir)
    a = make_draft(target, target_dir, tmp_path / "a", 1)
    deeper = make_draft(target, target_dir, tmp_path / "deeper", 2, layers=3)
    other_vocab = make_draft(target, target_dir, tmp_path / "ov", 3,
                             vocab_ids=torch.tensor([1, 2, 5, 8, 13, 21, 34, 55]))
    with pytest.raises(UserError, match="num_hidden_layers"):
        average_drafts(a, deeper, 0.5, tmp_path / "x")
    with pytest.raises(UserError, match="cannot be averaged"):
        average_drafts(a, other_vocab, 0.5, tmp_path / "y")
    with pytest.raises(UserError, match="not a draft directory"):
        average_drafts(a, target_dir, 0.5, tmp_path / "z")
    assert not any((tmp_path / n).exists() for n in "xyz")  # nothing half-written is left
    for out, args, msg in [("fresh", ["--average-weight", "1.5"], "--average-weight must be in [0, 1]"),
                           ("a", [], "output directory")]:
        assert main(["distill", "--average", f"{a},{a}", "--out", str(tmp_path / out), *args]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1
    assert main(["distill", "--average", str(a), "--out", str(tmp_path / "w")]) == 2
    assert "two draft directories" in capsys.readouterr().err
