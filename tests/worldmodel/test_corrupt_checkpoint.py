"""A damaged checkpoint ends every `paperclub lewm` command that loads it with one line naming the file, exit 2.

Each case copies the shipped TwoRoom checkpoint into tmp_path and damages one file the way it happens: a copy cut
short, a file lost, a hand-edited config, weights from another config. The in-process tests check
`load_checkpoint` for every kind of damage; the subprocess tests run the real command line, so an exception that
escapes shows up as what a user would see (a traceback and exit 1), not as a test error.
"""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import CONFIG, FIELD_TYPES, WEIGHTS, load_checkpoint, shipped_checkpoint
from paperclub.worldmodel.model import LeWMConfig
from paperclub.worldmodel.train import TrainConfig

SHIPPED = shipped_checkpoint("tworoom")
pytestmark = pytest.mark.skipif(not (SHIPPED / WEIGHTS).is_file(), reason="no shipped tworoom checkpoint")


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _edit_config(ckpt: Path, edit: Callable[[dict], None]) -> None:
    cfg = json.loads((ckpt / CONFIG).read_text())
    edit(cfg)
    (ckpt / CONFIG).write_text(json.dumps(cfg))


# name -> (damage done to a copy of the checkpoint, the file the message must name)
DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "weights truncated": (lambda c: _truncate(c / WEIGHTS), WEIGHTS),
    "weights empty": (lambda c: (c / WEIGHTS).write_bytes(b""), WEIGHTS),
    "weights missing": (lambda c: (c / WEIGHTS).unlink(), WEIGHTS),
    "config truncated": (lambda c: _truncate(c / CONFIG), CONFIG),
    "config not utf-8": (lambda c: (c / CONFIG).write_bytes(b"\xff\xfe{"), CONFIG),
    "config missing": (lambda c: (c / CONFIG).unlink(), CONFIG),
    "config a list": (lambda c: (c / CONFIG).write_text("[1, 2]"), CONFIG),
    "config without model": (lambda c: _edit_config(c, lambda d: d.pop("model")), CONFIG),
    "config without env": (lambda c: _edit_config(c, lambda d: d.pop("env")), CONFIG),
    "config unknown env": (lambda c: _edit_config(c, lambda d: d.update(env="mars")), CONFIG),
    "config size a string": (lambda c: _edit_config(c, lambda d: d["model"].update(latent_dim="64")), CONFIG),
    "config size zero": (lambda c: _edit_config(c, lambda d: d["model"].update(pred_heads=0)), CONFIG),
    "config channels a number": (lambda c: _edit_config(c, lambda d: d["model"].update(channels=32)), CONFIG),
    "config unknown field": (lambda c: _edit_config(c, lambda d: d["model"].update(depth=3)), CONFIG),
    "config inconsistent": (lambda c: _edit_config(c, lambda d: d["model"].update(image_size=60)), CONFIG),
    # a config that describes another model than the weights: they are what does not match it
    "weights other shape": (lambda c: _edit_config(c, lambda d: d["model"].update(latent_dim=32)), WEIGHTS),
    "config lacks a field": (lambda c: _edit_config(c, lambda d: d["model"].pop("latent_batchnorm")), WEIGHTS),
}


def damaged_copy(tmp_path: Path, damage: str) -> tuple[Path, str]:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(SHIPPED, ckpt)
    corrupt, named = DAMAGE[damage]
    corrupt(ckpt)
    return ckpt, named


@pytest.mark.parametrize("damage", DAMAGE)
def test_load_checkpoint_names_the_damaged_file_on_one_line(damage, tmp_path):
    ckpt, named = damaged_copy(tmp_path, damage)
    with pytest.raises(UserError) as e:
        load_checkpoint(ckpt)
    msg = str(e.value)
    assert str(ckpt / named) in msg and "\n" not in msg, msg
    assert "point --ckpt at another checkpoint" in msg or "omit --ckpt" in msg, msg


def test_nan_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(SHIPPED, ckpt)
    state = load_file(str(ckpt / WEIGHTS))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name][0] = float("nan")
    save_file(state, str(ckpt / WEIGHTS))
    with pytest.raises(UserError, match=f"{name} holds NaN"):
        load_checkpoint(ckpt)


def test_every_saved_field_type_is_checked():
    """A field whose annotation has no check in FIELD_TYPES would load unchecked: a new field needs a new entry."""
    for cls in (LeWMConfig, TrainConfig):
        assert {str(f.type) for f in fields(cls)} <= FIELD_TYPES.keys(), cls


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "paperclub.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


# every `lewm` command that loads a checkpoint, at tiny sizes
COMMANDS = {
    "probe": ["probe", "--frames", "20"],
    "plan": ["plan", "--episodes", "1", "--samples", "8", "--elites", "2", "--iterations", "1", "--horizon", "1",
             "--max-steps", "5", "--baseline-plans", "0", "--quiet"],
    "surprise": ["surprise", "--episodes", "2", "--blocks", "2", "--perturb-block", "1", "--quiet"],
}


def assert_one_line_naming(result: subprocess.CompletedProcess, file: Path) -> None:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, err)
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith("paperclub lewm: error: ") and str(file) in err, err


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_run_on_the_intact_copy(command, tmp_path):
    """The control: the very arguments the damage tests use succeed on an undamaged copy."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(SHIPPED, ckpt)
    cmd = COMMANDS[command]
    result = run_cli("lewm", cmd[0], "--ckpt", str(ckpt), *cmd[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "command, damage",
    [(c, d) for c in COMMANDS for d in ("weights truncated", "config truncated")]
    + [("probe", "weights missing"), ("plan", "config without model"), ("surprise", "config size a string"),
       ("probe", "weights other shape"), ("plan", "config lacks a field")],
)
def test_a_damaged_checkpoint_is_one_line_and_exit_2(command, damage, tmp_path):
    ckpt, named = damaged_copy(tmp_path, damage)
    cmd = COMMANDS[command]
    assert_one_line_naming(run_cli("lewm", cmd[0], "--ckpt", str(ckpt), *cmd[1:], cwd=tmp_path), ckpt / named)


def test_resume_from_a_truncated_config_is_one_line_and_exit_2(tmp_path):
    ckpt, named = damaged_copy(tmp_path, "config truncated")
    result = run_cli("lewm", "train", "--env", "tworoom", "--out", str(ckpt), "--resume", "--quiet", cwd=tmp_path)
    assert_one_line_naming(result, ckpt / named)
    assert "start a new run" in result.stderr

