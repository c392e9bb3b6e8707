"""The study's plots, drawn from `analysis.analyze`'s figures: loss against parameters per recipe (with the fitted
laws and their asymptotes), loss against ensemble members, and the data-efficiency axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paperclub.atomic import atomic_path

COLORS = {"standard": "tab:gray", "regularized": "tab:blue", "ensemble": "tab:orange", "joint": "tab:red"}


def _save(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return str(path)


def _band(ax, entry, color) -> None:
    lo, hi = entry["ci95"]
    if np.isfinite(lo) and np.isfinite(hi):
        ax.axhspan(lo, hi, color=color, alpha=0.12, lw=0)
    ax.axhline(entry["value"], color=color, ls="--", lw=1)


def write_plots(folder: Path, result: dict, point: dict, boots: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    params, laws, written = result["params"], point["laws"], []

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, per_budget in result["best_loss"].items():
        per_size = per_budget.get("1", {})
        sizes = sorted(per_size, key=lambda s: params[s])
        if not sizes:
            continue
        x = np.array([params[s] for s in sizes], dtype=float)
        y = np.array([per_size[s]["value"] for s in sizes])
        err = np.array([[y[i] - per_size[s]["ci95"][0], per_size[s]["ci95"][1] - y[i]] for i, s in enumerate(sizes)]).T
        label = "ensemble (8 members)" if name == "ensemble" else name
        ax.errorbar(x, y, yerr=np.clip(np.nan_to_num(err), 0, None), fmt="o", color=COLORS.get(name), label=label,
                    capsize=3)  # a best-of (min over students) estimate can sit outside its bootstrap interval
        law = laws.get(f"{name}_vs_params")
        if law is not None:
            grid = np.geomspace(x.min() / 1.5, x.max() * 20, 100)
            ax.plot(grid, law(grid), color=COLORS.get(name), lw=1)
            _band(ax, result["asymptotes"][name], COLORS.get(name))
    if "joint" in result["asymptotes"]:
        members = point["member_asymptotes"]
        sizes = sorted(members, key=lambda s: params[s])
        x = np.array([params[s] for s in sizes], dtype=float)
        ax.plot(x, [members[s] for s in sizes], "s", mfc="none", color=COLORS["joint"], label="member asymptotes")
        grid = np.geomspace(x.min() / 1.5, x.max() * 20, 100)
        ax.plot(grid, laws["joint_vs_params"](grid), color=COLORS["joint"], lw=1)
        _band(ax, result["asymptotes"]["joint"], COLORS["joint"])
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"Loss vs model size at D = {result['budget_tokens']:,} tokens (dashed: asymptotes, 95% CI)")
    ax.legend(fontsize=8)
    written.append(_save(fig, folder / "loss_vs_params.png"))
    plt.close(fig)

    ens = {k.split("_")[1]: law for k, law in laws.items() if k.startswith("ensemble_") and k.endswith("_vs_members")}
    if ens:
        fig, ax = plt.subplots(figsize=(6.0, 4.2))
        for size, law in sorted(ens.items(), key=lambda kv: params[kv[0]]):
            ks = np.array([1, 2, 4, 8], dtype=float)
            grid = np.geomspace(1, 64, 60)
            line, = ax.plot(grid, law(grid), lw=1, label=f"{size} (asymptote {law.C:.3f})")
            ax.plot(ks, law(ks), "o", color=line.get_color())
            ax.axhline(law.C, color=line.get_color(), ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ensemble members K")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title("Ensembles: L(K) = A/K^B + C per member size")
        ax.legend(fontsize=8)
        written.append(_save(fig, folder / "loss_vs_members.png"))
        plt.close(fig)

    written += heat_maps(folder, result, plt)
    written += students_plot(folder, result, plt)

    law = laws.get("standard_vs_tokens")
    if law is not None:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        per = result["standard_best_per_budget"]
        d = np.array([int(m) * result["budget_tokens"] for m in per], dtype=float)
        ax.plot(d, list(per.values()), "o", color=COLORS["standard"], label="standard recipe, best over sizes")
        grid = np.geomspace(d.min() / 2, d.max() * 64, 100)
        ax.plot(grid, law(grid), color=COLORS["standard"], lw=1, label=f"fit, asymptote {law.C:.3f}")
        for name, entry in result["data_efficiency"].items():
            color = COLORS.get(name.split("_")[0], "tab:green")
            ax.axhline(entry["loss"], color=color, ls=":", lw=1)
            if np.isfinite(entry["value"]):
                ax.plot([entry["value"] * result["budget_tokens"]], [entry["loss"]], "*", ms=10, color=color,
                        label=f"{name}: {entry['value']:.2f}x")
            else:
                ax.text(d.min(), entry["loss"], f" {name}: below the standard asymptote", fontsize=7, va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("training tokens D")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title("Data efficiency: tokens the standard recipe needs to match each recipe")
        ax.legend(fontsize=8)
        written.append(_save(fig, folder / "data_efficiency.png"))
        plt.close(fig)
    return written


def students_plot(folder: Path, result: dict, plt) -> list[str]:
    """Every distilled student against the regularized model of its size: the paired difference in validation
    loss with its 95% interval (both sides scored on the same resampled documents, so the interval is far
    narrower than either loss's own), beside the ensemble the students learn from."""
    students, comparisons = result.get("students", {}), result.get("comparisons", {})
    sizes = sorted({name.rsplit("_", 1)[1] for name in students})
    written = []
    for size in sizes:
        names = [n for n in students if f"{n}_minus_regularized" in comparisons and n.endswith(f"_{size}")]
        if not names:
            continue
        names.sort(key=lambda n: -comparisons[f"{n}_minus_regularized"]["value"])
        diff = np.array([comparisons[f"{n}_minus_regularized"]["value"] for n in names])
        ci = np.array([comparisons[f"{n}_minus_regularized"]["ci95"] for n in names])
        fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.42 * len(names)))
        y = np.arange(len(names))
        err = np.clip(np.nan_to_num(np.abs(ci.T - diff)), 0, None)
        for i in range(len(names)):  # green: the interval excludes 0 on the better side
            ax.errorbar(diff[i], y[i], xerr=err[:, i: i + 1], fmt="o", capsize=3,
                        color="tab:green" if ci[i, 1] < 0 else "tab:gray")
        ax.set_yticks(y, [n.removeprefix("distilled_").removesuffix(f"_{size}") for n in names], fontsize=8)
        ax.axvline(0, color=COLORS["regularized"], lw=1, label=f"regularized {size}")
        ens = comparisons.get(f"ensemble_minus_regularized_{size}")
        if ens is not None:
            ax.axvline(ens["value"], color=COLORS["ensemble"], ls="--", lw=1, label=f"ensemble {size} (the teacher)")
        ax.set_xlabel("validation loss minus the regularized model's (nats/token), 95% CI")
        ax.set_title(f"Distilled {size} students (b: teacher text in D, f: its share; w: weight on the logits)",
                     fontsize=9)
        ax.legend(fontsize=8, loc="lower left")
        written.append(_save(fig, folder / f"students_{size}.png"))
        plt.close(fig)
    return written


def heat_maps(folder: Path, result: dict, plt) -> list[str]:
    """Per size, the single-model loss at budget D over weight decay x epochs (the best learning rate of each
    cell among the runs the searches made; blank where no run was needed)."""
    rows = [r for r in result["table"] if r["budget"] == 1 and r["seed"] == 0 and not r["synthetic"]]
    sizes = sorted({r["size"] for r in rows}, key=lambda s: result["params"].get(s, 0))
    if not sizes:
        return []
    wds = sorted({r["weight_decay"] for r in rows})
    eps = sorted({r["epochs"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.4 * len(sizes), 3.4), squeeze=False, layout="constrained")
    for ax, size in zip(axes[0], sizes, strict=True):
        grid = np.full((len(wds), len(eps)), np.nan)
        for r in rows:
            if r["size"] == size:
                i, j = wds.index(r["weight_decay"]), eps.index(r["epochs"])
                grid[i, j] = np.nanmin([grid[i, j], r["val_loss"]])
        im = ax.imshow(grid, origin="lower", cmap="viridis_r", aspect="auto")
        lo, hi = np.nanmin(grid), np.nanmax(grid)
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):  # dark text on the light (low-loss) end of the map
                light = (v - lo) / max(hi - lo, 1e-9) < 0.5
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="k" if light else "w")
        ax.set_xticks(range(len(eps)), [str(int(e)) for e in eps], fontsize=7)
        ax.set_yticks(range(len(wds)), [f"{w:g}" for w in wds], fontsize=7)
        ax.set_xlabel("epochs")
        ax.set_title(size, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    axes[0][0].set_ylabel("weight decay")
    fig.suptitle("Single-model validation loss at D (best learning rate per cell)", fontsize=10)
    path = _save(fig, folder / "weight_decay_epochs.png")
    plt.close(fig)
    return [path]
