"""LeWM on a CUDA device: training (bf16 autocast) and planning with `--device`, the same contracts as on the CPU.
Deselected by default (marker `gpu`); PAPERCLUB_TEST_DEVICE=cpu runs it on the CPU."""

from __future__ import annotations

import json
import os

import pytest
import torch

from paperclub.cli import main

DEVICE = os.environ.get("PAPERCLUB_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")]


@pytest.mark.parametrize("config", ["small", "vit-small"])
def test_train_and_plan_on_the_device(config, tmp_path):
    data = tmp_path / "d.h5"
    assert main(["lewm", "collect", "--env", "tworoom", "--episodes", "8", "--steps", "40", "--out", str(data),
                 "--quiet"]) == 0
    out = tmp_path / "ckpt"
    assert main(["lewm", "train", "--env", "tworoom", "--config", config, "--steps", "30", "--batch-size", "16",
                 "--data", str(data), "--device", DEVICE, "--out", str(out), "--quiet"]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["history"]["loss"][-1] < log["history"]["loss"][0]  # it learns on the device
    plan = tmp_path / "plan.json"
    assert main(["lewm", "plan", "--ckpt", str(out), "--episodes", "2", "--max-steps", "10", "--device", DEVICE,
                 "--baseline-plans", "1", "--json", str(plan), "--quiet"]) == 0
    r = json.loads(plan.read_text())
    assert r["episodes"] == 2 and 0 <= r["success_rate"] <= 1 and r["speedup_vs_patch_baseline"] > 0
