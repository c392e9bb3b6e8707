"""K models of one shape served as one: the prediction is the mean of the members' logits.

An ensemble directory is an ordinary model directory to the engine: its `config.json` is the members' config
with `num_hidden_layers` = K x L (so the engine's KV cache holds every member's layers, member i in layers
[i L, (i + 1) L)) and a `paperclub_ensemble` section naming the member folders; the tokenizer files sit beside
it. `loader.load_model` sees the section and builds a `LogitEnsemble`, which has the interface of `Llama`
(forward, logits, cfg, set_rope, device, dtype), so generation, batching and sampling need no other change:
`paperclub generate --model ENSEMBLE_DIR` samples from the ensemble.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from paperclub.atomic import atomic_path
from paperclub.errors import UserError
from paperclub.models.config import ModelConfig

KEY = "paperclub_ensemble"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


class LogitEnsemble(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        first = members[0].cfg
        if any(m.cfg != first for m in members[1:]):
            raise UserError("ensemble members must share one config (shape, vocabulary, rope)")
        self.members = nn.ModuleList(members)
        self.member_layers = first.num_layers
        self.cfg = replace(first, num_layers=first.num_layers * len(members))

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    def set_rope(self, max_positions: int | None = None) -> None:
        for m in self.members:
            m.set_rope(max_positions)

    def runs_fused(self, k_cache: torch.Tensor) -> bool:
        return self.members[0].runs_fused(k_cache)

    def forward(self, tokens, positions, k_caches, v_caches, meta) -> torch.Tensor:
        """Each member on its own layers of the cache; hidden states side by side, (B, T, K x D)."""
        L = self.member_layers
        return torch.cat([m(tokens, positions, k_caches[i * L:(i + 1) * L], v_caches[i * L:(i + 1) * L], meta)
                          for i, m in enumerate(self.members)], dim=-1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        parts = hidden.split(hidden.shape[-1] // len(self.members), dim=-1)
        total = None
        for m, h in zip(self.members, parts, strict=True):
            z = m.logits(h)
            total = z if total is None else total.add_(z)
        return total / len(self.members)


def member_dirs(model_dir: Path, config: dict) -> list[Path]:
    members = config.get(KEY, {}).get("members")
    if not isinstance(members, list) or not members:
        raise UserError(f"{model_dir}/config.json: `{KEY}.members` must list the member folders")
    dirs = [(model_dir / m).resolve() for m in members]
    missing = [str(d) for d in dirs if not (d / "config.json").is_file()]
    if missing:
        raise UserError(f"ensemble {model_dir}: member folder(s) without config.json: {', '.join(missing)}")
    return dirs


def write_ensemble(members: list[Path], out: Path) -> None:
    """An ensemble folder at `out` whose members are copies of the given model folders (`out/members/<i>`)."""
    configs = [json.loads((Path(m) / "config.json").read_text()) for m in members]
    if any(ModelConfig.from_hf(c) != ModelConfig.from_hf(configs[0]) for c in configs):
        raise UserError("ensemble members must share one config (shape, vocabulary, rope)")
    config = dict(configs[0])
    config["num_hidden_layers"] = configs[0]["num_hidden_layers"] * len(members)
    config[KEY] = {"members": [f"members/{i}" for i in range(len(members))]}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for i, m in enumerate(members):
            shutil.copytree(m, tmp / "members" / str(i))
        for name in TOKENIZER_FILES:
            if (Path(members[0]) / name).is_file():
                shutil.copyfile(Path(members[0]) / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
