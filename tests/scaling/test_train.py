from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from paperclub.errors import UserError
from paperclub.scaling.evaluate import chunk_losses, val_chunks
from paperclub.scaling.train import Batches, RunConfig, build_model, load_model, lr_at, train_run

RUN = RunConfig(size="s0", tokens=16384, epochs=3, lr=3e-3, weight_decay=0.1, batch_size=4, seq_len=64,
                val_tokens=2048)


def test_schedule_warms_up_then_decays_to_zero():
    total = 200
    lrs = [lr_at(RUN, s, total) for s in range(total)]
    assert lrs[0] == pytest.approx(RUN.lr / 10) and max(lrs) == pytest.approx(RUN.lr)  # 10 warm-up steps
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] < RUN.lr * 1e-3


def test_batches_cover_the_budget_once_per_epoch_in_a_fixed_order(tiny_corpus):
    data = tiny_corpus.budget(RUN.tokens)
    b = Batches(RUN, data, None)
    epoch = torch.cat([b(s) for s in range(b.per_epoch)])
    assert epoch.shape == (b.per_epoch * RUN.batch_size, RUN.seq_len + 1)
    assert len({tuple(r.tolist()) for r in epoch}) == len(epoch)  # no window twice in an epoch
    assert torch.equal(b(5), Batches(RUN, data, None)(5))  # a function of the step alone
    assert not torch.equal(b(0), b(b.per_epoch))  # each epoch its own order


def test_identical_members_ensemble_to_that_member_and_averaging_logits_never_hurts(tiny_corpus):
    chunks, docs = val_chunks(tiny_corpus.val, 2048, 64, tiny_corpus.eot)
    assert chunks.shape == (32, 65) and len(docs) == 32
    a = build_model(RUN, tiny_corpus.vocab_size).eval()
    b = build_model(RunConfig(**{**RUN.__dict__, "seed": 1}), tiny_corpus.vocab_size).eval()
    one = chunk_losses([a], chunks)
    np.testing.assert_allclose(chunk_losses([a, a, a], chunks), one, rtol=0, atol=1e-5)
    # log-sum-exp is convex: the loss of averaged logits is at most the members' mean loss, token by token
    both = chunk_losses([a, b], chunks)
    assert np.all(both <= (one + chunk_losses([b], chunks)) / 2 + 1e-6)
    with pytest.raises(UserError, match="val_tokens"):
        val_chunks(tiny_corpus.val, 10**7, 64, tiny_corpus.eot)


def test_a_finished_run_is_not_run_again(tiny_corpus, tmp_path):
    cfg = RunConfig(**{**RUN.__dict__, "epochs": 1})
    m = train_run(cfg, tiny_corpus, tmp_path / "r", progress=False)
    assert m["val_loss"] < np.log(tiny_corpus.vocab_size)  # it learned something
    assert (tmp_path / "r" / "model.safetensors").is_file() and not (tmp_path / "r" / "checkpoint.pt").exists()
    stamp = (tmp_path / "r" / "metrics.json").stat().st_mtime_ns
    assert train_run(cfg, tiny_corpus, tmp_path / "r", progress=False) == json.loads(json.dumps(m))
    assert (tmp_path / "r" / "metrics.json").stat().st_mtime_ns == stamp
    model = load_model(tmp_path / "r", tiny_corpus.vocab_size)
    chunks, _ = val_chunks(tiny_corpus.val, cfg.val_tokens, cfg.seq_len, tiny_corpus.eot)
    np.testing.assert_allclose(chunk_losses([model], chunks), m["val_chunk_losses"], atol=1e-4)
    (tmp_path / "r" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="unreadable"):
        load_model(tmp_path / "r", tiny_corpus.vocab_size)


def test_resume_after_a_kill_gives_the_same_final_metrics(tiny_corpus, tmp_path):
    """A run killed (SIGKILL) midway and started again ends exactly where an uninterrupted run ends."""
    script = textwrap.dedent(f"""
        import torch
        from pathlib import Path
        from paperclub.scaling.corpus import load_corpus
        from paperclub.scaling.train import RunConfig, train_run
        torch.set_num_threads(1)
        train_run(RunConfig(**{RUN.__dict__!r}), load_corpus(Path({str(tiny_corpus.root)!r})),
                  Path({str(tmp_path / "killed")!r}), checkpoint_every_s=0.0, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if ckpt.is_file() and torch.load(ckpt, weights_only=True)["state"]["step"] >= 20:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = train_run(RUN, tiny_corpus, tmp_path / "killed", progress=False)
        straight = train_run(RUN, tiny_corpus, tmp_path / "straight", progress=False)
    finally:
        torch.set_num_threads(threads)
    log_tail = json.dumps(resumed["train_loss"][-3:])
    assert resumed["val_loss"] == straight["val_loss"], log_tail
    assert resumed["val_chunk_losses"] == straight["val_chunk_losses"]
    assert resumed["train_loss"][-1] == straight["train_loss"][-1]


def test_bad_run_configs_are_user_errors():
    for bad in ({"epochs": 0}, {"lr": 0.0}, {"weight_decay": -1.0}, {"tokens": 10}, {"synthetic_fraction": 0.5}):
        with pytest.raises(UserError, match="run config"):
            RunConfig(**{**RUN.__dict__, **bad})
    with pytest.raises(UserError, match="unknown model size"):
        build_model(RunConfig(**{**RUN.__dict__, "size": "huge"}), 320)


@pytest.mark.slow  # the first compile of a shape takes a minute or more
def test_compiled_training_matches_eager_up_to_rounding(tiny_corpus, tmp_path):
    cfg = RunConfig(**{**RUN.__dict__, "epochs": 1})
    kd = RunConfig(**{**cfg.__dict__, "seed": 1, "teacher": ("eager",), "teacher_weight": 0.5})  # logit distillation
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {}
        for name, run, compile in (("eager", cfg, False), ("compiled", cfg, True), ("kd_eager", kd, False),
                                   ("kd_compiled", kd, True)):
            runs[name] = train_run(run, tiny_corpus, tmp_path / "runs" / name, progress=False, root=tmp_path,
                                   compile=compile)
    finally:
        torch.set_num_threads(threads)
    for eager, compiled in ((runs["eager"], runs["compiled"]), (runs["kd_eager"], runs["kd_compiled"])):
        assert compiled["compiled"] and not eager["compiled"]
        assert abs(compiled["val_loss"] - eager["val_loss"]) < 2e-3
        assert abs(compiled["train_loss"][-1][1] - eager["train_loss"][-1][1]) < 2e-3


def test_runs_named_before_logit_distillation_keep_their_ids():
    """A committed study run (benchmarks/results/scaling/study) and its id: new RunConfig fields left at their
    defaults must not rename it, or every finished run would be trained again."""
    run = RunConfig(size="s1", tokens=131072, epochs=8, lr=0.003, weight_decay=1.6)
    assert run.run_id("faa1408573f24875") == "s1-D131072-e8-lr0.003-wd1.6-s0-1db1ad3895"
    kd = RunConfig(**{**run.__dict__, "teacher": ["a", "b"], "teacher_weight": 0.5})
    assert kd.teacher == ("a", "b") and kd.run_id("faa1408573f24875") != run.run_id("faa1408573f24875")
    assert RunConfig(**json.loads(json.dumps(kd.__dict__))) == kd  # a config read back from JSON
    for bad in ({"teacher_weight": 0.5}, {"teacher": ["a"]}, {"teacher": ["a"], "teacher_weight": 1.5}):
        with pytest.raises(UserError):
            RunConfig(**{**run.__dict__, **bad})


def test_logit_distillation_pulls_the_student_to_its_teacher(tiny_corpus, tmp_path):
    """A student trained only on its teacher's logits ends closer to the teacher (KL on held-out text) than the
    same student trained on the next tokens; a missing teacher is a clear error."""
    import torch.nn.functional as F

    from paperclub.scaling.evaluate import ensemble_logits

    teacher_cfg = RunConfig(**{**RUN.__dict__, "epochs": 2, "seed": 7})
    train_run(teacher_cfg, tiny_corpus, tmp_path / "runs" / "t", progress=False)
    plain = RUN  # 3 epochs (on 1 epoch both students are still near the unigram distribution, and tie)
    kd = RunConfig(**{**plain.__dict__, "teacher": ("t",), "teacher_weight": 1.0})
    for name, cfg in (("plain", plain), ("kd", kd)):
        train_run(cfg, tiny_corpus, tmp_path / "runs" / name, progress=False, root=tmp_path)
    chunks, _ = val_chunks(tiny_corpus.val, 2048, 64, tiny_corpus.eot)
    vocab = tiny_corpus.vocab_size
    with torch.no_grad():
        target = F.log_softmax(ensemble_logits([load_model(tmp_path / "runs" / "t", vocab)], chunks[:, :-1]), -1)

        def kl(name):
            student = F.log_softmax(ensemble_logits([load_model(tmp_path / "runs" / name, vocab)], chunks[:, :-1]), -1)
            return float((target.exp() * (target - student)).sum(-1).mean())

        assert kl("kd") < 0.5 * kl("plain")  # measured: 0.034 against 0.176
    missing = RunConfig(**{**plain.__dict__, "teacher": ("nobody",), "teacher_weight": 0.5})
    with pytest.raises(UserError, match="nobody is not a finished run"):
        train_run(missing, tiny_corpus, tmp_path / "runs" / "m", progress=False, root=tmp_path)


def test_committed_ensembles_and_teacher_text_keep_their_job_ids():
    """Jobs are named by their runs' identities: a field added to RunConfig must not rename the committed study's
    ensemble evaluations and teacher-text jobs (renamed, the sweep would evaluate and train them all again)."""
    from pathlib import Path

    from paperclub.scaling.study import EnsembleJob, SynthJob

    study = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "scaling" / "study"
    files = sorted((study / "ensembles").glob("*.json"))
    if not files:
        pytest.skip("no committed study")

    def config(rid):
        return RunConfig(**json.loads((study / "runs" / rid / "config.json").read_text())["run"])

    for f in files:
        e = json.loads(f.read_text())
        assert EnsembleJob(e["size"], e["tokens"], tuple(config(r) for r in e["members"])).job_id() == f.stem
    for f in sorted((study / "synthetic").glob("*.u16.json")):
        info = json.loads(f.read_text())
        kind, size = info["job_id"].split("-")[1:3]
        job = SynthJob(kind, size, 131072, tuple(config(r) for r in info["teacher"]), info["samples"], 32, 0)
        assert job.job_id() == info["job_id"]
