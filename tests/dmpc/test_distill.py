import numpy as np
import pytest
import torch

from paperclub.dmpc import bc
from paperclub.dmpc.distill import DistillConfig, dataset_histories, distill
from paperclub.errors import UserError

from .helpers import toy_dataset


class SmoothPlanner:
    """A stand-in teacher with a known, smooth first action: a = 2 tanh(s_0 - s_2 / 2) (one action dim); it also
    records which histories it was asked about."""

    def __init__(self):
        self.calls = []

    def plan(self, states, actions):
        self.calls.append((states.clone(), actions.clone()))
        s = states[:, -1]
        return (2 * torch.tanh(s[:, :1] - 0.5 * s[:, 2:3]))[:, None]


def test_dataset_histories_pad_at_episode_starts():
    data = toy_dataset(episode_lengths=(3, 4))  # obs[i] = i
    states, actions = dataset_histories(data, np.array([0, 4, 6]), history=2)
    assert states[:, :, 0].tolist() == [[0, 0, 0], [3, 3, 4], [4, 5, 6]]
    assert actions[0].abs().sum() == 0 and actions[1, 0].abs().sum() == 0
    torch.testing.assert_close(actions[1, 1], torch.as_tensor(data.actions[3]))
    torch.testing.assert_close(actions[2], torch.as_tensor(data.actions[4:6]))


def test_the_distilled_policy_matches_its_teacher_and_is_fast(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = toy_dataset(episode_lengths=(400, 400, 400), act_dim=1)
    data.observations = rng.uniform(-1.5, 1.5, data.observations.shape).astype(np.float32)
    teacher = SmoothPlanner()
    cfg = DistillConfig(states=1000, rollouts=1, seed=0, fit=bc.FitConfig(steps=1500, hidden=64, layers=2))
    summary = distill(teacher, "pendulum", 1, data, tmp_path / "d", cfg, progress=False)
    assert summary["dataset_states"] == 1000 and summary["rollout_states"] == 200  # one pendulum episode
    assert summary["labels"] == 1200
    # within a tolerance on its training labels: measured about 2% of the labels' spread, and 4300 actions/s on
    # one loaded core
    assert summary["label_rmse"] < 0.1 * summary["label_action_std"], summary
    assert summary["policy_actions_per_s"] >= 1000, summary
    policy, config = bc.load(tmp_path / "d", kind="distilled", env="pendulum")
    assert config["distill"]["labels"] == 1200
    s = torch.as_tensor(data.observations[:50])
    torch.testing.assert_close(policy.act(s), teacher.plan(s[:, None], torch.zeros(50, 0, 1))[:, 0],
                               atol=0.15, rtol=0)
    assert bc.actions_per_s(policy, s, seconds=0.3) >= 1000
    # the teacher saw real histories (H = 1): s_{t-1} then s_t
    states, _ = teacher.calls[0]
    assert states.shape[1:] == (2, 3)


def test_dagger_labels_the_states_the_student_visits_with_the_teachers_action(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    data = toy_dataset(episode_lengths=(300,), act_dim=1)
    data.observations = rng.uniform(-1.5, 1.5, data.observations.shape).astype(np.float32)
    teacher = SmoothPlanner()
    cfg = DistillConfig(states=300, rollouts=0, dagger=2, dagger_episodes=1, seed=0,
                        fit=bc.FitConfig(steps=300, hidden=32, layers=2))
    summary = distill(teacher, "pendulum", 1, data, tmp_path / "d", cfg, progress=False)
    # two rounds of one 200-step pendulum episode each, driven by the student
    assert [r["new_labels"] for r in summary["dagger"]] == [200, 200]
    assert summary["labels"] == 300 + 400 == summary["dagger"][-1]["labels"]
    # the student drove: the states the teacher was asked about in the rounds are not dataset states, and the
    # teacher's answer there is what the last fit was trained on (the policy's fit stays close to it)
    policy, config = bc.load(tmp_path / "d", kind="distilled", env="pendulum")
    asked = torch.cat([c[0][:, -1] for c in teacher.calls[-400:]])
    assert asked.shape == (400, 3) and config["distill"]["dagger"][0]["round"] == 1
    wanted = teacher.plan(asked[:, None], torch.zeros(400, 0, 1))[:, 0]
    assert float(((policy.act(asked) - wanted) ** 2).mean().sqrt()) < 0.25 * float(wanted.std())


class NoisyPlanner(SmoothPlanner):
    """The smooth teacher plus noise from its own generator, as the SSR planner draws: a resumed distillation is
    exact only if each part's draws do not depend on the parts labelled before it in the same process."""

    def __init__(self):
        super().__init__()
        self.generator = torch.Generator().manual_seed(123)

    def plan(self, states, actions):
        clean = super().plan(states, actions)
        return clean + 0.1 * torch.randn(clean.shape, generator=self.generator)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path / "policy.safetensors")


def test_a_killed_distillation_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    import paperclub.dmpc.distill as distill_mod

    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    data = toy_dataset(episode_lengths=(300,), act_dim=1)
    data.observations = rng.uniform(-1.5, 1.5, data.observations.shape).astype(np.float32)
    cfg = DistillConfig(states=300, rollouts=1, dagger=2, dagger_episodes=1, label_batch=32, part_batches=2,
                        seed=0, fit=bc.FitConfig(steps=200, hidden=32, layers=2))
    whole = distill(NoisyPlanner(), "pendulum", 1, data, tmp_path / "whole", cfg, progress=False)

    # the same run, killed during its second DAgger round
    real, calls = distill_mod.run_episodes, []

    def dies_in_round_two(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 3:  # the rollouts, DAgger round 1, then round 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(distill_mod, "run_episodes", dies_in_round_two)
    try:
        distill(NoisyPlanner(), "pendulum", 1, data, tmp_path / "killed", cfg, progress=False)
    except KeyboardInterrupt:
        pass
    labels = distill_mod.labels_dir(tmp_path / "killed")
    assert sorted(p.name for p in labels.glob("*.json")) == [
        "dagger-001.json", "dataset-0000.json", "dataset-0001.json", "dataset-0002.json", "dataset-0003.json",
        "dataset-0004.json", "plan.json", "rollouts.json"]  # 300 states in parts of 64
    assert not (tmp_path / "killed").exists()

    # resumed in a new process (a fresh planner: its generator starts over), only round 2 is run again
    monkeypatch.setattr(distill_mod, "run_episodes", real)
    teacher = NoisyPlanner()
    resumed = distill(teacher, "pendulum", 1, data, tmp_path / "killed", cfg, progress=False)
    assert len(teacher.calls) == 200  # one 200-step episode of round 2, nothing before it
    for key in ("labels", "dataset_states", "rollout_states", "dagger", "label_rmse", "fit_loss"):
        assert resumed[key] == whole[key], key
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # finished: running again does nothing; other options are refused with a line that names them
    again = NoisyPlanner()
    assert distill(again, "pendulum", 1, data, tmp_path / "killed", cfg, progress=False) == resumed
    assert again.calls == []
    other = DistillConfig(**{**cfg.__dict__, "states": 200})
    (tmp_path / "killed" / "config.json").unlink()
    with pytest.raises(UserError, match=r"other options \(train.states 300 -> 200\)"):
        distill(NoisyPlanner(), "pendulum", 1, data, tmp_path / "killed", other, progress=False)
