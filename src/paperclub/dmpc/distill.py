"""Distilling the D-MPC planner into a reactive MLP policy (the paper's answer to the planner's run-time cost).

Labels: the SSR planner's first action a*(s_t) at
  - states drawn from the offline dataset (with their real histories, as the planner would see them), and/or
  - the states the planner itself visits when it controls the env (`rollouts` episodes; its executed action is the
    label, so these cost nothing beyond the episodes).
Then the policy of bc.py is regressed on (s_t, a*) by mean squared error. Labels at the teacher's own states leave
the student lost once its small errors take it where the teacher never goes, so `dagger` rounds (DAgger, Ross et
al. 2011) follow: the student fitted so far drives `dagger_episodes` episodes, the planner labels every state the
student visits (the student's action is executed, the planner's is recorded), the labels join the set and the
student is fitted again. The last fit is saved as a `distilled` checkpoint with its fit on the labels, each
round's student return and its actions/s.

Labelling is the slow part (a planner call per state), so it is resumable: the labels are made in parts (dataset
states 16 batches at a time, the planner's rollouts, each DAgger round), and each finished part is written
atomically to `<out>.labels/` beside the checkpoint with what it was made from. A killed run started again with
the same options loads the finished parts and goes on from the first missing one; the planner's random draws are
reseeded per part and the student fits are deterministic, so the result is the one an uninterrupted run gives.
Running again once the checkpoint is written does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from paperclub.atomic import atomic_path, write_json
from paperclub.dmpc import bc
from paperclub.dmpc.dataset import Dataset
from paperclub.dmpc.evaluate import run_episodes
from paperclub.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    states: int = 4_000  # dataset states labelled by the planner
    rollouts: int = 0  # planner episodes whose visited states are labelled too
    dagger: int = 0  # rounds of student episodes labelled by the planner
    dagger_episodes: int = 10  # student episodes per round
    label_batch: int = 64  # states planned for in one batched SSR call
    part_batches: int = 16  # label batches per saved part of the dataset states
    seed: int = 0
    fit: bc.FitConfig = field(default_factory=bc.FitConfig)


def dataset_histories(data: Dataset, rows: np.ndarray, history: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The planner's inputs at dataset rows: states (M, H+1, S) s_{t-H..t} and actions (M, H, A) a_{t-H..t-1},
    padded before an episode's first step with its first state and zero actions (as in training)."""
    starts = np.maximum.accumulate(np.where(np.asarray(data.episode_starts, dtype=bool), np.arange(len(data)), 0))
    back = rows[:, None] - np.arange(history, -1, -1)[None]
    inside = back >= starts[rows][:, None]
    back = np.where(inside, back, starts[rows][:, None])
    states = torch.as_tensor(data.observations[back], dtype=torch.float32)
    actions = torch.as_tensor(data.actions[back[:, :-1]] * inside[:, :-1, None], dtype=torch.float32)
    return states, actions


def label_dataset_states(planner, data: Dataset, count: int, history: int, batch: int, seed: int,
                         progress: bool = True, store: LabelStore | None = None,
                         part_batches: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` dataset states (drawn without replacement) and the planner's first action at each, labelled
    `part_batches` batches at a time (each such part loaded from `store` when it holds it, else saved there)."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(data), size=min(count, len(data)), replace=False))
    states, actions = dataset_histories(data, rows, history)
    labels = []
    per_part = batch * part_batches
    bar = tqdm(total=len(rows), desc="label states with D-MPC", unit="state", disable=not progress)
    for k, start in enumerate(range(0, len(rows), per_part)):
        name = f"dataset-{k:04d}"
        part = store.load(name) if store is not None else None
        if part is None:
            _reseed(planner, seed, name)
            chunk = []
            for i in range(start, min(start + per_part, len(rows)), batch):
                chunk.append(planner.plan(states[i: i + batch], actions[i: i + batch])[:, 0])
                bar.update(len(chunk[-1]))
            part = (states[start: start + per_part, -1], torch.cat(chunk), {})
            if store is not None:
                store.save(name, *part)
        else:
            bar.update(len(part[0]))
        labels.append(part[1])
    bar.close()
    return states[:, -1], torch.cat(labels)


class LabelStore:
    """The finished parts of one distillation's labels, in a directory: `NAME.safetensors` (states, actions) and
    `NAME.json` (what the part measured) per part, and `plan.json`, the options that made them. Opening the
    directory with other options is an error, not a silent mix of two distillations' labels."""

    def __init__(self, root: Path, plan: dict):
        self.root = Path(root)
        saved = self.root / "plan.json"
        if saved.is_file():
            old = json.loads(saved.read_text())
            if old != plan:
                now, then = _flat(plan), _flat(old)
                differ = ", ".join(f"{k} {then.get(k)} -> {now.get(k)}" for k in sorted(now.keys() | then.keys())
                                   if now.get(k) != then.get(k))
                raise UserError(f"{self.root} holds the labels of a distillation with other options ({differ}): pass "
                                "the same options to resume it, or a new --out (or remove that directory)")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(saved, plan)

    def load(self, name: str) -> tuple[torch.Tensor, torch.Tensor, dict] | None:
        if not (self.root / f"{name}.json").is_file():  # written last: a part without it is unfinished
            return None
        tensors = load_file(self.root / f"{name}.safetensors")
        return tensors["states"], tensors["actions"], json.loads((self.root / f"{name}.json").read_text())

    def save(self, name: str, states: torch.Tensor, actions: torch.Tensor, info: dict) -> None:
        with atomic_path(self.root / f"{name}.safetensors") as tmp:
            save_file({"states": states.float().contiguous(), "actions": actions.float().contiguous()}, tmp)
        write_json(self.root / f"{name}.json", info)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _reseed(planner, seed: int, part: str) -> None:
    """Each part's planner draws from its own seed, so a part labelled after a resume is the uninterrupted one."""
    if hasattr(planner, "generator"):
        digest = hashlib.sha256(f"{seed}/{part}".encode()).digest()
        planner.generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class Recorder:
    """Wraps a planner and keeps (s_t, the planner's first action) of every call. The env executes the planner's
    plan, or with a `driver` (DAgger: the student), the driver's, while the planner's action is still the label."""

    def __init__(self, planner, driver=None):
        self.planner, self.driver, self.states, self.actions = planner, driver, [], []

    def plan(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        out = self.planner.plan(states, actions)
        self.states.append(states[:, -1])
        self.actions.append(out[:, 0])
        return out if self.driver is None else self.driver.plan(states, actions)


def labels_dir(out: Path) -> Path:
    """Where the labels of the distillation into `out` are kept: beside it, `<out>.labels`."""
    out = Path(out)
    return out.with_name(out.name + ".labels")


def distill(planner, env: str, history: int, data: Dataset | None, out: Path, cfg: DistillConfig,
            progress: bool = True, meta: dict | None = None) -> dict:
    """Label states with `planner` (a D-MPC SSRPlanner), fit the policy, write the `distilled` checkpoint `out`,
    resuming from the labels kept in `labels_dir(out)`. Returns its summary (also stored in config.json under
    `distill`)."""
    out = Path(out)
    plan = json.loads(json.dumps({**(meta or {}), "train": asdict(cfg), "env": env, "history": history}))
    if (out / "config.json").is_file():
        done = json.loads((out / "config.json").read_text())
        if done.get("plan") == plan:
            log.info("%s is already distilled with these options: nothing to do", out)
            return done["distill"]
    store = LabelStore(labels_dir(out), plan)
    xs, ys, sources = [], [], {}
    if data is not None and cfg.states:
        s, a = label_dataset_states(planner, data, cfg.states, history, cfg.label_batch, cfg.seed, progress,
                                    store, cfg.part_batches)
        xs.append(s)
        ys.append(a)
        sources["dataset_states"] = len(s)
    if cfg.rollouts:
        part = store.load("rollouts")
        if part is None:
            _reseed(planner, cfg.seed, "rollouts")
            rec = Recorder(planner)
            result = run_episodes(env, rec, cfg.rollouts, cfg.seed + 10_000, history=history, progress=progress)
            part = (torch.cat(rec.states), torch.cat(rec.actions), {"rollout_mean_return": result["mean_return"]})
            store.save("rollouts", *part)
        xs.append(part[0])
        ys.append(part[1])
        sources.update(rollout_states=len(part[0]), rollout_mean_return=part[2]["rollout_mean_return"])
    states, actions = torch.cat(xs), torch.cat(ys)
    policy, loss = None, float("nan")
    rounds = []
    for r in range(cfg.dagger):
        name = f"dagger-{r + 1:03d}"
        part = store.load(name)
        if part is None:
            if policy is None:  # the student fitted on every label so far (refitted after a resume)
                policy, loss = bc.fit_policy(states, actions, env, cfg.fit, _fit_desc(r), progress)
            _reseed(planner, cfg.seed, name)
            rollout = Recorder(planner, driver=bc.PolicyPlanner(policy))
            # seeds apart from the planner's rollouts (seed + 10,000) and from evaluation seeds
            result = run_episodes(env, rollout, cfg.dagger_episodes, cfg.seed + 20_000 + 1_000 * r,
                                  history=history, progress=progress)
            part = (torch.cat(rollout.states), torch.cat(rollout.actions),
                    {"round": r + 1, "student_mean_return": result["mean_return"],
                     "student_normalized_score": result["normalized_score"]["mean"]})
            store.save(name, *part)
        states = torch.cat([states, part[0]])
        actions = torch.cat([actions, part[1]])
        policy = None  # stale: the next round (or the end) fits on the labels with this round's
        rounds.append({**part[2], "new_labels": len(part[0]), "labels": len(states)})
        log.info("DAgger round %d: the student scored %.1f; %d labels", r + 1, part[2]["student_normalized_score"],
                 len(states))
    if rounds:
        sources["dagger"] = rounds
    policy, loss = bc.fit_policy(states, actions, env, cfg.fit, _fit_desc(cfg.dagger), progress)
    rmse = float(((policy.act(states) - actions) ** 2).mean().sqrt())
    speed = bc.actions_per_s(policy, states[:200])
    summary = {**sources, "labels": len(states), "fit_loss": loss, "label_rmse": rmse,
               "label_action_std": float(actions.std()), "policy_actions_per_s": speed}
    bc.save(out, policy, "distilled", {**(meta or {}), "distill": summary, "train": asdict(cfg), "plan": plan,
                                       "labels": str(labels_dir(out))})
    log.info("distilled %s: %s", out, summary)
    return summary


def _fit_desc(round_: int) -> str:
    return "fit distilled policy" + (f" (DAgger {round_})" if round_ else "")
