"""Time to first token over the turns of a chat, `paperclub serve` with and without its prefix cache.

A client holds one conversation: each turn sends the whole history plus a new user message (as chat clients
do), streams the reply (greedy, `max_tokens` per reply) and appends it. The servers (`--prefix-cache-mb 64`, the
default, and 0) take turns per conversation, each started once. Prints TTFT per turn and writes OUT.json.

    .venv/bin/python benchmarks/serve_multiturn.py --turns 8 --conversations 3 --max-tokens 64 \\
        --out benchmarks/results/serve/multiturn_amd_zen3.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from paperclub.atomic import write_json
from paperclub.device import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port  # noqa: E402

QUESTIONS = [
    "I am planning a week of cycling through the Loire valley. Where should I start?",
    "Which towns along the way have castles worth a visit?",
    "How long are the daily stages if I ride about 60 km a day?",
    "What should I pack for rain?",
    "Can you suggest a vegetarian dish to try in each region?",
    "How do I get back to Paris by train with a bicycle?",
    "What is a good budget per day for food and lodging?",
    "Summarize the whole plan in five bullet points.",
    "Which of these days would you skip if I only had five days?",
    "Thanks. One last thing: what is the best month to go?",
]


def start(prefix_cache_mb: float, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "paperclub.cli", "serve", "--port", str(port), "--prefix-cache-mb",
           str(prefix_cache_mb)]
    process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the server did not start: {log.read_text()[-2000:]}")


def conversation(url: str, turns: int, max_tokens: int, opening: str) -> list[dict]:
    messages: list[dict[str, str]] = []
    out = []
    with httpx.Client(timeout=600) as http:
        model = http.get(f"{url}/v1/models").json()["data"][0]["id"]
        for turn in range(turns):
            messages.append({"role": "user", "content": (opening + " " if turn == 0 else "") + QUESTIONS[turn]})
            body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            t0, ttft, reply, usage = time.perf_counter(), None, [], None
            with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for c in chunk.get("choices", []):
                        if c["delta"].get("content"):
                            ttft = ttft if ttft is not None else time.perf_counter() - t0
                            reply.append(c["delta"]["content"])
            messages.append({"role": "assistant", "content": "".join(reply)})
            out.append({"turn": turn + 1, "ttft_s": ttft, "prompt_tokens": usage["prompt_tokens"],
                        "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"], "reply": "".join(reply)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--conversations", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/serve/multiturn.json")
    args = ap.parse_args()
    if not 1 <= args.turns <= len(QUESTIONS):
        raise SystemExit(f"--turns must be in 1..{len(QUESTIONS)}")
    log_dir = Path(args.out).with_suffix("").parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    servers = {name: start(mb, log_dir / f"multiturn_{name}.log") for name, mb in (("cache", 64), ("no_cache", 0))}
    for _, url in servers.values():  # the first request packs the CPU kernels' weights: keep it out of the timings
        conversation(url, 1, 4, "(Warm-up.)")
    result = {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "settings": vars(args), "runs": {}}
    try:
        for i in range(args.conversations):
            opening = f"(Conversation {i + 1}.)"  # a different first message each time: nothing carries over
            for name, (_, url) in servers.items():
                result["runs"].setdefault(name, []).append(conversation(url, args.turns, args.max_tokens, opening))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(60)
    for name, convs in result["runs"].items():
        per_turn = [statistics.median(c[t]["ttft_s"] for c in convs) for t in range(args.turns)]
        tokens = [convs[0][t]["prompt_tokens"] for t in range(args.turns)]
        cached = [convs[0][t]["cached_tokens"] for t in range(args.turns)]
        result.setdefault("median_ttft_s", {})[name] = per_turn
        print(f"{name:9s} TTFT (s) per turn: " + " ".join(f"{x:.3f}" for x in per_turn))
        print(f"{'':9s} prompt tokens: {tokens}, cached: {cached}")
    same = all(a["reply"] == b["reply"] for ca, cb in zip(result["runs"]["cache"], result["runs"]["no_cache"],
                                                          strict=True) for a, b in zip(ca, cb, strict=True))
    result["replies_identical"] = same
    print(f"replies identical with and without the cache: {same}")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
