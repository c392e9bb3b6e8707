"""`paperclub distill`: train a small draft LM for a target by knowledge distillation.

Pipeline (each phase resumable; everything lives under `<out>/work/`):

1. data: the target's greedy continuations of the training prompts (its own generations, as speculative
   decoding sees them; `data_temperatures` adds sampled ones) and of each `extra_prompts` line (training only),
   and, at every position of prompt + continuation, its top-k next-token distribution; `reuse_data` links
   another run's finished data (its training-only chunks too) instead of regenerating it;
2. vocabulary: the `draft_vocab` target ids that carry the most next-token mass in that data;
3. training: the draft (a few target layers on the target's frozen embedding, a head over the draft
   vocabulary) minimises the cross-entropy to the target's renormalised top-k distribution (= forward KL up to
   a constant), positions in the continuation weighted 1 and prompt positions `prompt_weight`;
   AdamW, warmup + cosine decay over `steps` (or over the time budget, whichever ends first), periodic atomic
   checkpoints (weights, optimizer, step, elapsed time);
4. export + evaluation: the draft directory (bf16) in `<out>` and `<out>/acceptance.json` (held-out prompts,
   K, temperature 0 and 0.7, draft/target step cost).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from paperclub.atomic import atomic_path, write_json
from paperclub.distill.dataset import Example, build_chunks, load_examples, token_counts
from paperclub.engine.kv_cache import KVCache, causal_meta
from paperclub.errors import UserError
from paperclub.models.config import ModelConfig
from paperclub.models.draft import DraftLM, grow_draft, init_draft, load_draft, save_draft
from paperclub.models.llama import Llama
from paperclub.models.loader import load_model

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    layers: int = 2
    init: str = "target"  # "target" (copy target layers), "random", or a draft directory to continue from
    # target layers to copy (default: evenly spaced, first and last); with a draft --init, the added layers
    init_layers: list[int] | None = None
    draft_vocab: int = 8192
    steps: int = 2000
    time_budget_s: float | None = None
    batch_size: int = 8
    max_seq_len: int = 512
    lr: float = 1.5e-3
    warmup_steps: int = 30
    weight_decay: float = 0.0
    prompt_weight: float = 0.2
    topk: int = 32
    max_new_tokens: int = 192
    chunk_size: int = 32
    eval_max_tokens: int = 128
    eval_prompts: int | None = None  # None: all held-out prompts
    k: int = 5
    checkpoint_every_s: float = 120.0
    seed: int = 0
    threads: int = 1
    # bf16 autocast for training (fp32 master weights); "auto": where matmuls in bf16 are native (see `use_bf16`)
    bf16: bool | str = "auto"
    prompts: str | None = None  # JSONL of prompts; None: the shipped instruction set + HumanEval
    eval_temperatures: list[float] = field(default_factory=lambda: [0.0, 0.7])
    # one continuation per prompt per entry: 0 = greedy, > 0 = sampled (repeat a temperature for more samples)
    data_temperatures: list[float] = field(default_factory=lambda: [0.0])
    reuse_data: str | None = None  # another run's --out whose teacher data (same data settings) this run links
    # JSONL of training-only prompts (several: comma-separated), one greedy continuation each, never evaluated
    extra_prompts: str | None = None
    # prompts the target writes for itself (Magpie-style, `self_prompts.py`), one greedy continuation each
    self_prompts: int = 0
    arch: str = "lm"  # "lm": a draft LM (this file); "head": a feature draft head (`head_train.py`, EAGLE-style)
    reg_weight: float = 1.0  # head: weight of the hidden-state regression beside the cross-entropy
    feature_noise: float = 0.0  # head: Gaussian noise on the input features, as a fraction of their RMS
    unroll: int = 1  # head: levels of the training-time unroll (level s = drafting step s on its own predictions)

    def __post_init__(self) -> None:
        checks = [
            (self.layers >= 1, f"--layers must be >= 1, got {self.layers}"),
            (self.draft_vocab >= 16, f"--draft-vocab must be >= 16, got {self.draft_vocab}"),
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.time_budget_s is None or self.time_budget_s > 0, "--time-budget must be > 0"),
            (self.batch_size >= 1 and self.max_seq_len >= 8, "batch size must be >= 1 and max_seq_len >= 8"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.topk >= 1 and self.max_new_tokens >= 1, "topk and max_new_tokens must be >= 1"),
            (self.k >= 1, f"--k must be >= 1, got {self.k}"),
            (self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
            (0 <= self.prompt_weight <= 1, "prompt_weight must be in [0, 1]"),
            (self.arch in ("lm", "head"), f"--arch must be lm or head, got {self.arch!r}"),
            (self.reg_weight >= 0 and self.feature_noise >= 0, "--reg-weight and --feature-noise must be >= 0"),
            (1 <= self.unroll <= 8, f"--unroll must be in [1, 8], got {self.unroll}"),
            (self.self_prompts >= 0, f"--self-prompts must be >= 0, got {self.self_prompts}"),
            (len(self.data_temperatures) >= 1 and all(0 <= t <= 2 for t in self.data_temperatures),
             f"--data-temperatures must be one or more values in [0, 2], got {self.data_temperatures}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    """Whether to train with bf16 autocast. "auto": on CUDA, and on CPUs with bf16 matmul instructions
    (AVX512-BF16 or AMX); elsewhere (e.g. AVX2 only) torch's bf16 matmuls are emulated and one training step of
    the default draft took 67 s instead of a few."""
    if setting != "auto":
        return bool(setting)
    if device.type != "cpu":
        return True
    from paperclub.nn.cpu_kernels import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def lr_at(cfg: DistillConfig, step: int, elapsed: float) -> float:
    """Warmup, then cosine to 10% over the run; progress is steps or time, whichever is further along."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = step / cfg.steps
    if cfg.time_budget_s:
        progress = max(progress, elapsed / cfg.time_budget_s)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def select_vocab(examples: list[Example], vocab_size: int, n: int, always: set[int]) -> torch.Tensor:
    """The `n` ids with the most next-token mass in the data (plus `always`), sorted."""
    counts = token_counts(examples, vocab_size)
    counts[list(always)] = math.inf
    n = min(n, vocab_size)
    return counts.topk(n).indices.sort().values


class Batcher:
    """Deterministic batches (a function of seed and step, so a resumed run sees the same ones)."""

    def __init__(self, examples: list[Example], vocab_ids: torch.Tensor, vocab_size: int, cfg: DistillConfig):
        if not examples:
            raise UserError("no training data: give prompts (the training split is empty)")
        self.examples, self.cfg = examples, cfg
        self.to_sub = torch.full((vocab_size,), -1, dtype=torch.long)
        self.to_sub[vocab_ids] = torch.arange(len(vocab_ids))

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 1_000_003 + step)
        picks = [rng.randrange(len(self.examples)) for _ in range(cfg.batch_size)]
        crops = []
        for i in picks:
            e = self.examples[i]
            n = len(e.ids)
            # crop long sequences to a window that keeps the continuation when possible
            start = 0 if n <= cfg.max_seq_len else rng.randrange(0, n - cfg.max_seq_len + 1)
            crops.append((e, start, min(n, start + cfg.max_seq_len)))
        T = max(b - a for _, a, b in crops) - 1
        B, K = len(crops), cfg.topk
        tokens = torch.zeros(B, T, dtype=torch.long)
        tgt_ids = torch.zeros(B, T, K, dtype=torch.long)
        tgt_p = torch.zeros(B, T, K)
        weight = torch.zeros(B, T)
        lengths = []
        for r, (e, a, b) in enumerate(crops):
            n = b - a - 1
            lengths.append(n)
            tokens[r, :n] = e.ids[a : b - 1]
            sub = self.to_sub[e.top_ids[a : b - 1, :K].long()]
            p = e.top_logp[a : b - 1, :K].float().exp() * (sub >= 0)
            tgt_ids[r, :n] = sub.clamp(min=0)
            tgt_p[r, :n] = p / p.sum(-1, keepdim=True).clamp(min=1e-8)
            pos = torch.arange(a, b - 1)
            weight[r, :n] = torch.where(pos >= e.prompt_len - 1, 1.0, cfg.prompt_weight)
        index, start = torch.tensor(picks), torch.tensor([a for _, a, _ in crops])  # where each row was cropped
        return {"tokens": tokens, "ids": tgt_ids, "p": tgt_p, "weight": weight, "lengths": torch.tensor(lengths),
                "index": index, "start": start}


def train_forward(draft: DraftLM, tokens: torch.Tensor, lengths: list[int], act_dtype: torch.dtype) -> torch.Tensor:
    """Subset logits (B, T, draft_vocab) with gradients: a fresh cache per batch addressed by `causal_meta`.
    Activations (and the cache) are in `act_dtype`, the dtype of the draft's embedding."""
    B, T = tokens.shape
    cache = KVCache(draft.cfg, draft.device, act_dtype, T + 1)
    cache.ensure(B, T + 1)
    meta, positions = causal_meta(list(range(B)), [0] * B, lengths, draft.device)
    hidden = draft(tokens, positions, cache.k, cache.v, meta)
    return draft.subset_logits(hidden)


def distill_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted cross-entropy to the target's renormalised top-k distribution."""
    logq = F.log_softmax(logits, dim=-1).gather(-1, batch["ids"])  # (B, T, K)
    per_pos = -(batch["p"] * logq).sum(-1)
    return (per_pos * batch["weight"]).sum() / batch["weight"].sum().clamp(min=1.0)


@dataclass
class TrainState:
    step: int = 0
    elapsed_s: float = 0.0
    losses: list[float] = field(default_factory=list)


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: TrainState) -> None:
    """Trainable weights, optimizer, progress and the draft vocabulary of a draft LM or head, written atomically."""
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with atomic_path(path) as tmp:
        torch.save({"params": params, "optimizer": opt.state_dict(), "state": dataclasses.asdict(state),
                    "vocab_ids": model.vocab_ids.cpu()}, tmp)


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> TrainState:
    """Weights, optimizer and progress from `save_checkpoint`. The optimizer's state is matched to the parameters
    by name (the checkpoint's `params` keep the order it was saved in), so a checkpoint still resumes after the
    model's modules were declared in another order."""
    ck = torch.load(path, weights_only=True)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in ck["params"].items():
            own[n].copy_(t)
    saved = list(ck["params"])  # the optimizer's parameter order when it was saved
    mine = [n for n, p in model.named_parameters() if n in ck["params"]]  # `fit`'s order now
    state = ck["optimizer"]
    if saved != mine:
        old = {n: i for i, n in enumerate(saved)}
        state = {"state": {j: state["state"][old[n]] for j, n in enumerate(mine) if old[n] in state["state"]},
                 "param_groups": [{**g, "params": list(range(len(mine)))} for g in state["param_groups"]]}
    opt.load_state_dict(state)
    return TrainState(**ck["state"])


LossFn = Callable[[dict[str, torch.Tensor], int, bool, torch.dtype], tuple[torch.Tensor, dict[str, float]]]


def fit(model: torch.nn.Module, batcher: Batcher, cfg: DistillConfig, ckpt: Path, loss_fn: LossFn,
        desc: str) -> TrainState:
    """The training loop of a draft LM and of a draft head: everything but the shared embedding trains (AdamW,
    `lr_at`, gradient clipping at 1), resuming from `ckpt` if it exists and checkpointing every
    `cfg.checkpoint_every_s`. `loss_fn(batch, step, bf16, act_dtype)` returns the loss and the figures the
    progress bar shows; the first of them is logged per step in `TrainState.losses`."""
    trainable = [p for n, p in model.named_parameters() if not n.startswith("embed.")]
    for p in trainable:
        p.requires_grad_(True)
    model.embed.requires_grad_(False)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    state = load_checkpoint(ckpt, model, opt) if ckpt.is_file() else TrainState()
    if state.step:
        log.info("resuming training at step %d (%.0fs trained)", state.step, state.elapsed_s)
    # where bf16 matmuls are native (`use_bf16`): bf16 autocast with fp32 master weights, the residual stream in
    # bf16 as in bf16 inference, so the shared embedding is read as bf16; elsewhere fp32 throughout
    shared_embed = model.embed
    bf16 = use_bf16(cfg.bf16, model.device)
    act_dtype = torch.bfloat16 if bf16 else torch.float32
    model.embed = torch.nn.Embedding.from_pretrained(shared_embed.weight.detach().to(act_dtype), freeze=True)
    model.train()
    last_ckpt = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=state.step, desc=desc, unit="step")
    try:
        while state.step < cfg.steps and not (cfg.time_budget_s and state.elapsed_s >= cfg.time_budget_s):
            t0 = time.perf_counter()
            batch = batcher.batch(state.step)
            lr = lr_at(cfg, state.step, state.elapsed_s)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, shown = loss_fn(batch, state.step, bf16, act_dtype)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            state.step += 1
            state.elapsed_s += time.perf_counter() - t0
            state.losses.append(round(next(iter(shown.values())), 5))
            bar.update(1)
            bar.set_postfix(**{k: f"{v:.3f}" for k, v in shown.items()}, lr=f"{lr:.1e}")
            if time.perf_counter() - last_ckpt >= cfg.checkpoint_every_s:
                save_checkpoint(ckpt, model, opt, state)
                last_ckpt = time.perf_counter()
    finally:
        bar.close()
        model.embed = shared_embed
    save_checkpoint(ckpt, model, opt, state)
    model.eval().requires_grad_(False)
    return state


def train(draft: DraftLM, examples: list[Example], cfg: DistillConfig, ckpt: Path) -> TrainState:
    """Train `draft` in place (`fit`); resumes from `ckpt` if it exists. Returns the final state."""

    def loss_fn(batch, step, bf16, act_dtype):
        with torch.autocast(draft.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = train_forward(draft, batch["tokens"], batch["lengths"].tolist(), act_dtype)
        loss = distill_loss(logits.float(), batch)
        return loss, {"loss": loss.item()}

    batcher = Batcher(examples, draft.vocab_ids.cpu(), draft.cfg.vocab_size, cfg)
    return fit(draft, batcher, cfg, ckpt, loss_fn, "distill")


def run_distill(target_dir: Path, out: Path, cfg: DistillConfig, resume: bool = False,
                trainer: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """The whole `paperclub distill` pipeline (see the module docstring). Returns the evaluation summary.
    `trainer`: with `cfg.arch == "head"`, what trains, exports and evaluates the head after the data phase and the
    vocabulary (`head_train.run_head_distill`; passed in, so this module does not import the one built on it)."""
    from paperclub.distill.acceptance import evaluate_acceptance, step_cost
    from paperclub.distill.dataset import builtin_prompts, read_prompts
    from paperclub.engine.llm import LLM

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tcfg = ModelConfig.from_dir(target_dir)
    if not 1 <= cfg.layers <= tcfg.num_layers:
        raise UserError(f"--layers must be in [1, {tcfg.num_layers}] for this target, got {cfg.layers}")
    if cfg.draft_vocab > tcfg.vocab_size:
        raise UserError(f"--draft-vocab {cfg.draft_vocab} exceeds the target's vocabulary ({tcfg.vocab_size})")
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "distill_config.json", dataclasses.asdict(cfg))
    t_start = time.perf_counter()

    # 1. the target's data (bf16, as the engine runs it)
    llm = LLM(model=str(target_dir), device="cpu", dtype="bfloat16", max_num_seqs=32,
              max_model_len=2048)
    if cfg.prompts:
        all_prompts = read_prompts(cfg.prompts)
        order = list(range(len(all_prompts)))
        random.Random(cfg.seed).shuffle(order)
        n_eval = max(1, round(0.15 * len(order))) if len(order) > 1 else 0
        eval_prompts = [all_prompts[i] for i in order[:n_eval]]
        train_prompts = [all_prompts[i] for i in order[n_eval:]] or eval_prompts
    else:
        train_prompts, eval_prompts = builtin_prompts("train"), builtin_prompts("eval")
    if cfg.eval_prompts is not None:
        eval_prompts = eval_prompts[: cfg.eval_prompts]
    with atomic_path(work / "eval_prompts.jsonl") as tmp:
        tmp.write_text("".join(json.dumps({"messages": p} if isinstance(p, list) else {"prompt": p}) + "\n"
                               for p in eval_prompts))
    if cfg.self_prompts:
        from paperclub.distill.self_prompts import pre_query_ids

        pre_query_ids(llm)  # a target without a chat template fails here, before any teacher data
    if cfg.reuse_data:
        link_teacher_data(Path(cfg.reuse_data), work, cfg)
    paths = build_chunks(llm, train_prompts, work / "data", cfg.chunk_size, cfg.max_new_tokens, cfg.topk,
                         temperatures=tuple(cfg.data_temperatures), seed=cfg.seed)
    if cfg.extra_prompts:  # their own chunk directory, so --reuse-data never mixes them with the main set
        extra = [x for f in cfg.extra_prompts.split(",") for x in read_prompts(f)]
        paths += build_chunks(llm, extra, work / "extra", cfg.chunk_size,
                              cfg.max_new_tokens, cfg.topk, temperatures=(0.0,), seed=cfg.seed)
    if cfg.self_prompts:  # held out from them: this run's evaluation prompts and every category evaluation prompt
        from paperclub.distill.categories import CATEGORIES, category_prompts
        from paperclub.distill.self_prompts import self_prompts

        held = [p if isinstance(p, str) else " ".join(m["content"] for m in p)
                for p in [*eval_prompts, *(q for c in CATEGORIES for q in category_prompts(c))]]
        own = self_prompts(llm, cfg.self_prompts, work / "self_prompts.json", cfg.seed, held)
        paths += build_chunks(llm, own, work / "self", cfg.chunk_size, cfg.max_new_tokens, cfg.topk,
                              temperatures=(0.0,), seed=cfg.seed)
    if cfg.reuse_data:
        paths += sorted((work / REUSED_EXTRA).glob("chunk-*.pt"))
    examples = load_examples(paths)
    eos = set(llm.model.cfg.eos_token_ids) | set(llm.tokenizer.eos_token_ids)
    eval_ids = [llm.encode(p) for p in eval_prompts]
    t_data = time.perf_counter() - t_start

    if cfg.arch == "head":  # a feature head: its vocabulary as below, then `trainer` (`head_train.run_head_distill`)
        if trainer is None:
            raise UserError("--arch head needs the head trainer: run it through `paperclub distill --arch head`")
        vocab_ids = run_vocabulary(work, lambda: select_vocab(examples, llm.model.cfg.vocab_size, cfg.draft_vocab, eos))
        return trainer(target_dir, out, cfg, llm, examples, paths, vocab_ids, eval_ids, t_data)

    # 2. vocabulary, 3. training (the target in float32 for the draft's fp32 master weights)
    target32 = load_model(target_dir, dtype=torch.float32, max_positions=llm.max_model_len)
    start = None if cfg.init in ("target", "random") else load_draft(cfg.init, target32, dtype=torch.float32)
    # a draft that continues keeps its vocabulary; a new one takes the ids with the most mass in the data
    vocab_ids = run_vocabulary(work, lambda: start.vocab_ids.cpu() if start is not None else
                               select_vocab(examples, target32.cfg.vocab_size, cfg.draft_vocab, eos))
    if start is None:
        draft = init_draft(target32, cfg.layers, vocab_ids, cfg.init_layers, random_init=cfg.init == "random",
                           seed=cfg.seed)
    else:
        if not torch.equal(start.vocab_ids.cpu(), vocab_ids):
            raise UserError(f"--init draft {cfg.init} has another draft vocabulary than this run's data "
                            f"({work / 'vocab_ids.pt'}): start from the target instead")
        draft = grow_draft(start, target32, cfg.layers, cfg.init_layers)
    state = train(draft, examples, cfg, work / "checkpoint.pt")

    # 4. export (bf16) and evaluate what was exported, against the bf16 target
    settings = local_names(cfg)
    extra = {"distill": settings,
             "train_steps": state.step, "train_seconds": round(state.elapsed_s, 1)}
    publish(out, lambda d: save_draft(draft, d, target_dir, extra))
    target = llm.model
    exported = load_draft(out, target)
    reports = {}
    for temp in cfg.eval_temperatures:
        rep = evaluate_acceptance(exported, target, eval_ids, k=cfg.k, temperature=temp,
                                  max_tokens=cfg.eval_max_tokens, seed=cfg.seed, eos_ids=eos)
        reports[f"T={temp:g}"] = rep.to_dict()
        log.info("acceptance at T=%g: %.3f, %.2f tokens/forward", temp, rep.acceptance_rate,
                 rep.tokens_per_target_forward)
    t_target, t_draft = step_cost(target), step_cost(exported)
    summary = {
        "target": str(target_dir), "held_out_prompts": len(eval_ids), "k": cfg.k, "acceptance": reports,
        "step_cost_s": {"target": t_target, "draft": t_draft, "ratio": t_draft / t_target},
        "train": {"steps": state.step, "seconds": round(state.elapsed_s, 1),
                  "final_loss": sum(state.losses[-20:]) / max(len(state.losses[-20:]), 1),
                  "examples": len(examples), "tokens": int(sum(len(e.ids) for e in examples))},
        "data_seconds": round(t_data, 1), "draft_vocab": len(vocab_ids), "layers": cfg.layers,
    }
    write_json(out / "acceptance.json", summary)
    write_json(work / "losses.json", state.losses)
    return summary


def run_vocabulary(work: Path, choose: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The run's draft vocabulary: `work/vocab_ids.pt` if an earlier pass (or `--reuse-data`) wrote it, else
    `choose()`, saved there atomically so a resumed run keeps it."""
    vocab_file = work / "vocab_ids.pt"
    if vocab_file.is_file():
        return torch.load(vocab_file, weights_only=True)
    vocab_ids = choose()
    with atomic_path(vocab_file) as tmp:
        torch.save(vocab_ids, tmp)
    return vocab_ids


def publish(out: Path, write: Callable[[Path], None]) -> None:
    """`write(dir)` into a fresh directory inside `out`, then move each file into `out`: each replaces its
    predecessor atomically (a half-written model never sits where a model is expected)."""
    export = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        write(export)
        for f in export.iterdir():
            f.chmod(0o644)
            f.replace(out / f.name)
    finally:
        shutil.rmtree(export, ignore_errors=True)


def local_names(cfg: DistillConfig) -> dict[str, Any]:
    """The settings as a draft's config records them: machine-local paths reduced to their file names."""
    local = ("prompts", "reuse_data", "extra_prompts")
    return {k: ",".join(Path(p).name for p in v.split(",")) if k in local and v else v
            for k, v in dataclasses.asdict(cfg).items()}


DATA_SETTINGS = ("prompts", "max_new_tokens", "topk", "chunk_size", "data_temperatures", "seed", "draft_vocab")


def link_teacher_data(other: Path, work: Path, cfg: DistillConfig) -> None:
    """Hard-link (or copy) the finished teacher-data chunks and draft vocabulary of another run made with the
    same data settings, so a new draft (deeper, other learning rate...) trains on it without regenerating it."""
    try:
        theirs = json.loads((other / "work" / "distill_config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"--reuse-data {other}: not a distillation output (no readable work/distill_config.json)") \
            from None
    mine = dataclasses.asdict(cfg)
    diff = [k for k in DATA_SETTINGS if theirs.get(k) != mine[k]]
    if diff:
        raise UserError(f"--reuse-data {other} was made with other data settings: "
                        + ", ".join(f"{k} {theirs.get(k)!r} (here {mine[k]!r})" for k in diff))
    main = sorted((other / "work" / "data").glob("chunk-*.pt"))
    extra = extra_chunks(other / "work")  # its training-only chunks (and those it reused in turn), one flat list
    links = [(src, work / "data" / src.name) for src in main]
    links += [(other / "work" / "vocab_ids.pt", work / "vocab_ids.pt")]
    links += [(src, work / REUSED_EXTRA / f"chunk-{i:04d}.pt") for i, src in enumerate(extra)]
    for src, dst in links:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_file() and not dst.exists():
            try:
                dst.hardlink_to(src)
            except OSError:
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
    log.info("reusing %d teacher-data chunks (%d of them training-only) from %s", len(main) + len(extra),
             len(extra), other)


REUSED_EXTRA = "reused-extra"


def extra_chunks(work: Path) -> list[Path]:
    """A run's training-only teacher-data chunks: its --extra-prompts, its --self-prompts and those another run's
    --reuse-data lent it."""
    return [p for d in (REUSED_EXTRA, "extra", "self") for p in sorted((work / d).glob("chunk-*.pt"))]


def prepare_out(out: Path, resume: bool, force: bool) -> None:
    """An existing output directory needs --resume (continue) or --force (start over)."""
    if out.exists() and not (out.is_dir() and any(out.iterdir())):
        if out.is_file():
            raise UserError(f"--out {out} is a file: give a directory")
        return
    if not out.exists():
        if resume:
            raise UserError(f"--resume given but {out} does not exist: drop --resume to start a new run")
        return
    if resume:
        if not (out / "work" / "distill_config.json").is_file():
            raise UserError(f"{out} has no distillation state to resume (work/distill_config.json): use --force")
        return
    if not force:
        raise UserError(f"output directory {out} exists: pass --resume to continue it or --force to overwrite it")
    shutil.rmtree(out)


def saved_config(out: Path) -> dict[str, Any]:
    return json.loads((out / "work" / "distill_config.json").read_text())


__all__ = ["DistillConfig", "run_distill", "prepare_out", "saved_config", "train", "distill_loss", "Llama"]
