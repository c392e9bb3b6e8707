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
