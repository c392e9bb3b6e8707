"""From a sweep's output folder to the study's answer: the best loss of every search, the power-law fits, the
asymptotes and data-efficiency multipliers, each with a 95% bootstrap interval (see `fit.py` for the bootstrap).

`analyze(out)` reads only small files (`study.toml`, `validation.json`, `runs/*/metrics.json`,
`ensembles/*.json`), so it reproduces every figure on a checkout that holds the committed results and no
checkpoints. A damaged metrics file is reported and skipped, never refit silently.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from paperclub.errors import UserError
from paperclub.scaling import search
from paperclub.scaling.fit import PowerLaw, document_weights, fit_power_law, law_dict, percentile_ci, refit
from paperclub.scaling.study import Study, load_study
from paperclub.scaling.train import RunConfig, read_metrics

log = logging.getLogger(__name__)

PAPER = {"regularized_asymptote": 3.43, "joint_asymptote": 3.17, "joint_data_efficiency": 5.17}


@dataclass
class Collected:
    study: Study
    fingerprint: str
    runs: dict[str, dict]  # run id -> metrics
    ensembles: list[dict]
    chunk_docs: np.ndarray
    skipped: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # run id or "ens:<job>:<k>" -> row of `matrix`
    matrix: np.ndarray | None = None  # (rows, chunks) per-chunk validation losses


def collect(out: Path) -> Collected:
    out = Path(out)
    if not (out / "study.toml").is_file():
        raise UserError(f"{out} holds no study.toml: give the --out folder of a `paperclub scaling sweep`")
    study = load_study(out / "study.toml")
    runs, skipped = {}, []
    for run_dir in sorted((out / "runs").glob("*")):
        try:
            metrics = read_metrics(run_dir)
        except UserError as e:
            skipped.append(str(e))
            log.warning("skipping %s", e)
            continue
        if metrics is not None:
            runs[run_dir.name] = metrics
    fingerprints = {m["corpus"] for m in runs.values()}
    if len(fingerprints) > 1:
        raise UserError(f"{out}/runs mixes runs on different corpora ({', '.join(sorted(fingerprints))}): "
                        "one study folder per corpus")
    fingerprint = fingerprints.pop() if fingerprints else ""
    ensembles = []
    for path in sorted((out / "ensembles").glob("*.json")):
        try:
            e = json.loads(path.read_text())
            for k in e["ensembles"].values():
                float(k["val_loss"])
            ensembles.append(e)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            skipped.append(f"{path} is damaged ({err})")
            log.warning("skipping %s: damaged (%s)", path, err)
    try:
        chunk_docs = np.asarray(json.loads((out / "validation.json").read_text())["chunk_docs"])
    except (OSError, ValueError, KeyError):
        chunk_docs = None
    c = Collected(study, fingerprint, runs, ensembles, chunk_docs, skipped)
    vectors = [np.asarray(m["val_chunk_losses"]) for m in runs.values()]
    c.rows = {rid: i for i, rid in enumerate(runs)}
    for e in ensembles:
        for k, v in e["ensembles"].items():
            c.rows[f"ens:{e['job_id']}:{k}"] = len(vectors)
            vectors.append(np.asarray(v["val_chunk_losses"]))
    if vectors:
        n = {len(v) for v in vectors}
        if len(n) > 1:
            raise UserError(f"{out}: runs were scored on different validation sets ({sorted(n)} chunks)")
        c.matrix = np.stack(vectors)
        if c.chunk_docs is None or len(c.chunk_docs) != c.matrix.shape[1]:
            log.warning("no validation.json: the bootstrap resamples chunks instead of documents")
            c.chunk_docs = np.arange(c.matrix.shape[1])
    return c


def _loss_of(c: Collected):
    """`loss(RunConfig) -> float | None` over the collected runs: what the study's planners replay against."""
    def loss(run: RunConfig) -> float | None:
        m = c.runs.get(run.run_id(c.fingerprint))
        return None if m is None else float(m["val_loss"])

    return loss


def _searched(c: Collected) -> dict[tuple[str, str, int], tuple[list[str], bool]]:
    """Per search: the run ids it evaluated (the path and its neighbours) and whether it is certified."""
    study = c.study

    out = {}
    for key, w in study.walks(_loss_of(c)).items():
        name, size, mult = key
        axes = next(r.axes for r in study.searches if r.name == name)
        seen = {p for q in w.path for p in [q, *search.neighbours(q, axes)]}
        ids = [study.run_config(size, mult, p).run_id(c.fingerprint) for p in seen]
        ids = [i for i in ids if i in c.runs]
        if ids:
            out[key] = (ids, w.certified is not None)
    return out


def _students(c: Collected) -> tuple[dict[tuple[str, str], list[str]], dict[str, str]]:
    """(teacher kind, size) -> the finished distilled students' run ids: one per amount of teacher text and
    mixture weight the study asks for (kinds "ensemble", "self"), and one per loss weight of the logit-distilled
    ones (kinds "ensemble_logits", "self_logits"); and each student's name by its knobs:
    `distilled_ensemble_b16_f0.8_s1` (16 D of teacher text, 80% of each epoch), `distilled_ensemble_logits_w0.5_s1`
    (half the loss on the teacher's logits)."""
    walks = c.study.walks(_loss_of(c))
    students = []
    for job, s in c.study.synth_jobs(walks):
        budgets = round(job.samples * (s.seq_len + 1) / c.study.budget)
        students.append((job.kind, s, f"distilled_{job.kind}_b{budgets}_f{s.synthetic_fraction:g}_{s.size}"))
    for kind, _, s in c.study.logit_students(walks, c.fingerprint):
        students.append((f"{kind}_logits", s, f"distilled_{kind}_logits_w{s.teacher_weight:g}_{s.size}"))
    found: dict[tuple[str, str], list[str]] = {}
    names = {}
    for kind, student, name in students:
        rid = student.run_id(c.fingerprint)
        if rid in c.runs:
            found.setdefault((kind, student.size), []).append(rid)
            names[rid] = name
    return found, names


def estimates(c: Collected, losses: np.ndarray, searched, base: dict | None = None,
              students: dict | None = None) -> dict:
    """Every figure of the study from one vector of losses (one per row of `c.matrix`). With `base` (the point
    estimate) the fits start from its parameters."""
    study, row = c.study, c.rows
    params = {m["config"]["size"]: m["non_embedding_params"] for m in c.runs.values()}
    res: dict = {"best": {}, "laws": {}}
    for (name, size, mult), (ids, _) in searched.items():
        res["best"].setdefault(name, {}).setdefault(mult, {})[size] = float(min(losses[row[i]] for i in ids))

    def law(key: str, x, y) -> PowerLaw | None:
        if len(set(x)) < 3:
            return None
        try:
            fitted = refit(base["laws"][key], x, y) if base and key in base["laws"] else fit_power_law(x, y)
        except ValueError:
            return None
        res["laws"][key] = fitted
        return fitted

    for name, per_budget in res["best"].items():
        sizes = [s for s in study.sizes if s in per_budget.get(1, {})]
        law(f"{name}_vs_params", [params[s] for s in sizes], [per_budget[1][s] for s in sizes])
    member_asymptotes = {}
    for e in c.ensembles:
        ks = sorted(int(k) for k in e["ensembles"])
        fitted = law(f"ensemble_{e['size']}_vs_members", ks,
                     [losses[row[f"ens:{e['job_id']}:{k}"]] for k in ks])
        res["best"].setdefault("ensemble", {}).setdefault(1, {})[e["size"]] = float(
            losses[row[f"ens:{e['job_id']}:{ks[-1]}"]])
        if fitted is not None:
            member_asymptotes[e["size"]] = fitted.C
    res["member_asymptotes"] = member_asymptotes
    sizes = [s for s in study.sizes if s in member_asymptotes]
    law("joint_vs_params", [params[s] for s in sizes], [member_asymptotes[s] for s in sizes])

    for (kind, size), rids in (students or {}).items():  # the best mixture, as a search takes its best point
        res["best"].setdefault(f"distilled_{kind}", {}).setdefault(1, {})[size] = float(
            min(losses[row[r]] for r in rids))
    res["students"] = {rid: float(losses[row[rid]]) for rids in (students or {}).values() for rid in rids}

    std = res["best"].get("standard", {})
    budgets = sorted(std)
    best_std = {m: min(std[m].values()) for m in budgets}
    res["standard_best_per_budget"] = best_std
    data_law = law("standard_vs_tokens", [m * study.budget for m in budgets], [best_std[m] for m in budgets])
    targets = {}
    if "regularized_vs_params" in res["laws"]:
        targets["regularized"] = res["laws"]["regularized_vs_params"].C
    if "joint_vs_params" in res["laws"]:
        targets["joint"] = res["laws"]["joint_vs_params"].C
    if "ensemble" in res["best"]:
        targets["ensemble_best"] = min(res["best"]["ensemble"][1].values())
    if "regularized" in res["best"] and 1 in res["best"]["regularized"]:
        targets["regularized_best"] = min(res["best"]["regularized"][1].values())
    for kind, size in students or {}:
        targets[f"distilled_{kind}_{size}"] = res["best"][f"distilled_{kind}"][1][size]
        if size in res["best"].get("regularized", {}).get(1, {}):
            targets[f"regularized_{size}"] = res["best"]["regularized"][1][size]
    res["targets"] = targets
    res["data_efficiency"] = {k: (data_law.inverse(v) / study.budget if data_law else math.nan)
                              for k, v in targets.items()}
    return res


def analyze(out: Path, n_boot: int = 500, seed: int = 0) -> tuple[dict, dict, list[dict]]:
    """(the JSON contract of `paperclub scaling fit`, the point estimate, the bootstrap replicates)."""
    c = collect(out)
    if c.matrix is None:
        raise UserError(f"{out} holds no finished runs yet: run `paperclub scaling sweep` first")
    searched, (students, names) = _searched(c), _students(c)
    point = estimates(c, c.matrix.mean(1), searched, students=students)
    weights = document_weights(c.chunk_docs, n_boot, seed)
    boots = [estimates(c, c.matrix @ w / w.sum(), searched, base=point, students=students) for w in weights]

    def ci(get) -> list[float]:
        vals = []
        for b in boots:
            try:
                vals.append(float(get(b)))
            except (KeyError, TypeError):
                vals.append(math.nan)
        return percentile_ci(vals)

    asymptotes = {}
    for key, fitted in point["laws"].items():
        if key.endswith("_vs_params") or key == "standard_vs_tokens":
            name = key.removesuffix("_vs_params")
            asymptotes[name] = {"value": fitted.C, "ci95": ci(lambda b, k=key: b["laws"][k].C),
                                "x": key.split("_vs_")[1], "fit": law_dict(fitted)}
    for size, value in point["member_asymptotes"].items():
        asymptotes[f"ensemble_{size}"] = {"value": value, "ci95": ci(lambda b, s=size: b["member_asymptotes"][s]),
                                          "x": "members",
                                          "fit": law_dict(point["laws"][f"ensemble_{size}_vs_members"])}
    efficiency = {k: {"value": v, "ci95": ci(lambda b, k=k: b["data_efficiency"][k]),
                      "loss": point["targets"][k]} for k, v in point["data_efficiency"].items()}
    best = {name: {str(m): {s: {"value": v, "ci95": ci(lambda b, n=name, m=m, s=s: b["best"][n][m][s])}
                            for s, v in per.items()} for m, per in per_budget.items()}
            for name, per_budget in point["best"].items()}
    # the paper's orderings as paired differences: every replicate resamples the same documents for both sides,
    # so a difference's interval is far narrower than either side's own (their shared document noise cancels)
    def pairs(est: dict) -> dict[str, float]:
        best, laws, out = est["best"], est["laws"], {}
        at_d = {name: per.get(1, {}) for name, per in best.items()}
        for s, reg in at_d.get("regularized", {}).items():
            for other in ("standard", "ensemble", "distilled_ensemble", "distilled_self",
                          "distilled_ensemble_logits", "distilled_self_logits"):
                if s in at_d.get(other, {}):
                    out[f"{other}_minus_regularized_{s}"] = at_d[other][s] - reg
        if any(len(rids) > 1 for rids in students.values()):  # each mixture on its own, beside the best
            for rid, loss in est["students"].items():
                size = c.runs[rid]["config"]["size"]
                if size in at_d.get("regularized", {}):
                    out[f"{names[rid]}_minus_regularized"] = loss - at_d["regularized"][size]
        if "regularized_vs_params" in laws:
            if at_d.get("standard"):
                out["regularized_asymptote_minus_best_standard"] = (laws["regularized_vs_params"].C
                                                                    - min(at_d["standard"].values()))
            if "joint_vs_params" in laws:
                out["joint_minus_regularized_asymptote"] = laws["joint_vs_params"].C - laws["regularized_vs_params"].C
        return out

    comparisons = {k: {"value": v, "ci95": ci(lambda b, k=k: pairs(b)[k])} for k, v in pairs(point).items()}
    certified = {f"{n}/{s}/{m}x": ok for (n, s, m), (_, ok) in searched.items()}
    result = {
        "asymptotes": asymptotes,
        "data_efficiency": efficiency,
        "comparisons": comparisons,
        "runs": len(c.runs),
        "ensembles": len(c.ensembles),
        "best_loss": best,
        "certified": certified,
        "standard_best_per_budget": {str(k): v for k, v in point["standard_best_per_budget"].items()},
        "budget_tokens": c.study.budget,
        "params": {m["config"]["size"]: m["non_embedding_params"] for m in c.runs.values()},
        "bootstrap": {"replicates": n_boot, "unit": "validation document", "documents": int(len(
            np.unique(c.chunk_docs))), "seed": seed},
        "paper": PAPER,
        "corpus": c.fingerprint,
        "skipped": c.skipped,
        "students": {names[rid]: {"run_id": rid, "val_loss": v, "ci95": ci(lambda b, r=rid: b["students"][r])}
                     for rid, v in point["students"].items()},
        "table": [{"size": m["config"]["size"], "budget": m["config"]["tokens"] // c.study.budget,
                   "lr": m["config"]["lr"], "weight_decay": m["config"]["weight_decay"],
                   "epochs": m["config"]["epochs"], "seed": m["config"]["seed"],
                   "synthetic": bool(m["config"]["synthetic"]), "val_loss": m["val_loss"],
                   "tokens_per_s": m.get("tokens_per_s")} for m in c.runs.values()],
    }
    return result, point, boots
