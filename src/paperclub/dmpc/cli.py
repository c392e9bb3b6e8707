"""`paperclub dmpc ...`: collect offline data, train D-MPC and its baselines (MBOP, behaviour cloning), fine-tune
the dynamics, distill the planner into a policy, plan and evaluate, and compare prediction errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from paperclub.atomic import check_writable, write_json
from paperclub.errors import UserError

log = logging.getLogger(__name__)

ENVS = ("pendulum", "halfcheetah", "hopper", "walker2d")
VALUE_ARCHS = ("mlp", "transformer")  # value.ARCHS, kept here so that parsing arguments does not import torch


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{name} {value}: expected a positive number")


def default_work_dir(env: str, seed: int) -> Path:
    home = os.environ.get("PAPERCLUB_HOME")
    root = Path(home).expanduser() if home else Path.home() / ".cache" / "paperclub"
    return root / "dmpc" / "sac" / f"{env}-seed{seed}"


def cmd_collect(args) -> int:
    from paperclub.dmpc.collect import SacConfig, collect
    from paperclub.dmpc.dataset import save_dataset
    from paperclub.dmpc.envs import check_variant

    check_variant(args.env, args.variant)
    for name in ("--steps", "--episodes", "--eval-every"):
        _positive(name, getattr(args, name[2:].replace("-", "_")))
    check_writable(args.out, "--out")
    _threads(args.threads)
    sac = SacConfig.for_env(args.env, steps=args.steps, eval_every=args.eval_every, seed=args.seed)
    work = Path(args.work) if args.work else default_work_dir(args.env, args.seed)
    episodes = args.episodes or 100
    data, extra = collect(args.env, args.kind, work, episodes, sac, variant=args.variant, noise=args.noise,
                          progress=not args.quiet, rollout_seed=args.rollout_seed)
    extra["command"] = "paperclub dmpc " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else ""
    summary = save_dataset(args.out, data, extra)
    print(f"{args.out}: {args.env}{'/' + data.variant if data.variant else ''} {args.kind}, "
          f"{summary['episodes']} episodes, {summary['transitions']} transitions, return "
          f"{summary['return_mean']:.1f} +- {summary['return_std']:.1f}")
    return 0


def _train_config(args):
    from paperclub.dmpc.denoiser import DenoiserConfig
    from paperclub.dmpc.train import TrainConfig

    for name in ("steps", "horizon", "batch_size", "d_model", "layers", "heads", "save_every"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name, None))
    if args.history is not None and args.history < 0:
        raise UserError(f"--history {args.history}: expected 0 or more past steps")
    base = TrainConfig()
    den = DenoiserConfig(d_model=args.d_model or base.denoiser.d_model, layers=args.layers or base.denoiser.layers,
                         heads=args.heads or base.denoiser.heads)
    if den.d_model % den.heads:
        raise UserError(f"--d-model {den.d_model} is not divisible by --heads {den.heads}")
    _positive("--value-members", getattr(args, "value_members", None))
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "save_every", "seed", "horizon",
                                               "history", "prediction", "value_members", "value_arch")
                 if getattr(args, k, None) is not None}
    return replace(base, denoiser=den, **overrides)


def _training_data(args, env: str | None = None):
    """What every training command does first: refuse an unwritable --out, set the threads, read --data."""
    from paperclub.dmpc.dataset import load_dataset

    check_writable(Path(args.out) / "config.json", "--out")
    _threads(args.threads)
    return load_dataset(args.data, env=env)


def cmd_train(args) -> int:
    from paperclub.dmpc.train import train

    cfg = _train_config(args)
    data = _training_data(args)
    last = train(data, Path(args.out), cfg, progress=not args.quiet, meta={"data": str(args.data)})
    print(f"{args.out}: trained {cfg.steps} steps on {args.data}; last losses "
          + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
    return 0


def cmd_finetune(args) -> int:
    from paperclub.dmpc import checkpoint
    from paperclub.dmpc.train import train

    if Path(args.out).resolve() == Path(args.ckpt).resolve():
        raise UserError("--out must differ from --ckpt: fine-tuning writes a new checkpoint")
    config = checkpoint.read_config(Path(args.ckpt))
    cfg = _train_config(args)
    data = _training_data(args, env=config["model"]["env"])
    last = train(data, Path(args.out), cfg, parts=("dynamics",), init=Path(args.ckpt), progress=not args.quiet,
                 meta={"data": str(args.data)})
    print(f"{args.out}: dynamics fine-tuned {cfg.steps} steps on {args.data}; last loss {last.get('dynamics', 0):.4f}")
    return 0


def cmd_train_value(args) -> int:
    from paperclub.dmpc import checkpoint
    from paperclub.dmpc.train import TrainConfig, train

    for name in ("--members", "--steps", "--batch-size"):
        _positive(name, getattr(args, name[2:].replace("-", "_")))
    if Path(args.out).resolve() == Path(args.ckpt).resolve():
        raise UserError("--out must differ from --ckpt: training a value writes a new checkpoint")
    config = checkpoint.read_config(Path(args.ckpt))
    data_path = args.data or config.get("data")
    if not data_path:
        raise UserError(f"--data is needed: the checkpoint {args.ckpt} does not record its dataset")
    args.data = data_path
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed") if getattr(args, k) is not None}
    cfg = replace(TrainConfig(), value_members=args.members, value_arch=args.arch, **overrides)
    data = _training_data(args, env=config["model"]["env"])
    last = train(data, Path(args.out), cfg, parts=("value",), init=Path(args.ckpt), progress=not args.quiet,
                 meta={"data": str(data_path)})
    article = "an" if args.arch == "mlp" else "a"
    print(f"{args.out}: {article} {args.arch} value of {args.members} member(s) trained {cfg.steps} steps on "
          f"{data_path}, proposal and dynamics from {args.ckpt}; last loss {last.get('value', 0):.4f}")
    return 0


def cmd_train_mbop(args) -> int:
    from paperclub.dmpc.mbop import MbopTrainConfig, train_mbop

    for name in ("steps", "batch_size", "members", "hidden", "layers", "horizon"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed", "members", "hidden", "layers",
                                               "horizon") if getattr(args, k) is not None}
    cfg = MbopTrainConfig(**overrides)
    data = _training_data(args)
    last = train_mbop(data, Path(args.out), cfg, progress=not args.quiet, meta={"data": str(args.data)})
    print(f"{args.out}: MBOP trained {cfg.steps} steps on {args.data}; last losses "
          + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
    return 0


def _fit_config(args):
    from paperclub.dmpc.bc import FitConfig

    for name in ("steps", "batch_size", "hidden", "layers"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed", "hidden", "layers")
                 if getattr(args, k) is not None}
    return FitConfig(**overrides)


def cmd_train_bc(args) -> int:
    from paperclub.dmpc.bc import train_bc

    cfg = _fit_config(args)
    data = _training_data(args)
    last = train_bc(data, Path(args.out), cfg, progress=not args.quiet, meta={"data": str(args.data)})
    print(f"{args.out}: behaviour cloning trained {cfg.steps} steps on {args.data}; last loss {last:.4f}")
    return 0


def _ssr_planner(model, reward, args, space, value_weight: float | None, chunk: int):
    from paperclub.dmpc.planner import PlannerConfig, SSRPlanner

    return SSRPlanner(model, reward, PlannerConfig(
        candidates=args.candidates, chunk=chunk, proposal_steps=args.proposal_steps,
        dynamics_steps=args.dynamics_steps, value_weight=value_weight, seed=args.seed,
        dynamics_samples=getattr(args, "dynamics_samples", 1), value_pessimism=getattr(args, "value_pessimism", 0.0),
        low=tuple(space.low.tolist()), high=tuple(space.high.tolist())))


def cmd_distill(args) -> int:
    from paperclub.dmpc import checkpoint
    from paperclub.dmpc.dataset import load_dataset
    from paperclub.dmpc.distill import DistillConfig, distill
    from paperclub.dmpc.envs import make_env
    from paperclub.dmpc.rewards import get_reward

    for name in ("--candidates", "--proposal-steps", "--dynamics-steps", "--label-batch"):
        _positive(name, getattr(args, name[2:].replace("-", "_")))
    if args.states < 0 or args.rollouts < 0 or args.dagger < 0:
        raise UserError("--states, --rollouts and --dagger must be 0 or more")
    _positive("--dagger-episodes", args.dagger_episodes)
    if args.states == 0 and args.rollouts == 0:
        raise UserError("nothing to label: give --states N (dataset states) and/or --rollouts N (planner episodes)")
    if Path(args.out).resolve() == Path(args.ckpt).resolve():
        raise UserError("--out must differ from --ckpt: distillation writes a new checkpoint")
    fit = _fit_config(args)
    model, config = checkpoint.load(args.ckpt)
    env = model.cfg.env
    data_path = args.data or config.get("data")
    data = None
    if args.states:
        if not data_path:
            raise UserError(f"--states needs --data: the checkpoint {args.ckpt} does not record its dataset")
        data = load_dataset(data_path, env=env)
    check_writable(Path(args.out) / "config.json", "--out")
    _threads(args.threads)
    space = make_env(env).action_space
    planner = _ssr_planner(model, get_reward(env, None), args, space, 1.0, 1)
    cfg = DistillConfig(states=args.states, rollouts=args.rollouts, dagger=args.dagger,
                        dagger_episodes=args.dagger_episodes, label_batch=args.label_batch, seed=args.seed, fit=fit)
    summary = distill(planner, env, model.cfg.history, data, Path(args.out), cfg, progress=not args.quiet,
                      meta={"teacher": str(args.ckpt), "data": str(data_path) if data_path else None,
                            "teacher_planner": {"candidates": args.candidates,
                                                "proposal_steps": args.proposal_steps or model.cfg.proposal_steps,
                                                "dynamics_steps": args.dynamics_steps or model.cfg.dynamics_steps}})
    print(f"{args.out}: distilled {args.ckpt} on {summary['labels']} planner labels; label RMSE "
          f"{summary['label_rmse']:.4f} (label std {summary['label_action_std']:.4f}); "
          f"{summary['policy_actions_per_s']:.0f} actions/s at batch 1")
    return 0


PLANNERS = ("dmpc", "mbop", "bc", "distilled", "random")


def cmd_eval(args) -> int:
    import torch

    from paperclub.dmpc import checkpoint
    from paperclub.dmpc.envs import check_variant, make_env
    from paperclub.dmpc.evaluate import run_episodes
    from paperclub.dmpc.planner import RandomPlanner
    from paperclub.dmpc.rewards import get_reward

    if args.planner not in PLANNERS:
        raise UserError(f"unknown planner {args.planner!r}: choose one of {', '.join(PLANNERS)}")
    check_variant(args.env, args.variant)
    for name in ("--episodes", "--candidates", "--chunk", "--proposal-steps", "--dynamics-steps",
                 "--mbop-horizon", "--dynamics-samples"):
        _positive(name, getattr(args, name[2:].replace("-", "_")))
    if args.value_pessimism < 0:
        raise UserError(f"--value-pessimism {args.value_pessimism}: expected 0 or more (a penalty on the spread)")
    if args.value_pessimism and args.planner != "dmpc":
        raise UserError("--value-pessimism weighs D-MPC's value ensemble: it goes with --planner dmpc")
    reward = get_reward(args.env, args.reward)
    if args.json:
        check_writable(args.json, "--json")
    if args.planner != "random" and not args.ckpt:
        found = checkpoint.shipped(args.env, args.planner)
        if found is None:
            command = checkpoint.KINDS[args.planner][1]
            raise UserError(f"--planner {args.planner} needs --ckpt DIR: no {args.planner} checkpoint ships for "
                            f"{args.env} (make one with `{command}`)")
        args.ckpt = str(found)
        log.info("using the shipped %s checkpoint for %s: %s", args.planner, args.env, found)
    if args.learned_reward and args.planner != "mbop":
        raise UserError("--learned-reward is an MBOP option: it goes with --planner mbop")
    if args.learned_reward and args.reward not in (None, "task"):
        raise UserError(f"--learned-reward plans with the task reward the ensemble learned, not --reward "
                        f"{args.reward}: drop one of them")
    if args.planner != "dmpc" and ((args.proposal, args.dynamics) != ("diffusion", "diffusion") or args.mbop):
        raise UserError("--proposal, --dynamics and --mbop ablate D-MPC's parts: they go with --planner dmpc")
    _threads(args.threads)
    torch.manual_seed(args.seed)
    space = make_env(args.env).action_space
    value_weight = args.value_weight if args.value_weight is not None else \
        (1.0 if args.reward in (None, "task") else 0.0)
    history, planner_config = 0, None
    if args.planner == "random":
        planner = RandomPlanner(space.low, space.high, seed=args.seed)
    elif args.planner == "dmpc":
        model, _ = checkpoint.load(args.ckpt, env=args.env)
        history = model.cfg.history
        if args.chunk > model.cfg.horizon:
            raise UserError(f"--chunk {args.chunk} exceeds the checkpoint's horizon {model.cfg.horizon}: a plan holds "
                            "only that many actions")
        ablated = (args.proposal, args.dynamics) != ("diffusion", "diffusion") or args.mbop
        if ablated:
            from paperclub.dmpc import mbop
            from paperclub.dmpc.ablations import Hybrid

            parts = mbop.load(args.mbop, env=args.env)[0] if args.mbop else None
            model = Hybrid(model, parts, args.proposal, args.dynamics, sigma=args.sigma)
        members = model.cfg.value_members
        if args.value_pessimism and members == 1:
            raise UserError(f"--value-pessimism needs a value ensemble, and {args.ckpt} has one value: train one "
                            "with `paperclub dmpc train-value --ckpt CK --out DIR --members 5`")
        planner = _ssr_planner(model, reward, args, space, value_weight, args.chunk)
        planner_config = {"candidates": args.candidates, "chunk": args.chunk,
                          "proposal_steps": args.proposal_steps or model.cfg.proposal_steps,
                          "dynamics_steps": args.dynamics_steps or model.cfg.dynamics_steps,
                          "value_weight": value_weight, "proposal": args.proposal, "dynamics": args.dynamics,
                          "dynamics_samples": args.dynamics_samples, "value_pessimism": args.value_pessimism,
                          "value_members": members, "value_arch": model.cfg.value_arch}
        if ablated:
            planner_config.update({"mbop": args.mbop, "sigma": args.sigma})
    elif args.planner == "mbop":
        from dataclasses import asdict

        from paperclub.dmpc import mbop

        model, _ = mbop.load(args.ckpt, env=args.env)
        history = 1  # MBOP conditions on the previous action
        planner = mbop.MbopPlanner(model, reward, mbop.MppiConfig(
            trajectories=args.candidates, horizon=args.mbop_horizon, sigma=args.sigma, beta=args.beta,
            kappa=args.kappa, chunk=args.chunk, value_weight=value_weight, learned_reward=args.learned_reward,
            seed=args.seed, low=tuple(space.low.tolist()), high=tuple(space.high.tolist())))
        planner_config = {k: v for k, v in asdict(planner.cfg).items() if k not in ("low", "high", "seed")}
        planner_config["horizon"] = planner.horizon
    else:  # bc, distilled
        from paperclub.dmpc import bc

        policy, _ = bc.load(args.ckpt, kind=args.planner, env=args.env)
        planner = bc.PolicyPlanner(policy)
    result = run_episodes(args.env, planner, args.episodes, args.seed, history=history, variant=args.variant,
                          objective=reward, progress=not args.quiet)
    result.update({"planner": args.planner, "reward": args.reward or "task", "ckpt": args.ckpt})
    if planner_config is not None:
        result["planner_config"] = planner_config
    ns = result["normalized_score"]
    print(f"{args.env}{'/' + args.variant if args.variant else ''} {args.planner}: normalized score "
          f"{ns['mean']:.1f} +- {ns['stderr']:.1f} (return {result['mean_return']:.1f}, {args.episodes} episodes, "
          f"{result['actions_per_s']:.1f} actions/s)")
    if args.json:
        write_json(args.json, result)
    return 0


def cmd_prediction_error(args) -> int:
    from paperclub.dmpc import checkpoint, mbop
    from paperclub.dmpc.dataset import load_dataset
    from paperclub.dmpc.prediction_error import plot, prediction_errors

    _positive("--rows", args.rows)
    _positive("--dynamics-steps", args.dynamics_steps)
    _positive("--samples", args.samples)
    for name in ("json", "plot"):
        if getattr(args, name):
            check_writable(getattr(args, name), f"--{name}")
    _threads(args.threads)
    model, _ = checkpoint.load(args.ckpt)
    single, _ = mbop.load(args.mbop, env=model.cfg.env)
    data = load_dataset(args.data, env=model.cfg.env)
    result = prediction_errors(model, single, data, rows=args.rows, seed=args.seed,
                               dynamics_steps=args.dynamics_steps, samples=args.samples)
    result.update({"ckpt": args.ckpt, "mbop_ckpt": args.mbop, "data": args.data})
    for i, k in enumerate(result["horizon"]):
        line = f"k={k}: D-MPC one sample {result['dmpc']['mean'][i]:.4f}"
        if "dmpc_mean" in result:
            line += f", mean of {args.samples} {result['dmpc_mean']['mean'][i]:.4f}"
        line += f"  MBOP ensemble rolled out {result['mbop']['mean'][i]:.4f}"
        if "mbop_member" in result:
            line += f", one member {result['mbop_member']['mean'][i]:.4f}"
        print(line)
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot(result, args.plot)
    return 0


def _add_train_options(p: argparse.ArgumentParser, steps_help: str) -> None:
    p.add_argument("--steps", type=int, help=steps_help)
    p.add_argument("--horizon", type=int, help="F, future steps per proposal and prediction (default 8)")
    p.add_argument("--history", type=int, help="past (state, action) pairs in the context (default 1)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--d-model", type=int, help="denoiser width (default 128)")
    p.add_argument("--layers", type=int, help="denoiser transformer layers (default 3)")
    p.add_argument("--heads", type=int, help="attention heads (default 4)")
    p.add_argument("--prediction", choices=("epsilon", "sample", "v_prediction"),
                   help="what the denoisers predict: the noise (default, the paper's), x0, or the velocity")
    p.add_argument("--save-every", type=int, help="steps between checkpoints (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Batch size, learning rate, seed, threads and --quiet: what every training command takes."""
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, help="training steps (default 5000)")
    p.add_argument("--hidden", type=int, help="MLP width (default 256)")
    p.add_argument("--layers", type=int, help="MLP hidden layers (default 2)")
    _add_run_options(p)


def register(sub: argparse._SubParsersAction) -> None:
    from paperclub.dmpc.collect import KINDS  # light: numpy and tqdm only at import time

    group = sub.add_parser("dmpc", help="Diffusion Model Predictive Control: collect data, train, plan, evaluate")
    gsub = group.add_subparsers(dest="dmpc_command", metavar="COMMAND", parser_class=type(group))

    p = gsub.add_parser("collect", help="make a D4RL-shaped dataset (trains a SAC behaviour policy, resumably)")
    p.add_argument("--env", required=True, choices=ENVS)
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--variant", help="collect in a variant (play defaults to walker2d's broken-ankle)")
    p.add_argument("--out", required=True, help="the HDF5 file to write")
    p.add_argument("--steps", type=int, help="SAC budget in env steps (default 30000 pendulum, 1000000 MuJoCo)")
    p.add_argument("--eval-every", type=int, help="SAC steps between evaluations and checkpoints")
    p.add_argument("--episodes", type=int, help="episodes to roll out (default 100)")
    p.add_argument("--noise", type=float, help="action noise in half action ranges (default 0; play 0.5)")
    p.add_argument("--work", help="SAC work directory (default $PAPERCLUB_HOME/dmpc/sac/ENV-seedS); reruns resume")
    p.add_argument("--seed", type=int, default=0, help="SAC's seed (names the default work directory)")
    p.add_argument("--rollout-seed", type=int, help="episode i of the rollout resets with this + i (default --seed; "
                   "for SAC policies --seed + 20000); another value gives held-out episodes of the same policy")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_collect)

    p = gsub.add_parser("train", help="train the proposal, dynamics and value on a dataset (resumable)")
    p.add_argument("--data", required=True, help="a dataset from `paperclub dmpc collect`")
    p.add_argument("--out", required=True, help="the checkpoint directory (rerunning resumes it)")
    _add_train_options(p, "training steps (default 20000)")
    p.add_argument("--value-members", type=int, help="K value members from different initial weights (default 1; "
                   "K > 1 lets `eval --value-pessimism` score mean - beta * std)")
    p.add_argument("--value-arch", choices=VALUE_ARCHS, help="mlp: V(s_{t+F}) (default); transformer: a "
                   "transformer that reads the whole plan (context, actions, predicted states), the paper's")
    p.set_defaults(func=cmd_train)

    p = gsub.add_parser("train-value", help="train a new value (e.g. an ensemble) for a checkpoint; its proposal "
                        "and dynamics are copied unchanged")
    p.add_argument("--ckpt", required=True, help="the D-MPC checkpoint whose proposal and dynamics are kept")
    p.add_argument("--data", help="the dataset (default: the one the checkpoint trained on)")
    p.add_argument("--out", required=True, help="the new checkpoint directory (rerunning resumes it)")
    p.add_argument("--members", type=int, default=5, help="K value members from different initial weights "
                   "(default 5)")
    p.add_argument("--arch", choices=VALUE_ARCHS, default="mlp", help="mlp: V(s_{t+F}) (default); transformer: "
                   "reads the whole plan (context, actions, predicted states), sized like the denoisers")
    p.add_argument("--steps", type=int, help="training steps (default 20000)")
    _add_run_options(p)
    p.set_defaults(func=cmd_train_value)

    p = gsub.add_parser("finetune-dynamics", help="fine-tune only the dynamics model on new data (e.g. play data)")
    p.add_argument("--ckpt", required=True, help="the checkpoint to start from")
    p.add_argument("--data", required=True, help="a dataset in the same env (e.g. --kind play)")
    p.add_argument("--out", required=True, help="the new checkpoint directory")
    _add_train_options(p, "fine-tuning steps (default 20000)")
    p.set_defaults(func=cmd_finetune)

    p = gsub.add_parser("train-mbop", help="train the MBOP baseline (single-step ensemble, prior, value)")
    p.add_argument("--data", required=True, help="a dataset from `paperclub dmpc collect`")
    p.add_argument("--out", required=True, help="the checkpoint directory (written at the end)")
    p.add_argument("--steps", type=int, help="training steps (default 5000)")
    p.add_argument("--members", type=int, help="dynamics ensemble size K (default 4)")
    p.add_argument("--hidden", type=int, help="MLP width (default 256)")
    p.add_argument("--layers", type=int, help="MLP hidden layers (default 2)")
    p.add_argument("--horizon", type=int, help="planning horizon H stored as the default (default 8)")
    _add_run_options(p)
    p.set_defaults(func=cmd_train_mbop)

    p = gsub.add_parser("train-bc", help="train a behaviour-cloning MLP policy on a dataset's (state, action) pairs")
    p.add_argument("--data", required=True, help="a dataset from `paperclub dmpc collect`")
    p.add_argument("--out", required=True, help="the checkpoint directory")
    _add_fit_options(p)
    p.set_defaults(func=cmd_train_bc)

    p = gsub.add_parser("distill", help="distill the D-MPC planner into a reactive MLP policy")
    p.add_argument("--ckpt", required=True, help="the D-MPC checkpoint (the teacher)")
    p.add_argument("--out", required=True, help="the distilled policy's checkpoint directory")
    p.add_argument("--data", help="dataset whose states are labelled (default: the one the teacher trained on)")
    p.add_argument("--states", type=int, default=4000, help="dataset states labelled by the planner")
    p.add_argument("--rollouts", type=int, default=0, help="planner episodes whose visited states are labelled too")
    p.add_argument("--dagger", type=int, default=0, help="DAgger rounds: the student drives, the planner labels "
                   "the states it visits, the student is refitted")
    p.add_argument("--dagger-episodes", type=int, default=10, help="student episodes per DAgger round")
    p.add_argument("--label-batch", type=int, default=64, help="states per batched planner call")
    p.add_argument("--candidates", type=int, default=64, help="the teacher's N")
    p.add_argument("--proposal-steps", type=int, help="the teacher's DDIM steps (default: the checkpoint's)")
    p.add_argument("--dynamics-steps", type=int, help="the teacher's DDIM steps (default: the checkpoint's)")
    _add_fit_options(p)
    p.set_defaults(func=cmd_distill)

    p = gsub.add_parser("prediction-error", help="multi-step diffusion dynamics vs the single-step ensemble rolled "
                        "out: held-out state error against horizon")
    p.add_argument("--ckpt", required=True, help="a D-MPC checkpoint")
    p.add_argument("--mbop", required=True, help="an MBOP checkpoint for the same env")
    p.add_argument("--data", required=True, help="held-out trajectories (not the training data)")
    p.add_argument("--rows", type=int, default=512, help="held-out starting steps sampled")
    p.add_argument("--dynamics-steps", type=int, help="D-MPC's DDIM steps (default: the checkpoint's)")
    p.add_argument("--samples", type=int, default=8, help="D-MPC samples per start: their mean is compared with "
                   "the ensemble mean, one sample with one ensemble member (1: one sample only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--plot", help="write the plot (PNG) here")
    p.set_defaults(func=cmd_prediction_error)

    p = gsub.add_parser("eval", help="plan with D-MPC, MBOP, a BC or distilled policy, or random actions, and "
                        "report normalized scores")
    p.add_argument("--env", required=True, choices=ENVS)
    p.add_argument("--variant", help="e.g. broken-ankle (walker2d)")
    p.add_argument("--ckpt", help="the planner's checkpoint: from `paperclub dmpc train` (dmpc), `train-mbop`, "
                   "`train-bc` or `distill` (default: the one shipped for --env, trained on its medium data)")
    p.add_argument("--planner", default="dmpc", help=f"one of {', '.join(PLANNERS)} (default dmpc)")
    p.add_argument("--reward", help="task (default), jump, backward, balance (walker2d), or module:function")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--candidates", type=int, default=64, help="N action sequences per plan (MBOP: trajectories)")
    p.add_argument("--chunk", type=int, default=1, help="actions executed per plan")
    p.add_argument("--proposal-steps", type=int, help="DDIM steps of the proposal (default: the checkpoint's, 32)")
    p.add_argument("--dynamics-steps", type=int, help="DDIM steps of the dynamics (default: the checkpoint's, 10)")
    p.add_argument("--dynamics-samples", type=int, default=1, help="D-MPC: predicted futures per candidate, J "
                   "averaged over them (default 1)")
    p.add_argument("--value-weight", type=float, help="weight of the terminal value (default 1 for the task "
                   "reward, 0 for others)")
    p.add_argument("--value-pessimism", type=float, default=0.0, help="D-MPC: score the terminal value as mean - "
                   "beta * std over the checkpoint's value members (`train-value --members K`; default 0)")
    p.add_argument("--mbop-horizon", type=int, help="MBOP's planning horizon H (default: the checkpoint's)")
    p.add_argument("--sigma", type=float, default=0.2, help="MBOP: noise around the prior, in action stds")
    p.add_argument("--beta", type=float, default=0.5, help="MBOP: weight of the previous plan")
    p.add_argument("--kappa", type=float, default=1.0, help="MBOP: return weighting exp(kappa R)")
    p.add_argument("--proposal", default="diffusion", help="ablation, with --planner dmpc: diffusion (default) or "
                   "mlp (MBOP's prior with noise --sigma, rolled out through its ensemble; needs --mbop)")
    p.add_argument("--dynamics", default="diffusion", help="ablation, with --planner dmpc: diffusion (default) or "
                   "single-step (MBOP's ensemble rolled out F times; needs --mbop)")
    p.add_argument("--mbop", help="an MBOP checkpoint whose parts the ablations use")
    p.add_argument("--learned-reward", action="store_true", help="MBOP: plan with the ensemble's reward head "
                   "(as published) instead of the objective on predicted states")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", help="write the results here")
    p.set_defaults(func=cmd_eval)
