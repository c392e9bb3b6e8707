"""Offline data made here, as D4RL made its own: SAC behaviour policies (stable-baselines3), rolled out.

Kinds: `random` (uniform actions); `scripted` (pendulum only: the swing-up controller of scripted.py, with
--noise; cheap data for tests and demos); `medium` (the SAC policy saved when its evaluation return first reached
a third of the way from the reference minimum to the reference maximum, as D4RL's medium policies reached about a
third of expert); `medium-replay` (SAC's replay buffer up to that moment); `expert` (the policy after the full
--steps budget); `play` (the latest policy with heavy action noise in a variant: walker2d's broken ankle).

SAC training is resumable: every `eval_every` steps the model, its replay buffer and `state.json` (steps, the
evaluation history, when medium was reached) are written atomically under the work directory; running again
continues from there.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from paperclub.atomic import atomic_path, write_json
from paperclub.dmpc.dataset import Dataset
from paperclub.dmpc.envs import check_variant, make_env, task
from paperclub.errors import UserError

log = logging.getLogger(__name__)

KINDS = ("random", "scripted", "medium", "medium-replay", "expert", "play")


@dataclass
class SacConfig:
    steps: int = 1_000_000  # the SAC budget in env steps (expert = the policy at the end of it)
    eval_every: int = 5_000
    eval_episodes: int = 5
    learning_starts: int = 10_000
    seed: int = 0

    @classmethod
    def for_env(cls, env: str, **overrides) -> SacConfig:
        base = cls(steps=30_000, eval_every=1_000, eval_episodes=10, learning_starts=1_000) if env == "pendulum" \
            else cls()
        for key, value in overrides.items():
            if value is not None:
                setattr(base, key, value)
        return base


def medium_target(env: str) -> float:
    """The evaluation return that makes a policy "medium": a third of the way from the reference min to max."""
    t = task(env)
    return t.ref_min + (t.ref_max - t.ref_min) / 3.0


def evaluate_policy(model, env_name: str, episodes: int, seed: int) -> float:
    env = make_env(env_name)
    total = 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
    return total / episodes


def _progress_callback(bar):
    """A stable-baselines3 callback that advances a tqdm bar once per env step."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(1)
            return True

    return Progress()


def train_sac(env_name: str, work: Path, cfg: SacConfig, stop_at_medium: bool = False, progress: bool = True) -> dict:
    """Train (or continue training) SAC under `work`; returns state.json's content. With `stop_at_medium`,
    training ends as soon as the medium snapshot exists."""
    from stable_baselines3 import SAC

    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    env = make_env(env_name, seed=cfg.seed)
    if state_path.exists():
        state = json.loads(state_path.read_text())
        model = SAC.load(work / "latest" / "model.zip", env=env, device="cpu")
        model.load_replay_buffer(work / "latest" / "replay.pkl")
        _cut_last_episode(model.replay_buffer)
        log.info("resuming SAC in %s at step %d", work, state["steps"])
    else:
        state = {"env": env_name, "seed": cfg.seed, "steps": 0, "history": [], "medium_at": None,
                 "medium_target": medium_target(env_name)}
        model = SAC("MlpPolicy", env, learning_starts=cfg.learning_starts, seed=cfg.seed, device="cpu", verbose=0)
    if state["env"] != env_name:
        raise UserError(f"work directory {work} holds a SAC run for {state['env']}, not {env_name}: "
                        "pass another --work")

    def done() -> bool:
        return state["steps"] >= cfg.steps or (stop_at_medium and state["medium_at"] is not None)

    bar = tqdm(total=cfg.steps, initial=state["steps"], desc=f"SAC {env_name}", unit="step", disable=not progress)
    while not done():
        chunk = min(cfg.eval_every, cfg.steps - state["steps"])
        model.learn(chunk, reset_num_timesteps=False, callback=_progress_callback(bar))
        state["steps"] += chunk
        ret = evaluate_policy(model, env_name, cfg.eval_episodes, seed=10_000 + cfg.seed)
        state["history"].append({"steps": state["steps"], "eval_return": ret})
        bar.set_postfix(eval_return=f"{ret:.1f}")
        log.info("SAC %s step %d: eval return %.1f", env_name, state["steps"], ret)
        _save_snapshot(model, work / "latest")
        if state["medium_at"] is None and ret >= state["medium_target"]:
            state["medium_at"] = state["steps"]
            _copy_snapshot(work / "latest", work / "medium")
            log.info("medium policy at step %d (eval return %.1f >= %.1f)", state["steps"], ret,
                     state["medium_target"])
        write_json(state_path, state)  # last: a crash before this line resumes from the previous state
    bar.close()
    return state


def _cut_last_episode(buf) -> None:
    """A resumed run starts a fresh episode: record the stored one as cut by a time limit (done and timeout, which
    SAC's targets treat as a truncation, not a termination)."""
    last = (buf.pos - 1) % buf.buffer_size
    if buf.pos or buf.full:
        buf.dones[last] = 1.0
        buf.timeouts[last] = 1.0


def _save_snapshot(model, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.mkdir()
        model.save(tmp / "model.zip")
        model.save_replay_buffer(tmp / "replay.pkl")


def _copy_snapshot(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copytree(src, tmp)


def rollout(env_name: str, act, episodes: int, seed: int, variant: str | None = None, noise: float = 0.0,
            kind: str = "", progress: bool = True) -> Dataset:
    """Run `episodes` episodes of `act(obs) -> action` (plus Gaussian noise of `noise` half-ranges, clipped) and
    return them as a Dataset. Episode i is reset with seed + i."""
    env = make_env(env_name, variant)
    low, high = env.action_space.low, env.action_space.high
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals",
                                             "timeouts", "episode_starts")}
    for i in tqdm(range(episodes), desc=f"rollout {env_name} {kind}", unit="episode", disable=not progress):
        obs, _ = env.reset(seed=seed + i)
        first, done = True, False
        while not done:
            action = np.asarray(act(obs), dtype=np.float64)
            if noise:
                action = action + noise * (high - low) / 2 * rng.standard_normal(action.shape)
            action = np.clip(action, low, high)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in (("observations", obs), ("actions", action), ("rewards", reward),
                               ("next_observations", next_obs), ("terminals", terminated), ("timeouts", truncated),
                               ("episode_starts", first)):
                rows[key].append(value)
            obs, first, done = next_obs, False, terminated or truncated
    arrays = {k: np.asarray(v, dtype=np.bool_ if k in ("terminals", "timeouts", "episode_starts") else np.float32)
              for k, v in rows.items()}
    return Dataset(**arrays, env=env_name, variant=variant, kind=kind, seed=seed)


def replay_dataset(snapshot: Path, env_name: str, seed: int) -> Dataset:
    """SAC's replay buffer in `snapshot` as a Dataset (actions back in env units)."""
    from stable_baselines3 import SAC

    model = SAC.load(snapshot / "model.zip", env=make_env(env_name), device="cpu")
    model.load_replay_buffer(snapshot / "replay.pkl")
    buf = model.replay_buffer
    n = buf.buffer_size if buf.full else buf.pos
    if buf.full:
        raise UserError("the replay buffer wrapped around; medium-replay needs a buffer as large as the run")
    obs, next_obs = buf.observations[:n, 0], buf.next_observations[:n, 0]
    actions = model.policy.unscale_action(buf.actions[:n, 0])
    ended = buf.dones[:n, 0].astype(bool)
    timeouts = buf.timeouts[:n, 0].astype(bool)
    timeouts[-1] |= not ended[-1]  # the snapshot cut the last episode
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    starts[1:] = ended[:-1] | timeouts[:-1]
    return Dataset(observations=obs.astype(np.float32), actions=actions.astype(np.float32),
                   rewards=buf.rewards[:n, 0].astype(np.float32), next_observations=next_obs.astype(np.float32),
                   terminals=ended & ~timeouts, timeouts=timeouts, episode_starts=starts, env=env_name,
                   kind="medium-replay", seed=seed)


def collect(env_name: str, kind: str, work: Path, episodes: int, sac: SacConfig, variant: str | None = None,
            noise: float | None = None, progress: bool = True, rollout_seed: int | None = None,
            ) -> tuple[Dataset, dict]:
    """The dataset of `kind`, training SAC under `work` first where the kind needs it. Returns it and the facts to
    record beside it (the SAC state). Rollouts reset episode i with `rollout_seed + i` (default: the seed, or for a
    SAC policy the seed + 20000); another `rollout_seed` gives held-out episodes of the same policy."""
    from stable_baselines3 import SAC

    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    check_variant(env_name, variant)  # before any training
    if kind == "play" and variant is None and task(env_name).variants:
        variant = task(env_name).variants[0]
    if kind == "scripted":
        if env_name != "pendulum":
            raise UserError(f"--kind scripted exists for pendulum only, not {env_name}: use medium, expert or random")
        from paperclub.dmpc.scripted import pendulum_swing_up

        noise = 0.0 if noise is None else noise
        seed = sac.seed if rollout_seed is None else rollout_seed
        return rollout(env_name, pendulum_swing_up, episodes, seed, variant, noise=noise, kind=kind,
                       progress=progress), {"noise": noise}
    if kind == "random":
        seed = sac.seed if rollout_seed is None else rollout_seed
        env = make_env(env_name, variant, seed=seed)
        return rollout(env_name, lambda obs: env.action_space.sample(), episodes, seed, variant,
                       kind=kind, progress=progress), {}
    state = train_sac(env_name, work, sac, stop_at_medium=kind in ("medium", "medium-replay"), progress=progress)
    extra = {"sac_steps": state["steps"], "medium_at": state["medium_at"], "medium_target": state["medium_target"],
             "eval_history": state["history"]}
    if kind in ("medium", "medium-replay") and state["medium_at"] is None:
        best = max((h["eval_return"] for h in state["history"]), default=float("nan"))
        raise UserError(f"SAC on {env_name} has not reached the medium return {state['medium_target']:.1f} in "
                        f"{state['steps']} steps (best {best:.1f}): pass a larger --steps to continue the run")
    if kind == "medium-replay":
        if rollout_seed is not None:
            raise UserError("--rollout-seed does not apply to medium-replay: its episodes are SAC's own, not rollouts")
        return replay_dataset(work / "medium", env_name, sac.seed), extra
    snapshot = work / ("medium" if kind == "medium" else "latest")
    model = SAC.load(snapshot / "model.zip", device="cpu")
    act = lambda obs: model.predict(obs, deterministic=False)[0]
    noise = (0.5 if kind == "play" else 0.0) if noise is None else noise
    rollout_seed = sac.seed + 20_000 if rollout_seed is None else rollout_seed
    data = rollout(env_name, act, episodes, seed=rollout_seed, variant=variant, noise=noise, kind=kind,
                   progress=progress)
    data.seed = sac.seed
    extra["noise"] = noise
    extra["rollout_seed"] = rollout_seed
    return data, extra
