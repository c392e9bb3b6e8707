"""The one engine loop behind every HTTP request: continuous batching across clients.

The engine (`paperclub.engine.scheduler.Engine`) is single-threaded by design and owns one thread: `paperclub serve`
runs it in the main thread and the HTTP server (uvicorn's event loop) in another, because OpenMP gives each thread
that enters a parallel region a thread team of its own, and a second team beside the main thread's (idle, but
there) made a CPU decode step up to 1.5x slower. `start()` runs it in a thread instead, for embedding.
HTTP handlers, on the asyncio event loop, never touch the engine: they `submit` a request (its prompts already tokenized
and checked) and read `Delta`s from the request's asyncio queue. The loop thread, between two engine steps, adds the
submitted sequences to the running batch (they are prefilled at the next step), aborts those whose client went
away (their KV slots are freed before the next step), steps the engine, and hands each sequence's new tokens to its
client at once (`loop.call_soon_threadsafe`).

    handler -> submit() -> [pending] -> loop thread: engine.add_request -> engine.step() -> Delta -> queue -> SSE

Text sent to a client never contains a stop string: while a sequence runs, the last len(longest stop) - 1
characters are held back, since they may be the start of one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from paperclub.engine.sampling import SamplingParams
from paperclub.engine.scheduler import Engine
from paperclub.engine.sequence import Sequence
from paperclub.errors import UserError
from paperclub.serve.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More sequences in flight than the server admits (`max_num_seqs` running plus `max_queue` waiting)."""


@dataclass
class Delta:
    """What one choice of a request gained in one engine step."""

    index: int  # the choice within its request
    text: str
    token_ids: list[int]
    logprobs: list[dict[str, Any]] | None  # per token: {"token", "logprob", "top": [(token, logprob), ...]}
    finish_reason: str | None = None  # set on the choice's last delta
    prompt_tokens: int = 0
    completion_tokens: int = 0  # generated so far
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    error: str | None = None  # the engine failed this choice


@dataclass
class _Choice:
    stream: RequestStream
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    seq: Sequence | None = None
    sent_tokens: int = 0
    sent_chars: int = 0
    last_emit: float = 0.0
    stats_seen: dict[str, float] = field(default_factory=dict)


class RequestStream:
    """One HTTP request's choices, as the handler sees them: iterate to get their deltas until all finish."""

    def __init__(self, num_choices: int, loop: asyncio.AbstractEventLoop):
        self.queue: asyncio.Queue[Delta] = asyncio.Queue()
        self.loop = loop
        self.num_choices = num_choices
        self.t_arrival = time.perf_counter()
        self.choices: list[_Choice] = []
        self.aborted = False

    def put(self, delta: Delta) -> None:  # called from the engine thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)
        except RuntimeError:  # the event loop has closed (shutdown): nobody is listening any more
            pass

    async def deltas(self) -> AsyncIterator[Delta]:
        open_choices = self.num_choices
        while open_choices:
            delta = await self.queue.get()
            if delta.finish_reason is not None or delta.error is not None:
                open_choices -= 1
            yield delta


class EngineLoop:
    """Owns the engine and its thread. `submit` and `abort` are safe to call from any thread."""

    def __init__(self, engine: Engine, tokenizer, metrics: Metrics, max_queue: int = 256):
        self.engine, self.tokenizer, self.metrics = engine, tokenizer, metrics
        self.capacity = engine.config.max_num_seqs + max_queue
        self._cv = threading.Condition()
        self._pending: list[_Choice] = []
        self._aborts: list[RequestStream] = []
        self._choices: dict[int, _Choice] = {}  # request id of an engine sequence -> its choice
        self._in_flight = 0  # choices submitted and not finished
        self._stop = False
        self._fallbacks_seen = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run the loop in a thread of its own (`run` in the caller's thread is faster on a CPU: see above)."""
        self._thread = threading.Thread(target=self.run, name="paperclub-engine-loop", daemon=True)
        self._thread.start()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the loop after its current step; requests still in flight get an error."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, prompts: list[list[int]], params: list[SamplingParams]) -> RequestStream:
        """Queue one request's choices (prompt i with params i); they join the running batch at the next step."""
        stream = RequestStream(len(prompts), asyncio.get_running_loop())
        stream.choices = [_Choice(stream, i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params, strict=True))]
        with self._cv:
            if self._in_flight + len(prompts) > self.capacity:
                raise QueueFull(f"the server is at capacity ({self.capacity} sequences in flight)")
            self._in_flight += len(prompts)
            self._pending += stream.choices
            self._cv.notify()
        return stream

    def abort(self, stream: RequestStream) -> None:
        """Drop a request whose client went away; its sequences leave the batch before the next step."""
        with self._cv:
            if stream.aborted:
                return
            stream.aborted = True
            self._aborts.append(stream)
            self._cv.notify()

    # -- the loop thread ----------------------------------------------------------------------------------------

    def run(self) -> None:
        """The loop: until `shutdown`, add and abort requests between steps and step while anything is running."""
        while True:
            if not self.engine.has_unfinished():
                self.engine.release_memory()  # idle: the KV cache grew for the busiest moment
            with self._cv:
                while not (self._pending or self._aborts or self.engine.has_unfinished() or self._stop):
                    self._cv.wait(0.5)  # (a timeout lets the main thread run signal handlers)
                if self._stop:
                    break
                pending, self._pending = self._pending, []
                aborts, self._aborts = self._aborts, []
            for stream in aborts:
                self._abort(stream)
            for choice in pending:
                self._add(choice)
            self._gauges()
            if not self.engine.has_unfinished():
                continue
            try:
                batch = self.engine.step()
            except Exception as e:  # a bug, not bad input: fail what is in flight, keep serving
                log.exception("engine step failed")
                self._fail_all(f"the engine failed: {e}")
                continue
            now = time.perf_counter()
            for seq in batch:
                choice = self._choices.get(seq.request_id)
                if choice is not None:
                    self._publish(choice, now)
            self._gauges()
        self._fail_all("the server is shutting down")

    def _add(self, choice: _Choice) -> None:
        if choice.stream.aborted:
            self._done(choice)
            return
        try:
            choice.seq = self.engine.add_request(choice.prompt_ids, choice.params)
        except UserError as e:  # checked by the handler already; a race with a changed engine at most
            self._done(choice)
            choice.stream.put(Delta(choice.index, "", [], None, error=str(e)))
            return
        self._choices[choice.seq.request_id] = choice
        self.metrics.prompt_tokens.inc(len(choice.prompt_ids))

    def _abort(self, stream: RequestStream) -> None:
        for choice in stream.choices:
            if choice.seq is not None and not choice.seq.finished:
                self.engine.abort(choice.seq)
                self._choices.pop(choice.seq.request_id, None)
                self.metrics.request_finished("abort", choice.stream.t_arrival)
                self._done(choice)

    def _done(self, choice: _Choice) -> None:
        with self._cv:
            self._in_flight -= 1

    def _publish(self, choice: _Choice, now: float) -> None:
        seq = choice.seq
        tokens = seq.output_ids[choice.sent_tokens:]
        if not tokens and not seq.finished:
            return
        text = seq.text
        end = len(text)
        if not seq.finished and seq.params.stop:
            end = max(choice.sent_chars, len(text) - max(len(s) for s in seq.params.stop) + 1)
        logprobs = None
        if seq.params.logprobs is not None:
            logprobs = [self._logprob_entry(t, *seq.logprobs[i])
                        for i, t in enumerate(tokens, start=choice.sent_tokens) if i < len(seq.logprobs)]
        finish = None
        if seq.finished:  # OpenAI's vocabulary: a full context window is a "length" stop too
            finish = "length" if seq.finish_reason == "context" else seq.finish_reason
        delta = Delta(choice.index, text[choice.sent_chars:end], list(tokens), logprobs, finish, len(seq.prompt_ids),
                      len(seq.output_ids), seq.cached_prompt_tokens)
        first = choice.sent_tokens == 0
        choice.sent_tokens, choice.sent_chars = len(seq.output_ids), end
        self._observe(choice, now, first, len(tokens))
        if seq.finished:
            self._choices.pop(seq.request_id, None)
            self.metrics.request_finished(seq.finish_reason or "stop", choice.stream.t_arrival)
            self._done(choice)
        choice.stream.put(delta)

    def _logprob_entry(self, token: int, logprob: float, top: list[tuple[int, float]]) -> dict[str, Any]:
        return {"token": self.tokenizer.decode([token]), "logprob": logprob,
                "top": [(self.tokenizer.decode([t]), lp) for t, lp in top]}

    def _observe(self, choice: _Choice, now: float, first: bool, num_tokens: int) -> None:
        m = self.metrics
        if num_tokens:
            m.generation_tokens.inc(num_tokens)
            if first:
                m.time_to_first_token.observe(now - choice.stream.t_arrival)
            else:
                m.inter_token_latency.observe((now - choice.last_emit) / num_tokens)
            choice.last_emit = now
        stats = choice.seq.stats
        if stats:
            m.speculation(stats, choice.stats_seen)
            choice.stats_seen = {k: list(v) if isinstance(v, list) else v for k, v in stats.items()}

    def _gauges(self) -> None:
        self.metrics.running.set(len(self.engine.running))
        self.metrics.waiting.set(len(self.engine.waiting) + len(self._pending))
        pc = self.engine.decoder.runner.prefix_cache
        if pc is not None:
            self.metrics.prefix_cache(pc.stats.queries, pc.stats.hits, pc.nbytes)
        if self.engine.draft_fallbacks > self._fallbacks_seen:
            self.metrics.draft_fallbacks.inc(self.engine.draft_fallbacks - self._fallbacks_seen)
            self._fallbacks_seen = self.engine.draft_fallbacks

    def _fail_all(self, why: str) -> None:
        for choice in list(self._choices.values()):
            if choice.seq is not None and not choice.seq.finished:
                self.engine.abort(choice.seq)
            choice.stream.put(Delta(choice.index, "", [], None, error=why))
            self.metrics.request_finished("error", choice.stream.t_arrival)
            self._done(choice)
        self._choices.clear()
        with self._cv:
            pending, self._pending = self._pending, []
        for choice in pending:
            choice.stream.put(Delta(choice.index, "", [], None, error=why))
            self._done(choice)
