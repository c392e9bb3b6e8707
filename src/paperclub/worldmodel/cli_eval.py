"""`paperclub lewm plan` and `paperclub lewm surprise`: the evaluations that load a checkpoint."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from paperclub.atomic import write_json
from paperclub.errors import UserError


def _load(args):
    import torch

    from paperclub.device import resolve_device
    from paperclub.worldmodel.checkpoint import load_checkpoint, resolve_checkpoint

    torch.set_num_threads(max(1, args.threads))
    path = resolve_checkpoint(args.ckpt, args.env)
    model, meta = load_checkpoint(path)
    meta = {**meta, "path": str(path)}
    model.to(resolve_device(getattr(args, "device", "cpu")))
    if args.env and meta.get("env") != args.env:
        raise UserError(
            f"checkpoint {args.ckpt} was trained on {meta.get('env')}, not {args.env}: "
            "drop --env or pass a matching --ckpt"
        )
    return model, meta


def disagreement_weight(flag: float | None, meta: dict, cost: str = "step") -> float:
    """The ensemble's disagreement weight: --disagreement where given, else the one the checkpoint's config.json
    was measured with (`plan_defaults.disagreement`: a number, or one per goal cost like {"graph": 1, "step": 4}),
    else 1 (the members' mean cost)."""
    if flag is not None:
        return flag
    value = (meta.get("plan_defaults") or {}).get("disagreement", 1.0)
    if isinstance(value, dict):
        value = value.get(cost, 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        raise UserError(f"{meta['path']}/config.json: plan_defaults.disagreement must be a finite number >= 0 (or "
                        f"one per goal cost), got {value!r}")
    return float(value)


def _sidecar(json_path: str | None, suffix: str) -> Path | None:
    return None if not json_path else Path(json_path).with_name(Path(json_path).stem + suffix)


def cmd_plan(args) -> int:
    import torch

    from paperclub.worldmodel.defaults import ENV_DEFAULTS, or_default
    from paperclub.worldmodel.goal_metric import load_step_metric, require_step_metric
    from paperclub.worldmodel.patch_baseline import PatchWM, matched_config
    from paperclub.worldmodel.planner import CEMConfig, PlanConfig, combine_seeds, evaluate_planning
    from paperclub.worldmodel.plots import bar_plot

    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds must be distinct episode sets, got {' '.join(map(str, args.seeds))}")
    model, meta = _load(args)
    env = meta["env"]
    d = ENV_DEFAULTS[env]
    from paperclub.worldmodel.goal_graph import GRAPH_FILE, load_goal_graph

    if args.cost in ("step", "graph"):
        metric = require_step_metric(meta["path"], model.cfg.latent_dim, f"--cost {args.cost}")
    else:
        metric = load_step_metric(meta["path"], model.cfg.latent_dim) if args.cost == "auto" else None
    cost = "latent" if metric is None else "step"
    if args.cost == "graph" or (args.cost == "auto" and metric is not None):  # auto: the graph where there is one
        graph = load_goal_graph(meta["path"], model.cfg.latent_dim, metric)
        if graph is None and args.cost == "graph":
            raise UserError(f"--cost graph: {meta['path']} has no {GRAPH_FILE}; make it with `paperclub lewm graph "
                            f"--ckpt {meta['path']} --data DATASET` (the dataset the model trained on)")
        if graph is not None:
            metric, cost = graph, "graph"
    planner_model, ensemble_size = model, 0
    if args.ensemble != "off":
        from paperclub.worldmodel.ensemble import ENSEMBLE_FILE, EnsembleWM, load_ensemble

        members = load_ensemble(meta["path"], model.cfg)
        if members is None and args.ensemble == "on":
            raise UserError(f"--ensemble on: {meta['path']} has no {ENSEMBLE_FILE}; make it with `paperclub lewm "
                            f"ensemble --ckpt {meta['path']} --data DATASET`")
        if members is not None:
            device = next(model.parameters()).device
            beta = disagreement_weight(args.disagreement, meta, cost)
            planner_model = EnsembleWM(model, [m.to(device) for m in members], beta=beta)
            ensemble_size = len(members)
    cfg = PlanConfig(
        episodes=args.episodes,
        seed=args.seed,
        goal_offset=or_default(args.goal_offset, d["goal_offset"]),
        max_steps=or_default(args.max_steps, d["max_steps"]),
        baseline_plans=args.baseline_plans,
        cost=cost,
        cem=CEMConfig(
            samples=args.samples,
            elites=args.elites,
            iterations=args.iterations,
            horizon=or_default(args.horizon, d["horizon"]),
            execute=args.execute,
        ),
    )
    baseline = None
    if args.baseline_plans > 0:
        torch.manual_seed(args.seed if args.seeds is None else args.seeds[0])
        baseline = PatchWM(matched_config(model.cfg)).eval().to(next(model.parameters()).device)
    if args.seeds is None:
        result = evaluate_planning(planner_model, env, cfg, baseline=baseline, progress=not args.quiet,
                                   metric=metric)
    else:  # one episode set per seed; the baseline is timed on the first only
        runs = [evaluate_planning(planner_model, env, replace(cfg, seed=s), baseline=baseline if i == 0 else None,
                                  progress=not args.quiet, metric=metric) for i, s in enumerate(args.seeds)]
        result = combine_seeds(runs, args.seeds)
    result.pop("plan_times_s", None)
    result["ckpt"] = str(args.ckpt or "shipped")
    result["cost"] = cfg.cost
    result["ensemble_members"] = ensemble_size
    result["disagreement_weight"] = planner_model.beta if ensemble_size else None
    if args.json:
        write_json(args.json, result)
        times = (
            {"LeWM": result["lewm_median_plan_time_same_states_s"]}
            if baseline
            else {"LeWM": result["median_plan_time_s"]}
        )
        if baseline:
            times["patch tokens"] = result["baseline_median_plan_time_s"]
        bar_plot(
            _sidecar(args.json, "_plan_time"),
            times,
            "median seconds per plan",
            f"{env}: planning time (same states, same CEM)",
            logy=True,
        )
        rates = {"LeWM": result["success_rate"]} if args.seeds is None else {
            f"seed {s}": r for s, r in result["success_rate_per_seed"].items()} | {"pooled": result["success_rate"]}
        bar_plot(
            _sidecar(args.json, "_success"),
            rates,
            "success rate",
            f"{env}: MPC success over {result['episodes']} episodes",
        )
    summary = {k: v for k, v in result.items() if k not in ("per_episode", "config")}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_surprise(args) -> int:
    from paperclub.worldmodel.plots import line_plot
    from paperclub.worldmodel.surprise import SurpriseConfig, surprise_experiment

    model, meta = _load(args)
    cfg = SurpriseConfig(
        episodes=args.episodes, blocks=args.blocks, perturb_block=args.perturb_block, seed=args.seed
    )
    result = surprise_experiment(model, meta["env"], cfg, progress=not args.quiet)
    if args.json:
        write_json(args.json, result)
        series = {k: (list(range(1, len(v) + 1)), v) for k, v in result["traces_mean"].items()}
        line_plot(
            _sidecar(args.json, "_traces"),
            series,
            "transition (action block)",
            "latent prediction error (mean over episodes)",
            f"{meta['env']}: surprise",
            logy=True,
            vline=cfg.perturb_block,
        )
    print(json.dumps({k: v for k, v in result.items() if k != "traces_mean"}, indent=2))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--env",
        choices=["pusht", "tworoom"],
        default=None,
        help="environment (without --ckpt: use the shipped checkpoint for it)",
    )
    p.add_argument("--ckpt", default=None, help="checkpoint directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the result (and plots next to it) here")
    p.add_argument("--quiet", action="store_true")


def register(sub) -> None:
    p = sub.add_parser("plan", help="CEM/MPC planning success and speed vs the patch-token baseline")
    _common(p)
    p.add_argument("--episodes", type=int, default=20, help="held-out episodes (per seed with --seeds)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="several episode sets (instead of --seed): the JSON adds per-seed success rates, their "
                        "mean and its standard error over seeds")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or auto")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--elites", type=int, default=16)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--horizon", type=int, default=None,
                   help="action blocks planned ahead (default: 5 on tworoom, 3 on pusht)")
    p.add_argument("--execute", choices=("best", "mean"), default="best",
                   help="execute CEM's lowest-cost sample (default) or its final elite mean (textbook CEM)")
    p.add_argument("--cost", choices=("auto", "step", "graph", "latent"), default="auto",
                   help="goal cost: the step metric (the checkpoint's goal_metric.safetensors; see `lewm metric`), "
                        "the goal graph's path length (goal_graph.safetensors; see `lewm graph`) or the squared "
                        "latent distance; auto (default): the graph where the checkpoint has one, else the step "
                        "metric where it has one")
    p.add_argument("--ensemble", choices=("auto", "on", "off"), default="auto",
                   help="score plans with the checkpoint's predictor ensemble (ensemble.safetensors; see `lewm "
                        "ensemble`) instead of its own predictor; auto (default): where the checkpoint has one")
    p.add_argument("--disagreement", type=float, default=None,
                   help="with an ensemble: weight of the members' disagreement in the goal cost (1: their mean "
                        "cost; 0: the cost of their mean prediction); default: the checkpoint's "
                        "plan_defaults.disagreement in config.json, else 1")
    p.add_argument("--goal-offset", type=int, default=None, help="env steps from start to goal")
    p.add_argument("--max-steps", type=int, default=None, help="env steps the MPC loop may use")
    p.add_argument(
        "--baseline-plans",
        type=int,
        default=3,
        help="plans timed with the patch-token baseline from the same states (0: skip)",
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("surprise", help="prediction-error spike at a teleport and at a colour change")
    _common(p)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--perturb-block", type=int, default=6)
    p.set_defaults(func=cmd_surprise)
