"""`paperclub lewm ...`: collect, train, probe, plan, surprise."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields, replace
from pathlib import Path

from paperclub.atomic import write_json
from paperclub.errors import UserError
from paperclub.worldmodel.defaults import ENV_DEFAULTS, or_default

log = logging.getLogger(__name__)

def _torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _env_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--env", choices=sorted(ENV_DEFAULTS), required=required, help="environment")


def cmd_collect(args) -> int:
    from paperclub.worldmodel.data import CollectConfig, collect

    d = ENV_DEFAULTS[args.env]
    cfg = CollectConfig(
        env=args.env,
        episodes=or_default(args.episodes, d["episodes"]),
        steps=or_default(args.steps, d["steps"]),
        seed=args.seed,
        image_size=args.image_size,
        explore=args.explore,
        explore_hold=args.explore_hold,
        antialias=args.antialias,
    )
    path = collect(cfg, args.out, progress=not args.quiet)
    print(f"wrote {cfg.episodes} episodes to {path}")
    return 0


# `lewm train` defaults that are not TrainConfig's own (the rest come from TrainConfig); on --resume every
# setting comes from the run being resumed instead
CLI_TRAIN_DEFAULTS = {"config": "small", "eval_every": 250}
FIXED_ON_RESUME = ("config", "batch_size", "lr", "sigreg_weight", "sigreg_directions", "eval_every", "seed",
                   "frameskip", "latent_dim", "episodes", "rollout_weight")
# what to do when the run to resume has a corrupt config.json
RESUME_FIX = "start a new run (without --resume) in another --out"


def cmd_train(args) -> int:
    from paperclub.worldmodel.checkpoint import CONFIG, saved_section
    from paperclub.worldmodel.data import load
    from paperclub.worldmodel.ensemble import ENSEMBLE_FILE
    from paperclub.worldmodel.goal_graph import GRAPH_FILE
    from paperclub.worldmodel.goal_metric import METRIC_FILE
    from paperclub.worldmodel.model import LeWMConfig
    from paperclub.worldmodel.train import TrainConfig, train

    _torch_threads(args.threads)
    out = Path(args.out)
    if args.resume:
        saved = _saved_run(out, args)
        data_path = Path(args.data or _saved_dataset(saved, out))
        model_cfg = saved_section(saved, "model", LeWMConfig, out / CONFIG, RESUME_FIX)
        cfg = saved_section(saved, "train", TrainConfig, out / CONFIG, RESUME_FIX)
        cfg = replace(cfg, steps=or_default(args.steps, cfg.steps),
                      max_minutes=or_default(args.max_minutes, cfg.max_minutes))
        config_name = saved.get("config_name")
    else:
        defaults = {f.name: f.default for f in fields(TrainConfig)} | CLI_TRAIN_DEFAULTS
        for key in ("config", "steps", "batch_size", "lr", "sigreg_weight", "sigreg_directions", "eval_every", "seed",
                    "rollout_weight"):
            setattr(args, key, or_default(getattr(args, key), defaults[key]))
        data_path, model_cfg, cfg = _new_run(args, out)
        config_name = args.config
    data = load(data_path)
    if data.env != args.env:
        raise UserError(f"dataset {data_path} is for {data.env}, not {args.env}: pass a matching --data")
    if data.antialias != model_cfg.antialias:
        raise UserError(f"dataset {data_path} has {'antialiased' if data.antialias else 'hard-edged'} frames, but "
                        f"the model in {out} reads {'antialiased' if model_cfg.antialias else 'hard-edged'} ones")
    argv = sys.argv[1:]
    command = "paperclub " + " ".join(argv[argv.index("lewm"):]) if "lewm" in argv else None
    # a step metric belongs to the weights it was fitted on: training changes them, so drop it until the end
    (out / METRIC_FILE).unlink(missing_ok=True)
    (out / ENSEMBLE_FILE).unlink(missing_ok=True)  # its members read the old encoder's latents
    (out / GRAPH_FILE).unlink(missing_ok=True)  # its nodes are the old encoder's latents
    result = train(
        model_cfg,
        cfg,
        data,
        out,
        meta={"config_name": config_name, "dataset": str(data_path), "command": command},
        progress=not args.quiet,
        device=args.device,
        resume=args.resume,
    )
    if not result.get("interrupted"):
        _write_step_metric(out, data, data_path, device=args.device)
    print(json.dumps(result, indent=2))
    if result.get("interrupted"):
        print(f"interrupted after {result['steps_done']} steps; saved {out}: continue with "
              f"`paperclub lewm train --env {args.env} --out {out} --resume`", file=sys.stderr)
        return 130
    return 0


def _write_step_metric(ckpt: Path, data, data_path, cfg=None, model=None, device: str = "cpu") -> Path:
    """Fit the step metric (goal_metric.py) of the checkpoint in `ckpt` on `data` and save it there."""
    from paperclub.device import resolve_device
    from paperclub.worldmodel.checkpoint import load_checkpoint
    from paperclub.worldmodel.goal_metric import StepMetricConfig, fit_step_metric, save_step_metric

    cfg = cfg or StepMetricConfig()
    model = model if model is not None else load_checkpoint(ckpt)[0].to(resolve_device(device))
    path = save_step_metric(ckpt, fit_step_metric(model, data, cfg), cfg, str(data_path))
    log.info("wrote the step metric (lag %d, shrink %g) to %s", cfg.lag, cfg.shrink, path)
    return path


def cmd_graph(args) -> int:
    from paperclub.worldmodel.checkpoint import load_checkpoint
    from paperclub.worldmodel.data import load
    from paperclub.worldmodel.goal_graph import GoalGraphConfig, build_graph, save_goal_graph
    from paperclub.worldmodel.goal_metric import require_step_metric

    _torch_threads(args.threads)
    cfg = GoalGraphConfig(nodes=args.nodes, radius=args.radius, max_episodes=args.max_episodes)
    ckpt = Path(args.ckpt)
    model, meta = load_checkpoint(ckpt)
    whiten = require_step_metric(ckpt, model.cfg.latent_dim, "lewm graph")
    data = load(args.data)
    if data.env != meta["env"]:
        raise UserError(f"dataset {args.data} is for {data.env}, but {ckpt} is a {meta['env']} checkpoint")
    nodes, radius, stats = build_graph(model.eval(), data, whiten, cfg)
    path = save_goal_graph(ckpt, nodes, radius, stats)
    print(json.dumps({"path": str(path), **stats}, indent=2))
    if stats["components"] > 1:
        log.warning("the graph has %d components (largest: %d of %d nodes): goals outside a start's component "
                    "fall back to the step metric's cost; a larger --radius joins them", stats["components"],
                    stats["largest_component"], stats["nodes"])
    return 0


def cmd_metric(args) -> int:
    from paperclub.worldmodel.checkpoint import load_checkpoint
    from paperclub.worldmodel.data import load
    from paperclub.worldmodel.goal_graph import GRAPH_FILE
    from paperclub.worldmodel.goal_metric import StepMetricConfig

    _torch_threads(args.threads)
    cfg = StepMetricConfig(lag=args.lag, shrink=args.shrink, max_episodes=args.max_episodes)
    ckpt = Path(args.ckpt)
    model, meta = load_checkpoint(ckpt)
    data = load(args.data)
    if data.env != meta["env"]:
        raise UserError(f"dataset {args.data} is for {data.env}, but {ckpt} is a {meta['env']} checkpoint")
    print(f"wrote {_write_step_metric(ckpt, data, args.data, cfg, model)}")
    if (ckpt / GRAPH_FILE).exists():  # its radius is a length in the old metric
        (ckpt / GRAPH_FILE).unlink()
        print(f"removed {ckpt / GRAPH_FILE}, built on the old metric: rebuild it with `paperclub lewm graph`",
              file=sys.stderr)
    return 0


def _saved_run(out: Path, args) -> dict:
    """The config.json of the run in `out`, after checking that --resume can continue it as asked."""
    from paperclub.worldmodel.checkpoint import CONFIG, read_meta

    path = out / CONFIG
    if not path.is_file():
        raise UserError(f"{path} not found: --resume continues a run saved in --out (leave it out to start one)")
    saved = read_meta(out, RESUME_FIX)
    if saved.get("env") != args.env:
        raise UserError(f"{out} is a {saved.get('env')} run, not {args.env}: pass --env {saved.get('env')}")
    given = [k for k in FIXED_ON_RESUME if getattr(args, k) is not None]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"--resume continues with the run's own settings: drop {flags} (only --steps, "
                        "--max-minutes, --data, --device and --threads may change)")
    return saved


def _saved_dataset(saved: dict, out: Path) -> str:
    """The dataset the run in `out` trained on, as its config.json records it."""
    if not isinstance(saved.get("dataset"), str):
        raise UserError(f"{out / 'config.json'} records no dataset to resume on: pass --data")
    return saved["dataset"]


def _new_run(args, out: Path):
    from paperclub.worldmodel.data import CollectConfig, collect, load
    from paperclub.worldmodel.model import preset
    from paperclub.worldmodel.train import TrainConfig

    d = ENV_DEFAULTS[args.env]
    if args.data:
        data_path = Path(args.data)
    else:  # no dataset given: collect a small one next to the checkpoint
        data_path = out / "dataset.h5"
        if not data_path.is_file():
            tiny = args.config == "tiny"
            collect(
                CollectConfig(
                    env=args.env,
                    episodes=or_default(args.episodes, 16 if tiny else d["episodes"]),
                    steps=d["steps"] if not tiny else 60,
                    seed=args.seed,
                ),
                data_path,
                progress=not args.quiet,
            )
    data = load(data_path)
    model_cfg = preset(
        args.config,
        frameskip=or_default(args.frameskip, d["frameskip"]),
        action_dim=int(data.actions.shape[1]),
        image_size=int(data.frames.shape[1]),
        antialias=data.antialias,
        **({"latent_dim": args.latent_dim} if args.latent_dim is not None else {}),
    )
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        sigreg_weight=args.sigreg_weight,
        sigreg_directions=args.sigreg_directions,
        rollout_weight=args.rollout_weight,
        max_minutes=args.max_minutes,
        seed=args.seed,
        eval_every=min(args.eval_every, args.steps),
    )
    return data_path, model_cfg, cfg


def cmd_probe(args) -> int:
    import numpy as np

    from paperclub.worldmodel.checkpoint import load_checkpoint, resolve_checkpoint
    from paperclub.worldmodel.data import load, run_episode
    from paperclub.worldmodel.envs import make_env
    from paperclub.worldmodel.probe import probe_latents

    _torch_threads(args.threads)
    model, meta = load_checkpoint(resolve_checkpoint(args.ckpt, args.env))
    env_name = meta["env"]
    if args.data:
        frames = load(args.data).frames
        frames = frames[np.random.default_rng(args.seed).permutation(len(frames))[: args.frames]]
    else:  # fresh held-out episodes of the scripted policy
        env = make_env(env_name, model.cfg.image_size, model.cfg.antialias)
        eps, total = [], 0
        i = 0
        while total < args.frames:
            eps.append(run_episode(env_name, env, 100, 10_000_000 + args.seed * 1000 + i)["frames"])
            total += len(eps[-1])
            i += 1
        frames = np.concatenate(eps)[: args.frames]
    result = {"env": env_name, "ckpt": str(args.ckpt or "shipped"), **probe_latents(model, frames)}
    if args.json:
        write_json(args.json, result)
    print(json.dumps(result, indent=2))
    return 0


def cmd_ensemble(args) -> int:
    from paperclub.worldmodel.checkpoint import load_checkpoint
    from paperclub.worldmodel.data import load
    from paperclub.worldmodel.ensemble import EnsembleConfig, save_ensemble, train_ensemble
    from paperclub.worldmodel.goal_metric import require_step_metric

    _torch_threads(args.threads)
    cfg = EnsembleConfig(members=args.members, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         rollout_weight=args.rollout_weight, loss_metric=args.loss, seed=args.seed)
    ckpt = Path(args.ckpt)
    model, meta = load_checkpoint(ckpt)
    whiten = require_step_metric(ckpt, model.cfg.latent_dim, "--loss step") if cfg.loss_metric == "step" else None
    data = load(args.data)
    if data.env != meta["env"]:
        raise UserError(f"dataset {args.data} is for {data.env}, but {ckpt} is a {meta['env']} checkpoint")
    train_seed = int(meta.get("train", {}).get("seed", 0))
    members, report = train_ensemble(model, data, cfg, progress=not args.quiet, train_seed=train_seed,
                                     whiten=whiten)
    path = save_ensemble(ckpt, members, cfg, str(args.data))
    report["path"] = str(path)
    if args.json:
        write_json(args.json, report)
    print(json.dumps(report, indent=2))
    return 0


def register(subparsers) -> None:
    lewm = subparsers.add_parser(
        "lewm", help="LeWorldModel: JEPA world model with SIGReg and latent planning"
    )
    sub = lewm.add_subparsers(dest="lewm_command", metavar="SUBCOMMAND", parser_class=type(lewm))
    lewm.set_defaults(func=lambda args: (lewm.print_help(), 2)[1])

    p = sub.add_parser("collect", help="collect scripted episodes into an HDF5 dataset")
    _env_arg(p)
    p.add_argument("--episodes", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="env steps per episode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--explore", type=float, default=0.0,
                   help="probability that a step's action is uniform random instead of the scripted policy's")
    p.add_argument("--explore-hold", type=int, default=1,
                   help="hold each random action for a uniform 1..N steps (pushes into walls and along lines)")
    p.add_argument("--antialias", action="store_true",
                   help="Push-T: antialiased frames (each pixel shaded by the fraction a shape covers), so that a "
                        "sub-pixel move of the block changes the image; a model trained on them plans on them")
    p.add_argument("--out", required=True, help="output .h5 file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("train", help="train a LeWM checkpoint")
    _env_arg(p)
    p.add_argument("--config", default=None,
                   help="model preset: tiny, small (CNN, 64 px; the default), vit-small (ViT, 64 px) or vit-tiny "
                        "(the paper's ViT-tiny at 224 px: collect with --image-size 224, train on a GPU)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or auto")
    p.add_argument("--data", default=None, help="dataset .h5 (default: collect one into OUT/dataset.h5)")
    p.add_argument("--episodes", type=int, default=None, help="episodes to collect when --data is not given")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=None, help="default 64")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    p.add_argument("--sigreg-weight", type=float, default=None, help="lambda, the SIGReg weight (default 0.1)")
    p.add_argument("--sigreg-directions", type=int, default=None, help="default 1024")
    p.add_argument("--rollout-weight", type=float, default=None,
                   help="weight of the multi-step loss on latents imagined from the window's first frame, as "
                        "planning imagines them (default 0: teacher forcing only)")
    p.add_argument("--frameskip", type=int, default=None)
    p.add_argument("--latent-dim", type=int, default=None,
                   help="override the preset's latent size (on TwoRoom, 8 and 16 planned worse than the default "
                        "64: BENCHMARKS.md)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this wall time")
    p.add_argument("--eval-every", type=int, default=None, help="default 250")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (after Ctrl-C, or with a larger --steps/--max-minutes)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    def from_training_data(p, ckpt_help: str) -> None:
        """The arguments of a command that fits something to a checkpoint from the data it trained on."""
        p.add_argument("--ckpt", required=True, help=ckpt_help)
        p.add_argument("--data", required=True, help="dataset .h5 (the one the model trained on)")
        p.add_argument("--max-episodes", type=int, default=300, help="episodes read, evenly spaced (default 300)")
        p.add_argument("--threads", type=int, default=1)

    p = sub.add_parser("metric", help="fit a checkpoint's step metric, the goal cost `lewm plan` uses "
                                      "(`lewm train` writes one at the end)")
    from_training_data(p, "checkpoint directory")
    p.add_argument("--lag", type=int, default=1, help="env steps per move (default 1)")
    p.add_argument("--shrink", type=float, default=0.01,
                   help="added to the move covariance, as a fraction of its median eigenvalue (default 0.01)")
    p.set_defaults(func=cmd_metric)

    p = sub.add_parser("graph", help="build a checkpoint's goal graph over its training latents: `lewm plan "
                                     "--cost graph` then scores plans by path length to the goal, around walls")
    from_training_data(p, "checkpoint directory (with a step metric; see `lewm metric`)")
    p.add_argument("--nodes", type=int, default=3000, help="latents kept, by farthest-point sampling (default 3000)")
    p.add_argument("--radius", type=float, default=0.0,
                   help="longest edge, in the step metric (default 0: the 90th percentile of one-step moves)")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("ensemble", help="train a predictor ensemble on a checkpoint's frozen encoder; `lewm plan` "
                                        "then pays for the members' disagreement")
    p.add_argument("--ckpt", required=True, help="checkpoint directory (ensemble.safetensors is written there)")
    p.add_argument("--data", required=True, help="dataset .h5 (the one the model trained on)")
    p.add_argument("--members", type=int, default=3, help="predictors (default 3)")
    p.add_argument("--steps", type=int, default=3000, help="training steps per member (default 3000)")
    p.add_argument("--batch-size", type=int, default=256, help="latent windows per step (default 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--rollout-weight", type=float, default=1.0,
                   help="weight of the multi-step loss on latents imagined from the window's first one (default 1)")
    p.add_argument("--loss", choices=("latent", "step"), default="latent",
                   help="the prediction error trained on: squared latent distance (default, as `lewm train`) or "
                        "the checkpoint's step metric, the goal cost planning pays")
    p.add_argument("--seed", type=int, default=0, help="member i trains from seed + i (default 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the members' validation losses here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("probe", help="effective rank of the latents (collapse diagnostic)")
    p.add_argument("--ckpt", default=None, help="checkpoint directory (default: the shipped one for --env)")
    _env_arg(p, required=False)
    p.add_argument("--data", default=None, help="dataset .h5 to probe on (default: fresh episodes)")
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the result here")
    p.set_defaults(func=cmd_probe)

    from paperclub.worldmodel import cli_eval  # plan and surprise

    cli_eval.register(sub)
