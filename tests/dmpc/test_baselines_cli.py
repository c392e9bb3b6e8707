"""The baselines through the CLI: every planner writes the eval JSON contract, the distill and prediction-error
commands run, and bad inputs get one line and exit code 2."""

import json

import pytest

from paperclub.cli import main

from .test_cli import one_line_error

TINY_DMPC = ["--steps", "4", "--d-model", "16", "--layers", "1", "--heads", "2", "--batch-size", "8", "--horizon",
             "4", "--quiet"]
TINY_MLP = ["--steps", "5", "--hidden", "16", "--layers", "1", "--batch-size", "8", "--quiet"]
CONTRACT = {"normalized_score", "mean_return", "episodes", "planner", "actions_per_s"}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("baselines")
    data = root / "d.h5"
    assert main(["dmpc", "collect", "--env", "pendulum", "--kind", "random", "--episodes", "2", "--out", str(data),
                 "--quiet"]) == 0
    held_out = root / "h.h5"
    assert main(["dmpc", "collect", "--env", "pendulum", "--kind", "random", "--episodes", "1", "--seed", "9",
                 "--out", str(held_out), "--quiet"]) == 0
    paths = {"data": data, "held_out": held_out, "dmpc": root / "dmpc", "mbop": root / "mbop", "bc": root / "bc",
             "distilled": root / "distilled"}
    assert main(["dmpc", "train", "--data", str(data), "--out", str(paths["dmpc"]), *TINY_DMPC]) == 0
    assert main(["dmpc", "train-mbop", "--data", str(data), "--out", str(paths["mbop"]), "--members", "2",
                 "--horizon", "3", *TINY_MLP]) == 0
    assert main(["dmpc", "train-bc", "--data", str(data), "--out", str(paths["bc"]), *TINY_MLP]) == 0
    assert main(["dmpc", "distill", "--ckpt", str(paths["dmpc"]), "--out", str(paths["distilled"]), "--states", "16",
                 "--label-batch", "8", "--candidates", "2", "--proposal-steps", "1", "--dynamics-steps", "1",
                 *TINY_MLP]) == 0  # the dataset: the one recorded in the teacher's config.json
    return paths


PLANNER_ARGS = {"dmpc": ["--candidates", "4", "--chunk", "4", "--proposal-steps", "2", "--dynamics-steps", "2"],
                "mbop": ["--candidates", "4", "--mbop-horizon", "2"], "bc": [], "distilled": [], "random": []}


@pytest.mark.parametrize("planner", list(PLANNER_ARGS))
def test_every_planner_writes_the_eval_contract(ckpts, tmp_path, planner):
    out = tmp_path / "e.json"
    ck = ["--ckpt", str(ckpts[planner])] if planner != "random" else []
    assert main(["dmpc", "eval", "--env", "pendulum", "--planner", planner, *ck, "--episodes", "2", "--seed", "3",
                 "--quiet", "--json", str(out), *PLANNER_ARGS[planner]]) == 0
    result = json.loads(out.read_text())
    assert CONTRACT <= set(result), set(result)
    assert set(result["normalized_score"]) == {"mean", "stderr"}
    assert result["planner"] == planner and result["episodes"] == 2 and result["episode_lengths"] == [200, 200]
    assert result["actions_per_s"] > 0 and len(result["returns"]) == 2
    assert result["mean_return"] == pytest.approx(sum(result["returns"]) / 2)
    if planner in ("dmpc", "mbop"):
        assert result["planner_config"]["value_weight"] == 1.0
    if planner == "mbop":
        assert result["planner_config"]["horizon"] == 2 and result["planner_config"]["trajectories"] == 4


@pytest.mark.parametrize("ablation", [["--dynamics", "single-step"], ["--proposal", "mlp"]])
def test_ablations_through_eval(ckpts, tmp_path, ablation):
    out = tmp_path / "e.json"
    assert main(["dmpc", "eval", "--env", "pendulum", "--ckpt", str(ckpts["dmpc"]), "--mbop", str(ckpts["mbop"]),
                 *ablation, "--episodes", "1", "--quiet", "--json", str(out), *PLANNER_ARGS["dmpc"]]) == 0
    result = json.loads(out.read_text())
    assert CONTRACT <= set(result) and result["planner"] == "dmpc"
    assert result["planner_config"][ablation[0][2:]] == ablation[1]
    assert result["planner_config"]["mbop"] == str(ckpts["mbop"])


def test_distilled_checkpoint_records_its_teacher(ckpts):
    config = json.loads((ckpts["distilled"] / "config.json").read_text())
    assert config["format"] == "paperclub.dmpc.distilled/1" and config["teacher"] == str(ckpts["dmpc"])
    assert config["distill"]["dataset_states"] == 16 and config["distill"]["policy_actions_per_s"] > 0


def test_prediction_error_command(ckpts, tmp_path, capsys):
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    assert main(["dmpc", "prediction-error", "--ckpt", str(ckpts["dmpc"]), "--mbop", str(ckpts["mbop"]), "--data",
                 str(ckpts["held_out"]), "--rows", "20", "--dynamics-steps", "2", "--json", str(out), "--plot",
                 str(png)]) == 0
    result = json.loads(out.read_text())
    assert result["horizon"] == [1, 2, 3, 4] and result["rows"] == 20
    for name in ("dmpc", "mbop", "copy"):
        assert len(result[name]["mean"]) == 4 and len(result[name]["stderr"]) == 4
    assert result["copy"]["mean"][0] < result["copy"]["mean"][3]  # s_t drifts further from s_{t+k} as k grows
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "k=4: D-MPC" in capsys.readouterr().out
    # the default 8 samples add D-MPC's mean and one MBOP member, and leave the one-sample figures as they were
    assert result["samples"] == 8 and {"dmpc_mean", "mbop_member"} <= set(result)
    # a sample's squared error is the mean's plus the samples' spread: averaging 8 of them must predict better
    assert sum(result["dmpc_mean"]["mean"]) < sum(result["dmpc"]["mean"])
    one = tmp_path / "one.json"
    assert main(["dmpc", "prediction-error", "--ckpt", str(ckpts["dmpc"]), "--mbop", str(ckpts["mbop"]), "--data",
                 str(ckpts["held_out"]), "--rows", "20", "--dynamics-steps", "2", "--samples", "1", "--json",
                 str(one)]) == 0
    single = json.loads(one.read_text())
    assert single["dmpc"] == result["dmpc"] and single["mbop"] == result["mbop"]
    assert "dmpc_mean" not in single and "mbop_member" not in single


def test_bad_inputs_to_the_baselines(ckpts, tmp_path, capsys):
    ev = ["dmpc", "eval", "--env", "pendulum", "--episodes", "1"]
    one_line_error(capsys, [*ev, "--planner", "dmpc", "--ckpt", str(ckpts["bc"])],
                   "is a behaviour-cloning checkpoint, not a D-MPC one: evaluate it with --planner bc")
    one_line_error(capsys, [*ev, "--planner", "bc", "--ckpt", str(ckpts["mbop"])],
                   "is an MBOP checkpoint, not a behaviour-cloning one: evaluate it with --planner mbop")
    one_line_error(capsys, [*ev, "--planner", "mbop", "--ckpt", str(ckpts["dmpc"])],
                   "is a D-MPC checkpoint, not an MBOP one")
    one_line_error(capsys, [*ev, "--planner", "teleport"], "unknown planner 'teleport': choose one of dmpc, mbop")
    one_line_error(capsys, [*ev, "--planner", "distilled"], "--planner distilled needs --ckpt DIR: no distilled "
                   "checkpoint ships for pendulum (make one with `paperclub dmpc distill`)")
    one_line_error(capsys, [*ev, "--planner", "mbop", "--ckpt", str(ckpts["mbop"]), "--candidates", "5"],
                   "--candidates 5 must be a multiple of the MBOP ensemble size 2")
    one_line_error(capsys, [*ev, "--planner", "dmpc", "--ckpt", str(ckpts["dmpc"]), "--dynamics", "single-step"],
                   "pass --mbop DIR")
    one_line_error(capsys, [*ev, "--planner", "bc", "--ckpt", str(ckpts["bc"]), "--learned-reward"],
                   "--learned-reward is an MBOP option")
    one_line_error(capsys, [*ev, "--planner", "mbop", "--ckpt", str(ckpts["mbop"]), "--learned-reward", "--reward",
                            "math:sqrt"], "not --reward math:sqrt: drop one of them")
    one_line_error(capsys, [*ev, "--planner", "bc", "--ckpt", str(ckpts["bc"]), "--proposal", "mlp"],
                   "they go with --planner dmpc")
    one_line_error(capsys, ["dmpc", "eval", "--env", "hopper", "--planner", "bc", "--ckpt", str(ckpts["bc"])],
                   "trained for env pendulum, not hopper")
    one_line_error(capsys, ["dmpc", "prediction-error", "--ckpt", str(ckpts["mbop"]), "--mbop", str(ckpts["mbop"]),
                            "--data", str(ckpts["held_out"])], "is an MBOP checkpoint, not a D-MPC one")
    one_line_error(capsys, ["dmpc", "distill", "--ckpt", str(ckpts["dmpc"]), "--out", str(tmp_path / "x"),
                            "--states", "0"], "nothing to label")
    one_line_error(capsys, ["dmpc", "distill", "--ckpt", str(ckpts["dmpc"]), "--out", str(tmp_path / "x"),
                            "--dagger", "-1"], "--states, --rollouts and --dagger must be 0 or more")
    one_line_error(capsys, ["dmpc", "distill", "--ckpt", str(ckpts["dmpc"]), "--out", str(tmp_path / "x"),
                            "--dagger", "1", "--dagger-episodes", "0"], "--dagger-episodes")
    one_line_error(capsys, ["dmpc", "train-bc", "--data", str(tmp_path / "none.h5"), "--out", str(tmp_path / "x")],
                   "does not exist")
