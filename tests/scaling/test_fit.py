"""The fits against known laws: exact recovery without noise, and bootstrap intervals that cover the truth when
a whole synthetic study (runs and ensembles with document-level evaluation noise) goes through `scaling fit`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from paperclub.cli import main
from paperclub.scaling.fit import fit_power_law
from paperclub.scaling.ladder import model_config, non_embedding_params
from paperclub.scaling.study import EnsembleJob, load_study
from paperclub.scaling.train import RunConfig


@pytest.mark.parametrize("method", ["huber", "least_squares"])
def test_fit_recovers_a_known_law_exactly(method):
    x = np.array([1e4, 4e4, 1.6e5, 6.4e5, 2.56e6])
    y = 80.0 * x**-0.4 + 2.5
    law = fit_power_law(x, y, method)
    assert law.A == pytest.approx(80.0, rel=1e-3) and law.B == pytest.approx(0.4, rel=1e-3)
    assert law.C == pytest.approx(2.5, rel=1e-4) and law.rmse < 1e-5
    assert law.inverse(float(y[2])) == pytest.approx(x[2], rel=1e-3) and law.inverse(2.4) == math.inf
    with pytest.raises(ValueError, match="3 distinct"):
        fit_power_law([1, 2, 2], [3, 2, 1])


STUDY = """
[corpus]
source = "synthetic"
[train]
batch_size = 4
seq_len = 64
val_tokens = 20480
[study]
budget = 4096
sizes = ["s0", "s1", "s2", "s3"]
[recipes.standard]
budgets = [1, 2, 4, 8]
lr = [0.01]
weight_decay = [0.1]
epochs = [4]
[recipes.regularized]
lr = [0.01]
weight_decay = [0.8]
epochs = [8]
[recipes.ensemble]
members = 4
"""
TRUE = {"regularized": 3.0, "joint": 2.8, "std_C": 2.5, "std_A": 100.0, "std_B": 0.5}


def reg_loss(n):
    return 200.0 * n**-0.5 + TRUE["regularized"]


def member_asymptote(n):
    return 100.0 * n**-0.4 + TRUE["joint"]


def std_loss(tokens):
    return TRUE["std_A"] * tokens**-TRUE["std_B"] + TRUE["std_C"]


def write_synthetic_study(out: Path, seed: int = 0) -> None:
    """Runs whose per-chunk losses are a known law plus document-level and chunk-level noise."""
    (out / "runs").mkdir(parents=True)
    (out / "ensembles").mkdir()
    (out / "study.toml").write_text(STUDY)
    study = load_study(out / "study.toml")
    rng = np.random.default_rng(seed)
    docs = np.repeat(np.arange(40), 8)  # 320 chunks of 40 documents
    doc_noise = rng.normal(0, 0.02, 40)[docs]
    (out / "validation.json").write_text(json.dumps({"chunk_docs": docs.tolist()}))

    def noisy(value):
        return (value + doc_noise + rng.normal(0, 0.02, len(docs))).round(5)

    def write_run(cfg: RunConfig, value: float):
        n = non_embedding_params(model_config(cfg.size, 2048, cfg.seq_len))
        rid = cfg.run_id("fp")
        chunks = noisy(value)
        (out / "runs" / rid).mkdir()
        (out / "runs" / rid / "metrics.json").write_text(json.dumps({
            "run_id": rid, "config": asdict(cfg), "corpus": "fp", "val_loss": float(chunks.mean()),
            "val_chunk_losses": chunks.tolist(), "non_embedding_params": n}))

    for rank, size in enumerate(study.sizes):
        n = non_embedding_params(model_config(size, 2048, 64))
        for mult in (1, 2, 4, 8):
            write_run(study.run_config(size, mult, (("lr", 0.01), ("weight_decay", 0.1), ("epochs", 4.0))),
                      std_loss(mult * study.budget) + 0.05 * rank)
        write_run(study.run_config(size, 1, (("lr", 0.01), ("weight_decay", 0.8), ("epochs", 8.0))), reg_loss(n))
    walks = study.walks(lambda r: 0.0)
    for size in study.sizes:
        n = non_embedding_params(model_config(size, 2048, 64))
        members = study.ensemble_members(walks, size)
        job = EnsembleJob(size, study.budget, members)
        ks = {str(k): member_asymptote(n) + 0.6 * k**-0.7 for k in (1, 2, 4)}
        (out / "ensembles" / f"{job.job_id()}.json").write_text(json.dumps({
            "job_id": job.job_id(), "size": size, "tokens": study.budget, "members": [],
            "ensembles": {k: {"val_loss": v, "val_chunk_losses": noisy(v).tolist()} for k, v in ks.items()}}))


def test_fit_cli_recovers_asymptotes_and_multipliers_inside_their_intervals(tmp_path, capsys):
    write_synthetic_study(tmp_path / "study")
    rc = main(["scaling", "fit", "--runs", str(tmp_path / "study"), "--json", str(tmp_path / "fit.json"),
               "--plots", str(tmp_path / "plots"), "--bootstrap", "200"])
    assert rc == 0
    result = json.loads((tmp_path / "fit.json").read_text())
    assert result["runs"] == 20 and result["ensembles"] == 4 and result["bootstrap"]["documents"] == 40
    truths = {"regularized": TRUE["regularized"], "joint": TRUE["joint"], "standard_vs_tokens": TRUE["std_C"]}
    for name, truth in truths.items():
        entry = result["asymptotes"][name]
        lo, hi = entry["ci95"]
        assert lo <= truth <= hi, (name, entry)
        assert hi - lo < 0.25, (name, entry)  # informative, not just wide
    budget = 4096
    for name, asymptote in (("regularized", TRUE["regularized"]), ("joint", TRUE["joint"])):
        truth = (TRUE["std_A"] / (asymptote - TRUE["std_C"])) ** (1 / TRUE["std_B"]) / budget
        lo, hi = result["data_efficiency"][name]["ci95"]
        assert lo <= truth <= hi, (name, truth, result["data_efficiency"][name])
    # the orderings, paired: the joint asymptote 0.2 below the regularized one, with an interval that excludes 0
    joint = result["comparisons"]["joint_minus_regularized_asymptote"]
    assert joint["ci95"][1] < 0 and joint["ci95"][0] <= -0.2 <= joint["ci95"][1], joint
    for png in ("loss_vs_params.png", "loss_vs_members.png", "data_efficiency.png", "weight_decay_epochs.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 10_000
    assert "asymptote  regularized" in capsys.readouterr().out


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_truth_about_95_percent_of_the_time(tmp_path):
    """Calibration over 20 independent synthetic studies: each 95% interval covers its true asymptote in at
    least 16 of 20 (the chance of fewer for a calibrated interval is about 1.6%)."""
    from paperclub.scaling.analysis import analyze

    hits = {"regularized": 0, "joint": 0, "standard_vs_tokens": 0}
    truth = {"regularized": TRUE["regularized"], "joint": TRUE["joint"], "standard_vs_tokens": TRUE["std_C"]}
    for seed in range(20):
        write_synthetic_study(tmp_path / str(seed), seed)
        result, _, _ = analyze(tmp_path / str(seed), n_boot=100, seed=seed)
        for name in hits:
            lo, hi = result["asymptotes"][name]["ci95"]
            hits[name] += lo <= truth[name] <= hi
    assert all(h >= 16 for h in hits.values()), hits


def test_fit_reports_and_skips_a_damaged_run_and_refuses_a_non_study(tmp_path, capsys):
    write_synthetic_study(tmp_path / "study")
    victim = sorted((tmp_path / "study" / "runs").iterdir())[0] / "metrics.json"
    victim.write_text(victim.read_text()[:100])
    rc = main(["scaling", "fit", "--runs", str(tmp_path / "study"), "--json", str(tmp_path / "fit.json"),
               "--bootstrap", "20"])
    assert rc == 0
    result = json.loads((tmp_path / "fit.json").read_text())
    assert result["runs"] == 19 and len(result["skipped"]) == 1 and str(victim) in result["skipped"][0]
    assert "skipped (damaged): 1" in capsys.readouterr().out
    assert main(["scaling", "fit", "--runs", str(tmp_path)]) == 2
    assert "holds no study.toml" in capsys.readouterr().err
