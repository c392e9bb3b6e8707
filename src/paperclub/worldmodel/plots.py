"""Every figure is saved as a PNG next to a JSON holding the plotted numbers."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from paperclub.atomic import atomic_path, write_json  # noqa: E402


def save_figure(fig, path: str | os.PathLike, data: dict) -> Path:
    """Save `fig` to PATH.png and `data` to PATH.json (PATH without suffix)."""
    path = Path(path).with_suffix("")
    with atomic_path(path.with_suffix(".png")) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    write_json(path.with_suffix(".json"), data)
    return path.with_suffix(".png")


def line_plot(
    path,
    series: dict[str, tuple[list, list]],
    xlabel: str,
    ylabel: str,
    title: str,
    logy: bool = False,
    vline: float | None = None,
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name)
    if vline is not None:
        ax.axvline(vline, color="gray", ls="--", lw=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    data = {
        "title": title,
        "xlabel": xlabel,
        "ylabel": ylabel,
        "series": {k: {"x": list(map(float, x)), "y": list(map(float, y))} for k, (x, y) in series.items()},
    }
    return save_figure(fig, path, data)


def bar_plot(path, values: dict[str, float], ylabel: str, title: str, logy: bool = False) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.bar(
        list(values),
        list(values.values()),
        color=["tab:blue", "tab:orange", "tab:green", "tab:red"][: len(values)] or None,
    )
    for i, v in enumerate(values.values()):
        ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    return save_figure(
        fig, path, {"title": title, "ylabel": ylabel, "values": {k: float(v) for k, v in values.items()}}
    )
