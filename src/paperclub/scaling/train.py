"""One training run of the study: a model of the ladder trained on a fixed token budget, as a resumable job.

A run is named by a hash of everything that decides its result (its `RunConfig` and the corpus fingerprint), so
the same run asked for twice is one folder. The folder holds `config.json`, a `checkpoint.pt` while training
(model, optimizer, step; written atomically every `checkpoint_every_s` seconds), and once done `model.safetensors`
and `metrics.json`; a folder with `metrics.json` is finished and running it again is a no-op. A killed run
resumes from its checkpoint; the data order is a function of (data seed, epoch), so the resumed run sees the
batches the uninterrupted one would have, and ends with the same metrics.

Schedule: AdamW (beta2 0.95, decoupled weight decay on matrices and embeddings), linear warm-up over 5% of the
steps, cosine to zero, gradient clipping at 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from paperclub.atomic import atomic_path, write_json
from paperclub.errors import UserError
from paperclub.models.llama import Llama
from paperclub.scaling.corpus import Corpus
from paperclub.scaling.evaluate import chunk_losses, ensemble_logits, val_chunks
from paperclub.scaling.ladder import model_config, non_embedding_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    size: str  # a rung of `ladder.LADDER`
    tokens: int  # the token budget D: the first D tokens of the training split
    epochs: int
    lr: float
    weight_decay: float
    seed: int = 0  # initialisation
    data_seed: int = 0  # batch order
    batch_size: int = 8
    seq_len: int = 256
    warmup: float = 0.05  # fraction of the steps
    val_tokens: int = 262144
    synthetic: str = ""  # distillation: teacher samples of seq_len + 1 tokens (a path relative to the study folder)
    synthetic_fraction: float = 0.0  # share of each epoch's sequences drawn from `synthetic`
    teacher: tuple[str, ...] = ()  # logit distillation: finished runs (ids under the study's runs/) whose averaged
    teacher_weight: float = 0.0  # logits the student matches, with this share of the loss (the rest: next token)

    # fields added after runs were named: they enter a run's id only when set, so earlier runs keep their names
    LATE_FIELDS: ClassVar[dict] = {"teacher": (), "teacher_weight": 0.0}

    def __post_init__(self) -> None:
        object.__setattr__(self, "teacher", tuple(self.teacher))  # a JSON list read back
        checks = [(self.tokens > self.seq_len * self.batch_size, "tokens must exceed one batch"),
                  (self.epochs >= 1, "epochs must be at least 1"), (self.lr > 0, "lr must be positive"),
                  (self.weight_decay >= 0, "weight_decay must be >= 0"),
                  (0 <= self.synthetic_fraction < 1, "synthetic_fraction must be in [0, 1)"),
                  (bool(self.synthetic) == (self.synthetic_fraction > 0),
                   "synthetic and synthetic_fraction go together"),
                  (0 <= self.teacher_weight <= 1, "teacher_weight must be in [0, 1]"),
                  (bool(self.teacher) == (self.teacher_weight > 0), "teacher and teacher_weight go together")]
        for ok, message in checks:
            if not ok:
                raise UserError(f"run config: {message} ({self})")

    def identity(self) -> dict:
        """The fields that name this run (and the jobs built on it): all of them, less the late ones left at
        their defaults."""
        return {k: v for k, v in asdict(self).items() if self.LATE_FIELDS.get(k, object()) != v}

    def run_id(self, corpus_fingerprint: str) -> str:
        blob = json.dumps({**self.identity(), "corpus": corpus_fingerprint}, sort_keys=True)
        h = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"{self.size}-D{self.tokens}-e{self.epochs}-lr{self.lr:g}-wd{self.weight_decay:g}-s{self.seed}-{h}"


@dataclass
class TrainState:
    step: int = 0
    elapsed_s: float = 0.0
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since the last entry)
    window: list[float] = field(default_factory=list)  # losses since the last entry


def sequences(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Start offsets of the non-overlapping (seq_len + 1)-token windows of a budget."""
    return np.arange(0, len(tokens) - seq_len, seq_len)


class Batches:
    """The batch of step s as a function of s alone (so a resumed run replays the same order)."""

    def __init__(self, cfg: RunConfig, data: np.ndarray, synthetic: np.ndarray | None):
        self.cfg, self.data, self.synthetic = cfg, data, synthetic
        self.real = sequences(data, cfg.seq_len)
        if synthetic is None:
            self.n_synth = 0
        else:
            # the mixture weight: synthetic sequences make up `synthetic_fraction` of each epoch
            want = round(len(self.real) * cfg.synthetic_fraction / (1 - cfg.synthetic_fraction))
            self.synth = np.arange(0, len(synthetic) - cfg.seq_len, cfg.seq_len + 1)  # whole samples
            if len(self.synth) < want:
                raise UserError(f"{cfg.synthetic} holds {len(self.synth)} sequences; the mixture needs {want}")
            self.n_synth = want
        self.per_epoch = (len(self.real) + self.n_synth) // cfg.batch_size
        if self.per_epoch < 1:
            raise UserError(f"a budget of {cfg.tokens} tokens gives no full batch of {cfg.batch_size}x{cfg.seq_len}")

    @property
    def total_steps(self) -> int:
        return self.per_epoch * self.cfg.epochs

    def __call__(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        rng = np.random.default_rng([self.cfg.data_seed, epoch])
        order = rng.permutation(len(self.real) + self.n_synth)[i * self.cfg.batch_size: (i + 1) * self.cfg.batch_size]
        if self.n_synth:  # each epoch draws its own synthetic sequences
            synth_pick = np.random.default_rng([self.cfg.data_seed, epoch, 1]).permutation(len(self.synth))
        rows = []
        for j in order:
            if j < len(self.real):
                s, src = self.real[j], self.data
            else:
                s, src = self.synth[synth_pick[j - len(self.real)]], self.synthetic
            rows.append(np.asarray(src[s: s + self.cfg.seq_len + 1], dtype=np.int64))
        return torch.from_numpy(np.stack(rows))


def lr_at(cfg: RunConfig, step: int, total: int) -> float:
    warm = max(1, round(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def build_model(cfg: RunConfig, vocab_size: int) -> Llama:
    torch.manual_seed(cfg.seed)
    mcfg = model_config(cfg.size, vocab_size, cfg.seq_len)
    model = Llama(mcfg)
    for name, p in model.named_parameters():  # small-init: N(0, 0.02), output projections scaled by depth
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * mcfg.num_layers) if name.endswith(("o.weight", "down.weight")) else 0.02
            torch.nn.init.normal_(p, std=std)
    return model


def optimizer(model: Llama, cfg: RunConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() != 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def is_done(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file()


def load_model(run_dir: Path, vocab_size: int) -> Llama:
    """The trained model of a finished run."""
    cfg = RunConfig(**json.loads((run_dir / "config.json").read_text())["run"])
    model = Llama(model_config(cfg.size, vocab_size, cfg.seq_len))
    try:
        state = load_file(run_dir / "model.safetensors")
    except Exception as e:  # noqa: BLE001 - safetensors' own error type (bad header, truncated file) included
        raise UserError(f"{run_dir}/model.safetensors is unreadable ({e}): run the job again") from None
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def load_teacher(run_dir: Path, vocab_size: int, student: str) -> Llama:
    """A finished run's model, to distill from."""
    if read_metrics(run_dir) is None or not (run_dir / "model.safetensors").is_file():
        raise UserError(f"run {student}: its teacher {run_dir.name} is not a finished run with weights under "
                        f"{run_dir.parent}")
    return load_model(run_dir, vocab_size)


def train_run(cfg: RunConfig, corpus: Corpus, run_dir: Path, checkpoint_every_s: float = 120.0,
              progress: bool = True, root: Path | None = None, compile: bool = False) -> dict:
    """Train (or resume, or skip when finished) the run in `run_dir`; returns its metrics. `root` is the folder a
    relative `cfg.synthetic` path is under (the study folder). `compile` runs the forward and loss through
    `torch.compile` (1.2x the training throughput of s1 and s3 on a 2-core Zen 3; the first compile of a shape takes
    about a minute, later ones hit inductor's on-disk cache in seconds); it changes rounding, not the recipe, so
    it is not part of the run's identity."""
    run_dir = Path(run_dir)
    if is_done(run_dir):
        return json.loads((run_dir / "metrics.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {"run": asdict(cfg), "corpus": corpus.info["fingerprint"]})
    synthetic = None
    if cfg.synthetic:
        path = Path(root or ".") / cfg.synthetic
        if not path.is_file():
            raise UserError(f"run {run_dir.name}: its teacher text {path} does not exist")
        synthetic = np.memmap(path, dtype=np.uint16, mode="r")
    teachers = [load_teacher(Path(root or ".") / "runs" / rid, corpus.vocab_size, run_dir.name)
                for rid in cfg.teacher]
    batches = Batches(cfg, corpus.budget(cfg.tokens), synthetic)
    model = build_model(cfg, corpus.vocab_size).train().requires_grad_(True)
    opt = optimizer(model, cfg)
    state = TrainState()
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.is_file():
        try:
            saved = torch.load(ckpt, weights_only=True)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            state = TrainState(**saved["state"])
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means: start over, loudly
            log.warning("%s: checkpoint unreadable (%s); starting the run over", run_dir.name, e)
            state = TrainState()
            model = build_model(cfg, corpus.vocab_size).train().requires_grad_(True)
            opt = optimizer(model, cfg)
        else:
            log.info("%s: resuming at step %d of %d", run_dir.name, state.step, batches.total_steps)

    def save() -> None:
        with atomic_path(ckpt) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": asdict(state)}, tmp)

    def loss_of(batch: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        logits = model.logits(model.causal_forward(batch[:, :-1]))
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        if target is not None:  # KL(teacher || student) per position; target: the teacher's log-probabilities
            kl = F.kl_div(F.log_softmax(logits, dim=-1), target, log_target=True, reduction="none").sum(-1).mean()
            loss = (1 - cfg.teacher_weight) * loss + cfg.teacher_weight * kl
        return loss

    @torch.no_grad()
    def teacher_target(batch: torch.Tensor) -> torch.Tensor | None:
        """The teachers' next-token log-probabilities (their averaged logits), outside the compiled loss: the
        teachers run the inference path, which torch.compile does not trace."""
        return F.log_softmax(ensemble_logits(teachers, batch[:, :-1]), dim=-1) if teachers else None

    step_loss = torch.compile(loss_of) if compile else loss_of
    total, last_save = batches.total_steps, time.perf_counter()
    bar = tqdm(total=total, initial=state.step, desc=run_dir.name[:40], unit="step", disable=not progress,
               leave=False)
    while state.step < total:
        t0 = time.perf_counter()
        batch = batches(state.step)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, state.step, total)
        loss = step_loss(batch, teacher_target(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state.step += 1
        state.elapsed_s += time.perf_counter() - t0
        state.window.append(loss.item())
        if len(state.window) == 32 or state.step == total:
            state.train_loss.append((state.step, round(float(np.mean(state.window)), 4)))
            state.window = []
            bar.set_postfix(loss=f"{state.train_loss[-1][1]:.3f}")
        bar.update(1)
        if time.perf_counter() - last_save >= checkpoint_every_s and state.step < total:
            save()
            last_save = time.perf_counter()
    bar.close()

    model.eval().requires_grad_(False)
    chunks, _ = val_chunks(corpus.val, cfg.val_tokens, cfg.seq_len, corpus.eot)
    losses = chunk_losses([model], chunks)
    mcfg = model.cfg
    metrics = {
        "run_id": run_dir.name, "config": asdict(cfg), "corpus": corpus.info["fingerprint"],
        "val_loss": float(losses.mean()), "val_chunk_losses": [round(float(x), 5) for x in losses],
        "params": mcfg.num_params(), "non_embedding_params": non_embedding_params(mcfg),
        "steps": total, "train_tokens": total * cfg.batch_size * cfg.seq_len,
        "train_loss": state.train_loss, "train_s": round(state.elapsed_s, 2),
        "tokens_per_s": round(total * cfg.batch_size * cfg.seq_len / max(state.elapsed_s, 1e-9), 1),
        "threads": torch.get_num_threads(), "compiled": compile,
    }
    with atomic_path(run_dir / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    write_json(run_dir / "metrics.json", metrics)
    ckpt.unlink(missing_ok=True)
    return metrics


def read_metrics(run_dir: Path) -> dict | None:
    """A finished run's metrics, None for an unfinished one; a damaged file is a UserError naming it."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
        RunConfig(**metrics["config"])
        float(metrics["val_loss"])
        return metrics
    except (ValueError, KeyError, TypeError, UserError) as e:
        raise UserError(f"{path} is damaged ({e})") from None
