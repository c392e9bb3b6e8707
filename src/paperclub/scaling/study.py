"""A study file (TOML) and the runs it asks for, recipe by recipe.

```toml
[corpus]                      # how the token pool is made (corpus.CorpusConfig)
source = "python-stdlib"
vocab_size = 2048

[train]                       # fields of train.RunConfig shared by every run
batch_size = 8
seq_len = 256

[study]
budget = 262144               # D, in tokens
sizes = ["s1", "s2", "s3", "s4"]

[recipes.standard]            # weight decay fixed at the default; LR and epochs tuned; at D, 2D, 4D, 8D
budgets = [1, 2, 4, 8]
weight_decay = [0.1]
lr = [0.001, 0.003, 0.01, 0.03]
epochs = [1, 2, 4, 8, 16]
start = {lr = 0.003, weight_decay = 0.1, epochs = 2}

[recipes.regularized]         # LR, weight decay and epochs tuned together
budgets = [1]
...

[recipes.ensemble]            # K members per size at the regularized optimum, epochs x2 and weight decay x0.5
members = 8
epochs_factor = 2
weight_decay_factor = 0.5

[recipes.distill]             # students trained on real text mixed with their teacher's samples
students = ["s2"]
teachers = ["ensemble", "self"]   # the ensemble of the student's size, or its own regularized model
synthetic_fraction = 0.5      # share of each epoch's sequences that are teacher text (or a list: one student each)
synthetic_budgets = 4         # teacher text written, in multiples of D (or a list: one teacher file each)
prefix = 32                   # each sample continues a window of this many real tokens
teacher_weight = [0.5]        # logit distillation: students on the real text matching the teacher's logits
```

With lists for `synthetic_fraction` and `synthetic_budgets`, each (teacher, budget, fraction) is a student of its
own (the mixture weight and the amount of teacher text are the distillation's knobs); `scaling fit` reports each
and takes the best per teacher, as a search takes its best point.

Each recipe is a planner: from the finished runs it says what to run next (`Study.wanted`), so the sweep is a
loop of "plan, run, plan again" that is resumable by construction. A local search (`search.walk`) runs per
(recipe, size, budget); the ensemble recipe waits for the regularized search of its size to be certified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from paperclub.errors import UserError
from paperclub.scaling import search
from paperclub.scaling.corpus import CorpusConfig
from paperclub.scaling.ladder import LADDER
from paperclub.scaling.train import RunConfig

log = logging.getLogger(__name__)

SEARCH_AXES = ("lr", "weight_decay", "epochs")
RECIPES = ("standard", "regularized", "ensemble", "distill")
TEACHERS = ("ensemble", "self")


@dataclass(frozen=True)
class SearchRecipe:
    name: str
    budgets: tuple[int, ...]  # multiples of the study's budget D
    axes: dict[str, tuple[float, ...]]
    start: dict[str, float]


@dataclass(frozen=True)
class EnsembleRecipe:
    members: int = 8
    epochs_factor: float = 2.0
    weight_decay_factor: float = 0.5
    of: str = "regularized"  # whose certified point the members start from


@dataclass(frozen=True)
class DistillRecipe:
    students: tuple[str, ...]
    teachers: tuple[str, ...] = TEACHERS
    synthetic_fraction: tuple[float, ...] = (0.5,)  # one student per value
    synthetic_budgets: tuple[int, ...] = (4,)  # one teacher file (and one student per fraction) per value
    prefix: int = 32
    seed: int = 0
    teacher_weight: tuple[float, ...] = ()  # logit distillation: one student per weight and teacher (none: off)

    def mixtures(self, budget: int, seq_len: int) -> list[tuple[int, float]]:
        """The (teacher text in multiples of D, mixture weight) pairs of the grid that can be trained: a student
        draws fraction / (1 - fraction) x its real sequences of fresh teacher samples each epoch, so the file must
        hold that many."""
        real = len(range(0, budget - seq_len, seq_len))  # train.sequences of the budget
        return [(b, f) for b in self.synthetic_budgets for f in self.synthetic_fraction
                if round(real * f / (1 - f)) <= b * budget // (seq_len + 1)]


@dataclass(frozen=True)
class SynthJob:
    """Write teacher text for one student: `teacher` runs (one, or an ensemble's members) continue prefixes of
    the student's budget."""

    kind: str  # "ensemble" or "self"
    size: str
    tokens: int  # the student's budget (prompts come from it)
    teacher: tuple[RunConfig, ...]
    samples: int
    prefix: int
    seed: int

    def job_id(self) -> str:
        blob = json.dumps([[m.identity() for m in self.teacher], self.samples, self.prefix, self.seed], sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"synthetic-{self.kind}-{self.size}-D{self.tokens}-{digest}"

    def file(self) -> str:
        """Where the samples go, relative to the study folder (student runs name it so)."""
        return f"synthetic/{self.job_id()}.u16"


@dataclass(frozen=True)
class EnsembleJob:
    """Evaluate the ensembles of the first 1, 2, 4, ... members of one size (their runs must be finished)."""

    size: str
    tokens: int
    members: tuple[RunConfig, ...]

    def job_id(self) -> str:
        blob = json.dumps([m.identity() for m in self.members], sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"ensemble-{self.size}-D{self.tokens}-k{len(self.members)}-{digest}"


@dataclass
class Study:
    corpus: CorpusConfig
    train: dict[str, Any]
    budget: int
    sizes: list[str]
    searches: list[SearchRecipe] = field(default_factory=list)
    ensemble: EnsembleRecipe | None = None
    distill: DistillRecipe | None = None
    source: str = ""

    def run_config(self, size: str, budget_multiple: int, p: search.Point, **extra) -> RunConfig:
        values = dict(p)
        return RunConfig(size=size, tokens=self.budget * budget_multiple, epochs=int(values["epochs"]),
                         lr=float(values["lr"]), weight_decay=float(values["weight_decay"]), **self.train, **extra)

    def walks(self, loss) -> dict[tuple[str, str, int], search.Walk]:
        """Every local search of the study replayed against `loss(RunConfig) -> float | None`."""
        out = {}
        for recipe in self.searches:
            for size in self.sizes:
                for mult in recipe.budgets:
                    out[recipe.name, size, mult] = search.walk(
                        recipe.start, recipe.axes, lambda p, s=size, m=mult: loss(self.run_config(s, m, p)))
        return out

    def ensemble_members(self, walks, size: str) -> tuple[RunConfig, ...] | None:
        ens = self.ensemble
        w = walks.get((ens.of, size, 1)) if ens else None
        if ens is None or w is None or w.certified is None:
            return None
        best = dict(w.certified)
        epochs = max(1, round(best["epochs"] * ens.epochs_factor))
        p = (("lr", best["lr"]), ("weight_decay", best["weight_decay"] * ens.weight_decay_factor), ("epochs", epochs))
        return tuple(self.run_config(size, 1, p, seed=k, data_seed=k) for k in range(ens.members))

    def teachers(self, walks) -> list[tuple[str, search.Point, str, tuple[RunConfig, ...]]]:
        """(student size, its regularized optimum, teacher kind, teacher runs) for every student size and teacher
        the study names whose teacher is known (the regularized search certified; for "ensemble", its members)."""
        d, out = self.distill, []
        for size in d.students if d else ():
            w = walks.get(("regularized", size, 1))
            if w is None or w.certified is None:
                continue
            runs = {"self": (self.run_config(size, 1, w.certified),), "ensemble": self.ensemble_members(walks, size)}
            out += [(size, w.certified, kind, runs[kind]) for kind in d.teachers if runs[kind] is not None]
        return out

    def synth_jobs(self, walks) -> list[tuple[SynthJob, RunConfig]]:
        """Per (student, teacher) whose teacher is known: the teacher-text job and the student run it feeds."""
        out = []
        for size, point, kind, teacher in self.teachers(walks):
            seq_len = teacher[0].seq_len  # samples are seq_len + 1 tokens
            for budgets, fraction in self.distill.mixtures(self.budget, seq_len):
                samples = budgets * self.budget // (seq_len + 1)
                job = SynthJob(kind, size, self.budget, teacher, samples, self.distill.prefix, self.distill.seed)
                out.append((job, self.run_config(size, 1, point, synthetic=job.file(), synthetic_fraction=fraction)))
        return out

    def logit_students(self, walks, fingerprint: str) -> list[tuple[str, tuple[RunConfig, ...], RunConfig]]:
        """(teacher kind, teacher runs, student) per logit-distilled student whose teacher is known: the student
        trains on the real text alone, matching its teacher's averaged logits with `teacher_weight` of its loss.
        The student names its teachers by run id, so the corpus `fingerprint` is needed."""
        out = []
        for size, point, kind, teacher in self.teachers(walks):
            ids = tuple(t.run_id(fingerprint) for t in teacher)
            out += [(kind, teacher, self.run_config(size, 1, point, teacher=ids, teacher_weight=w))
                    for w in self.distill.teacher_weight]
        return out

    def wanted(self, loss, evaluated, fingerprint: str = "") -> tuple[list[RunConfig], list[EnsembleJob | SynthJob]]:
        """Runs and other jobs (ensemble evaluations, teacher text) that the study needs next, given the finished
        runs (`loss`) and the other finished jobs (`evaluated(job) -> bool`); logit-distilled students only with
        the corpus `fingerprint` (their teachers are named by run id)."""
        walks = self.walks(loss)
        runs: dict[RunConfig, None] = {}
        for (_, size, mult), w in walks.items():
            for p in w.pending:
                runs[self.run_config(size, mult, p)] = None
        jobs: dict[str, EnsembleJob | SynthJob] = {}
        for size in self.sizes:
            members = self.ensemble_members(walks, size)
            if members is None:
                continue
            todo = [m for m in members if loss(m) is None]
            for m in todo:
                runs[m] = None
            job = EnsembleJob(size, self.budget, members)
            if not todo and not evaluated(job):
                jobs[job.job_id()] = job
        for job, student in self.synth_jobs(walks):
            if loss(student) is not None:
                continue  # the student is trained: its teacher text (scratch, not committed) is not needed again
            if any(loss(t) is None for t in job.teacher):
                continue  # the ensemble's members are still training
            if not evaluated(job):
                jobs[job.job_id()] = job  # one teacher file feeds each fraction's student
            else:
                runs[student] = None
        for _, teachers, student in self.logit_students(walks, fingerprint) if fingerprint else []:
            if loss(student) is None and all(loss(t) is not None for t in teachers):
                runs[student] = None
        return list(runs), list(jobs.values())


def _axes(name: str, table: dict) -> tuple[dict[str, tuple[float, ...]], dict[str, float]]:
    axes = {}
    for axis in SEARCH_AXES:
        values = table.get(axis)
        if not isinstance(values, list) or not values or not all(isinstance(v, int | float) for v in values):
            raise UserError(f"recipes.{name}.{axis}: expected a list of numbers (one value fixes it)")
        axes[axis] = tuple(sorted(float(v) for v in values))
    start = table.get("start", {a: axes[a][len(axes[a]) // 2] for a in SEARCH_AXES})
    if not isinstance(start, dict):
        raise UserError(f"recipes.{name}.start: expected a table like {{lr = 0.003, weight_decay = 0.1, epochs = 4}}")
    start = {a: float(start[a]) if a in start else axes[a][0] for a in SEARCH_AXES}
    search.check_start(start, axes)
    if any(e < 1 or e != int(e) for e in axes["epochs"]):
        raise UserError(f"recipes.{name}.epochs: expected whole numbers >= 1")
    return axes, start


def parse_study(data: dict, source: str = "") -> Study:
    known = {"corpus", "train", "study", "recipes"}
    if unknown := set(data) - known:
        raise UserError(f"study file: unknown section(s) {', '.join(sorted(unknown))}; expected {', '.join(known)}")
    try:
        corpus = CorpusConfig(**data.get("corpus", {}))
    except TypeError as e:
        raise UserError(f"study file [corpus]: {e}") from None
    train = dict(data.get("train", {}))
    allowed = {f.name for f in fields(RunConfig)} - {"size", "tokens", "epochs", "lr", "weight_decay", "seed",
                                                     "data_seed", "synthetic", "synthetic_fraction", "teacher",
                                                     "teacher_weight"}
    if unknown := set(train) - allowed:
        raise UserError(f"study file [train]: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                        f"{', '.join(sorted(allowed))}")
    study = data.get("study", {})
    budget, sizes = study.get("budget"), study.get("sizes")
    if not isinstance(budget, int) or budget <= 0:
        raise UserError("study file [study]: budget must be a positive number of tokens")
    if not isinstance(sizes, list) or not sizes or any(s not in LADDER for s in sizes):
        raise UserError(f"study file [study]: sizes must be a list of ladder rungs ({', '.join(LADDER)})")
    recipes = data.get("recipes", {})
    if unknown := set(recipes) - set(RECIPES):
        raise UserError(f"study file: unknown recipe(s) {', '.join(sorted(unknown))}; known: {', '.join(RECIPES)}")
    searches = []
    for name in ("standard", "regularized"):
        if name in recipes:
            table = recipes[name]
            budgets = table.get("budgets", [1])
            if not isinstance(budgets, list) or not all(isinstance(b, int) and b >= 1 for b in budgets):
                raise UserError(f"recipes.{name}.budgets: expected multiples of the budget, like [1, 2, 4, 8]")
            axes, start = _axes(name, table)
            searches.append(SearchRecipe(name, tuple(budgets), axes, start))
    ensemble = None
    if "ensemble" in recipes:
        try:
            ensemble = EnsembleRecipe(**recipes["ensemble"])
        except TypeError as e:
            raise UserError(f"recipes.ensemble: {e}") from None
        of = {s.name: s for s in searches}.get(ensemble.of)
        if of is None or 1 not in of.budgets or ensemble.members < 1:
            raise UserError("recipes.ensemble: needs members >= 1 and `of` naming a recipe searched at budget 1")
    distill = None
    if "distill" in recipes:
        try:
            table = dict(recipes["distill"])
            table["students"] = tuple(table.get("students", ()))
            table["teachers"] = tuple(table.get("teachers", TEACHERS))
            for knob in ("synthetic_fraction", "synthetic_budgets", "teacher_weight"):
                if knob in table:
                    value = table[knob]
                    values = value if isinstance(value, list) else [value]
                    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                        raise UserError(f"recipes.distill.{knob}: expected a number or a list of numbers")
                    table[knob] = tuple(dict.fromkeys(values))
            distill = DistillRecipe(**table)
        except TypeError as e:
            raise UserError(f"recipes.distill: {e}") from None
        if not distill.students or any(s not in sizes for s in distill.students):
            raise UserError("recipes.distill.students: list sizes of the study")
        if any(t not in TEACHERS for t in distill.teachers) or ("ensemble" in distill.teachers and ensemble is None):
            raise UserError(f"recipes.distill.teachers: choose from {TEACHERS} (ensemble needs [recipes.ensemble])")
        if "regularized" not in {r.name for r in searches}:
            raise UserError("recipes.distill needs [recipes.regularized]: students train at its optimum")
        if not all(0 < w <= 1 for w in distill.teacher_weight):
            raise UserError("recipes.distill.teacher_weight: each weight in (0, 1]")
        if (not all(0 < f < 1 for f in distill.synthetic_fraction) or distill.prefix < 1
                or not all(isinstance(b, int) and b >= 1 for b in distill.synthetic_budgets)):
            raise UserError("recipes.distill: synthetic_fraction in (0, 1), synthetic_budgets whole numbers >= 1, "
                            "prefix >= 1")
        seq_len = train.get("seq_len", RunConfig.seq_len)
        grid = [(b, f) for b in distill.synthetic_budgets for f in distill.synthetic_fraction]
        usable = distill.mixtures(budget, seq_len)
        if not usable:
            raise UserError("recipes.distill: no synthetic_budgets is enough teacher text for its synthetic_fraction "
                            "(a fraction f draws f / (1 - f) D of fresh samples per epoch)")
        if skipped := [m for m in grid if m not in usable]:
            log.warning("recipes.distill: leaving out (synthetic_budgets, synthetic_fraction) = %s: too little "
                        "teacher text for that mixture", ", ".join(map(str, skipped)))
    s = Study(corpus, train, budget, list(sizes), searches, ensemble, distill, source)
    try:  # the shared run fields must make valid runs
        RunConfig(size=sizes[0], tokens=budget, epochs=1, lr=1e-3, weight_decay=0.0, **train)
    except TypeError as e:
        raise UserError(f"study file [train]: {e}") from None
    return s


def load_study(path: Path) -> Study:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"study file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"study file {path} is not valid TOML: {e}") from None
    return parse_study(data, str(path))
