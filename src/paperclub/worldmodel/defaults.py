"""Per-environment defaults that the `paperclub lewm` commands share (collect, train, plan)."""

from __future__ import annotations

ENV_DEFAULTS = {  # per-environment defaults shared by collect/train/plan
    # horizon: CEM's action blocks; Push-T's goals are 2 blocks ahead, and a 5-block horizon lets CEM find plans
    # that fool the model (30% against 59% with 3 blocks over 150 episodes: BENCHMARKS.md)
    "tworoom": {"episodes": 300, "steps": 100, "frameskip": 5, "goal_offset": 25, "max_steps": 50, "horizon": 5},
    "pusht": {"episodes": 300, "steps": 100, "frameskip": 5, "goal_offset": 10, "max_steps": 30, "horizon": 3},
}


def or_default(value, default):
    return default if value is None else value
