"""Distillation data: prompt sets, the target's own continuations, and its next-token distributions.

The teacher signal is stored sparsely: for every position of prompt + continuation, the target's top-k token
ids and log-probabilities (k = 32 by default), which hold nearly all of a small LM's next-token mass. Data is
written in chunks (one `.pt` file per chunk of prompts, atomically), so an interrupted run resumes at the
first missing chunk.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from paperclub.atomic import atomic_path
from paperclub.engine.runner import ModelRunner
from paperclub.errors import UserError

log = logging.getLogger(__name__)

Chat = list[dict[str, str]]


def prompt_set_path(name: str) -> Path:
    """The path of a shipped prompt set, `data/<name>.jsonl` (e.g. "distill_eval")."""
    return Path(str(resources.files("paperclub.distill").joinpath("data", f"{name}.jsonl")))


def builtin_prompts(split: str) -> list[Chat]:
    """The shipped prompt sets: split "train" or "eval" (held out by prompt, never trained on)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be train or eval, got {split!r}")
    text = prompt_set_path(f"distill_{split}").read_text()
    return [json.loads(line)["messages"] for line in text.splitlines() if line.strip()]


def read_prompts(path: str | Path) -> list[Chat | str]:
    """A JSONL file of {"messages": [...]} or {"prompt": "text"} lines."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file {path} not found")
    out: list[Chat | str] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(obj["messages"] if "messages" in obj else str(obj["prompt"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}:{n}: expected {{\"messages\": [...]}} or {{\"prompt\": ...}} ({e})") from None
    if not out:
        raise UserError(f"prompts file {path} is empty")
    return out


@dataclass
class Example:
    """One training sequence: token ids, where the continuation starts, and the teacher's top-k per position
    (row t is the distribution of token t + 1)."""

    ids: torch.Tensor  # (T,) int64
    prompt_len: int
    top_ids: torch.Tensor  # (T - 1, k) int32
    top_logp: torch.Tensor  # (T - 1, k) float16


@torch.inference_mode()
def teacher_topk(runner: ModelRunner, seqs: list[list[int]], k: int, batch: int = 4) -> list[tuple]:
    """Top-k (ids, log-probs) of the target's next-token distribution at every position but the last."""
    out = []
    runner.reserve(batch, max(len(s) for s in seqs) + 1)
    for i in range(0, len(seqs), batch):
        chunk = seqs[i : i + batch]
        logits = runner.append(list(range(len(chunk))), [0] * len(chunk), chunk, last_only=False)
        for b, s in enumerate(chunk):
            logp = logits[b, : len(s) - 1].log_softmax(-1)
            vals, idx = logp.topk(k, dim=-1)
            out.append((idx.to(torch.int32), vals.to(torch.float16)))
    return out


def continuations(llm: Any, prompt_ids: list[list[int]], max_tokens: int, temperature: float, seed: int) -> list:
    from paperclub.engine.sampling import SamplingParams

    params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed + i)
              for i in range(len(prompt_ids))]
    return [o.token_ids for o in llm.generate(prompt_ids, params)]


def build_chunks(llm: Any, prompts: list[Chat | str], data_dir: Path, chunk_size: int, max_tokens: int,
                 topk: int, temperatures: tuple[float, ...] = (0.0,), seed: int = 0) -> list[Path]:
    """Generate the target's continuations and teacher top-k for every prompt, chunk by chunk (resumable)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    runner = ModelRunner(llm.model, llm.max_model_len)
    jobs = [(p, t) for t in temperatures for p in prompts]
    paths = []
    n_chunks = (len(jobs) + chunk_size - 1) // chunk_size
    with tqdm(total=len(jobs), desc="teacher data", unit="prompt") as bar:
        for c in range(n_chunks):
            path = data_dir / f"chunk-{c:04d}.pt"
            paths.append(path)
            part = jobs[c * chunk_size : (c + 1) * chunk_size]
            if path.is_file():
                bar.update(len(part))
                continue
            ids = [llm.encode(p) for p, _ in part]
            gens: list = [None] * len(part)
            for temp in dict.fromkeys(t for _, t in part):  # a chunk may straddle two temperatures: batch each
                rows = [j for j, (_, t) in enumerate(part) if t == temp]
                out = continuations(llm, [ids[j] for j in rows], max_tokens, temp, seed + c * chunk_size + rows[0])
                for j, g in zip(rows, out, strict=True):
                    gens[j] = g
            seqs = [i + g for i, g in zip(ids, gens, strict=True)]
            tops = teacher_topk(runner, seqs, topk)
            examples = [Example(torch.tensor(s), len(i), ti, tl)
                        for s, i, (ti, tl) in zip(seqs, ids, tops, strict=True)]
            with atomic_path(path) as tmp:
                torch.save([vars(e) for e in examples], tmp)
            bar.update(len(part))
    return paths


def load_examples(paths: list[Path]) -> list[Example]:
    out = []
    for p in paths:
        out += [Example(**d) for d in torch.load(p, weights_only=True)]
    return out


def token_counts(examples: list[Example], vocab_size: int) -> torch.Tensor:
    """How often each token id is the target's next token or in its top-k (weighted by probability)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for e in examples:
        counts += torch.bincount(e.ids, minlength=vocab_size).double()
        counts.index_add_(0, e.top_ids.reshape(-1).long(), e.top_logp.reshape(-1).double().exp())
    return counts


def split_examples(examples: list[Example], seed: int, fraction: float) -> tuple[list[Example], list[Example]]:
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    n = int(len(order) * fraction)
    return [examples[i] for i in order[n:]], [examples[i] for i in order[:n]]
