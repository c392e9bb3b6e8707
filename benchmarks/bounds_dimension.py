"""The Fashion-MNIST bound against the intrinsic dimension d and the number of quantization levels L.

    .venv/bin/python benchmarks/bounds_dimension.py --dims 1000,2500,6000 --levels 3,7 \\
        --out benchmarks/results/bounds/dimension_amd.json

One `paperclub bounds classify --train` per (d, L), each with `--search-space` = the size of this grid, so that
picking the best of them afterwards is already paid for in every bound. Resumable: a (d, L) whose JSON exists
under `<out stem>_runs/` is read, not retrained. Writes OUT.json (one row per run and the best) and OUT.png
(train error, test error and bound against d, one line per L). The best run's checkpoint folder is printed: it is
what `src/paperclub/bounds/checkpoints/fashion-mnist-noise0/` ships.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from paperclub.atomic import atomic_path, write_json
from paperclub.bench.bench import machine_info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="1000,2500,6000")
    ap.add_argument("--levels", default="3,7")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    ap.add_argument("--out", default="benchmarks/results/bounds/dimension.json")
    args = ap.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    levels = [int(v) for v in args.levels.split(",")]
    out = Path(args.out)
    runs = out.with_name(out.stem + "_runs")
    rows = []
    for d in dims:
        for L in levels:
            name = f"d{d}_L{L}"
            result = runs / f"{name}.json"
            if not result.exists():
                cmd = [sys.executable, "-m", "paperclub.cli", "bounds", "classify", "--train", "--dim", str(d),
                       "--levels", str(L), "--epochs", str(args.epochs), "--search-space", str(len(dims) * len(levels)),
                       "--threads", str(args.threads), "--quiet", "--save", str(runs / name), "--json", str(result)]
                print(" ".join(cmd[2:]), flush=True)
                subprocess.run(cmd, check=True)
            r = json.loads(result.read_text())
            rows.append({"dim": d, "levels": L, "checkpoint": str(runs / name)} |
                        {k: r[k] for k in ("bound_error", "bound", "train_error", "test_error", "compressed_bits")})
    best = min(rows, key=lambda r: r["bound_error"])
    write_json(out, {"machine": machine_info(), "epochs": args.epochs, "search_space": len(rows), "rows": rows,
                     "best": best})
    plot(rows, out.with_suffix(".png"))
    for r in rows:
        print(f"d={r['dim']:>6} L={r['levels']}: train {r['train_error']:.4f} test {r['test_error']:.4f} "
              f"bits {r['compressed_bits']:>8.0f} bound {r['bound_error']:.4f} ({r['bound']})")
    print("best:", best["checkpoint"])
    return 0


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for i, L in enumerate(sorted({r["levels"] for r in rows})):
        rs = sorted((r for r in rows if r["levels"] == L), key=lambda r: r["dim"])
        d = [r["dim"] for r in rs]
        color = f"C{i}"
        ax.plot(d, [r["bound_error"] for r in rs], "o-", color=color, label=f"bound, L={L}")
        ax.plot(d, [r["test_error"] for r in rs], "s--", color=color, alpha=0.7, label=f"test error, L={L}")
        ax.plot(d, [r["train_error"] for r in rs], "^:", color=color, alpha=0.7, label=f"train error, L={L}")
    ax.set_xscale("log")
    ax.set_xlabel("intrinsic dimension d")
    ax.set_ylabel("0-1 error")
    ax.set_title("Fashion-MNIST bound (data-independent prior, delta=0.05)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
