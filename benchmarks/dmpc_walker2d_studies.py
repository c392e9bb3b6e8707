"""Walker2d studies with one trained D-MPC model (from `dmpc_locomotion.py run --env walker2d --kind medium`):
new rewards at run time, the broken ankle before and after fine-tuning the dynamics alone, and distillation.

    OMP_NUM_THREADS=1 python benchmarks/dmpc_walker2d_studies.py rewards --work runs/dmpc/walker2d \\
        --out benchmarks/results/dmpc/walker2d_studies
    OMP_NUM_THREADS=1 python benchmarks/dmpc_walker2d_studies.py ankle --work runs/dmpc/walker2d \\
        --sac-work runs/dmpc/sac-walker2d-seed0 --out benchmarks/results/dmpc/walker2d_studies
    OMP_NUM_THREADS=1 python benchmarks/dmpc_walker2d_studies.py distill --work runs/dmpc/walker2d \\
        --out benchmarks/results/dmpc/walker2d_studies

`rewards`: the same model plans with the task's objective and with each named reward (jump, backward, balance), on
the same evaluation seeds; every run's episodes are measured with every reward (the eval JSON's `rewards`), so a
named reward's score under its own planning compares with its score under the task's planning (Welch's t-test),
per episode and per step (a walker that falls early earns little in total however well it did), and the mean torso
height (the eval JSON's `torso_height`) beside them.
`ankle`: play data in the broken-ankle variant (SAC's policy with heavy action noise), then D-MPC on the broken
walker before and after `finetune-dynamics` (the proposal and value untouched), paired over evaluation seeds.
`distill`: the planner distilled into an MLP policy (dataset states and planner episodes labelled, then DAgger
rounds), its score and actions/s next to the planner's.
Every step is a `paperclub dmpc` command; evaluations whose JSON exists are not rerun.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import numpy as np
from _dmpc_run import run_cli  # benchmarks/_dmpc_run.py
from scipy import stats

from paperclub.atomic import write_json
from paperclub.dmpc.evaluate import stderr

PLAN = ["--candidates", "64", "--chunk", "1", "--proposal-steps", "10", "--dynamics-steps", "5"]
REWARDS = ("task", "jump", "backward", "balance")


def evaluate(args, ckpt: Path, path: Path, log: list[dict], *extra: str) -> dict:
    if not path.exists():
        run_cli(["dmpc", "eval", "--env", "walker2d", "--ckpt", str(ckpt), "--episodes", str(args.episodes),
                 "--seed", str(args.seed), "--threads", str(args.threads), "--quiet", "--json", str(path),
                 *extra], log)
    return json.loads(path.read_text())


def _setup(args, name: str) -> tuple[Path, Path, list[dict]]:
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "commands.json"
    return out, log_path, json.loads(log_path.read_text()) if log_path.exists() else []


def cmd_rewards(args) -> None:
    out, log_path, log = _setup(args, "novel_rewards")
    ckpt = Path(args.work) / "ck-dmpc-medium-x0"
    runs = {}
    task_path = out / "eval_task.json"
    if args.task_eval and not task_path.exists():  # the same command as the task run, made by dmpc_locomotion.py
        same = json.loads(Path(args.task_eval).read_text())
        plan = dict(zip(PLAN[::2], PLAN[1::2], strict=True))
        got = same.get("planner_config", {})
        if any(str(got.get(k[2:].replace("-", "_"))) != v for k, v in plan.items()) or same["seed"] != args.seed \
                or same["episodes"] != args.episodes or same["reward"] != "task":
            raise SystemExit(f"--task-eval {args.task_eval} was not planned with this study's settings")
        write_json(task_path, same)
        log.append({"command": f"copied from {args.task_eval} (the same eval command)", "seconds": 0.0,
                    "date": date.today().isoformat()})
    for reward in REWARDS:
        runs[reward] = evaluate(args, ckpt, out / f"eval_{reward}.json", log, *PLAN, "--reward", reward)
        write_json(log_path, log)
    table = {}
    for measured in REWARDS[1:]:
        own = runs[measured]["rewards"][measured]["per_episode"]
        task = runs["task"]["rewards"][measured]["per_episode"]
        t = stats.ttest_ind(own, task, equal_var=False)
        # per step (each episode's sum over its length): what the reward asks for, whatever the episode's length
        # (a walker that falls early earns little in total however well it jumped)
        rate = {r: np.asarray(runs[r]["rewards"][measured]["per_episode"]) / np.asarray(runs[r]["episode_lengths"])
                for r in (measured, "task")}
        t_rate = stats.ttest_ind(rate[measured], rate["task"], equal_var=False)
        table[measured] = {"planned_for_it": runs[measured]["rewards"][measured],
                           "planned_for_task": runs["task"]["rewards"][measured],
                           "difference": sum(own) / len(own) - sum(task) / len(task),
                           "welch_t": float(t.statistic), "p_value": float(t.pvalue),
                           "per_step": {"planned_for_it": _mean_se(rate[measured]),
                                        "planned_for_task": _mean_se(rate["task"]),
                                        "welch_t": float(t_rate.statistic), "p_value": float(t_rate.pvalue)},
                           "episode_length": {r: sum(runs[r]["episode_lengths"]) / len(runs[r]["episode_lengths"])
                                              for r in (measured, "task")}}
        if all("torso_height" in runs[r] for r in (measured, "task")):  # evaluations made since it is recorded
            h = {r: runs[r]["torso_height"]["per_episode"] for r in (measured, "task")}
            t_h = stats.ttest_ind(h[measured], h["task"], equal_var=False)
            table[measured]["torso_height"] = {"planned_for_it": runs[measured]["torso_height"],
                                               "planned_for_task": runs["task"]["torso_height"],
                                               "welch_t": float(t_h.statistic), "p_value": float(t_h.pvalue)}
        print(f"{measured:9s} per episode: planned for it {table[measured]['planned_for_it']['mean']:9.1f}, for the "
              f"task {table[measured]['planned_for_task']['mean']:9.1f}, p = {t.pvalue:.2g};  per step: "
              f"{rate[measured].mean():.3f} vs {rate['task'].mean():.3f}, p = {t_rate.pvalue:.2g}")
        if "torso_height" in table[measured]:
            th = table[measured]["torso_height"]
            print(f"{'':9s} mean torso height: {th['planned_for_it']['mean']:.3f} vs "
                  f"{th['planned_for_task']['mean']:.3f}, p = {th['p_value']:.2g}")
    write_json(out / "summary.json", {"date": date.today().isoformat(), "episodes": args.episodes,
                                      "seeds": f"{args.seed}..{args.seed + args.episodes - 1}", "rewards": table})
    plot_rewards(table, out / "novel_rewards.png")


def _mean_se(x: np.ndarray) -> dict:
    return {"mean": float(x.mean()), "stderr": stderr(x), "per_episode": x.tolist()}


def plot_rewards(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(table), figsize=(3.0 * len(table), 5.6))
    for col, (name, row) in enumerate(table.items()):
        for ax, per, p_value, unit in ((axes[0, col], row, row["p_value"], "per episode"),
                                       (axes[1, col], row["per_step"], row["per_step"]["p_value"], "per step")):
            rows = [per["planned_for_task"], per["planned_for_it"]]
            ax.bar(["task objective", f"--reward {name}"], [r["mean"] for r in rows],
                   yerr=[r["stderr"] for r in rows], capsize=4, color=["tab:gray", "tab:blue"])
            ax.set_title(f"{name} reward {unit} (p = {p_value:.1g})", fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("walker2d: one D-MPC model, planned for different rewards", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_ankle(args) -> None:
    out, log_path, log = _setup(args, "broken_ankle")
    work = Path(args.work)
    ckpt, tuned, play = work / "ck-dmpc-medium-x0", work / "ck-dmpc-medium-ankle", work / "walker2d-play.h5"
    if not play.exists():
        sac_steps = json.loads((Path(args.sac_work) / "state.json").read_text())["steps"]  # no more SAC training
        run_cli(["dmpc", "collect", "--env", "walker2d", "--kind", "play", "--episodes", str(args.play_episodes),
                 "--steps", str(sac_steps), "--work", args.sac_work, "--out", str(play), "--quiet"], log)
    if not (tuned / "config.json").exists():
        run_cli(["dmpc", "finetune-dynamics", "--ckpt", str(ckpt), "--data", str(play), "--out", str(tuned),
                 "--steps", str(args.finetune_steps), "--quiet"], log)
    write_json(log_path, log)
    before = evaluate(args, ckpt, out / "eval_before.json", log, *PLAN, "--variant", "broken-ankle")
    write_json(log_path, log)
    after = evaluate(args, tuned, out / "eval_after.json", log, *PLAN, "--variant", "broken-ankle")
    write_json(log_path, log)
    a, b = after["returns"], before["returns"]
    t = stats.ttest_rel(a, b)
    summary = {"date": date.today().isoformat(), "episodes": args.episodes,
               "seeds": f"{args.seed}..{args.seed + args.episodes - 1}", "play_episodes": args.play_episodes,
               "finetune_steps": args.finetune_steps,
               "before": before["normalized_score"], "after": after["normalized_score"],
               "mean_return": {"before": before["mean_return"], "after": after["mean_return"]},
               "paired_t": float(t.statistic), "p_value": float(t.pvalue)}
    write_json(out / "summary.json", summary)
    plot_ankle(before, after, t.pvalue, out / "broken_ankle.png")
    print(f"broken ankle: before {before['normalized_score']['mean']:.1f} +- {before['normalized_score']['stderr']:.1f}"
          f", after {after['normalized_score']['mean']:.1f} +- {after['normalized_score']['stderr']:.1f}, paired p = "
          f"{t.pvalue:.2g}")


def plot_ankle(before: dict, after: dict, p_value: float, path: Path) -> None:
    """Each evaluation seed's normalized score before and after fine-tuning the dynamics, joined per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from paperclub.dmpc.envs import normalized_score

    b = normalized_score("walker2d", np.asarray(before["returns"]))
    a = normalized_score("walker2d", np.asarray(after["returns"]))
    fig, ax = plt.subplots(figsize=(4, 3.5))
    for y0, y1 in zip(b, a, strict=True):
        ax.plot([0, 1], [y0, y1], color="tab:gray", alpha=0.5, marker="o", markersize=3)
    ax.errorbar([0, 1], [b.mean(), a.mean()], yerr=[before["normalized_score"]["stderr"],
                after["normalized_score"]["stderr"]], color="tab:blue", marker="s", capsize=4, lw=2)
    ax.set_xticks([0, 1], ["before", "after fine-tuning\nthe dynamics"])
    ax.set_xlim(-0.3, 1.3)
    ax.set_ylabel("normalized score")
    ax.set_title(f"walker2d, broken left ankle (paired p = {p_value:.1g})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_distill(args) -> None:
    out, log_path, log = _setup(args, "distilled")
    work = Path(args.work)
    ckpt, student = work / "ck-dmpc-medium-x0", work / "ck-distilled-medium"
    if not (student / "config.json").exists():
        run_cli(["dmpc", "distill", "--ckpt", str(ckpt), "--out", str(student), "--states", str(args.states),
                 "--rollouts", str(args.rollouts), "--dagger", str(args.dagger), "--candidates", "64",
                 "--proposal-steps", "10", "--dynamics-steps", "5", "--steps", "20000", "--quiet"], log)
    write_json(log_path, log)
    result = evaluate(args, student, out / "eval_distilled.json", log, "--planner", "distilled")
    write_json(log_path, log)
    info = json.loads((student / "config.json").read_text())["distill"]
    summary = {"date": date.today().isoformat(), "episodes": args.episodes,
               "seeds": f"{args.seed}..{args.seed + args.episodes - 1}", "distilled": result["normalized_score"],
               "distilled_actions_per_s": {"evaluation": result["actions_per_s"],
                                           "batch_1": info["policy_actions_per_s"]},
               "labels": info["labels"], "dagger": info.get("dagger", [])}
    if args.teacher_eval:  # the teacher's own evaluation, same seeds (dmpc_locomotion.py's eval_dmpc.json)
        teacher = json.loads(Path(args.teacher_eval).read_text())
        summary.update(teacher=teacher["normalized_score"], teacher_actions_per_s=teacher["actions_per_s"],
                       teacher_eval=args.teacher_eval)
    write_json(out / "summary.json", summary)
    print(f"distilled: {result['normalized_score']['mean']:.1f} +- {result['normalized_score']['stderr']:.1f}, "
          f"{result['actions_per_s']:.0f} actions/s in the evaluation, {info['policy_actions_per_s']:.0f} at batch 1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("rewards", "ankle", "distill"):
        p = sub.add_parser(name)
        p.add_argument("--work", required=True, help="dmpc_locomotion.py's --work for walker2d")
        p.add_argument("--out", required=True)
        p.add_argument("--episodes", type=int, default=10)
        p.add_argument("--seed", type=int, default=100)
        p.add_argument("--threads", type=int, default=1)
        if name == "rewards":
            p.add_argument("--task-eval", help="an eval JSON of this model, the task reward and these settings "
                                               "(dmpc_locomotion.py's eval_dmpc.json) to reuse instead of rerunning")
        if name == "ankle":
            p.add_argument("--sac-work", required=True)
            p.add_argument("--play-episodes", type=int, default=100)
            p.add_argument("--finetune-steps", type=int, default=5000)
        if name == "distill":
            p.add_argument("--states", type=int, default=4000)
            p.add_argument("--rollouts", type=int, default=10)
            p.add_argument("--dagger", type=int, default=3, help="DAgger rounds of 10 student episodes")
            p.add_argument("--teacher-eval", help="the teacher's eval JSON on the same seeds, for the summary")
    args = ap.parse_args()
    {"rewards": cmd_rewards, "ankle": cmd_ankle, "distill": cmd_distill}[args.command](args)


if __name__ == "__main__":
    main()
