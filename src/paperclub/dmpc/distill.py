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
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from paperclub.dmpc import bc
from paperclub.dmpc.dataset import Dataset
from paperclub.dmpc.evaluate import run_episodes

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    states: int = 4_000  # dataset states labelled by the planner
    rollouts: int = 0  # planner episodes whose visited states are labelled too
    dagger: int = 0  # rounds of student episodes labelled by the planner
    dagger_episodes: int = 10  # student episodes per round
    label_batch: int = 64  # states planned for in one batched SSR call
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
                         progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` dataset states (drawn without replacement) and the planner's first action at each."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(data), size=min(count, len(data)), replace=False))
    states, actions = dataset_histories(data, rows, history)
    labels = []
    for i in tqdm(range(0, len(rows), batch), desc="label states with D-MPC", unit="batch", disable=not progress):
        labels.append(planner.plan(states[i: i + batch], actions[i: i + batch])[:, 0])
    return states[:, -1], torch.cat(labels)


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


def distill(planner, env: str, history: int, data: Dataset | None, out: Path, cfg: DistillConfig,
            progress: bool = True, meta: dict | None = None) -> dict:
    """Label states with `planner` (a D-MPC SSRPlanner), fit the policy, write the `distilled` checkpoint `out`.
    Returns its summary (also stored in config.json under `distill`)."""
    xs, ys, sources = [], [], {}
    if data is not None and cfg.states:
        s, a = label_dataset_states(planner, data, cfg.states, history, cfg.label_batch, cfg.seed, progress)
        xs.append(s)
        ys.append(a)
        sources["dataset_states"] = len(s)
    if cfg.rollouts:
        rec = Recorder(planner)
        result = run_episodes(env, rec, cfg.rollouts, cfg.seed + 10_000, history=history, progress=progress)
        xs.append(torch.cat(rec.states))
        ys.append(torch.cat(rec.actions))
        sources.update(rollout_states=len(xs[-1]), rollout_mean_return=result["mean_return"])
    states, actions = torch.cat(xs), torch.cat(ys)
    policy, loss = bc.fit_policy(states, actions, env, cfg.fit, "fit distilled policy", progress)
    rounds = []
    for r in range(cfg.dagger):
        rollout = Recorder(planner, driver=bc.PolicyPlanner(policy))
        # seeds apart from the planner's rollouts (seed + 10,000) and from evaluation seeds
        result = run_episodes(env, rollout, cfg.dagger_episodes, cfg.seed + 20_000 + 1_000 * r, history=history,
                              progress=progress)
        states = torch.cat([states, *rollout.states])
        actions = torch.cat([actions, *rollout.actions])
        rounds.append({"round": r + 1, "student_mean_return": result["mean_return"],
                       "student_normalized_score": result["normalized_score"]["mean"],
                       "new_labels": sum(len(x) for x in rollout.states), "labels": len(states)})
        log.info("DAgger round %d: the student scored %.1f; %d labels", r + 1,
                 result["normalized_score"]["mean"], len(states))
        policy, loss = bc.fit_policy(states, actions, env, cfg.fit, f"fit distilled policy (DAgger {r + 1})",
                                     progress)
    if rounds:
        sources["dagger"] = rounds
    rmse = float(((policy.act(states) - actions) ** 2).mean().sqrt())
    speed = bc.actions_per_s(policy, states[:200])
    summary = {**sources, "labels": len(states), "fit_loss": loss, "label_rmse": rmse,
               "label_action_std": float(actions.std()), "policy_actions_per_s": speed}
    bc.save(out, policy, "distilled", {**(meta or {}), "distill": summary, "train": asdict(cfg)})
    log.info("distilled %s: %s", out, summary)
    return summary
