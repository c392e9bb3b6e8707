"""Sequence-level distillation: a teacher writes text, a student trains on it mixed with the real tokens.

The teacher is a finished run (self-distillation: the regularized model of the student's size) or an ensemble
of runs (its prediction averages the members' logits). It is exported as a Hugging Face model folder (an
ensemble as a `paperclub.models.ensemble` folder) and sampled with the project's engine (`paperclub.engine.LLM`,
batched, temperature 1, so the text follows the teacher's distribution). Each sample continues a `prefix`-token
window of the student's own training budget to `seq_len + 1` tokens, so the synthetic file is a sequence of
fixed-length samples that the student's batches draw whole (`train.Batches`). The mixture weight is the
student run's `synthetic_fraction`: the share of each epoch's sequences that are synthetic.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from paperclub.atomic import atomic_path
from paperclub.models.ensemble import write_ensemble
from paperclub.models.hf_export import save_hf_model
from paperclub.scaling.corpus import EOT, Corpus
from paperclub.scaling.train import load_model

log = logging.getLogger(__name__)


def export_run(run_dir: Path, corpus: Corpus, out: Path, seq_len: int) -> Path:
    """A finished run as an HF model folder the engine (and transformers) can load; the end-of-text token is
    its BOS and EOS."""
    model = load_model(run_dir, corpus.vocab_size)
    model.cfg = replace(model.cfg, eos_token_ids=(corpus.eot,), bos_token_id=corpus.eot,
                        max_position_embeddings=seq_len + 2)
    tokenizer = {
        "tokenizer.json": (corpus.root / "tokenizer.json").read_bytes(),
        "tokenizer_config.json": f'{{"eos_token": "{EOT}", "bos_token": "{EOT}", "add_bos_token": false}}\n',
    }
    save_hf_model(model, out, tokenizer)
    return out


def export_teacher(run_dirs: list[Path], corpus: Corpus, out: Path, seq_len: int) -> Path:
    """One run, or an ensemble folder for several."""
    if len(run_dirs) == 1:
        return export_run(run_dirs[0], corpus, out, seq_len)
    parts = out.with_name(out.name + ".members")
    members = [export_run(d, corpus, parts / str(i), seq_len) for i, d in enumerate(run_dirs)]
    write_ensemble(members, out)
    shutil.rmtree(parts, ignore_errors=True)
    return out


def prompts_from(data: np.ndarray, n: int, prefix: int, seed: int) -> list[list[int]]:
    """`n` windows of `prefix` tokens at random offsets of the student's training budget."""
    starts = np.random.default_rng(seed).integers(0, len(data) - prefix, n)
    return [np.asarray(data[s: s + prefix], dtype=np.int64).tolist() for s in starts]


def generate_synthetic(teacher_dir: Path, corpus: Corpus, budget: int, samples: int, prefix: int, seq_len: int,
                       seed: int, out_file: Path, batch: int = 32, progress: bool = False) -> dict:
    """Write `samples` teacher samples of seq_len + 1 tokens each (uint16) to `out_file`."""
    from paperclub.engine import LLM, SamplingParams

    prompts = prompts_from(corpus.budget(budget), samples, prefix, seed)
    llm = LLM(model=teacher_dir, mode="ar", dtype="float32", max_num_seqs=batch, max_model_len=seq_len + 2)
    params = [SamplingParams(max_tokens=seq_len + 1 - prefix, temperature=1.0, ignore_eos=True,
                             seed=seed * 1_000_003 + i) for i in range(samples)]
    rows = []
    try:
        with torch.inference_mode():
            outputs = llm.generate(prompts, params, use_tqdm=progress)
    finally:
        llm.close()
    for p, o in zip(prompts, outputs, strict=True):
        row = p + list(o.token_ids)
        if len(row) != seq_len + 1:
            raise RuntimeError(f"the teacher returned {len(row)} tokens for a {seq_len + 1}-token sample")
        rows.append(row)
    arr = np.asarray(rows, dtype=np.uint16).reshape(-1)
    with atomic_path(out_file) as tmp:
        arr.tofile(tmp)
    return {"samples": samples, "tokens": int(arr.size), "tokens_per_s": llm.last_stats["tokens_per_s"]}
