"""`paperclub serve` under load, against llama.cpp's server, on the same weights and prompts, in one run.

    .venv/bin/python benchmarks/serve_load.py --concurrency 1,16,64 --duration 60 --max-tokens 128 \\
        --out benchmarks/results/serve/load_amd.json [--peer llamacpp] [--offline]

For each server (ours; `llamacpp` = llama-cpp-python's OpenAI server, `$PAPERCLUB_LLAMACPP_PYTHON -m
llama_cpp.server`, on the BF16 GGUF of the same weights that `paperclub bench` writes; `transformers` =
`transformers serve` with continuous batching on the same model directory, bf16; `paperclub-nocache` = ours with
`--prefix-cache-mb 0`, every prompt prefilled) and each concurrency, one
`paperclub loadtest` (greedy, the mismatch check on). The servers take turns per concurrency, each started fresh,
so machine noise hits them alike. Each server's RSS is read when idle (after its warm-up request, which also packs
the CPU kernels' weights) and again 3 s after each load. `--offline` also times `LLM.generate` on the same prompts
one at a time (batch 1), the figure the served batch-1 tokens/s is compared with. Writes OUT.json and OUT.png
(throughput, TTFT and ITL percentiles against concurrency).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from paperclub.atomic import write_json
from paperclub.device import cpu_model
from paperclub.serve.loadtest import LoadTest, load_prompts, run_loadtest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Served:
    def __init__(self, name: str, cmd: list[str], port: int, log: Path):
        self.name, self.port = name, port
        self.process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start in 300 s")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(name: str, args, log_dir: Path) -> Served:
    port = free_port()
    if name in ("paperclub", "paperclub-nocache"):
        cmd = [sys.executable, "-m", "paperclub.cli", "serve", "--port", str(port), "--max-num-seqs",
               str(args.max_num_seqs), "--max-queue", "1024", "--mode", args.mode]
        if name == "paperclub-nocache":  # the same server with prefix caching off: every prompt is prefilled
            cmd += ["--prefix-cache-mb", "0"]
    elif name == "llamacpp":
        from paperclub.models.default_model import ensure_default_model
        from paperclub.models.gguf_write import bf16_gguf_for

        python = os.environ.get("PAPERCLUB_LLAMACPP_PYTHON")
        if not python:
            raise SystemExit("--peer llamacpp needs $PAPERCLUB_LLAMACPP_PYTHON (a venv with llama-cpp-python[server])")
        gguf = bf16_gguf_for(ensure_default_model())
        cmd = [python, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", "4096", "--n_threads", str(os.cpu_count()), "--n_batch", "512",
               "--model_alias", "smol", "--interrupt_requests", "False"]
    elif name == "transformers":  # `transformers serve` with its continuous batching (paged attention)
        from paperclub.models.default_model import ensure_default_model

        cmd = [str(Path(sys.executable).parent / "transformers"), "serve", str(ensure_default_model()), "--host",
               "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "bfloat16", "--continuous-batching",
               "--log-level", "warning"]
    else:
        raise SystemExit(f"unknown server {name}")
    return Served(name, cmd, port, log_dir / f"{name}.log")


def offline_tokens_per_s(args) -> dict:
    """LLM.generate, one prompt at a time, on the load test's prompts: tokens over wall time (prefill in)."""
    from paperclub.engine import LLM, SamplingParams

    prompts = load_prompts(LoadTest("http://127.0.0.1:1/v1", 1, 1, args.max_tokens, num_prompts=args.num_prompts))
    llm = LLM(max_num_seqs=1, mode=args.mode)
    llm.generate([prompts[0]], SamplingParams(max_tokens=8))  # warm-up
    runs = []
    for _ in range(args.offline_repeats):
        n, t0 = 0, time.perf_counter()
        for p in prompts:
            (out,) = llm.generate([p], SamplingParams(max_tokens=args.max_tokens, temperature=0))
            n += len(out.token_ids)
        runs.append(n / (time.perf_counter() - t0))
    llm.close()
    return {"tokens_per_s_runs": runs, "tokens_per_s": sorted(runs)[len(runs) // 2]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for (name, runs), color in zip(result["servers"].items(), ("C0", "C1", "C2", "C3", "C4"), strict=False):
        cs = sorted(int(c) for c in runs)

        def get(key: str, runs=runs, cs=cs) -> list[float]:
            return [runs[str(c)][key] for c in cs]

        axes[0].plot(cs, get("output_tokens_per_s"), "o-", color=color, label=name)
        axes[1].plot(cs, get("ttft_p50_s"), "o-", color=color, label=f"{name} p50")
        axes[1].plot(cs, get("ttft_p99_s"), "o--", color=color, alpha=0.6, label=f"{name} p99")
        axes[2].plot(cs, [1e3 * x for x in get("itl_p50_s")], "o-", color=color, label=f"{name} p50")
        axes[2].plot(cs, [1e3 * x for x in get("itl_p99_s")], "o--", color=color, alpha=0.6, label=f"{name} p99")
    for ax, title, unit in zip(axes, ("output tokens/s", "time to first token", "inter-token latency"),
                               ("tok/s", "s", "ms"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    fig.suptitle(f"paperclub serve under load ({result['cpu']}, {result['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--mode", default="ar")
    ap.add_argument("--peer", action="append", default=[],
                    help="llamacpp, transformers or paperclub-nocache (ours without prefix caching; repeatable)")
    ap.add_argument("--offline", action="store_true", help="also time LLM.generate at batch 1")
    ap.add_argument("--offline-repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/serve/load.json")
    ap.add_argument("--replot", action="store_true", help="only redraw OUT.png from OUT.json")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return
    out = Path(args.out)
    log_dir = out.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    result = {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "settings": vars(args), "servers": {},
              "rss_mb": {}}
    for c in [int(x) for x in args.concurrency.split(",")]:
        for name in ["paperclub", *args.peer]:
            served = start(name, args, log_dir)
            try:
                warm = LoadTest(served.url, 1, 0.1, 8, num_prompts=1, check_greedy=False, progress=False)
                run_loadtest(warm)
                idle = rss_mb(served.process.pid)
                test = LoadTest(served.url, c, args.duration, args.max_tokens, num_prompts=args.num_prompts,
                                max_requests=100_000)
                r = run_loadtest(test)
                time.sleep(3)  # the engine frees its KV cache when it goes idle, after the last response
                r["rss_idle_mb"], r["rss_after_mb"] = idle, rss_mb(served.process.pid)
                r["alive_after"] = httpx.get(served.url.removesuffix("/v1") + "/health", timeout=5).status_code \
                    if name.startswith("paperclub") else served.process.poll() is None
                result["servers"].setdefault(name, {})[str(c)] = r
                print(f"{name} x{c}: {r['requests_ok']} ok, {r['requests_failed']} failed, {r['mismatched']} "
                      f"mismatched, {r['output_tokens_per_s']:.1f} tok/s, TTFT p50 {r['ttft_p50_s']:.2f}s, "
                      f"ITL p50 {1e3 * r['itl_p50_s']:.1f} ms, RSS {idle:.0f} -> {r['rss_after_mb']:.0f} MB",
                      flush=True)
            finally:
                served.stop()
            write_json(out, result)
    if args.offline:
        result["offline"] = offline_tokens_per_s(args)
        print(f"offline LLM.generate batch 1: {result['offline']['tokens_per_s']:.1f} tok/s", flush=True)
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print(json.dumps({n: {c: round(r["output_tokens_per_s"], 1) for c, r in runs.items()}
                      for n, runs in result["servers"].items()}))


if __name__ == "__main__":
    main()
