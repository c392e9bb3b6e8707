"""Label noise: the same network fits clean and random labels alike, but random labels cost more bits to describe.

A fixed subset of n Fashion-MNIST training images (picked by the seed before anything else) gets a fraction of
its labels replaced by uniformly random classes, for each noise fraction in the config. For each fraction we look
for the smallest compressed model that still fits those labels: walking a geometric grid of intrinsic dimensions
d upward, we train in a random d-dimensional subspace, quantize and range-code (`train_compressed`), decode the
quantized model and keep the first one whose training error on the (noisy) labels is at most `max_train_error`.
Its message length in bits and its training error give a PAC-Bayes bound on its error over the noisy-label
distribution (`certify`, with n the subset's size); the test error is measured on the 10k test images with their
labels randomized the same way (another seed), and on the clean test labels.

Why the bits have to rise. The training error stays near zero at every noise level: the network can memorize.
But a label drawn uniformly from 10 classes carries log2(10) = 3.32 bits of information that nothing else in the
data predicts, so any description of a classifier that reproduces a fraction p of n random labels must, on
average over the draw, contain about p n log2(10) bits: no compressor, however clever, can avoid writing them
down. Clean labels, in contrast, follow from the images, and a short program (a small subspace, few levels)
captures most of them. So the compressed size grows with the noise while the training error does not move, and
the bound, which sees only the training error and the size, grows with it. At 100% noise the labels are
independent of the images, the best true error is 0.9 (guessing among 10 classes), and a valid bound must say so:
the message is longer than n log2(10) bits and the bound is vacuous. The training error alone cannot tell these
models apart; their compressibility can.

Costs and honesty of the search. Every (d, L) on the grid is a separate prior; picking one after looking at the
data is paid for by a union bound, log2(len(dims) * len(levels)) bits added to every message. The learning rate
is not part of the hypothesis (the bound holds however w was found), so it may depend on d: Adam moves each of the
d coordinates by about lr per step, and a step size that suits d = 1000 drives a 16000-dimensional subspace into
dead ReLUs when fitting random labels, so the rate used is lr * min(1, lr_ref_dim / d). If no d on the grid
reaches the target, the largest d's model is reported with `reached_target: false`. Once the walk stops at d*
(where d* <= refine_max_dim), coarser codebooks (`refine_levels`) are tried at d* and the next d, and the fitting
model with the lowest bound is kept: every level count is in the paid grid, so this choice costs nothing more.

What the defaults show (n = 2000, one CPU thread, ~1.6 h of training; benchmarks/results/bounds/label_noise.json):
the training error stays at 0.6-4.8% at every noise level while the compressed size climbs from ~5.8k bits (clean,
d = 1400) to ~118k bits (all labels random, d = 32000), the test error on clean labels from 0.20 to 0.90, and the
bound from 0.90 (clean) through 0.95, 0.98 and 0.9995 (2, 5 and 10% noise) to 1. It is no better than guessing
anywhere at this n: subspace coding is far from the information-theoretic minimum (50-60 bits per random label,
not 3.32), and even the clean model needs ~2.9 bits per training example. A larger n does not cure it: at
n = 10000 (`--n-train 10000 --epochs 30`) the smallest clean model under 5% training error needs 4.1 bits per
example and certifies 0.957, while d = 1400 certifies 0.533 at 11% training error; the 5% target, not n, keeps
the clean end near 1 (BENCHMARKS.md). Coarser codebooks (3 or 7 levels) fitted the labels to 5% once only, with a
higher bound. Levels of noise that land on the same d (the grid steps by ~sqrt(2)) get about the same size, so
neighbouring bounds so close to 1 may even swap by ~1e-10, the smaller training error winning (0.5 and 0.75 do).

Resumable: with `cache_dir`, each finished training is stored as a small JSON file keyed on everything that
determines it (data subset, labels, network, d, L, schedule), and a rerun reads it instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from paperclub.bounds.bounds import certify
from paperclub.bounds.compress import TrainConfig, train_compressed
from paperclub.bounds.data import NUM_CLASSES, load_fashion_mnist, randomize_labels
from paperclub.bounds.projectors import balanced_factors
from paperclub.bounds.subspace import NetConfig, build_net, error_rate
from paperclub.errors import UserError

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when a cached row's meaning changes
ROW_KEYS = ("noise", "dim", "levels", "lr", "train_error", "test_error", "test_error_clean", "coded_bits",
            "seconds")


@dataclass(frozen=True)
class LabelNoiseConfig:
    noise_levels: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)  # fractions of labels randomized
    n_train: int = 2000  # a fixed random subset of the 60k training images; the bound's n
    # intrinsic dimensions, walked upward: steps of ~sqrt(2), each d = d1 d2 with d1 ~ d2 (the Kronecker projector
    # reshapes w into a d1 x d2 matrix; a prime d would make it 1 x d, a rank-one update of the weights)
    dims: tuple[int, ...] = (1400, 2000, 2800, 4000, 5600, 8000, 11200, 16000, 22400, 32000)
    levels: tuple[int, ...] = (15,)  # quantization levels tried at each d of the walk (in this order)
    # once the walk stops at d*, coarser codebooks tried at d* and the next d; the fitting model with the lowest
    # bound is kept. Skipped where d* > refine_max_dim (a model that large is vacuous at any level count here).
    refine_levels: tuple[int, ...] = (3, 7)
    refine_max_dim: int = 8000
    max_train_error: float = 0.05  # the quantized model must fit the (noisy) training labels this well
    epochs: int = 80  # subspace training epochs (n / batch_size steps each)
    qat_epochs: int = 2  # quantization-aware fine-tuning epochs
    lr: float = 0.2  # Adam's learning rate up to d = lr_ref_dim; above it, lr * lr_ref_dim / d
    lr_ref_dim: int = 1000
    batch_size: int = 128
    delta: float = 0.05  # the bound holds with probability 1 - delta
    seed: int = 0  # the subset, the label noise (seed; test labels seed + 1), theta0 and the projector
    net: NetConfig = field(default_factory=NetConfig)

    def lr_at(self, dim: int) -> float:
        return self.lr * min(1.0, self.lr_ref_dim / dim)

    @property
    def search_space(self) -> int:
        """Every (d, L) the search could pick: the union bound pays for all of them."""
        return len(self.dims) * len(set(self.levels) | set(self.refine_levels))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fail(name: str, expected: str, value: object) -> None:
    raise UserError(f"LabelNoiseConfig.{name} must be {expected}, got {value!r}")


def validate(config: LabelNoiseConfig) -> None:
    """Raise UserError naming the first bad field."""
    if not isinstance(config.net, NetConfig):
        _fail("net", "a NetConfig", config.net)
    net = config.net
    if (not isinstance(net.channels, tuple | list) or len(net.channels) != 2
            or not all(_is_int(c) and c >= 1 for c in (*net.channels, net.hidden))):
        _fail("net", "a NetConfig with two channel counts and a hidden width, all >= 1", net)
    if net.num_classes != NUM_CLASSES:
        _fail("net", f"a NetConfig with num_classes={NUM_CLASSES} (Fashion-MNIST's)", net)
    try:
        num_params = sum(p.numel() for p in build_net(config.net).parameters())
    except (UserError, ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"LabelNoiseConfig.net {config.net} does not build a network: {e}") from None
    noise = config.noise_levels
    if not isinstance(noise, tuple | list) or not noise or not all(_is_number(v) and 0 <= v <= 1 for v in noise):
        _fail("noise_levels", "a non-empty tuple of fractions in [0, 1]", noise)
    if len(set(noise)) != len(noise):
        _fail("noise_levels", "free of repeats", noise)
    if not _is_int(config.n_train) or not 10 <= config.n_train <= 60_000:
        _fail("n_train", "an integer in [10, 60000]", config.n_train)
    dims = config.dims
    if (not isinstance(dims, tuple | list) or not dims or not all(_is_int(d) and 1 <= d <= num_params for d in dims)
            or any(a >= b for a, b in zip(dims, dims[1:], strict=False))):
        _fail("dims", f"a non-empty, strictly increasing tuple of integers in [1, {num_params}] (the network's "
              "parameter count)", dims)
    for d in dims:
        d1, d2 = balanced_factors(d)
        if d2 > 4 * d1:
            log.warning("d=%d factors only as %d x %d: the Kronecker projector's update is nearly rank %d", d, d1, d2,
                        d1)
    levels = config.levels
    if (not isinstance(levels, tuple | list) or not levels or not all(_is_int(v) and 2 <= v <= 256 for v in levels)
            or len(set(levels)) != len(levels)):
        _fail("levels", "a non-empty tuple of distinct integers in [2, 256]", levels)
    refine = config.refine_levels
    if not isinstance(refine, tuple | list) or not all(_is_int(v) and 2 <= v <= 256 for v in refine):
        _fail("refine_levels", "a tuple of integers in [2, 256] (empty: no refinement)", refine)
    if not _is_number(config.max_train_error) or not 0 <= config.max_train_error < 1:
        _fail("max_train_error", "a fraction in [0, 1)", config.max_train_error)
    for name, lo, hi in (("epochs", 1, 100_000), ("qat_epochs", 0, 100_000), ("lr_ref_dim", 1, 10**9),
                         ("refine_max_dim", 0, 10**9), ("batch_size", 1, 60_000), ("seed", 0, 2**62)):
        if not _is_int(getattr(config, name)) or not lo <= getattr(config, name) <= hi:
            _fail(name, f"an integer in [{lo}, {hi}]", getattr(config, name))
    if not _is_number(config.lr) or not 0 < config.lr <= 10:
        _fail("lr", "a number in (0, 10]", config.lr)
    if not _is_number(config.delta) or not 0 < config.delta < 1:
        _fail("delta", "a probability in (0, 1)", config.delta)


def subset_indices(n_total: int, n_train: int, seed: int) -> torch.Tensor:
    """The training subset: the first n_train of a seeded permutation, drawn before anything else."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n_train]


def train_config(config: LabelNoiseConfig, dim: int, levels: int) -> TrainConfig:
    return TrainConfig(dim=dim, levels=levels, seed=config.seed, epochs=config.epochs, qat_epochs=config.qat_epochs,
                       lr=config.lr_at(dim), batch_size=config.batch_size, search_space=config.search_space,
                       net=config.net)


def cache_key(config: LabelNoiseConfig, noise: float, dim: int, levels: int) -> dict:
    """Everything one training's row depends on. The grid's size is not in it: the rows store the coded message
    without the search's log2(grid) bits, which are added when the results are assembled."""
    tc = asdict(train_config(config, dim, levels))
    tc.pop("search_space")
    return {"version": CACHE_VERSION, "dataset": "fashion-mnist", "n_train": config.n_train, "seed": config.seed,
            "noise": float(noise), "train": tc}


def cache_file(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"noise{key['noise']:g}_d{key['train']['dim']}_L{key['train']['levels']}_{digest}.json"


def _read_cached(path: Path, key: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        if stored["key"] == json.loads(json.dumps(key)) and all(k in stored["row"] for k in ROW_KEYS):
            return stored["row"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.warning("ignoring unreadable or mismatched cache file %s: training again", path)
    return None


def _train_one(config: LabelNoiseConfig, data, x: torch.Tensor, y: torch.Tensor, y_test: torch.Tensor,
               noise: float, dim: int, levels: int, progress: bool) -> dict:
    start = time.perf_counter()
    tc = train_config(config, dim, levels)
    compressed = train_compressed(x, y, tc, progress=progress)
    model = compressed.model()
    bits = compressed.bits()
    train_error = error_rate(model, x, y)
    test_error = error_rate(model, data.x_test, y_test)
    test_clean = error_rate(model, data.x_test, data.y_test) if noise else test_error
    return {"noise": float(noise), "dim": dim, "levels": levels, "lr": tc.lr, "train_error": train_error,
            "test_error": test_error, "test_error_clean": test_clean, "coded_bits": bits["total"] - bits["search"],
            "seconds": time.perf_counter() - start}


def _trial(config: LabelNoiseConfig, data, x: torch.Tensor, y: torch.Tensor, y_test: torch.Tensor, noise: float,
           dim: int, levels: int, cache_dir: Path | None, progress: bool) -> dict:
    """One training's row, read from the cache where it was trained before."""
    key = cache_key(config, noise, dim, levels)
    path = cache_file(Path(cache_dir), key) if cache_dir is not None else None
    trial = _read_cached(path, key) if path is not None else None
    cached = trial is not None
    if trial is None:
        trial = _train_one(config, data, x, y, y_test, noise, dim, levels, progress)
        if path is not None:
            from paperclub.atomic import write_json

            write_json(path, {"key": key, "row": trial})
    log.info("noise %.2f d=%d L=%d lr=%.3g: train error %.4f, %.0f bits, %.0f s%s", noise, dim, levels, trial["lr"],
             trial["train_error"], trial["coded_bits"], trial["seconds"], " (cached)" if cached else "")
    return trial


def run(config: LabelNoiseConfig, plot: Path | None = None, cache_dir: Path | None = None,
        progress: bool = False, threads: int | None = None) -> dict:
    """Find, for each noise level, the smallest d on the grid whose quantized model fits the noisy training labels;
    return its errors, size and bound (and write the figure to `plot`). `progress` shows training step bars;
    one log line per training either way. `threads`: torch's thread count for this call (restored afterwards);
    None keeps the caller's. On a machine shared with another job, 1 thread ran several times faster than 2."""
    validate(config)
    if threads is not None and (not _is_int(threads) or threads < 1):
        raise UserError(f"threads must be an integer >= 1, got {threads!r}")
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        log.info("torch threads: %d (was %d)", threads, before)
        torch.set_num_threads(threads)
    try:
        return _run(config, plot, cache_dir, progress)
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _run(config: LabelNoiseConfig, plot: Path | None, cache_dir: Path | None, progress: bool) -> dict:
    if plot is not None:
        from paperclub.atomic import check_writable

        check_writable(plot, "plot")
    if cache_dir is not None:
        from paperclub.atomic import check_writable

        check_writable(Path(cache_dir) / "probe.json", "cache_dir")
    start = time.perf_counter()
    data = load_fashion_mnist()
    if config.n_train > len(data.x_train):
        _fail("n_train", f"at most the {len(data.x_train)} training images", config.n_train)
    idx = subset_indices(len(data.x_train), config.n_train, config.seed)
    x, y_clean = data.x_train[idx], data.y_train[idx]
    search_bits = math.log2(config.search_space)
    rows = []
    for noise in config.noise_levels:
        y = randomize_labels(y_clean, noise, NUM_CLASSES, config.seed)
        y_test = randomize_labels(data.y_test, noise, NUM_CLASSES, config.seed + 1)
        trials: list[dict] = []

        def trial_at(dim: int, levels: int, noise=noise, y=y, y_test=y_test, trials=trials) -> dict:
            trials.append(_trial(config, data, x, y, y_test, noise, dim, levels, cache_dir, progress))
            return trials[-1]

        def fits(t: dict) -> bool:
            return t["train_error"] <= config.max_train_error

        def bound_of(t: dict) -> float:
            return certify(t["train_error"], t["coded_bits"] + search_bits, config.n_train, config.delta).bound_error

        chosen = None
        for dim in config.dims:
            for levels in config.levels:
                if fits(trial_at(dim, levels)):
                    chosen = trials[-1]
                    break
            if chosen is not None:
                break
        reached = chosen is not None
        if not reached:  # the largest model tried, flagged: the target was out of the grid's reach
            chosen = min(trials[-len(config.levels):], key=lambda t: t["train_error"])
            log.warning("noise %.2f: no d up to %d fits the training labels to %.3f; reporting d=%d (train error "
                        "%.4f)", noise, config.dims[-1], config.max_train_error, chosen["dim"], chosen["train_error"])
        elif chosen["dim"] <= config.refine_max_dim:  # coarser codebooks at d* and the next d
            at = config.dims.index(chosen["dim"])
            for dim in config.dims[at: at + 2]:
                for levels in config.refine_levels:
                    if levels not in config.levels:
                        trial_at(dim, levels)
            chosen = min((t for t in trials if fits(t)), key=lambda t: (bound_of(t), t["coded_bits"]))
        bits = chosen["coded_bits"] + search_bits
        cert = certify(chosen["train_error"], bits, config.n_train, config.delta)
        rows.append({
            "noise": float(noise), "dim": chosen["dim"], "levels": chosen["levels"], "lr": chosen["lr"],
            "train_error": chosen["train_error"], "test_error": chosen["test_error"],
            "test_error_clean": chosen["test_error_clean"], "compressed_bits": bits,
            "bits_per_example": bits / config.n_train, "bound_error": cert.bound_error, "bound": cert.bound,
            "reached_target": reached, "seconds": sum(t["seconds"] for t in trials),
            "trials": [{k: t[k] for k in ("dim", "levels", "train_error", "coded_bits", "seconds")} for t in trials],
        })
        log.info("noise %.2f: d=%d, train error %.4f, test error %.4f (clean %.4f), %.0f bits, bound %.4f", noise,
                 chosen["dim"], chosen["train_error"], chosen["test_error"], chosen["test_error_clean"], bits,
                 cert.bound_error)
    out = {
        "rows": rows,
        "n_train": config.n_train,
        "delta": config.delta,
        "search_space": config.search_space,
        "search_bits": search_bits,
        "random_label_bits": config.n_train * math.log2(NUM_CLASSES),  # n log2(10): to memorize n random labels
        "num_params": sum(p.numel() for p in build_net(config.net).parameters()),
        "config": asdict(config),
        "training_seconds": sum(r["seconds"] for r in rows),  # as first measured, also where read from the cache
        "runtime_s": time.perf_counter() - start,  # this call's, cache reads included
    }
    if plot is not None:
        _plot(Path(plot), out)
    return out


def _plot(path: Path, out: dict) -> None:
    from matplotlib.figure import Figure

    from paperclub.atomic import atomic_path

    rows = out["rows"]
    noise = [r["noise"] for r in rows]
    fig = Figure(figsize=(8, 5.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(noise, [r["bound_error"] for r in rows], color="tab:red", marker="o", lw=2, label="bound on error")
    ax.plot(noise, [r["test_error"] for r in rows], color="tab:orange", marker="s", label="test error (noisy labels)")
    ax.plot(noise, [r["test_error_clean"] for r in rows], color="tab:orange", ls=":", marker="s", mfc="none",
            label="test error (clean labels)")
    ax.plot(noise, [r["train_error"] for r in rows], color="tab:green", marker="^", label="train error (quantized)")
    missed = [r for r in rows if not r["reached_target"]]
    if missed:
        ax.scatter([r["noise"] for r in missed], [r["train_error"] for r in missed], s=120, facecolors="none",
                   edgecolors="black", zorder=5, label="target train error not reached")
    ax.axhline(0.9, color="black", lw=0.8, ls="--")
    ax.annotate("random guessing (0.9)", (0.01, 0.9), xycoords=("axes fraction", "data"), xytext=(0, 3),
                textcoords="offset points", fontsize=8)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("fraction of training labels randomized")
    ax.set_ylabel("error")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(noise, [r["compressed_bits"] for r in rows], color="tab:blue", marker="D", ls="-.",
              label="compressed size (bits, right axis; d beside each point)")
    for i, r in enumerate(rows):
        last = i == len(rows) - 1  # its label goes to the left, inside the axes
        twin.annotate(f"d={r['dim']}", (r["noise"], r["compressed_bits"]), xytext=(-7 if last else 5, -10),
                      textcoords="offset points", fontsize=7, color="tab:blue", ha="right" if last else "left")
    twin.axhline(out["random_label_bits"], color="tab:blue", lw=0.8, ls=":")
    twin.annotate(f"n log2(10) = {out['random_label_bits']:.0f} bits", (0.01, out["random_label_bits"]),
                  xycoords=("axes fraction", "data"), xytext=(0, 3), textcoords="offset points", fontsize=8,
                  color="tab:blue")
    twin.set_ylim(0, 1.1 * max(max(r["compressed_bits"] for r in rows), out["random_label_bits"]))
    twin.set_ylabel("compressed size (bits)", color="tab:blue")
    handles = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    fig.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="outside lower center", ncol=3)
    ax.set_title(f"Fashion-MNIST, n = {out['n_train']}: fitting noise costs bits, and the bound sees it")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
