"""D-MPC against its baselines on Pendulum, in one run on the same data and the same evaluation seeds: D-MPC (SSR),
MBOP, behaviour cloning, the distilled D-MPC policy, uniform random actions and the paper's two ablations (SSR
with single-step dynamics, SSR with a non-diffusion MLP proposal); and the held-out prediction error
of the multi-step diffusion dynamics against MBOP's single-step ensemble rolled out.

    OMP_NUM_THREADS=1 python benchmarks/dmpc_baselines_pendulum.py --work /tmp/dmpc-pend \\
        --out benchmarks/results/dmpc/baselines_pendulum

Every step is a `paperclub dmpc` command (printed as it runs); trained checkpoints are kept in --work and reused
when present (delete it to retrain). The summary (scores with standard errors, actions/s, the commands, the CPU)
goes to OUT/summary.json, with the per-planner eval JSONs, the prediction-error JSON and two plots beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
from datetime import date
from pathlib import Path

from _dmpc_run import cpu_name, run_cli  # benchmarks/_dmpc_run.py

from paperclub.atomic import write_json

PLANNER_ARGS = {
    "dmpc": ["--candidates", "16", "--chunk", "2", "--proposal-steps", "5", "--dynamics-steps", "10"],
    "mbop": ["--candidates", "64"],
    "bc": [],
    "distilled": [],
    "random": [],
}
# the paper's ablations: SSR with MBOP's single-step dynamics, or with MBOP's MLP prior as the proposal
ABLATIONS = {"dmpc-single-step-dynamics": ["--dynamics", "single-step"], "dmpc-mlp-proposal": ["--proposal", "mlp"]}


def run(argv: list[str], commands: list[str]) -> float:
    """Run `paperclub ARGV`, record its command line in `commands`, return its seconds."""
    log: list[dict] = []
    run_cli(argv, log)
    commands.append(log[0]["command"])
    return log[0]["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="datasets and checkpoints (reused when present)")
    ap.add_argument("--out", required=True, help="results directory")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=100, help="evaluation seeds: seed .. seed + episodes - 1")
    ap.add_argument("--dmpc-steps", type=int, default=3000)
    ap.add_argument("--mlp-steps", type=int, default=3000)
    ap.add_argument("--distill-states", type=int, default=2000)
    ap.add_argument("--distill-rollouts", type=int, default=10)
    ap.add_argument("--planners", default=",".join([*PLANNER_ARGS, *ABLATIONS]))
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    commands: list[str] = []
    seconds: dict[str, float] = {}
    data, held_out = work / "pend.h5", work / "pend-heldout.h5"
    ck = {"dmpc": work / "ck-dmpc", "mbop": work / "ck-mbop", "bc": work / "ck-bc", "distilled": work / "ck-distilled"}
    if not data.exists():
        run(["dmpc", "collect", "--env", "pendulum", "--kind", "scripted", "--noise", "1.0", "--episodes", "30",
             "--out", str(data), "--quiet"], commands)
    if not held_out.exists():
        run(["dmpc", "collect", "--env", "pendulum", "--kind", "scripted", "--noise", "1.0", "--episodes", "5",
             "--seed", "500", "--out", str(held_out), "--quiet"], commands)
    steps = {"dmpc": ["dmpc", "train", "--data", str(data), "--out", str(ck["dmpc"]), "--steps", str(args.dmpc_steps),
                      "--horizon", "8", "--history", "0", "--d-model", "32", "--layers", "1", "--heads", "2",
                      "--batch-size", "64", "--lr", "1e-3", "--quiet"],
             "mbop": ["dmpc", "train-mbop", "--data", str(data), "--out", str(ck["mbop"]), "--steps",
                      str(args.mlp_steps), "--horizon", "8", "--quiet"],
             "bc": ["dmpc", "train-bc", "--data", str(data), "--out", str(ck["bc"]), "--steps", str(args.mlp_steps),
                    "--quiet"],
             "distilled": ["dmpc", "distill", "--ckpt", str(ck["dmpc"]), "--out", str(ck["distilled"]), "--states",
                           str(args.distill_states), "--rollouts", str(args.distill_rollouts),
                           *PLANNER_ARGS["dmpc"][:2], *PLANNER_ARGS["dmpc"][4:], "--steps", str(args.mlp_steps),
                           "--quiet"]}
    for name, argv in steps.items():
        if name == "dmpc" or not (ck[name] / "config.json").exists():  # D-MPC training resumes, or does nothing
            seconds[f"train_{name}"] = run(argv, commands)
        else:
            commands.append("paperclub " + shlex.join(argv) + "   # reused from --work")
    results = {}
    for planner in args.planners.split(","):
        path = out / f"eval_{planner}.json"
        kind = "dmpc" if planner in ABLATIONS else planner
        argv = ["dmpc", "eval", "--env", "pendulum", "--planner", kind, "--episodes", str(args.episodes),
                "--seed", str(args.seed), "--quiet", "--json", str(path), *PLANNER_ARGS[kind]]
        if planner != "random":
            argv[6:6] = ["--ckpt", str(ck[kind])]
        if planner in ABLATIONS:
            argv += [*ABLATIONS[planner], "--mbop", str(ck["mbop"])]
        seconds[f"eval_{planner}"] = run(argv, commands)
        r = json.loads(path.read_text())
        results[planner] = {"normalized_score": r["normalized_score"], "mean_return": r["mean_return"],
                            "return_stderr": r["return_stderr"], "actions_per_s": r["actions_per_s"],
                            "episodes": r["episodes"]}
    pe = out / "prediction_error.json"
    run(["dmpc", "prediction-error", "--ckpt", str(ck["dmpc"]), "--mbop", str(ck["mbop"]), "--data", str(held_out),
         "--rows", "512", "--json", str(pe), "--plot", str(out / "prediction_error.png")], commands)
    distill_info = json.loads((ck["distilled"] / "config.json").read_text())["distill"]
    summary = {"date": date.today().isoformat(), "cpu": cpu_name(), "threads": 1, "episodes": args.episodes,
               "seeds": f"{args.seed}..{args.seed + args.episodes - 1}", "results": results,
               "distill": distill_info, "prediction_error": json.loads(pe.read_text()), "seconds": seconds,
               "commands": commands}
    write_json(out / "summary.json", summary)
    plot_scores(results, out / "scores.png")
    for planner, r in results.items():
        ns = r["normalized_score"]
        print(f"{planner:10s} {ns['mean']:7.1f} +- {ns['stderr']:5.1f}   return {r['mean_return']:8.1f}   "
              f"{r['actions_per_s']:9.1f} actions/s")


def plot_scores(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar(names, [results[n]["normalized_score"]["mean"] for n in names],
           yerr=[results[n]["normalized_score"]["stderr"] for n in names], capsize=4)
    ax.set_ylabel("normalized score (mean ± s.e.)")
    ax.tick_params(axis="x", labelsize=7, rotation=15)
    ax.set_title(f"pendulum, {results[names[0]]['episodes']} episodes per planner")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
