"""D-MPC against MBOP and behaviour cloning on our locomotion data (HalfCheetah, Hopper, Walker2d; medium and
medium-replay), one task and dataset kind per call, then one summary over every task that has its results.

    # once SAC has reached the medium return (`paperclub dmpc collect --kind medium --work SAC ...`):
    OMP_NUM_THREADS=1 python benchmarks/dmpc_locomotion.py run --env walker2d --kind medium \\
        --sac-work runs/dmpc/sac-walker2d-seed0 --work runs/dmpc/walker2d --out benchmarks/results/dmpc/locomotion
    python benchmarks/dmpc_locomotion.py summary --out benchmarks/results/dmpc/locomotion
    # D-MPC with a 5-member value scored mean - 10 std (after `run`):
    OMP_NUM_THREADS=1 python benchmarks/dmpc_locomotion.py pessimistic --env walker2d --kind medium \
        --work runs/dmpc/walker2d --out benchmarks/results/dmpc/locomotion
    # D-MPC with the paper's transformer value, one member (after `run`):
    OMP_NUM_THREADS=1 python benchmarks/dmpc_locomotion.py pessimistic --arch transformer --members 1 \
        --pessimism 0 --env walker2d --kind medium --work runs/dmpc/walker2d --out benchmarks/results/dmpc/locomotion

`run` makes the dataset from the SAC work directory (and a held-out one for the prediction error), trains D-MPC,
MBOP and BC on it, and evaluates every planner on the same evaluation seeds. Each step is a `paperclub dmpc`
command (printed as it runs); datasets and checkpoints stay in --work and are reused; an evaluation whose JSON
already exists under OUT/ENV-KIND/ is not rerun (delete it to redo), so a killed run resumes where it stopped.
`summary` averages the normalized scores over the tasks present (standard errors combined as independent), writes
OUT/summary.json and a bar plot with error bars per task and planner.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import date
from pathlib import Path

from _dmpc_run import cpu_name, run_cli  # benchmarks/_dmpc_run.py

from paperclub.atomic import write_json

# D-MPC on CPU: a d=64, 2-layer denoiser (the paper's d=256, 5 layers is a GPU job), F = 8, one step of history;
# planning with N = 64 candidates and 10/5 DDIM steps (see BENCHMARKS' planner-cost table)
DMPC_TRAIN = ["--horizon", "8", "--history", "1", "--d-model", "64", "--layers", "2", "--heads", "4",
              "--batch-size", "256"]
PLANNER_ARGS = {
    "dmpc": ["--candidates", "64", "--chunk", "1", "--proposal-steps", "10", "--dynamics-steps", "5"],
    "mbop": ["--candidates", "64"],
    "bc": [],
}


def cmd_run(args) -> None:
    work, out = Path(args.work), Path(args.out) / f"{args.env}-{args.kind}"
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "commands.json"
    log: list[dict] = json.loads(log_path.read_text()) if log_path.exists() else []
    data = work / f"{args.env}-{args.kind}.h5"
    held_out = work / f"{args.env}-heldout.h5"
    collect = ["dmpc", "collect", "--env", args.env, "--work", args.sac_work, "--quiet"]
    if not data.exists():
        run_cli([*collect, "--kind", args.kind, "--out", str(data)], log)
    if not held_out.exists():
        run_cli([*collect, "--kind", "medium", "--episodes", "10", "--rollout-seed", "50000", "--out",
                 str(held_out)], log)
    ck = {p: work / f"ck-{p}-{args.kind}" for p in ("dmpc", "mbop", "bc")}
    # D-MPC's checkpoint and result files carry the denoisers' target, except x0 ("sample", the default since it
    # predicts 3-5x better at CPU size): epsilon runs (the paper's target) keep their own names beside it
    tag = "" if args.prediction == "sample" else f"_{args.prediction}"
    ck["dmpc"] = work / f"ck-dmpc-{args.kind}-{'x0' if args.prediction == 'sample' else args.prediction}"
    train = {
        "dmpc": ["dmpc", "train", "--data", str(data), "--out", str(ck["dmpc"]), "--steps", str(args.dmpc_steps),
                 *DMPC_TRAIN, "--prediction", args.prediction, "--quiet"],
        "mbop": ["dmpc", "train-mbop", "--data", str(data), "--out", str(ck["mbop"]), "--steps",
                 str(args.mlp_steps), "--horizon", "8", "--quiet"],
        "bc": ["dmpc", "train-bc", "--data", str(data), "--out", str(ck["bc"]), "--steps", str(args.mlp_steps),
               "--quiet"],
    }
    planners = args.planners.split(",")
    for name in planners:
        if name == "dmpc" or not (ck[name] / "config.json").exists():  # D-MPC training resumes, or does nothing
            run_cli(train[name], log)
        write_json(log_path, log)
    for name in planners:
        path = out / f"eval_{name}{tag if name == 'dmpc' else ''}.json"
        if path.exists():
            continue
        run_cli(["dmpc", "eval", "--env", args.env, "--planner", name, "--ckpt", str(ck[name]), "--episodes",
                 str(args.episodes), "--seed", str(args.seed), "--threads", str(args.threads), "--quiet",
                 "--json", str(path), *PLANNER_ARGS[name]], log)
        write_json(log_path, log)
    pe = out / f"prediction_error{tag}.json"
    if "dmpc" in planners and "mbop" in planners and not pe.exists():
        run_cli(["dmpc", "prediction-error", "--ckpt", str(ck["dmpc"]), "--mbop", str(ck["mbop"]), "--data",
                 str(held_out), "--rows", "512", "--json", str(pe), "--plot", str(pe.with_suffix(".png"))],
                log)
        write_json(log_path, log)
    from paperclub.dmpc.dataset import load_dataset, returns_summary

    datasets = {p.name: returns_summary(load_dataset(p)) for p in (data, held_out)}
    write_json(out / "datasets.json", {"cpu": cpu_name(), "datasets": datasets})


def cmd_pessimistic(args) -> None:
    """D-MPC with a new value: `train-value --members M --arch A` for the task's D-MPC checkpoint (proposal and
    dynamics unchanged), then the evaluation with `--value-pessimism B` (an ensemble) on the same seeds, into
    eval_dmpc_v{M}_b{B}.json (MLP members) or eval_dmpc_tv{M}_b{B}.json (transformer members) beside the task's
    other results."""
    if args.members == 1 and args.pessimism:
        raise SystemExit("--pessimism needs --members > 1 (one member has no spread)")
    work, out = Path(args.work), Path(args.out) / f"{args.env}-{args.kind}"
    log_path = out / "commands.json"
    log: list[dict] = json.loads(log_path.read_text()) if log_path.exists() else []
    base = work / f"ck-dmpc-{args.kind}-x0"
    if not (base / "config.json").exists():
        raise SystemExit(f"{base} is missing: `run` the task first")
    tag = f"{'v' if args.arch == 'mlp' else 'tv'}{args.members}"
    ck = work / f"ck-dmpc-{args.kind}-x0-{tag}"
    arch = ["--arch", args.arch] if args.arch != "mlp" else []
    run_cli(["dmpc", "train-value", "--ckpt", str(base), "--out", str(ck), "--members", str(args.members),
             *arch, "--steps", str(args.mlp_steps), "--threads", str(args.threads), "--quiet"], log)
    write_json(log_path, log)  # (train-value resumes, or does nothing once trained)
    path = out / f"eval_dmpc_{tag}_b{args.pessimism:g}.json"
    pessimism = ["--value-pessimism", f"{args.pessimism:g}"] if args.members > 1 else []
    if not path.exists():
        run_cli(["dmpc", "eval", "--env", args.env, "--planner", "dmpc", "--ckpt", str(ck), "--episodes",
                 str(args.episodes), "--seed", str(args.seed), "--threads", str(args.threads), "--quiet",
                 *pessimism, "--json", str(path), *PLANNER_ARGS["dmpc"]], log)
        write_json(log_path, log)


def combine(rows: list[dict]) -> dict:
    """Mean of per-task means; its standard error with the tasks' errors taken as independent."""
    n = len(rows)
    return {"mean": sum(r["mean"] for r in rows) / n,
            "stderr": math.sqrt(sum(r["stderr"] ** 2 for r in rows)) / n, "tasks": n}


def cmd_summary(args) -> None:
    out = Path(args.out)
    if not out.is_dir():
        raise SystemExit(f"{out} is not a results directory: `run` a task into it first")
    per_task: dict[str, dict[str, dict]] = {}
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        for path in sorted(d.glob("eval_*.json")):
            r = json.loads(path.read_text())
            # eval_dmpc_epsilon.json: D-MPC with another denoiser target, listed but not averaged
            per_task.setdefault(d.name, {})[path.stem.removeprefix("eval_")] = {
                "mean": r["normalized_score"]["mean"], "stderr": r["normalized_score"]["stderr"],
                "mean_return": r["mean_return"], "episodes": r["episodes"], "actions_per_s": r["actions_per_s"]}
    planners = [p for p in ("bc", "mbop", "dmpc") if any(p in t for t in per_task.values())]
    complete = [t for t, rows in per_task.items() if all(p in rows for p in planners)]
    # D-MPC variants (e.g. dmpc_v5_b10, a pessimistic value) are averaged too where every task has them
    variants = sorted({v for t in complete for v in per_task[t] if v.startswith("dmpc_")
                       and all(v in per_task[u] for u in complete)})
    average = {p: combine([per_task[t][p] for t in complete]) for p in planners + variants} if complete else {}
    summary = {"date": date.today().isoformat(), "tasks": per_task, "average_over": complete, "average": average}
    if "dmpc" in average and "mbop" in average:
        summary["dmpc_over_mbop"] = average["dmpc"]["mean"] / average["mbop"]["mean"]
        for v in variants:
            summary[f"{v}_over_mbop"] = average[v]["mean"] / average["mbop"]["mean"]
    write_json(out / "summary.json", summary)
    plot(per_task, planners, out / "scores.png")
    for p, a in average.items():
        print(f"{p:6s} {a['mean']:6.1f} +- {a['stderr']:4.1f}  (average over {a['tasks']} tasks)")
    for key in (k for k in summary if k.endswith("_over_mbop")):
        print(f"{key.removesuffix('_over_mbop')} / MBOP = {summary[key]:.2f}")


def plot(per_task: dict, planners: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(per_task)
    width = 0.8 / max(1, len(planners))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(tasks) + 2), 3.6))
    for i, p in enumerate(planners):
        xs = [j + (i - (len(planners) - 1) / 2) * width for j, t in enumerate(tasks) if p in per_task[t]]
        rows = [per_task[t][p] for t in tasks if p in per_task[t]]
        ax.bar(xs, [r["mean"] for r in rows], width, yerr=[r["stderr"] for r in rows], capsize=3, label=p)
    ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_ylabel("normalized score (mean ± s.e.)")
    ax.legend(fontsize=8)
    ax.set_title("D-MPC, MBOP and BC on our data, same evaluation seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="one task and dataset kind: data, training, evaluation")
    p.add_argument("--env", required=True, choices=("halfcheetah", "hopper", "walker2d"))
    p.add_argument("--kind", required=True, choices=("medium", "medium-replay"))
    p.add_argument("--sac-work", required=True, help="the SAC work directory of `paperclub dmpc collect`")
    p.add_argument("--work", required=True, help="datasets and checkpoints (reused when present)")
    p.add_argument("--out", required=True, help="results directory (one folder per task and kind)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=100, help="evaluation seeds: seed .. seed + episodes - 1")
    p.add_argument("--dmpc-steps", type=int, default=20_000)
    p.add_argument("--prediction", default="sample", choices=("epsilon", "sample", "v_prediction"),
                   help="D-MPC's denoiser target (x0 = sample by default; epsilon is the paper's)")
    p.add_argument("--mlp-steps", type=int, default=20_000)
    p.add_argument("--planners", default="bc,mbop,dmpc")
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("pessimistic", help="a task's D-MPC with a new value (an ensemble scored mean - B * std, "
                       "or the transformer value)")
    p.add_argument("--arch", default="mlp", choices=("mlp", "transformer"), help="the value members' network")
    p.add_argument("--env", required=True, choices=("halfcheetah", "hopper", "walker2d"))
    p.add_argument("--kind", required=True, choices=("medium", "medium-replay"))
    p.add_argument("--work", required=True, help="the task's datasets and checkpoints (from `run`)")
    p.add_argument("--out", required=True, help="results directory (one folder per task and kind)")
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--pessimism", type=float, default=10.0, help="B (chosen on walker2d-medium-replay, seeds 200-209)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=100, help="evaluation seeds: seed .. seed + episodes - 1")
    p.add_argument("--mlp-steps", type=int, default=20_000, help="value training steps")
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("summary", help="average every task's results, write summary.json and scores.png")
    p.add_argument("--out", required=True)
    args = ap.parse_args()
    {"run": cmd_run, "pessimistic": cmd_pessimistic, "summary": cmd_summary}[args.command](args)


if __name__ == "__main__":
    main()
