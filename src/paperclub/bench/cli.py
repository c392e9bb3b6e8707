"""`paperclub bench` and `paperclub bench-plot`: the benchmark table and its plot from the shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from paperclub.atomic import atomic_path, check_writable, write_json
from paperclub.errors import UserError


def _mal(result: dict) -> float | None:
    """Tokens per target forward: `mean_acceptance_length`, or `tokens_per_round` in files written before the rename."""
    return result.get("mean_acceptance_length", result.get("tokens_per_round"))

def _list(kind, name: str):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a comma list of {kind.__name__}s, got {text!r}") from None
    return parse


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def cmd_bench(args: argparse.Namespace) -> int:
    from paperclub.bench.bench import BenchSettings, run_bench, summary_lines

    check_writable(args.json, "--json")  # before minutes of benchmarking, not after
    if args.plot:
        check_writable(args.plot, "--plot")
    settings = BenchSettings(
        prompts=args.prompts, num_prompts=args.num_prompts, modes=args.modes, peers=args.peers, k=args.k,
        max_new_tokens=args.max_new_tokens, temperatures=args.temperature, batch_sizes=args.batch_size,
        repeats=args.repeats, model=args.model, draft=args.draft, dtype=args.dtype, device=args.device,
        seed=args.seed,
    )
    if args.predict:
        from paperclub.bench.predict import lines, predict

        if args.measure:
            settings.peers = []  # the model predicts our modes
        data = run_bench(settings) if args.measure else None
        given = {k: v for k, v in vars(args).items() if k != "func"}
        out = predict(settings, data) | {"settings": given, "measured": data}
        write_json(args.json, out)
        print("\n".join(lines(out)))
        print(f"wrote {args.json}", file=sys.stderr)
        return 0
    data = run_bench(settings)
    write_json(args.json, data)
    plot = args.plot or str(Path(args.json).with_suffix(".png"))
    plot_bench([data], plot)
    print("\n".join(summary_lines(data)))
    print(f"wrote {args.json} and {plot}", file=sys.stderr)
    return 0


def cmd_bench_plot(args: argparse.Namespace) -> int:
    datas = []
    for path in args.json:
        try:
            datas.append(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise UserError(f"{path} not found: give JSON files written by `paperclub bench`") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e.msg}): give files written by `paperclub bench`") from None
        if not isinstance(datas[-1], dict) or "results" not in datas[-1]:
            raise UserError(f"{path} has no results: give files written by `paperclub bench`")
    plot_bench(datas, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


# -- the plot --------------------------------------------------------------------------------------------------


def configs_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    if data.get("configs"):
        return data["configs"]
    s = data["settings"]
    return [{"batch_size": s["batch_size"], "temperature": s["temperature"], "results": data["results"]}]


SPEC_COLORS = ("tab:olive", "tab:cyan", "tab:gray", "tab:pink")  # apart from the systems' C0..C5


def merged_configs(datas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (batch size, temperature) config of the runs, by temperature then batch size; where runs overlap,
    the earlier run's config."""
    first: dict[tuple[int, float], dict[str, Any]] = {}
    for d in datas:
        for c in configs_of(d):
            first.setdefault((c["batch_size"], c["temperature"]), c)
    return sorted(first.values(), key=lambda c: (c["temperature"], c["batch_size"]))


def plot_bench(datas: list[dict[str, Any]], out: str | Path) -> None:
    """tokens/s per system, bars grouped by batch size, one panel per temperature; then a panel with SD/SSD
    acceptance rate, SSD cache hit rate (bars, left axis) and tokens per target forward (dots, right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = merged_configs(datas)
    temps = sorted({c["temperature"] for c in configs})
    systems = list(dict.fromkeys(name for c in configs for name in c["results"]))
    colors = {name: f"C{i}" for i, name in enumerate(systems)}
    fig, axes = plt.subplots(1, len(temps) + 1, figsize=(5.5 * (len(temps) + 1), 4.2), squeeze=False)
    for ax, t in zip(axes[0], temps, strict=False):
        batches = sorted({c["batch_size"] for c in configs if c["temperature"] == t})
        width = 0.8 / len(systems)
        for j, name in enumerate(systems):
            for x, b in enumerate(batches):
                r = next((c["results"].get(name) for c in configs if c["batch_size"] == b and c["temperature"] == t
                          and name in c["results"]), None)
                if r is None:
                    continue
                pos = x + (j - (len(systems) - 1) / 2) * width
                ax.bar(pos, r["tokens_per_s"], width, color=colors[name], label=name)
                v = r["tokens_per_s"]
                ax.text(pos, v, f"{v:.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_ylabel("tokens/s (prefill included)")
        ax.set_title(f"temperature {t:g}")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=False))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    ax = axes[0][-1]
    metrics = [(n, key) for n in ("sd", "ssd") for key in ("acceptance_rate", "cache_hit_rate")
               if any(c["results"].get(n, {}).get(key) is not None for c in configs)]
    labels = [f"B{c['batch_size']} T{c['temperature']:g}" for c in configs]
    width = 0.8 / max(len(metrics), 1)
    right = ax.twinx()
    for j, (name, key) in enumerate(metrics):
        for x, c in enumerate(configs):
            v = c["results"].get(name, {}).get(key)
            if v is not None:
                ax.bar(x + (j - (len(metrics) - 1) / 2) * width, v, width, color=SPEC_COLORS[j % len(SPEC_COLORS)],
                       label=f"{name} {key.replace('_', ' ')}" if x == 0 else None)
    for name, marker, dx in (("sd", "o", -0.1), ("ssd", "s", 0.1)):
        pts = [(x + dx, _mal(c["results"][name])) for x, c in enumerate(configs)
               if _mal(c["results"].get(name, {})) is not None]
        if pts:
            right.plot(*zip(*pts, strict=True), marker, color="k", label=f"{name} mean acceptance length")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(len(configs)), labels, fontsize=8)
    ax.set_ylabel("rate")
    right.set_ylabel("tokens per target forward")
    tpr = [_mal(c["results"][n]) for c in configs for n in ("sd", "ssd") if _mal(c["results"].get(n, {})) is not None]
    right.set_ylim(0, max(tpr, default=1.0) * 1.25)
    ax.set_title("speculation")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = right.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    first = datas[0]
    fig.suptitle(f"{Path(first.get('target') or '?').name}: {first['settings'].get('num_prompts')} prompts x "
                 f"{first['settings'].get('max_new_tokens')} tokens, {first.get('machine', {}).get('cpu', '')}",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def register(sub: argparse._SubParsersAction) -> None:
    from paperclub.bench.bench import ALL_MODES, MODES, PROMPT_SETS
    from paperclub.bench.peers import PEERS

    b = sub.add_parser("bench", help="benchmark our AR/SD/SSD against transformers (and llama.cpp)",
                       description="Our modes and peer engines on the same model, prompts and machine, "
                                   "round-robin; writes a JSON and a plot.")
    b.add_argument("--prompts", default="instruct",
                   help=f"JSONL file ({{\"prompt\"}} or {{\"messages\"}} per line) or {' / '.join(PROMPT_SETS)}")
    b.add_argument("--num-prompts", type=int, default=8, help="first N prompts (default 8)")
    b.add_argument("--modes", type=_names, default=list(MODES),
                   help=f"comma list of {','.join(ALL_MODES)} (default {','.join(MODES)}; sd-ngram: prompt-lookup "
                        "drafting, sd-ngram+draft: combined with --draft, sd-tree: token trees of n-gram matches "
                        "and draft branches, greedy; sd: the draft's chain alone; auto: what mode auto picks "
                        "after its calibration, with the pick in the JSON)")
    b.add_argument("--peers", type=_names, default=["hf", "hf-assisted"],
                   help=f"comma list of {','.join(PEERS)} ('' for none; llamacpp needs $PAPERCLUB_LLAMACPP_PYTHON)")
    b.add_argument("--k", type=int, default=4, help="draft tokens per round (sd, ssd, hf-assisted)")
    b.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per prompt, EOS ignored")
    b.add_argument("--temperature", type=_list(float, "--temperature"), default=[0.0], help="e.g. 0 or 0,0.7")
    b.add_argument("--batch-size", type=_list(int, "--batch-size"), default=[1], help="e.g. 1 or 1,4,16")
    b.add_argument("--repeats", type=int, default=3, help="timed passes per system (median reported)")
    b.add_argument("--seed", type=int, default=0, help="sampling seed of prompt i is seed + i")
    b.add_argument("--json", required=True, help="output JSON")
    b.add_argument("--plot", default=None, help="output PNG (default: next to the JSON)")
    b.add_argument("--model", default=None, help="target: HF directory, .gguf or cached name (default: embedded)")
    b.add_argument("--draft", default=None, help="draft directory (default: the shipped draft)")
    b.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    b.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights/activations")
    b.add_argument("--predict", action="store_true",
                   help="print the cost model's tokens/s for --modes (ar, sd, ssd; sd-ngram+draft with --measure) "
                        "after a short calibration instead of benchmarking (speculative.cost_model)")
    b.add_argument("--measure", action="store_true", help="with --predict: also run the bench and compare")
    b.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-plot", help="plot one or more `paperclub bench` JSON files")
    p.add_argument("json", nargs="+", help="JSON files written by `paperclub bench`; where two hold the same "
                   "batch size and temperature, the first one's figures are drawn")
    p.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(func=cmd_bench_plot)
