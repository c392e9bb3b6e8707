"""The command line under interrupts and bad output paths: no hang, no traceback, no lost or partial results."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paperclub.cli import main


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out |= {int(c) for c in text}
    return out


def alive(pid: int) -> bool:
    """Running (a zombie whose parent has exited is dead: init reaps it when it gets to it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("wait_s", [0.0, 3.0], ids=["during_draft_startup", "while_decoding"])
def test_ssd_stops_on_sigint_within_5s_with_exit_130_and_no_traceback(default_model_dir, tmp_path, wait_s):
    """Start-up once took 12 s to stop on a loaded machine: the wait for the draft's "ready" blocked in gloo's C++
    code, where no signal handler runs, and a draft interrupted before it was connected was waited for politely."""
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "paperclub.cli", "generate", "--model", str(default_model_dir), "--mode", "ssd",
           "--max-new-tokens", "4000", "--json", str(out), "Once upon a time"]
    # SIGINT back to its default in the child: a test run started in the background of a non-interactive shell
    # inherits "ignore SIGINT", and Python then installs no KeyboardInterrupt handler at all
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not children(p.pid):  # the draft process is up: the model has loaded
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else ""
            time.sleep(0.1)
        time.sleep(wait_s)
        kids = children(p.pid)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:  # a failed run must not leave the decoder and its draft running
        for pid in [*children(p.pid), p.pid] if p.poll() is None else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.wait()
    assert p.returncode == 130 and elapsed < 5, (p.returncode, elapsed, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    gone_by = time.monotonic() + 3  # a killed child may still be tearing down (empty cmdline) for a moment
    while [k for k in kids if alive(k)] and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not [k for k in kids if alive(k)]  # no orphan: neither the draft process nor the resource tracker
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial result file


@pytest.mark.parametrize("kind", ["directory", "parent_is_a_file"])
def test_an_unwritable_json_path_is_refused_before_the_model_loads(tmp_path, capsys, kind):
    if kind == "directory":
        path = tmp_path
    else:
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "out.json"
    t0 = time.monotonic()
    # a model that does not exist: were it loaded first, the error would be about the model
    assert main(["generate", "--model", str(tmp_path / "no-model"), "--json", str(path), "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--json" in err and "\n" not in err and "Traceback" not in err
    assert time.monotonic() - t0 < 2
