"""`paperclub bounds`: the JSON contract on the shipped checkpoint, and one line plus exit code 2 for bad input."""

from __future__ import annotations

import json
import math

import pytest

from paperclub.bounds.bounds import certify
from paperclub.bounds.classify import shipped_checkpoint
from paperclub.bounds.data import DEBIAN_DIR, FILES
from paperclub.cli import main

needs_data = pytest.mark.skipif(not (DEBIAN_DIR / FILES["y_test"]).is_file(),
                                reason="apt-get install dataset-fashion-mnist")


@needs_data
def test_classify_certifies_the_shipped_checkpoint(tmp_path, capsys):
    assert shipped_checkpoint("fashion-mnist", 0.0) is not None
    out = tmp_path / "r.json"
    assert main(["bounds", "classify", "--dataset", "fashion-mnist", "--json", str(out), "--quiet"]) == 0
    r = json.loads(out.read_text())
    for key in ("bound_error", "train_error", "test_error", "compressed_bits", "n_train", "delta", "bound"):
        assert key in r, key
    assert r["n_train"] == 60000 and r["delta"] == 0.05
    assert r["bound_error"] < 0.40  # the target for a data-independent prior
    assert r["train_error"] <= r["test_error"] + 0.03 and r["train_error"] <= r["bound_error"]
    assert r["bound_error"] >= r["test_error"]  # a bound that held on this draw of the test set
    assert r["bound_error"] == pytest.approx(certify(r["train_error"], r["compressed_bits"], 60000).bound_error)
    assert math.isclose(r["compressed_bits"], sum(v for k, v in r["bits"].items() if k != "total"))
    assert "error <=" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--delta", "0"], "--delta"),
    (["--delta", "1.2"], "--delta"),
    (["--label-noise", "-0.1"], "--label-noise"),
    (["--prior-fraction", "0.5"], "pass --train"),
    (["--train", "--prior-fraction", "1.0"], "--prior-fraction"),
    (["--train", "--prior-fraction", "0"], "--prior-fraction"),
])
def test_bad_values_get_one_line_and_exit_2(argv, message, capsys):
    assert main(["bounds", "classify", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_checkpoint_that_is_not_one_gets_one_line(tmp_path, capsys):
    (tmp_path / "compressed.json").write_text('{"format": "paperclub-bounds-compressed/1", "levels": ')
    assert main(["bounds", "classify", "--ckpt", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt or truncated" in err[0]
    assert main(["bounds", "classify", "--ckpt", str(tmp_path / "none")]) == 2
    assert "no compressed classifier" in capsys.readouterr().err


def test_an_unwritable_json_path_is_refused_first(tmp_path, capsys):
    assert main(["bounds", "classify", "--json", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_a_missing_data_set_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PAPERCLUB_FASHION_MNIST", str(tmp_path))
    assert main(["bounds", "classify"]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_demos_run_from_the_command_line(tmp_path):
    assert main(["bounds", "demo", "polynomial", "--json", str(tmp_path / "p.json"),
                 "--plot", str(tmp_path / "p.png")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["targets"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_label_noise_flags_reach_the_demo_and_bad_ones_fail(tmp_path, monkeypatch, capsys):
    from paperclub.bounds.demos import label_noise

    seen = {}

    def fake_run(cfg, **kwargs):
        label_noise.validate(cfg)
        seen["cfg"] = cfg
        return {"rows": []}

    monkeypatch.setattr(label_noise, "run", fake_run)
    args = ["bounds", "demo", "label-noise", "--json", str(tmp_path / "r.json"), "--cache", str(tmp_path / "c")]
    assert main([*args, "--n-train", "10000", "--noise", "0", "0.05", "--epochs", "30"]) == 0
    cfg = seen["cfg"]
    assert (cfg.n_train, cfg.noise_levels, cfg.epochs) == (10000, (0.0, 0.05), 30)
    assert main(args) == 0
    assert (seen["cfg"].n_train, seen["cfg"].epochs) == (2000, 80)
    capsys.readouterr()
    for bad in (["--n-train", "5"], ["--noise", "1.5"], ["--noise", "0.1", "0.1"], ["--epochs", "0"]):
        assert main([*args, *bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "LabelNoiseConfig" in err, err
    assert main(["bounds", "demo", "polynomial", "--n-train", "100"]) == 2
    assert "--n-train: only the label-noise demo" in capsys.readouterr().err
