"""`paperclub distill` and drafts: end-to-end distillation on a tiny target, resume, load_draft, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from paperclub.cli import main
from paperclub.distill.acceptance import evaluate_acceptance
from paperclub.engine.runner import ModelRunner
from paperclub.errors import UserError
from paperclub.models.draft import check_draft_compatible, grow_draft, init_draft, load_draft, save_draft
from paperclub.models.loader import load_model

WORDS = [f"w{i}" for i in range(60)]
VOCAB = 72


def make_target(path: Path, seed: int = 0, **overrides) -> Path:
    """A tiny random Llama with a word-level tokenizer, as a Hugging Face directory."""
    path.mkdir(parents=True)
    hf = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=VOCAB, hidden_size=32,
              intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
              max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
              bos_token_id=None, eos_token_id=1)
    hf.update(overrides)
    (path / "config.json").write_text(json.dumps(hf))
    vocab = {"<unk>": 0, "<eos>": 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    g = torch.Generator().manual_seed(seed)
    d, f, L = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    q, kv = hf["num_attention_heads"] * hf["head_dim"], hf["num_key_value_heads"] * hf["head_dim"]
    t = {"model.embed_tokens.weight": torch.randn(hf["vocab_size"], d, generator=g),
         "lm_head.weight": torch.randn(hf["vocab_size"], d, generator=g) * 0.5, "model.norm.weight": torch.ones(d)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d),
                  "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, q),
                  "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f)}
        t |= {p + n: torch.randn(s, generator=g) * 0.2 for n, s in shapes.items()}
        t |= {p + "input_layernorm.weight": torch.ones(d), p + "post_attention_layernorm.weight": torch.ones(d)}
    save_file(t, str(path / "model.safetensors"))
    return path


def write_prompts(path: Path, n: int = 24, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        ids = torch.randint(0, len(WORDS), (int(torch.randint(3, 9, (1,), generator=g)),), generator=g)
        lines.append(json.dumps({"prompt": " ".join(WORDS[i] for i in ids.tolist())}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    return make_target(tmp_path_factory.mktemp("tiny") / "target")


DISTILL = ["--layers", "1", "--draft-vocab", "48", "--batch-size", "8", "--max-new-tokens", "24", "--threads", "1",
           "--lr", "3e-3"]


def distill(target: Path, out: Path, prompts: Path, *extra: str) -> int:
    return main(["distill", "--target", str(target), "--out", str(out), "--prompts", str(prompts), *DISTILL,
                 *extra])


def held_out(out: Path, target_dir: Path, draft_dir: Path | None = None, random_init: bool = False):
    """Greedy K=5 acceptance of the draft in `draft_dir` (or an untrained one) on the run's held-out prompts."""
    from paperclub.models.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(target_dir)
    target = load_model(target_dir, dtype=torch.bfloat16)  # as `paperclub distill` evaluates
    prompts = [json.loads(x)["prompt"] for x in (out / "work" / "eval_prompts.jsonl").read_text().splitlines()]
    ids = [tok.encode(p) for p in prompts]
    if draft_dir is None:
        vocab_ids = load_draft(out, target).vocab_ids
        draft = init_draft(target, 1, vocab_ids, random_init=random_init).eval().requires_grad_(False)
    else:
        draft = load_draft(draft_dir, target)
    return evaluate_acceptance(draft, target, ids, k=5, temperature=0.0, max_tokens=128, eos_ids={1})  # as the run


def test_distill_end_to_end_raises_acceptance_and_writes_a_loadable_draft(tmp_path, target_dir, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", n=40)
    out = tmp_path / "draft"
    assert distill(target_dir, out, prompts, "--steps", "150", "--init", "random") == 0
    summary = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "acceptance.json").read_text())
    assert saved["acceptance"] == summary["acceptance"]
    greedy = saved["acceptance"]["T=0"]
    assert greedy["k"] == 5 and greedy["prompts"] == 6  # 15% of 40 prompts held out
    assert 0.0 <= saved["acceptance"]["T=0.7"]["acceptance_rate"] <= 1.0
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / f).is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    # the trained draft beats an untrained one of the same shape on the held-out prompts
    untrained = held_out(out, target_dir, random_init=True)
    trained = held_out(out, target_dir, out)
    print(untrained, trained)
    assert trained.acceptance_rate == pytest.approx(greedy["acceptance_rate"])
    assert trained.acceptance_rate > untrained.acceptance_rate + 0.1
    assert trained.tokens_per_target_forward > untrained.tokens_per_target_forward


def test_resume_continues_an_interrupted_run(tmp_path, target_dir, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", n=16)
    out = tmp_path / "draft"
    assert distill(target_dir, out, prompts, "--steps", "20") == 0
    ck1 = torch.load(out / "work" / "checkpoint.pt", weights_only=True)
    assert ck1["state"]["step"] == 20
    assert distill(target_dir, out, prompts, "--steps", "20") == 2  # exists: no silent overwrite
    assert "exists: pass --resume" in capsys.readouterr().err
    assert distill(target_dir, out, prompts, "--steps", "35", "--resume") == 0
    ck2 = torch.load(out / "work" / "checkpoint.pt", weights_only=True)
    assert ck2["state"]["step"] == 35
    assert ck2["state"]["losses"][:20] == ck1["state"]["losses"]  # the first 20 steps were not redone
    # resuming from a checkpoint gives the same weights as an uninterrupted run of the same length
    straight = tmp_path / "straight"
    assert distill(target_dir, straight, prompts, "--steps", "35") == 0
    ck3 = torch.load(straight / "work" / "checkpoint.pt", weights_only=True)
    assert ck3["state"]["losses"] == ck2["state"]["losses"]
    for name, t in ck3["params"].items():
        torch.testing.assert_close(ck2["params"][name], t)
    assert distill(target_dir, out, prompts, "--steps", "35", "--resume", "--layers", "2") == 2
    assert "cannot change layers" in capsys.readouterr().err


def test_grow_draft_keeps_the_function_and_trains_the_new_block(target_dir):
    target = load_model(target_dir)
    draft = init_draft(target, 2, torch.arange(0, 48), init_layers=[0, 3])
    grown = grow_draft(draft, target, 3)
    assert len(grown.layers) == 3 and grown.embed is target.embed
    # the new block (a copy of the target's middle layer) sits before the last one and adds nothing yet
    new = grown.layers[1]
    torch.testing.assert_close(new.attn.qkv.weight, target.layers[2].attn.qkv.weight)
    assert not new.attn.o.weight.any() and not new.mlp.down.weight.any()
    prompt = [3, 9, 4, 27, 11, 6]
    torch.testing.assert_close(forced(grown, prompt), forced(draft, prompt), rtol=0, atol=0)
    # its zeroed projections still get gradients, so training can bring it in
    ids = torch.tensor([prompt])
    from paperclub.distill.train import train_forward

    train_forward(grown, ids, [len(prompt)], torch.float32).logsumexp(-1).sum().backward()
    assert new.attn.o.weight.grad.abs().sum() > 0 and new.mlp.down.weight.grad.abs().sum() > 0
    assert grow_draft(draft, target, 2) is draft
    with pytest.raises(UserError, match="shallower than the --init draft"):
        grow_draft(grown, target, 2)
    with pytest.raises(UserError, match="needs 1 target layers"):
        grow_draft(draft, target, 3, [1, 2])


def test_reuse_data_links_another_runs_teacher_data_and_checks_its_settings(tmp_path, target_dir, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", n=16)
    first = tmp_path / "first"
    assert distill(target_dir, first, prompts, "--steps", "5") == 0
    assert main(["distill", "--target", str(target_dir), "--out", str(tmp_path / "bad"), "--prompts", str(prompts),
                 *DISTILL, "--steps", "5", "--max-new-tokens", "12", "--reuse-data", str(first)]) == 2
    assert "other data settings: max_new_tokens 24 (here 12)" in capsys.readouterr().err
    assert distill(target_dir, tmp_path / "none", prompts, "--reuse-data", str(tmp_path)) == 2
    assert "not a distillation output" in capsys.readouterr().err
    # a deeper draft continued from the first one, on its data (nothing regenerated) plus training-only prompts
    extra = write_prompts(tmp_path / "extra.jsonl", n=5, seed=7)
    second = tmp_path / "second"
    assert distill(target_dir, second, prompts, "--steps", "5", "--layers", "2", "--init", str(first),
                   "--reuse-data", str(first), "--extra-prompts", str(extra)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["examples"] == 14 + 5  # 16 prompts minus 2 held out, plus the 5 extra
    assert len(list((second / "work" / "extra").glob("chunk-*.pt"))) == 1
    chunks = sorted((first / "work" / "data").glob("chunk-*.pt"))
    for c in chunks:
        assert (second / "work" / "data" / c.name).stat().st_ino == c.stat().st_ino
    assert torch.equal(torch.load(second / "work" / "vocab_ids.pt"), torch.load(first / "work" / "vocab_ids.pt"))
    assert json.loads((second / "config.json").read_text())["num_hidden_layers"] == 2
    # continued on fresh data of its own (other prompts, sampled): the draft keeps its vocabulary
    third = tmp_path / "third"
    assert distill(target_dir, third, write_prompts(tmp_path / "new.jsonl", n=12, seed=11), "--steps", "3",
                   "--layers", "2", "--init", str(second), "--data-temperatures", "0.9", "--seed", "3") == 0
    capsys.readouterr()
    kept = load_draft(second, load_model(target_dir, dtype=torch.float32)).vocab_ids
    assert torch.equal(torch.load(third / "work" / "vocab_ids.pt"), kept.cpu())
    # reusing the second run's data brings its training-only chunks along, and a further extra set adds to them
    fourth = tmp_path / "fourth"
    more = write_prompts(tmp_path / "more.jsonl", n=3, seed=13)
    assert distill(target_dir, fourth, prompts, "--steps", "2", "--layers", "2", "--init", str(second),
                   "--reuse-data", str(second), "--extra-prompts", str(more)) == 0
    assert json.loads(capsys.readouterr().out)["train"]["examples"] == 14 + 5 + 3
    (lent,) = (fourth / "work" / "reused-extra").glob("chunk-*.pt")
    assert lent.stat().st_ino == (second / "work" / "extra" / "chunk-0000.pt").stat().st_ino


def forced(model, prompt: list[int]) -> torch.Tensor:
    runner = ModelRunner(model, 16)
    runner.reserve(1, 16)
    return runner.append([0], [0], [prompt], last_only=False)[0]


def test_load_draft_logits_are_minus_inf_outside_the_subset_and_exact_inside(tmp_path, target_dir):
    target = load_model(target_dir)
    vocab_ids = torch.tensor([1, 3, 5, 8, 13, 21, 34, 55])
    draft = init_draft(target, 2, vocab_ids, init_layers=[0, 3])
    with torch.no_grad():
        for p in draft.layers.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_draft(draft, tmp_path / "d", target_dir)
    loaded = load_draft(tmp_path / "d", target, dtype=torch.float32)
    assert loaded.cfg.vocab_size == VOCAB and loaded.embed is target.embed
    prompt = [3, 9, 4, 17, 2, 40]
    logits = forced(loaded, prompt)
    assert logits.shape == (len(prompt), VOCAB) and logits.dtype == torch.float32
    outside = torch.ones(VOCAB, dtype=torch.bool)
    outside[vocab_ids] = False
    assert torch.isneginf(logits[:, outside]).all() and torch.isfinite(logits[:, vocab_ids]).all()
    # reference: a plain Llama with the target's embedding, the draft's layers (rounded to bf16 like the saved
    # file) and a full-vocabulary head whose rows vocab_ids are the draft's head rows
    from paperclub.models.draft import draft_config
    from paperclub.models.llama import Llama

    ref = Llama(draft_config(target.cfg, 2)).eval()
    with torch.no_grad():
        ref.embed.weight.copy_(target.embed.weight)
        ref.lm_head.weight = torch.nn.Parameter(torch.zeros(VOCAB, 32))
        ref.lm_head.weight[vocab_ids] = draft.lm_head.weight.to(torch.bfloat16).float()
        ref.norm.weight.copy_(draft.norm.weight.to(torch.bfloat16).float())
        for mine, theirs in zip(ref.layers, draft.layers, strict=True):
            mine.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in theirs.state_dict().items()})
    ref_logits = forced(ref, prompt)
    torch.testing.assert_close(logits[:, vocab_ids], ref_logits[:, vocab_ids], rtol=1e-5, atol=1e-5)
    probs = logits.softmax(-1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(prompt)))
    assert (probs[:, outside] == 0).all()


def test_incompatible_drafts_are_clear_errors(tmp_path, target_dir):
    target = load_model(target_dir)
    draft = init_draft(target, 1, torch.arange(0, 40))
    save_draft(draft, tmp_path / "ok", target_dir)
    check_draft_compatible(tmp_path / "ok", target_dir)

    other = make_target(tmp_path / "bigger_vocab", vocab_size=80)
    with pytest.raises(UserError, match=r"draft vocab \(72\) differs from target vocab \(80\): use a draft trained"):
        check_draft_compatible(tmp_path / "ok", other)
    rope = make_target(tmp_path / "rope", rope_theta=500000.0)
    with pytest.raises(UserError, match="rope .* differs"):
        check_draft_compatible(tmp_path / "ok", rope)
    ctx = make_target(tmp_path / "ctx", max_position_embeddings=512)
    with pytest.raises(UserError, match=r"context length \(256\) differs from the target's \(512\)"):
        check_draft_compatible(tmp_path / "ok", ctx)
    swapped = make_target(tmp_path / "tok")
    data = json.loads((swapped / "tokenizer.json").read_text())
    v = data["model"]["vocab"]
    v["w0"], v["w1"] = v["w1"], v["w0"]
    (swapped / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="tokenizer differs"):
        check_draft_compatible(tmp_path / "ok", swapped)
    bigger = load_model(other)
    with pytest.raises(UserError, match=r"draft vocab \(72\) differs from target vocab \(80\)"):
        load_draft(tmp_path / "ok", bigger)
    with pytest.raises(UserError, match="not a paperclub draft"):
        load_draft(target_dir, target)


def test_cli_bad_inputs_are_one_line_errors(tmp_path, target_dir, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl")
    assert main(["distill", "--target", str(target_dir), "--out", str(tmp_path / "x"), "--prompts",
                 str(prompts), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["distill", "--target", str(target_dir), "--out", str(tmp_path / "x"), "--layers", "9",
                 "--prompts", str(prompts), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--layers must be in [1, 4]" in err and err.count("\n") == 1
    assert main(["distill", "--out", str(tmp_path / "y"), "--time-budget", "soon"]) == 2
    assert "bad duration" in capsys.readouterr().err
    assert main(["distill", "--out", str(tmp_path / "y"), "--data-temperatures", "0,hot"]) == 2
    assert "--data-temperatures must be comma-separated" in capsys.readouterr().err
    assert main(["distill", "--target", str(target_dir), "--out", str(tmp_path / "z"), "--prompts", str(prompts),
                 "--data-temperatures", "0,5"]) == 2
    assert "--data-temperatures must be one or more values in [0, 2]" in capsys.readouterr().err


def test_teacher_data_follows_each_jobs_temperature_and_seed(tmp_path, target_dir):
    """Several continuations per prompt (greedy, then sampled): a chunk straddling two temperatures gives each job
    exactly what the engine gives that prompt at its temperature and seed."""
    from paperclub.distill.dataset import build_chunks, load_examples
    from paperclub.engine.llm import LLM
    from paperclub.engine.sampling import SamplingParams

    llm = LLM(model=str(target_dir), device="cpu", dtype="float32", max_num_seqs=8, max_model_len=128)
    prompts = [f"word{i} word{i + 1}" for i in range(5)]
    paths = build_chunks(llm, prompts, tmp_path / "data", chunk_size=3, max_tokens=6, topk=4,
                         temperatures=(0.0, 0.8), seed=7)
    examples = load_examples(paths)
    assert len(paths) == 4 and len(examples) == 10
    for job, ex in enumerate(examples):
        temp, prompt = (0.0, 0.8)[job // 5], prompts[job % 5]
        ids = llm.encode(prompt)
        want = llm.generate([ids], SamplingParams(max_tokens=6, temperature=temp, seed=7 + job))[0].token_ids
        assert ex.ids.tolist() == ids + want and ex.prompt_len == len(ids)
    assert examples[0].ids.tolist() != examples[5].ids.tolist()  # the sampled copy differs from the greedy one


def test_training_precision_follows_the_cpu(monkeypatch):
    """bf16 autocast only where bf16 matmuls are native: on an AVX2-only CPU they are emulated (67 s per step of
    the default draft on a Zen 3, against a few seconds in fp32)."""
    import paperclub.nn.cpu_kernels as ck
    from paperclub.distill.train import use_bf16

    cpu = torch.device("cpu")
    monkeypatch.setattr(ck, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    assert use_bf16("auto", cpu) is False
    assert use_bf16(True, cpu) is True  # as asked
    monkeypatch.setattr(ck, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert use_bf16("auto", cpu) is True
    monkeypatch.setattr(ck, "cpu_flags", lambda: frozenset({"amx_bf16", "amx_tile"}))
    assert use_bf16("auto", cpu) is True and use_bf16(False, cpu) is False
    assert use_bf16("auto", torch.device("cuda")) is True


def test_training_only_prompt_sets_never_contain_a_held_out_prompt():
    data = Path(__file__).parents[2] / "src" / "paperclub" / "distill" / "data"

    def contents(name: str) -> list[str]:
        return [json.loads(line)["messages"][0]["content"] for line in (data / name).read_text().splitlines()]

    held_out = set(contents("distill_eval.jsonl"))
    assert len(held_out) == 79
    names = ("distill_train.jsonl", "distill_extra.jsonl", "distill_extra2.jsonl", "distill_extra3.jsonl")
    for name in names:
        prompts = contents(name)
        assert prompts and not held_out & set(prompts), name
    for i, a in enumerate(names[1:], 1):  # each extra set is new to the sets before it
        assert not set(contents(a)) & set().union(*(contents(b) for b in names[:i])), a
