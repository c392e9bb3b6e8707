"""`paperclub distill --arch head`: a feature draft head trained end to end on a tiny target, used by the engine."""

from __future__ import annotations

import json

import pytest
import torch

from paperclub.cli import main
from paperclub.distill.head_train import measure_acceptance
from paperclub.engine.llm import LLM
from paperclub.engine.sampling import SamplingParams
from paperclub.errors import UserError
from paperclub.models.draft_head import init_head, is_head_dir, load_head
from paperclub.models.loader import load_model
from paperclub.models.tokenizer import Tokenizer
from tests.distill.test_train import DISTILL, target_dir, write_prompts  # noqa: F401 (target_dir: a fixture)


@pytest.fixture(scope="module")
def head_run(tmp_path_factory, target_dir):  # noqa: F811
    root = tmp_path_factory.mktemp("head")
    prompts = write_prompts(root / "prompts.jsonl", n=120)
    out = root / "head"
    argv = ["distill", "--arch", "head", "--target", str(target_dir), "--out", str(out), "--prompts", str(prompts),
            *DISTILL, "--steps", "300", "--unroll", "2"]
    assert main(argv) == 0
    return out


def test_trained_head_beats_an_untrained_one_in_real_speculative_decoding(head_run, target_dir):  # noqa: F811
    saved = json.loads((head_run / "acceptance.json").read_text())
    assert saved["arch"] == "head" and saved["layers"] == 1
    greedy = saved["acceptance"]["T=0"]
    assert greedy["k"] == 5 and greedy["prompts"] == 18 and greedy["num_drafts"] > 0
    assert is_head_dir(head_run) and (head_run / "tokenizer.json").is_file()
    assert not [p.name for p in head_run.iterdir() if p.name.startswith(".")]
    tok = Tokenizer.from_dir(target_dir)
    target = load_model(target_dir, dtype=torch.bfloat16)
    prompts = [tok.encode(json.loads(x)["prompt"]) for x in
               (head_run / "work" / "eval_prompts.jsonl").read_text().splitlines()]
    trained = load_head(head_run, target)
    untrained = init_head(target, trained.vocab_ids, 1).eval().requires_grad_(False)
    a = measure_acceptance(target, trained, prompts, 5, 128)
    b = measure_acceptance(target, untrained, prompts, 5, 128)
    assert a["mean_acceptance_length"] == pytest.approx(greedy["mean_acceptance_length"])
    assert a["mean_acceptance_length"] > b["mean_acceptance_length"] + 0.3, (a, b)


def test_llm_drafts_with_a_head_and_keeps_ar_output(head_run, target_dir):  # noqa: F811
    prompts = ["w1 w2 w3", "w7 w7 w9 w10 w11"]
    params = SamplingParams(max_tokens=30, ignore_eos=True)
    ar = LLM(model=str(target_dir), mode="ar", device="cpu", dtype="float32").generate(prompts, params)
    llm = LLM(model=str(target_dir), draft=str(head_run), mode="sd", k=4, device="cpu", dtype="float32")
    sd = llm.generate(prompts, params)
    assert [o.token_ids for o in sd] == [o.token_ids for o in ar]
    assert sd[0].metrics["mean_acceptance_length"] > 1.0
    with pytest.raises(UserError, match="draft head"):
        LLM(model=str(target_dir), draft=str(head_run), mode="ssd", device="cpu")
    with pytest.raises(UserError, match="draft head"):
        LLM(model=str(target_dir), draft=f"ngram+{head_run}", mode="sd", device="cpu")


def test_bad_head_options_are_one_line_errors(tmp_path, target_dir, capsys):  # noqa: F811
    prompts = write_prompts(tmp_path / "p.jsonl", n=8)
    base = ["distill", "--target", str(target_dir), "--prompts", str(prompts), *DISTILL]
    assert main([*base, "--out", str(tmp_path / "a"), "--arch", "head", "--reg-weight", "-1"]) == 2
    assert "--reg-weight" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c"), "--arch", "head", "--unroll", "0"]) == 2
    assert "--unroll must be in [1, 8]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path / "b"), "--arch", "eagle"])


def test_reuse_data_links_the_features_instead_of_recomputing_them(head_run, tmp_path, target_dir):  # noqa: F811
    out = tmp_path / "again"
    argv = ["distill", "--arch", "head", "--target", str(target_dir), "--out", str(out), "--prompts",
            str(head_run.parent / "prompts.jsonl"), *DISTILL, "--steps", "5", "--reuse-data", str(head_run)]
    assert main(argv) == 0
    theirs = {p.name: p.stat().st_ino for p in (head_run / "work" / "features").iterdir()}
    mine = {p.name: p.stat().st_ino for p in (out / "work" / "features").iterdir()}
    assert mine and mine == theirs  # the same files (hard links), named by the chunks' contents


def test_a_checkpoint_resumes_after_the_modules_are_declared_in_another_order(tmp_path):
    """The optimizer state follows the parameters by name, not by position."""
    from paperclub.distill.train import TrainState, load_checkpoint, save_checkpoint

    class Two(torch.nn.Module):
        def __init__(self, flip: bool):
            super().__init__()
            names = ("b", "a") if flip else ("a", "b")
            for n in names:
                self.register_parameter(n, torch.nn.Parameter(torch.randn(3 if n == "a" else 5)))
            self.register_buffer("vocab_ids", torch.arange(2))

    first = Two(flip=False)
    opt = torch.optim.AdamW(first.parameters(), lr=0.1)
    (first.a.sum() + 2 * first.b.sum()).backward()
    opt.step()
    save_checkpoint(tmp_path / "ck.pt", first, opt, TrainState(step=1))
    second = Two(flip=True)
    opt2 = torch.optim.AdamW(second.parameters(), lr=0.1)
    assert load_checkpoint(tmp_path / "ck.pt", second, opt2).step == 1
    for name in ("a", "b"):
        want = opt.state[getattr(first, name)]["exp_avg"]
        assert torch.equal(opt2.state[getattr(second, name)]["exp_avg"], want)
        assert torch.equal(getattr(second, name), getattr(first, name))
