"""A whole (tiny) study through the CLI: sweep in two sittings and two executors, then fit."""

from __future__ import annotations

import json
import sys

import pytest

from paperclub.cli import main
from paperclub.errors import UserError
from paperclub.scaling.study import SynthJob, load_study, parse_study
from tests.scaling.conftest import EMAIL

TINY_STUDY = f"""
[corpus]
source = "{EMAIL}"
vocab_size = 320
val_fraction = 0.2

[train]
batch_size = 4
seq_len = 64
val_tokens = 2048

[study]
budget = 4096
sizes = ["s0", "s1"]

[recipes.standard]
budgets = [1, 2]
lr = [0.003, 0.01]
weight_decay = [0.1]
epochs = [1, 2]
start = {{ lr = 0.003, weight_decay = 0.1, epochs = 1 }}

[recipes.regularized]
lr = [0.01]
weight_decay = [0.1, 0.8]
epochs = [1, 2]
start = {{ lr = 0.01, weight_decay = 0.8, epochs = 2 }}

[recipes.ensemble]
members = 4

[recipes.distill]
students = ["s0"]
teachers = ["ensemble", "self"]
synthetic_fraction = [0.25, 0.5]
synthetic_budgets = 1
prefix = 8
teacher_weight = [0.5]
"""


def test_sweep_runs_a_study_to_certified_points_resumably_then_fits(tmp_path, capsys):
    study_file = tmp_path / "study.toml"
    study_file.write_text(TINY_STUDY)
    out = tmp_path / "out"
    args = ["scaling", "sweep", "--study", str(study_file), "--out", str(out), "--threads", "1", "--no-compile"]
    # first sitting: two worker processes, stopped after 3 jobs
    assert main([*args, "--workers", "2", "--max-jobs", "3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["jobs_finished"] == 3 and not first["complete"]
    # second sitting, in-process: picks up where the first stopped
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["complete"] and second["jobs_failed"] == 0
    # a finished study runs nothing
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["jobs_finished"] == 0

    study = load_study(out / "study.toml")
    runs = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/metrics.json")}
    assert len(runs) == second["runs_total"]
    loss = {rid: m["val_loss"] for rid, m in runs.items()}
    fp = next(iter(runs.values()))["corpus"]
    walks = study.walks(lambda r: loss.get(r.run_id(fp)))
    assert len(walks) == 2 * 2 + 2 and all(w.certified is not None for w in walks.values())
    assert not list(out.glob("teachers/*"))  # exported teachers are scratch, removed after use
    ensembles = [json.loads(p.read_text()) for p in (out / "ensembles").glob("*.json")]
    assert sorted(e["size"] for e in ensembles) == ["s0", "s1"]
    for e in ensembles:
        assert sorted(e["ensembles"], key=int) == ["1", "2", "4"]
        assert len(e["members"]) == 4 and all(m in runs for m in e["members"])
        assert e["ensembles"]["1"]["val_loss"] == pytest.approx(runs[e["members"][0]]["val_loss"], abs=1e-4)

    # distillation: teacher text from the engine (4 members' averaged logits, or the regularized model), then a
    # student at the regularized optimum on real + teacher text
    for kind in ("ensemble", "self"):
        [synth] = (out / "synthetic").glob(f"synthetic-{kind}-s0-*.u16")
        stats = json.loads(synth.with_suffix(".u16.json").read_text())
        assert stats["samples"] == 4096 // 65 and synth.stat().st_size == 2 * stats["samples"] * 65
        assert len(stats["teacher"]) == (4 if kind == "ensemble" else 1)
        students = [m for m in runs.values() if m["config"]["synthetic"] == f"synthetic/{synth.name}"]
        assert sorted(m["config"]["synthetic_fraction"] for m in students) == [0.25, 0.5]  # one file, two mixtures

    assert main(["scaling", "fit", "--runs", str(out), "--json", str(tmp_path / "fit.json"), "--bootstrap", "20",
                 "--plots", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "students_s0.png").stat().st_size > 10_000  # every student against its lines
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert {"asymptotes", "data_efficiency", "runs"} <= set(fit) and fit["runs"] == len(runs)
    assert set(fit["asymptotes"]) >= {"ensemble_s0", "ensemble_s1"}  # L(K) fits; two sizes fit nothing in N
    assert all(fit["certified"].values())
    assert set(fit["best_loss"]) >= {"distilled_ensemble", "distilled_self", "regularized", "ensemble"}
    students = {f"distilled_{k}_b1_f{f}_s0" for k in ("ensemble", "self") for f in ("0.25", "0.5")}
    students |= {f"distilled_{k}_logits_w0.5_s0" for k in ("ensemble", "self")}  # on the teacher's logits
    assert set(fit["students"]) == students
    for kind in ("ensemble", "self"):  # the best mixture stands for its teacher
        best = min(v["val_loss"] for name, v in fit["students"].items() if f"_{kind}_b" in name)
        assert fit["best_loss"][f"distilled_{kind}"]["1"]["s0"]["value"] == pytest.approx(best)
        logit = runs[fit["students"][f"distilled_{kind}_logits_w0.5_s0"]["run_id"]]["config"]
        assert len(logit["teacher"]) == (4 if kind == "ensemble" else 1) and not logit["synthetic"]
        assert all(t in runs for t in logit["teacher"])
    assert {f"{name}_minus_regularized" for name in students} <= set(fit["comparisons"])

    # a fresh checkout has the runs' metrics but not their weights (scratch): an ensemble evaluated again first
    # trains its members again, keeping their earlier metrics aside
    for scratch in [*(out / "runs").glob("*/model.safetensors"), *(out / "synthetic").glob("*.u16")]:
        scratch.unlink()  # the trained students need no teacher text again
    s1_ensemble = next(p for p in (out / "ensembles").glob("*.json") if json.loads(p.read_text())["size"] == "s1")
    members = json.loads(s1_ensemble.read_text())["members"]
    s1_ensemble.unlink()
    capsys.readouterr()
    assert main(args) == 0
    third = json.loads(capsys.readouterr().out)
    assert third["complete"] and third["jobs_finished"] == len(members) + 1
    for rid in members:
        assert (out / "runs" / rid / "model.safetensors").is_file()
        assert (out / "runs" / rid / "metrics.weights-lost.json").is_file()
    assert json.loads(s1_ensemble.read_text())["members"] == members


def test_bad_study_files_get_one_line_errors(tmp_path, capsys):
    bad = {
        "[study]\nbudget = 4096\nsizes = ['s9']": "sizes must be a list of ladder rungs",
        "[study]\nbudget = -1\nsizes = ['s0']": "budget must be a positive",
        "[study]\nbudget = 4096\nsizes = ['s0']\n[recipes.magic]\n": "unknown recipe",
        "[studdy]\n": "unknown section",
        "[study]\nbudget = 4096\nsizes = ['s0']\n[train]\nlearning_rate = 1\n": "unknown key",
        ("[study]\nbudget = 4096\nsizes = ['s0']\n[recipes.standard]\nlr = [0.01]\nweight_decay = [0.1]\n"
         "epochs = [1]\nstart = { lr = 0.02 }\n"): "not on its grid",
    }
    import tomllib

    for text, message in bad.items():
        with pytest.raises(UserError, match=message):
            parse_study(tomllib.loads(text))
    path = tmp_path / "s.toml"
    path.write_text("[study\n")
    assert main(["scaling", "sweep", "--study", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not valid TOML" in err and len(err.strip().splitlines()) == 1
    assert main(["scaling", "sweep", "--study", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")]) == 2
    assert main(["scaling", "prepare", "--out", str(tmp_path / "c"), "--source", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


RAY_STUDY = TINY_STUDY.replace('sizes = ["s0", "s1"]', 'sizes = ["s0"]').split("[recipes.regularized]")[0]


def test_a_sweep_on_a_local_ray_cluster_gives_the_runs_a_process_pool_gives(tmp_path, capsys):
    pytest.importorskip("ray")
    study_file = tmp_path / "study.toml"
    study_file.write_text(RAY_STUDY)
    for name, extra in (("ray", ["--ray-address", "local", "--workers", "2"]), ("local", [])):
        assert main(["scaling", "sweep", "--study", str(study_file), "--out", str(tmp_path / name),
                     "--threads", "1", "--no-compile", *extra]) == 0
        assert json.loads(capsys.readouterr().out)["complete"]
    def losses(name):
        files = (tmp_path / name).glob("runs/*/metrics.json")
        return {p.parent.name: json.loads(p.read_text())["val_loss"] for p in files}

    assert losses("ray") == losses("local") and len(losses("local")) >= 4  # the same runs, bit for bit


SLOW_STUDY = TINY_STUDY.split("[recipes.standard]")[0].replace('sizes = ["s0", "s1"]', 'sizes = ["s1"]') + """
[recipes.standard]
budgets = [1, 2]
lr = [0.003]
weight_decay = [0.1]
epochs = [400]
start = { lr = 0.003, weight_decay = 0.1, epochs = 400 }
"""


def _pool_workers(pid: int) -> list[int]:
    """The multiprocessing workers `pid` started (Linux /proc)."""
    from pathlib import Path

    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        kids += [int(k) for k in (task / "children").read_text().split()]
    return [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGINT", "SIGINT in a background job", "SIGTERM", "SIGKILL"])
def test_stopping_a_sweep_stops_its_workers(tmp_path, how):
    """Ctrl-C or SIGTERM stop the running jobs too (they resume from their checkpoints next time), and a sweep
    killed outright takes its workers with it: no training job is left orphaned, burning the cores."""
    import os
    import signal
    import subprocess
    import time

    study_file = tmp_path / "study.toml"
    study_file.write_text(SLOW_STUDY)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "paperclub.cli", "scaling", "sweep", "--study", str(study_file), "--out", str(out),
           "--threads", "1", "--no-compile", "--workers", "2"]
    background = how.endswith("background job")  # a shell's `cmd &` starts with SIGINT ignored

    def start():
        if background:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=start)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("runs/*/log.txt"))) < 2:  # both workers are training
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep did not start its runs"
            time.sleep(0.2)
        workers = _pool_workers(proc.pid)
        assert len(workers) == 2
        os.kill(proc.pid, getattr(signal, how.split()[0]))
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
        assert not list(out.glob("runs/*/metrics.json"))  # they were stopped, not run to the end
    finally:
        proc.kill()
        proc.wait()


def test_distillation_knobs_as_lists_give_one_student_per_mixture(caplog):
    import tomllib

    text = TINY_STUDY.replace("synthetic_budgets = 1", "synthetic_budgets = [1, 4]").replace(
        "synthetic_fraction = [0.25, 0.5]", "synthetic_fraction = [0.25, 0.5, 0.75]")
    study = parse_study(tomllib.loads(text))
    assert study.distill.synthetic_fraction == (0.25, 0.5, 0.75) and study.distill.synthetic_budgets == (1, 4)
    # 0.75 draws 3 x the 63 real sequences of fresh teacher samples per epoch: 1 D of text (63 samples) is too little
    assert "(1, 0.75)" in caplog.text
    certified = {"lr": 0.01, "weight_decay": 0.8, "epochs": 2.0}

    def loss(run):  # every run finished, the regularized search certified at `certified`
        return 1.0 if run.synthetic == "" and run.weight_decay == 0.8 and run.epochs == 2 else 2.0

    pairs = study.synth_jobs(study.walks(loss))
    assert len(pairs) == 2 * 5  # teachers x the five usable (budget, fraction) pairs
    jobs = {job.job_id(): job for job, _ in pairs}
    assert sorted(j.samples for j in jobs.values()) == [4096 // 65, 4096 // 65, 4 * 4096 // 65, 4 * 4096 // 65]
    for job, student in pairs:
        assert student.synthetic == job.file() and student.lr == certified["lr"] and student.epochs == 2
        assert (job.samples, student.synthetic_fraction) != (4096 // 65, 0.75)
    _, wanted_jobs = study.wanted(lambda r: None if r.synthetic else loss(r), lambda job: False)
    synth = [j for j in wanted_jobs if isinstance(j, SynthJob)]
    assert len({j.job_id() for j in synth}) == len(synth) == 4  # each teacher file asked for once
    for bad, message in (("synthetic_fraction = [0.5, 1.5]", "synthetic_fraction in"),
                         ("synthetic_fraction = []", "a number or a list"),
                         ("synthetic_fraction = [true]", "a number or a list"),
                         ("synthetic_fraction = 0.9", "no synthetic_budgets is enough")):
        with pytest.raises(UserError, match=message):
            parse_study(tomllib.loads(TINY_STUDY.replace("synthetic_fraction = [0.25, 0.5]", bad)))
    with pytest.raises(UserError, match="whole numbers"):
        parse_study(tomllib.loads(TINY_STUDY.replace("synthetic_budgets = 1", "synthetic_budgets = [1.5]")))
