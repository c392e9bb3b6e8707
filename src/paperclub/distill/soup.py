"""Averaging the weights of two drafts of one lineage (a "model soup", Wortsman et al., 2022).

A draft continued on new data (`paperclub distill --init OLD`) gains on what that data covers and loses some of
what it no longer sees. When both lie in one basin (the new one started from the old one), their weighted mean
often keeps most of both gains. The average is taken in float32 over every floating-point tensor and stored in the
drafts' own dtype; integer tensors (the draft vocabulary) must be equal. The result is an ordinary draft directory
whose config records both parents and the weight.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from paperclub.errors import UserError
from paperclub.models.draft import DRAFT_KEY, TOKENIZER_FILES, is_draft_dir

WEIGHTS = "model.safetensors"


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(d / WEIGHTS))
    except (OSError, SafetensorError) as e:
        raise UserError(f"{d / WEIGHTS} could not be read ({e})") from None


def average_drafts(a: Path, b: Path, weight_b: float, out: Path) -> dict[str, float]:
    """Write (1 - weight_b) * a + weight_b * b into `out` (a new directory). Returns what was written, for logs."""
    a, b, out = Path(a), Path(b), Path(out)
    if not 0.0 <= weight_b <= 1.0:
        raise UserError(f"--average-weight must be in [0, 1], got {weight_b}")
    for d in (a, b):
        if not is_draft_dir(d):
            raise UserError(f"{d} is not a draft directory (no config.json with a {DRAFT_KEY!r} record)")
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    differ = sorted(k for k in set(ca) | set(cb) if k != DRAFT_KEY and ca.get(k) != cb.get(k))
    if differ:
        raise UserError(f"{a} and {b} are not the same architecture (they differ in {', '.join(differ)})")
    ta, tb = _tensors(a), _tensors(b)
    if ta.keys() != tb.keys() or any(ta[k].shape != tb[k].shape or ta[k].dtype != tb[k].dtype for k in ta):
        raise UserError(f"{a} and {b} hold different tensors: only drafts of one shape can be averaged")
    mixed = {}
    for k, x in ta.items():
        if x.is_floating_point():
            mixed[k] = ((1.0 - weight_b) * x.float() + weight_b * tb[k].float()).to(x.dtype).contiguous()
        elif torch.equal(x, tb[k]):
            mixed[k] = x
        else:
            raise UserError(f"{a} and {b} differ in {k} (the draft vocabulary?): they cannot be averaged")
    cfg = dict(cb)
    cfg[DRAFT_KEY] = {**cb[DRAFT_KEY], "averaged": {"a": a.name, "b": b.name, "weight_b": weight_b}}
    from paperclub.distill.train import publish

    def write(d: Path) -> None:
        save_file(mixed, str(d / WEIGHTS), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (b / name).is_file():
                shutil.copyfile(b / name, d / name)

    out.mkdir(parents=True, exist_ok=True)
    publish(out, write)  # each file replaces its predecessor atomically
    return {"weight_b": weight_b, "tensors": len(mixed)}
