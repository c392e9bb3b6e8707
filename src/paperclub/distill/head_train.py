"""`paperclub distill --arch head`: train a feature draft head (`models.draft_head`, EAGLE-style) for a target.

Same teacher data as a draft LM (`train.py`, phase 1: the target's continuations and its top-k next-token
distribution at every position), then:

2. features: the target's final hidden state at every position of every sequence, computed by the engine's own
   forward in the engine's dtype (what the head reads when it drafts), stored per data chunk under
   `<out>/work/features/` (resumable);
3. vocabulary: as for a draft LM;
4. training: pair i = (h_i, x_{i+1}) -> ĥ_{i+1}; loss = cross-entropy to the target's renormalised top-k
   distribution of x_{i+2} + `reg_weight` x smooth-L1(ĥ_{i+1}, h_{i+1}); positions in the continuation weighted
   1, prompt positions `prompt_weight`; `feature_noise` adds Gaussian noise (that fraction of the features' RMS)
   to the input features; `unroll` = S > 1 trains S drafting steps at once, level s fed the head's own level
   s-1 predictions (`DraftHead.unrolled_forward`, the "training-time test" of EAGLE-3), so it learns to draft
   from its own imperfect states. AdamW, warmup + cosine, periodic atomic checkpoints;
5. export (bf16) and evaluation: real speculative decoding with the exported head on the held-out prompts
   (`measure_acceptance`: the engine's counters, not a simulation) and the head's decode-step cost against the
   target's.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from paperclub.atomic import atomic_path, write_json
from paperclub.distill.dataset import Example
from paperclub.distill.train import Batcher, DistillConfig, TrainState, fit, local_names, publish
from paperclub.engine.runner import ModelRunner
from paperclub.errors import UserError
from paperclub.models.draft_head import DraftHead, head_loss, init_head, load_head, save_head
from paperclub.models.llama import Llama

log = logging.getLogger(__name__)


@torch.inference_mode()
def sequence_features(runner: ModelRunner, seqs: list[list[int]], batch: int = 4) -> list[torch.Tensor]:
    """The target's final-normed hidden state at every position of each sequence, (T, D) in its dtype."""
    out = []
    runner.reserve(batch, max(len(s) for s in seqs) + 1)
    for i in range(0, len(seqs), batch):
        chunk = seqs[i : i + batch]
        _, hidden = runner.append(list(range(len(chunk))), [0] * len(chunk), chunk, True, with_hidden=True)
        out += [hidden[b, : len(s)].clone() for b, s in enumerate(chunk)]
    return out


def feature_chunks(target: Llama, chunk_paths: list[Path], work: Path, max_positions: int,
                   elsewhere: list[Path] = ()) -> list[Path]:
    """Features of every data chunk, computed where missing; returns their paths. Stored under
    `work/features/<digest of the chunk file>.pt`, so a run that reuses another's teacher data (`--reuse-data`,
    whose `work` is in `elsewhere`) links that run's features instead of recomputing them."""
    out_dir = work / "features"
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = ModelRunner(target, max_positions)
    paths = []
    for src in tqdm(chunk_paths, desc="target features", unit="chunk"):
        dst = out_dir / f"{hashlib.sha256(src.read_bytes()).hexdigest()[:20]}.pt"
        paths.append(dst)
        if dst.is_file():
            continue
        theirs = next((d / "features" / dst.name for d in elsewhere if (d / "features" / dst.name).is_file()), None)
        if theirs is not None:
            try:
                dst.hardlink_to(theirs)
                continue
            except OSError:
                pass  # another file system: compute them
        examples = torch.load(src, weights_only=True)
        feats = sequence_features(runner, [e["ids"].tolist() for e in examples])
        with atomic_path(dst) as tmp:
            torch.save(feats, tmp)
    return paths


class HeadBatcher(Batcher):
    """`Batcher`'s deterministic crops, with the target's features of the same positions."""

    def __init__(self, examples: list[Example], features: list[torch.Tensor], vocab_ids: torch.Tensor,
                 vocab_size: int, cfg: DistillConfig):
        super().__init__(examples, vocab_ids, vocab_size, cfg)
        if len(features) != len(examples):
            raise UserError(f"{len(features)} feature rows for {len(examples)} examples: delete work/features")
        self.features = features

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        b = super().batch(step)
        T = b["tokens"].shape[1]
        feats = torch.zeros(len(b["index"]), T, self.features[0].shape[-1], dtype=self.features[0].dtype)
        for r, (i, a, n) in enumerate(zip(b["index"].tolist(), b["start"].tolist(), b["lengths"].tolist(),
                                          strict=True)):
            feats[r, :n] = self.features[i][a : a + n]
        b["features"] = feats
        return b


def train_head(head: DraftHead, examples: list[Example], features: list[torch.Tensor], cfg: DistillConfig,
               ckpt: Path) -> TrainState:
    """Train `head` in place (`train.fit`; the embedding stays frozen); resumes from `ckpt` if it exists."""

    def loss_fn(batch, step, bf16, act_dtype):
        feats = batch["features"].float()
        inputs = feats
        if cfg.feature_noise > 0:  # seeded by step, so a resumed run draws the same noise
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            inputs = feats + cfg.feature_noise * feats.pow(2).mean().sqrt() * torch.randn(feats.shape, generator=gen)
        with torch.autocast(head.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, parts = head_loss(head, inputs, batch["tokens"], batch["ids"], batch["p"], batch["weight"],
                                    cfg.reg_weight, targets=feats, levels=cfg.unroll)
        shown = {"ce": parts["ce"], "reg": parts["reg"]}
        if cfg.unroll > 1:
            shown[f"ce{cfg.unroll}"] = parts[f"ce{cfg.unroll}"]
        return loss, shown

    batcher = HeadBatcher(examples, features, head.vocab_ids.cpu(), head.cfg.vocab_size, cfg)
    return fit(head, batcher, cfg, ckpt, loss_fn, "distill head")


def measure_acceptance(target: Llama, head: DraftHead, prompts: list[list[int]], k: int, max_tokens: int,
                       temperature: float = 0.0, seed: int = 0, max_num_seqs: int = 16) -> dict[str, Any]:
    """Speculative decoding with `head` on tokenized `prompts` through the engine: its speculation counters
    (`speculative.metrics`), EOS ignored so every prompt runs `max_tokens`."""
    from paperclub.engine.sampling import SamplingParams
    from paperclub.engine.scheduler import Engine, EngineConfig
    from paperclub.speculative import metrics as spec_metrics
    from paperclub.speculative.head_proposer import HeadProposer
    from paperclub.speculative.sd import SpeculativeDecoder

    longest = max(len(p) for p in prompts) + max_tokens + k + 2
    decoder = SpeculativeDecoder(ModelRunner(target, longest), HeadProposer(head, k, longest), k=k)
    engine = Engine(decoder, config=EngineConfig(max_num_seqs=max_num_seqs))
    seqs = [engine.add_request(p, SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed + i,
                                                 ignore_eos=True))
            for i, p in enumerate(prompts)]
    while engine.has_unfinished():
        engine.step()
    out = spec_metrics.summary(spec_metrics.total(s.stats for s in seqs))
    out |= {"k": k, "temperature": temperature, "prompts": len(prompts), "max_tokens": max_tokens}
    return out


@torch.inference_mode()
def head_step_cost(head: DraftHead, context: int = 128, steps: int = 40, warmup: int = 5) -> float:
    """Median seconds of one drafting step of the head at batch 1 after `context` pairs (its logits included)."""
    from paperclub.speculative.head_proposer import HeadRunner

    runner = HeadRunner(head, context + warmup + steps + 2)
    runner.reserve(1, context + warmup + steps + 2)
    D = head.cfg.hidden_size
    runner.append([0], [0], [torch.zeros(context, D, dtype=head.dtype)], [[1] * context])
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        h = runner.append([0], [context + i], [torch.zeros(1, D, dtype=head.dtype)], [[1]])
        head.logits(h).argmax(-1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:])


def run_head_distill(target_dir: Path, out: Path, cfg: DistillConfig, llm: Any, examples: list[Example],
                     chunk_paths: list[Path], vocab_ids: torch.Tensor, eval_ids: list[list[int]],
                     t_data: float) -> dict[str, Any]:
    """Phases 2-5 for a head (see the module docstring); `run_distill` did the data and the vocabulary."""
    from paperclub.distill.acceptance import step_cost
    from paperclub.models.loader import load_model

    work = out / "work"
    target = llm.model
    elsewhere = [Path(cfg.reuse_data) / "work"] if cfg.reuse_data else []
    feat_paths = feature_chunks(target, chunk_paths, work, llm.max_model_len, elsewhere)
    features = [f for p in feat_paths for f in torch.load(p, weights_only=True)]
    target32 = load_model(target_dir, dtype=torch.float32, max_positions=llm.max_model_len)
    layer = (cfg.init_layers or [target32.cfg.num_layers - 1])[0]
    if cfg.init not in ("target", "random"):
        start = load_head(cfg.init, target32, dtype=torch.float32)
        if not torch.equal(start.vocab_ids.cpu(), vocab_ids):
            raise UserError(f"--init head {cfg.init} has another draft vocabulary than this run's data")
        head = start.requires_grad_(True)
    else:
        head = init_head(target32, vocab_ids, cfg.layers, None if cfg.init == "random" else layer, cfg.seed)
    state = train_head(head, examples, features, cfg, work / "checkpoint.pt")

    extra = {"distill": local_names(cfg), "train_steps": state.step, "train_seconds": round(state.elapsed_s, 1)}
    publish(out, lambda d: save_head(head, d, target_dir, extra))
    exported = load_head(out, target)
    reports = {}
    for temp in cfg.eval_temperatures:
        rep = measure_acceptance(target, exported, eval_ids, cfg.k, cfg.eval_max_tokens, temp, cfg.seed)
        reports[f"T={temp:g}"] = rep
        log.info("head at T=%g: mean acceptance length %.2f, acceptance rate %.3f", temp,
                 rep["mean_acceptance_length"], rep["acceptance_rate"])
    t_target, t_head = step_cost(target), head_step_cost(exported)
    summary = {
        "arch": "head", "target": str(target_dir), "held_out_prompts": len(eval_ids), "k": cfg.k,
        "acceptance": reports,
        "step_cost_s": {"target": t_target, "draft": t_head, "ratio": t_head / t_target},
        "train": {"steps": state.step, "seconds": round(state.elapsed_s, 1),
                  "final_ce": sum(state.losses[-20:]) / max(len(state.losses[-20:]), 1),
                  "examples": len(examples), "tokens": int(sum(len(e.ids) for e in examples))},
        "data_seconds": round(t_data, 1), "draft_vocab": len(vocab_ids), "layers": cfg.layers,
    }
    write_json(out / "acceptance.json", summary)
    write_json(work / "losses.json", state.losses)
    return summary
