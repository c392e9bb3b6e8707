import json

import pytest

from paperclub.cli import main

from .helpers import toy_dataset


def one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err, err


def test_bad_inputs_get_one_line_and_exit_2(tmp_path, capsys):
    one_line_error(capsys, ["dmpc", "eval", "--env", "walker2d", "--reward", "fly", "--planner", "random"],
                   "unknown reward 'fly' for env walker2d")
    one_line_error(capsys, ["dmpc", "eval", "--env", "hopper", "--variant", "broken-ankle", "--planner", "random"],
                   "unknown variant 'broken-ankle' for env hopper")
    one_line_error(capsys, ["dmpc", "eval", "--env", "pendulum"], "--planner dmpc needs --ckpt DIR")
    (tmp_path / "bad.h5").write_text("garbage")
    one_line_error(capsys, ["dmpc", "train", "--data", str(tmp_path / "bad.h5"), "--out", str(tmp_path / "ck")],
                   "cannot be read as HDF5")
    one_line_error(capsys, ["dmpc", "collect", "--env", "pendulum", "--kind", "random", "--episodes", "0",
                            "--out", str(tmp_path / "x.h5")], "--episodes 0: expected a positive number")
    with pytest.raises(SystemExit) as exited:  # argparse's choices
        main(["dmpc", "eval", "--env", "ant"])
    assert exited.value.code == 2 and "invalid choice: 'ant'" in capsys.readouterr().err


def test_collect_train_eval_through_the_cli(tmp_path, capsys):
    data = tmp_path / "d.h5"
    assert main(["dmpc", "collect", "--env", "pendulum", "--kind", "random", "--episodes", "2", "--out", str(data),
                 "--quiet"]) == 0
    assert "2 episodes, 400 transitions" in capsys.readouterr().out
    ck = tmp_path / "ck"
    assert main(["dmpc", "train", "--data", str(data), "--out", str(ck), "--steps", "4", "--d-model", "16",
                 "--layers", "1", "--heads", "2", "--batch-size", "8", "--horizon", "4", "--quiet"]) == 0
    one_line_error(capsys, ["dmpc", "eval", "--env", "walker2d", "--ckpt", str(ck), "--episodes", "1"],
                   "trained for env pendulum, not walker2d")
    one_line_error(capsys, ["dmpc", "eval", "--env", "pendulum", "--ckpt", str(ck), "--chunk", "5"],
                   "--chunk 5 exceeds the checkpoint's horizon 4")
    out = tmp_path / "e.json"
    assert main(["dmpc", "eval", "--env", "pendulum", "--ckpt", str(ck), "--episodes", "2", "--candidates", "4",
                 "--chunk", "4", "--proposal-steps", "2", "--dynamics-steps", "2", "--quiet", "--json",
                 str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["episodes"] == 2 and result["planner"] == "dmpc" and len(result["returns"]) == 2
    assert result["normalized_score"]["mean"] == pytest.approx(
        sum(100 * (r + 1255.5) / 1103.1 for r in result["returns"]) / 2)
    assert result["actions_per_s"] > 0 and result["episode_lengths"] == [200, 200]
    assert result["planner_config"]["chunk"] == 4

    # a value ensemble for the checkpoint, then planning with its pessimistic value
    plan = ["dmpc", "eval", "--env", "pendulum", "--episodes", "1", "--candidates", "4", "--chunk", "4",
            "--proposal-steps", "2", "--dynamics-steps", "2", "--quiet"]
    one_line_error(capsys, plan + ["--ckpt", str(ck), "--value-pessimism", "1"], "needs a value ensemble")
    one_line_error(capsys, plan + ["--ckpt", str(ck), "--value-pessimism", "-1"], "--value-pessimism -1.0: expected")
    one_line_error(capsys, ["dmpc", "train-value", "--ckpt", str(ck), "--out", str(ck)], "--out must differ")
    one_line_error(capsys, ["dmpc", "train-value", "--ckpt", str(ck), "--out", str(tmp_path / "v"), "--members",
                            "0"], "--members 0: expected a positive number")
    assert main(["dmpc", "train-value", "--ckpt", str(ck), "--out", str(tmp_path / "v"), "--members", "3",
                 "--steps", "4", "--batch-size", "8", "--quiet"]) == 0  # the dataset: the one ck recorded
    assert "an mlp value of 3 member(s) trained 4 steps on " + str(data) in capsys.readouterr().out
    assert main(plan + ["--ckpt", str(tmp_path / "v"), "--value-pessimism", "1", "--json", str(out)]) == 0
    config = json.loads(out.read_text())["planner_config"]
    assert config["value_pessimism"] == 1.0 and config["value_members"] == 3 and config["value_arch"] == "mlp"
    # the paper's transformer value, reading the whole plan
    assert main(["dmpc", "train-value", "--ckpt", str(ck), "--out", str(tmp_path / "vt"), "--members", "2",
                 "--arch", "transformer", "--steps", "4", "--batch-size", "8", "--quiet"]) == 0
    assert "a transformer value of 2 member(s)" in capsys.readouterr().out
    assert main(plan + ["--ckpt", str(tmp_path / "vt"), "--value-pessimism", "1", "--json", str(out)]) == 0
    config = json.loads(out.read_text())["planner_config"]
    assert config["value_arch"] == "transformer" and config["value_members"] == 2
    with pytest.raises(SystemExit) as e:
        main(["dmpc", "train-value", "--ckpt", str(ck), "--out", str(tmp_path / "vx"), "--arch", "lstm"])
    assert e.value.code == 2


def test_finetune_dynamics_cli_refuses_another_env(tmp_path, capsys):
    from paperclub.dmpc.dataset import save_dataset
    from paperclub.dmpc.denoiser import DenoiserConfig
    from paperclub.dmpc.train import TrainConfig, train

    train(toy_dataset(), tmp_path / "ck", TrainConfig(steps=2, batch_size=4, horizon=2,
                                                      denoiser=DenoiserConfig(16, 1, 2)), progress=False)
    save_dataset(tmp_path / "w.h5", toy_dataset(obs_dim=17, act_dim=6, env="walker2d"))
    one_line_error(capsys, ["dmpc", "finetune-dynamics", "--ckpt", str(tmp_path / "ck"), "--data",
                            str(tmp_path / "w.h5"), "--out", str(tmp_path / "ck2")],
                   "collected in env walker2d, not pendulum")
