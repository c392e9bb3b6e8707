"""`paperclub bounds ...`: certify a compressed classifier, and the lecture demos."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path

from paperclub.atomic import check_writable, write_json
from paperclub.errors import UserError

log = logging.getLogger(__name__)
SHIPPED_LM = Path(__file__).parent / "checkpoints" / "lm-python-stdlib"


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def cmd_classify(args) -> int:
    from paperclub.bounds import checkpoint
    from paperclub.bounds.classify import evaluate, shipped_checkpoint, training_labels
    from paperclub.bounds.compress import TrainConfig, train_compressed
    from paperclub.bounds.data import load_dataset

    if not 0.0 < args.delta < 1.0:
        raise UserError(f"--delta {args.delta}: expected a probability in (0, 1)")
    if not 0.0 <= args.label_noise <= 1.0:
        raise UserError(f"--label-noise {args.label_noise}: expected a fraction in [0, 1]")
    if args.prior_fraction is not None:
        if not args.train:
            raise UserError("--prior-fraction trains a data-dependent prior: pass --train (a checkpoint holds its own)")
        if not 0.0 < args.prior_fraction < 1.0:
            raise UserError(f"--prior-fraction {args.prior_fraction}: expected a fraction in (0, 1)")
    for path, what in ((args.json, "--json"), (args.save and Path(args.save) / checkpoint.FILE, "--save")):
        if path:
            check_writable(path, what)
    _threads(args.threads)
    data = load_dataset(args.dataset)
    ckpt = args.ckpt or (None if args.train else shipped_checkpoint(args.dataset, args.label_noise))
    if ckpt:
        compressed, meta = checkpoint.load(Path(ckpt))
        made_for = (meta.get("dataset"), meta.get("label_noise"))
        if made_for != (args.dataset, args.label_noise):
            raise UserError(f"{ckpt} was trained on {made_for[0]} with label noise {made_for[1]}, not "
                            f"{args.dataset} with {args.label_noise}: its training error would not be the one "
                            "it was selected on; pass the matching --dataset/--label-noise")
        log.info("certifying %s", ckpt)
    else:
        cfg = replace(TrainConfig(), dim=args.dim or TrainConfig.dim, levels=args.levels or TrainConfig.levels,
                      epochs=args.epochs or TrainConfig.epochs, seed=args.seed, search_space=args.search_space)
        log.info("training a compressed classifier: %s", cfg)
        x, y, prior = data.x_train, training_labels(data, args.label_noise), None
        if args.prior_fraction is not None:
            from paperclub.bounds.prior import PriorConfig, split, train_prior

            pcfg = PriorConfig(fraction=args.prior_fraction, split_seed=args.seed, seed=args.seed,
                               epochs=args.prior_epochs)
            prior_idx, bound_idx = split(len(x), pcfg)
            log.info("data-dependent prior: theta0 from %d training images, the bound on the other %d",
                     len(prior_idx), len(bound_idx))
            prior = train_prior(x[prior_idx], y[prior_idx], cfg.net, pcfg, progress=not args.quiet)
            x, y = x[bound_idx], y[bound_idx]
        compressed = train_compressed(x, y, cfg, progress=not args.quiet, prior=prior)
        if args.save:
            command = "paperclub bounds " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else ""
            checkpoint.save(Path(args.save), compressed, {"dataset": args.dataset, "label_noise": args.label_noise,
                                                          "train": asdict(cfg),
                                                          "command": command})
    result = evaluate(compressed, data, args.label_noise, args.delta)
    result["checkpoint"] = str(ckpt) if ckpt else None
    result["dataset"] = args.dataset
    print(f"{args.dataset} label noise {args.label_noise:g}: train error {result['train_error']:.4f}, "
          f"test error {result['test_error']:.4f}, {result['compressed_bits']:.0f} bits -> "
          f"error <= {result['bound_error']:.4f} ({result['bound']}, delta={args.delta})")
    if "theta0_alone" in result:
        alone = result["theta0_alone"]
        print(f"{result['prior']}, n = {result['n_train']}; theta0 alone: train error {alone['train_error']:.4f}, "
              f"test error {alone['test_error']:.4f}, error <= {alone['bound_error']:.4f} (held-out bound)")
    if args.json:
        write_json(args.json, result)
    return 0


def load_lm(ckpt: Path):
    """A compressed language model and its meta: SubLoRA's format (`sublora.py`) or direct quantization's."""
    from paperclub.bounds import lm_message, sublora

    file = ckpt / lm_message.FILE if ckpt.is_dir() else ckpt
    try:
        fmt = json.loads(file.read_text()).get("format")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        fmt = None  # lm_message.load says what is wrong with it
    return sublora.load(ckpt) if fmt == sublora.FORMAT else lm_message.load(ckpt)


def cmd_lm(args) -> int:
    from paperclub.bounds import lm_message
    from paperclub.bounds.lm_certify import certify_lm, load_corpus
    from paperclub.bounds.lm_train import LMTrainConfig, quantize_lm, train_lm

    if not 0.0 < args.delta < 1.0:
        raise UserError(f"--delta {args.delta}: expected a probability in (0, 1)")
    for path, what in ((args.json, "--json"), (args.save and Path(args.save) / lm_message.FILE, "--save")):
        if path:
            check_writable(path, what)
    _threads(args.threads)
    corpus = load_corpus(Path(args.corpus))
    given = {k: getattr(args, k) for k in ("hidden", "layers", "seq_len", "tokens", "levels", "lr")}
    cfg = replace(LMTrainConfig(), seed=args.seed, search_space=args.search_space,
                  **{k: v for k, v in given.items() if v is not None})
    cfg.check()
    if args.sublora_dim is not None and not args.train:
        raise UserError("--sublora-dim trains a new SubLoRA model: add --train (a saved one is certified with --ckpt)")
    ckpt = None if args.train else Path(args.ckpt) if args.ckpt else SHIPPED_LM
    if ckpt is not None and not (ckpt / "config.json").is_file():  # a compressed model: certify it as it is
        compressed, meta = load_lm(ckpt)
        made_on = meta.get("corpus_fingerprint")
        if made_on != corpus.fingerprint:
            raise UserError(f"{ckpt} was trained on corpus {made_on}, not on {args.corpus} ({corpus.fingerprint}): "
                            "its training loss would not be the one it was selected on; pass that corpus, or "
                            "train a model on this one with --train")
        seq_len = int(meta.get("seq_len", cfg.seq_len))
        log.info("certifying %s", ckpt)
    else:
        if ckpt is not None:  # a Hugging Face model folder: quantize it directly (fine-tuned on the corpus)
            from paperclub.models.loader import load_model

            model = load_model(ckpt).requires_grad_(True)
            log.info("quantizing %s to %d levels per tensor", ckpt, cfg.levels)
        elif args.sublora_dim is not None:
            from paperclub.bounds import sublora

            sub = sublora.SubLoRAConfig(rank=args.sublora_rank, dim=args.sublora_dim, seed=args.seed,
                                        lr=args.lr or sublora.SubLoRAConfig.lr)
            sub.check()
            subspace = sublora.train_sublora(corpus.train, corpus.vocab_size, cfg, sub, progress=not args.quiet)
            compressed = sublora.quantize_sublora(subspace, corpus.train, cfg, progress=not args.quiet)
        else:
            model = train_lm(corpus.train, corpus.vocab_size, cfg, progress=not args.quiet)
        if args.sublora_dim is None:
            compressed = quantize_lm(model, corpus.train, cfg, progress=not args.quiet)
        seq_len = cfg.seq_len
        if args.save:
            command = "paperclub bounds " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else ""
            meta = {"corpus_fingerprint": corpus.fingerprint, "seq_len": seq_len, "train": asdict(cfg),
                    "source": str(ckpt) if ckpt else "trained", "command": command}
            if args.sublora_dim is not None:
                sublora.save(Path(args.save), compressed, meta)
            else:
                lm_message.save(Path(args.save), compressed, meta)
    result = certify_lm(compressed, corpus, seq_len, args.delta, args.eval_tokens, args.val_tokens, args.seed,
                        progress=not args.quiet)
    result["checkpoint"] = str(ckpt) if ckpt else None
    print(f"bits per token: train {result['train_bits_per_token']:.3f}, test {result['test_bits_per_token']:.3f}, "
          f"bound {result['bound_bits_per_token']:.3f} (vacuous at {result['vacuous_bits_per_token']:.2f}); "
          f"top-1 error: train {result['train_top1_error']:.3f}, test {result['test_top1_error']:.3f}, "
          f"bound {result['bound_top1_error']:.3f}; {result['compressed_bits']:,.0f} bits, delta={args.delta}")
    if args.json:
        write_json(args.json, result)
    return 0


# demo name -> (module under paperclub.bounds.demos, its config class)
DEMOS = {"polynomial": ("polynomial", "PolynomialConfig"), "double-descent": ("double_descent", "DoubleDescentConfig"),
         "label-noise": ("label_noise", "LabelNoiseConfig")}


def cmd_demo(args) -> int:
    from importlib import import_module

    for path, what in ((args.json, "--json"), (args.plot, "--plot")):
        if path:
            check_writable(path, what)
    module_name, config_name = DEMOS[args.name]
    module = import_module(f"paperclub.bounds.demos.{module_name}")
    # label-noise only: flag -> (config field, value)
    overrides = {"--n-train": ("n_train", args.n_train), "--epochs": ("epochs", args.epochs),
                 "--noise": ("noise_levels", None if args.noise is None else tuple(args.noise))}
    given = {flag: fv for flag, fv in overrides.items() if fv[1] is not None}
    if given and args.name != "label-noise":
        raise UserError(f"{', '.join(given)}: only the label-noise demo takes these")
    cfg = getattr(module, config_name)(seed=args.seed, **dict(given.values()))
    plot = Path(args.plot) if args.plot else None
    if args.name == "label-noise":  # many trainings: resumable through a cache of finished ones
        from paperclub.models.store import paperclub_home

        cache = Path(args.cache) if args.cache else paperclub_home() / "bounds" / "label_noise"
        result = module.run(cfg, plot=plot, cache_dir=cache, progress=not args.quiet, threads=args.threads)
    else:
        result = module.run(cfg, plot=plot)
    if args.json:
        write_json(args.json, result)
    else:
        json.dump(result, sys.stdout, indent=2)
        print()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("bounds", help="generalization bounds by compression (PAC-Bayes, Occam) and demos")
    gsub = group.add_subparsers(dest="bounds_command", metavar="COMMAND", parser_class=type(group))

    p = gsub.add_parser("classify", help="certify a compressed image classifier's error")
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist"])
    p.add_argument("--label-noise", type=float, default=0.0, help="fraction of training labels randomized")
    p.add_argument("--ckpt", help="a compressed checkpoint folder (default: the shipped one for this noise level)")
    p.add_argument("--train", action="store_true", help="train a new one even where one is shipped")
    p.add_argument("--save", help="with training: write the compressed checkpoint to this folder")
    p.add_argument("--dim", type=int, help="intrinsic dimension d when training")
    p.add_argument("--levels", type=int, help="quantization levels when training")
    p.add_argument("--epochs", type=int, help="subspace training epochs")
    p.add_argument("--seed", type=int, default=0, help="the prior's seed (theta0 and the projector)")
    p.add_argument("--search-space", type=int, default=1,
                   help="how many configurations you tried before this one (its log2 is paid in the bound)")
    p.add_argument("--prior-fraction", type=float,
                   help="with --train: train theta0 on this fraction of the training set and bound on the rest "
                        "(a data-dependent prior; default: none, theta0 is the seed's initialization)")
    p.add_argument("--prior-epochs", type=int, default=6, help="epochs of the data-dependent prior's training")
    p.add_argument("--delta", type=float, default=0.05, help="the bound holds with probability 1 - delta")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", help="write the result here")
    p.set_defaults(func=cmd_classify)

    p = gsub.add_parser("lm", help="certify a compressed language model's bits per token and top-1 error")
    p.add_argument("--corpus", required=True,
                   help="a corpus folder made by `paperclub scaling prepare` (the model's training split is in it)")
    p.add_argument("--ckpt", help="a compressed model folder (default: the shipped one), or a Hugging Face Llama "
                                  "folder trained on this corpus, to quantize and certify")
    p.add_argument("--train", action="store_true", help="train a new model on the corpus")
    p.add_argument("--save", help="when training or quantizing: write the compressed model to this folder")
    p.add_argument("--hidden", type=int, help="model width when training (default 32)")
    p.add_argument("--layers", type=int, help="blocks when training (default 2)")
    p.add_argument("--seq-len", type=int, help="context window when training or quantizing (default 128)")
    p.add_argument("--tokens", type=int, help="training tokens (default 0: one pass over the training split)")
    p.add_argument("--levels", type=int, help="quantization levels per tensor (default 8)")
    p.add_argument("--lr", type=float, help="peak learning rate when training (default 3e-3; SubLoRA's w: 1e-2)")
    p.add_argument("--sublora-dim", type=int, default=None,
                   help="with --train: train a SubLoRA model instead (a LoRA adapter on the seed's random "
                        "initialization, its numbers in a random subspace of this dimension; only they are coded)")
    p.add_argument("--sublora-rank", type=int, default=4, help="with --sublora-dim: the LoRA rank (default 4)")
    p.add_argument("--seed", type=int, default=0, help="training seed, and the seed that draws --eval-tokens")
    p.add_argument("--search-space", type=int, default=1,
                   help="how many configurations you tried before this one (its log2 is paid in the bound)")
    p.add_argument("--eval-tokens", type=int, default=0,
                   help="score this many training positions drawn at random (the subsampled bound; 0: all)")
    p.add_argument("--val-tokens", type=int, default=0, help="held-out positions to score (0: all)")
    p.add_argument("--delta", type=float, default=0.05, help="each bound holds with probability 1 - delta")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", help="write the result here")
    p.set_defaults(func=cmd_lm)

    p = gsub.add_parser("demo", help=f"the lecture demos: {', '.join(DEMOS)}")
    p.add_argument("name", choices=list(DEMOS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result here (default: print it)")
    p.add_argument("--plot", help="write the figure here (PNG)")
    p.add_argument("--cache", help="label-noise: where finished trainings are kept, so a rerun resumes "
                                   "(default $PAPERCLUB_HOME/bounds/label_noise)")
    p.add_argument("--threads", type=int, help="label-noise: torch threads (1 is fastest beside another job)")
    p.add_argument("--n-train", type=int, help="label-noise: training images, the bound's n (default 2000)")
    p.add_argument("--noise", type=float, nargs="+", metavar="P",
                   help="label-noise: the fractions of labels randomized (default 0 .02 .05 .1 .25 .5 .75 1)")
    p.add_argument("--epochs", type=int, help="label-noise: subspace training epochs per model (default 80)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    group.set_defaults(func=lambda args: group.print_help() or 2)
