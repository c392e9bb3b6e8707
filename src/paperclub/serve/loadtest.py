"""`paperclub loadtest`: N concurrent streaming chat clients against an OpenAI-compatible server, on loopback.

Phases:
    1. references (greedy only): each distinct prompt is generated alone, one request at a time;
    2. load: N clients stream requests back to back until `duration_s` has passed (or `max_requests` started);
       each records its time to first token, the gaps between chunks and its token count;
    3. check: every greedy response is compared with its prompt's reference: `mismatched` counts those that differ.

The result (also written to `json_path`): requests_ok, requests_failed, mismatched, output_tokens_per_s (tokens of
the load phase over its wall time), ttft_p50_s/ttft_p99_s, itl_p50_s/itl_p99_s (gaps between streamed chunks),
latency percentiles and the settings. Traffic goes to loopback addresses only, bounded in count and time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
from tqdm import tqdm

from paperclub.atomic import check_writable, write_json
from paperclub.device import cpu_model
from paperclub.errors import UserError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 600.0


@dataclass
class LoadTest:
    base_url: str
    concurrency: int
    duration_s: float
    max_tokens: int
    api_key: str | None = None
    model: str | None = None
    prompts_file: str | None = None
    num_prompts: int = 16  # distinct prompts, used in turn (each checked against its reference)
    max_requests: int = 100_000
    temperature: float = 0.0
    ignore_eos: bool = False
    check_greedy: bool = True
    json_path: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        host = urlparse(self.base_url).hostname or ""
        if not is_loopback(host):
            raise UserError(f"--base-url must point at a loopback address (127.0.0.0/8, localhost, ::1), "
                            f"got {host or self.base_url!r}")
        checks = [(self.concurrency >= 1, f"--concurrency must be >= 1, got {self.concurrency}"),
                  (self.duration_s > 0, f"--duration must be > 0 seconds, got {self.duration_s}"),
                  (self.max_tokens >= 1, f"--max-tokens must be >= 1, got {self.max_tokens}"),
                  (self.max_requests >= 1, f"--max-requests must be >= 1, got {self.max_requests}"),
                  (self.num_prompts >= 1, f"num_prompts must be >= 1, got {self.num_prompts}"),
                  (0 <= self.temperature <= 2, f"--temperature must be in [0, 2], got {self.temperature}")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if self.json_path:
            check_writable(self.json_path, "--json")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Outcome:
    prompt: int
    ok: bool
    text: str = ""
    tokens: int = 0
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    latency_s: float = 0.0
    error: str | None = None


def load_prompts(test: LoadTest) -> list[Any]:
    from paperclub.distill.dataset import prompt_set_path
    from paperclub.engine.cli import read_prompts_jsonl

    prompts = read_prompts_jsonl(test.prompts_file or str(prompt_set_path("distill_eval")))
    return [p if isinstance(p, list) else [{"role": "user", "content": p}] for p in prompts[: test.num_prompts]]


class Client:
    def __init__(self, test: LoadTest, http: httpx.AsyncClient, model: str):
        self.test, self.http, self.model = test, http, model
        self.url = test.base_url.rstrip("/") + "/chat/completions"

    async def request(self, index: int, messages: list[dict[str, str]]) -> Outcome:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.test.max_tokens,
                                "temperature": self.test.temperature, "stream": True,
                                "stream_options": {"include_usage": True}}
        if self.test.ignore_eos:
            body["ignore_eos"] = True
        out = Outcome(index, ok=False)
        pieces: list[str] = []
        chunks = 0
        finished = False  # a finish_reason was seen: a stream that ends after it without [DONE] is complete too
        t0 = last = time.perf_counter()
        try:
            async with self.http.stream("POST", self.url, json=body) as r:
                if r.status_code != 200:
                    out.error = f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}"
                    return out
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        out.ok = True
                        break
                    event = json.loads(data)
                    if "error" in event:
                        out.error = event["error"].get("message", "error event")
                        return out
                    if event.get("usage"):
                        out.tokens = event["usage"]["completion_tokens"]
                    for choice in event.get("choices", []):
                        finished = finished or choice.get("finish_reason") is not None
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            now = time.perf_counter()
                            if out.ttft_s is None:
                                out.ttft_s = now - t0
                            else:
                                out.gaps_s.append(now - last)
                            last = now
                            chunks += 1
                            pieces.append(text)
            out.ok = out.ok or finished
            if not out.ok:
                out.error = "the stream ended without a finish_reason"
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            out.error = f"{type(e).__name__}: {e}"
        finally:
            out.latency_s = time.perf_counter() - t0
        out.text = "".join(pieces)
        out.tokens = out.tokens or chunks  # a server without usage in streams: one chunk per token
        if out.ok and out.ttft_s is None:
            out.ttft_s = out.latency_s  # nothing but the end (an immediate EOS)
        return out


async def _model_id(http: httpx.AsyncClient, test: LoadTest) -> str:
    try:
        r = await http.get(test.base_url.rstrip("/") + "/models")
    except httpx.HTTPError as e:
        raise UserError(f"cannot reach the server at {test.base_url}: {e}") from e
    if r.status_code == 401:
        raise UserError("the server wants an API key: pass --api-key")
    if r.status_code != 200:
        raise UserError(f"GET {test.base_url}/models answered HTTP {r.status_code}")
    models = [m["id"] for m in r.json().get("data", [])]
    if test.model is not None:
        return test.model
    if not models:
        raise UserError("the server lists no model: pass --model")
    return models[0]


async def _run(test: LoadTest) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {test.api_key}"} if test.api_key else {}
    limits = httpx.Limits(max_connections=test.concurrency + 4, max_keepalive_connections=test.concurrency + 4)
    async with httpx.AsyncClient(headers=headers, timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
        model = await _model_id(http, test)
        client = Client(test, http, model)
        prompts = load_prompts(test)
        references: dict[int, str] = {}
        if test.greedy and test.check_greedy:
            for i, p in enumerate(tqdm(prompts, desc="references (alone)", disable=not test.progress)):
                ref = await client.request(i, p)
                if not ref.ok:
                    raise UserError(f"the reference request for prompt {i} failed: {ref.error}")
                references[i] = ref.text
        outcomes: list[Outcome] = []
        started = 0
        t_start = time.perf_counter()
        deadline = t_start + test.duration_s
        bar = tqdm(total=round(test.duration_s), desc=f"load x{test.concurrency}", unit="s",
                   disable=not test.progress)

        async def worker() -> None:
            nonlocal started
            while time.perf_counter() < deadline and started < test.max_requests:
                i = started % len(prompts)
                started += 1
                outcomes.append(await client.request(i, prompts[i]))
                elapsed = min(int(time.perf_counter() - t_start), bar.total)
                if elapsed > bar.n:
                    bar.update(elapsed - bar.n)

        await asyncio.gather(*(worker() for _ in range(test.concurrency)))
        wall = time.perf_counter() - t_start
        bar.close()
    return summarize(test, model, outcomes, references, wall)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(test: LoadTest, model: str, outcomes: list[Outcome], references: dict[int, str],
              wall: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    mismatched = [o for o in ok if o.prompt in references and o.text != references[o.prompt]]
    ttft = [o.ttft_s for o in ok if o.ttft_s is not None]
    gaps = [g for o in ok for g in o.gaps_s]
    latency = [o.latency_s for o in ok]
    tokens = sum(o.tokens for o in ok)
    settings = asdict(test)
    settings.pop("api_key")
    return {
        "requests_ok": len(ok),
        "requests_failed": len(outcomes) - len(ok),
        "mismatched": len(mismatched),
        "mismatch_checked": sum(o.prompt in references for o in ok),
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "requests_per_s": len(ok) / wall if wall > 0 else 0.0,
        "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
        "itl_p50_s": _pct(gaps, 50), "itl_p99_s": _pct(gaps, 99),
        "latency_p50_s": _pct(latency, 50), "latency_p99_s": _pct(latency, 99),
        "wall_s": wall,
        "errors": sorted({o.error for o in outcomes if o.error})[:5],
        "model": model,
        "settings": settings,
        "cpu": cpu_model(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def run_loadtest(test: LoadTest) -> dict[str, Any]:
    result = asyncio.run(_run(test))
    if test.json_path:
        write_json(Path(test.json_path), result)
    return result
