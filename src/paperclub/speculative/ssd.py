"""Speculative Speculative Decoding (SSD), target side: verification never waits for drafting on a cache hit.

The draft runs in its own process (`draft_worker.py`) and, while the target verifies round t, prepares round
t + 1 for every outcome it bets on. One round here, for the running batch:

    1. send each sequence's outcome (k accepted, bonus token) of the previous round, plus sequences that left;
    2. receive per sequence K draft tokens (+ draft distributions when sampling) — from the draft's speculation
       cache on a hit, from the miss fallback otherwise (``jit``: drafted now; ``fast``: no tokens);
    3. verify with the lossless rule (`speculative.judge`) in one target forward over [bonus, d_1..d_K]; rows
       the fast fallback left without drafts just take the target's next token.

Exactness does not depend on hits: whatever the draft sends was sampled from the q it sends with it, and the
target's uniforms are its own. Metrics go to `seq.stats` (per request) and `SSDDecoder.stats` (aggregate).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import weakref
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from paperclub.engine.decoder import ARDecoder, prefill_sequences
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import next_tokens, record_logprobs
from paperclub.engine.sequence import Sequence
from paperclub.errors import DraftLost, UserError
from paperclub.speculative import metrics as spec_metrics
from paperclub.speculative.config import SSDConfig
from paperclub.speculative.draft_worker import draft_process_main
from paperclub.speculative.transport import TARGET, Channel, TransportError
from paperclub.speculative.verify import judge

log = logging.getLogger(__name__)

# SSD's own counters, beside the speculative ones of `speculative.metrics`
COUNTERS = ("hits", "misses", "fallback_jit", "fallback_fast", "wait_s", "hidden_s")


class SSDDecoder:
    """SSD as an engine decoder. Use as a context manager or call `close()`; the draft process is also shut
    down when the decoder is garbage-collected or the interpreter exits."""

    def __init__(self, target: ModelRunner, draft_dir: str | Path, target_dir: str | Path | None = None,
                 config: SSDConfig | None = None):
        self.runner = target
        self.config = config or SSDConfig()
        self.k = self.config.k
        # the draft writes glue and branch tokens up to 2K positions past a sequence's length
        self.lookahead = 2 * self.k + 1
        self.stats: dict = dict.fromkeys(COUNTERS, 0.0) | spec_metrics.new_counters()
        self._outcome: dict[int, tuple[int, int]] = {}  # request id -> (k accepted, bonus) of its last round
        self._finished: list[int] = []
        self._error: str | None = None
        self.target_threads = self.config.target_threads_for(available_cores(), torch.get_num_threads())
        if self.target_threads is not None:
            log.info("SSD: the target steps with %d torch threads, the draft process with %d",
                     self.target_threads, self.config.draft_threads)
        _LIVE.add(self)  # before the draft starts: a Ctrl-C during its start-up must find it to kill
        self._start_draft(Path(draft_dir), target_dir)

    # ---- the Decoder protocol ---------------------------------------------------------------------------------

    def prefill(self, seqs: list[Sequence]) -> list[list[int]]:
        with torch_threads(self.target_threads):
            return self._prefill(seqs)

    def step(self, seqs: list[Sequence]) -> list[list[int]]:
        with torch_threads(self.target_threads):
            return self._step(seqs)

    def _prefill(self, seqs: list[Sequence]) -> list[list[int]]:
        self._check_alive()
        # the draft prefills the prompts and speculates on the first token while the target prefills
        new = [{"id": s.request_id, "prompt": s.prompt_ids, "params": s.params, "seed": _draft_seed(s)}
               for s in seqs]
        self._send({"kind": "add", "seqs": new, "finished": self._take_finished()})
        # (after the send: a lost draft leaves no slot behind for the fallback to take over)
        logits = prefill_sequences(self.runner, seqs)
        for s in seqs:
            s.stats.update(dict.fromkeys(COUNTERS, 0.0) | spec_metrics.new_counters())
        first = next_tokens(logits, [s.params for s in seqs], [s.generator for s in seqs]).tolist()
        for s, t in zip(seqs, first, strict=True):
            self._outcome[s.request_id] = (0, t)
        emitted = [[t] for t in first]
        record_logprobs(seqs, logits, emitted)
        return emitted

    def _step(self, seqs: list[Sequence]) -> list[list[int]]:
        self._check_alive()
        # 1-2. outcomes out, drafts in
        fallback = self.config.fallback_for(len(seqs))
        outcomes = [(s.request_id, *self._outcome[s.request_id]) for s in seqs]
        t_send = time.monotonic()
        self._send({"kind": "step", "outcomes": outcomes, "fallback": fallback, "finished": self._take_finished(),
                    "t_send": t_send}, answered=True)
        answer, tensors = self._recv(self.config.recv_timeout_s)
        waited = time.monotonic() - t_send
        timing = answer["timing"]
        hidden = max(0.0, timing["build_s"] - max(0.0, timing["build_end"] - t_send))
        rows = answer["rows"]
        q_rows = iter(tensors[0]) if tensors else iter(())
        q_of = {r["id"]: next(q_rows) for r in rows if r["has_q"]}
        # 3. verify
        chunks = [[s.output_ids[-1]] + r["tokens"] for s, r in zip(seqs, rows, strict=True)]
        logits = self.runner.append([s.slot for s in seqs], [s.num_cached for s in seqs], chunks, False)
        num_accepted, next_token = [0] * len(seqs), [0] * len(seqs)
        drafted = [i for i, r in enumerate(rows) if r["tokens"]]
        bare = [i for i, r in enumerate(rows) if not r["tokens"]]
        if drafted:
            d_seqs = [seqs[i] for i in drafted]
            draft = torch.tensor([rows[i]["tokens"] for i in drafted], device=logits.device)
            q = self._draft_probs(d_seqs, draft, q_of, logits.shape[-1])
            verdict = judge(d_seqs, draft, q, logits[drafted, : self.k + 1])
            for i, n, t in zip(drafted, verdict.num_accepted, verdict.next_token, strict=True):
                num_accepted[i], next_token[i] = n, t
        if bare:
            b_seqs = [seqs[i] for i in bare]
            tokens = next_tokens(logits[bare, 0], [s.params for s in b_seqs], [s.generator for s in b_seqs])
            for i, t in zip(bare, tokens.tolist(), strict=True):
                next_token[i] = t
        # bookkeeping
        emitted = []
        for s, r, n, t in zip(seqs, rows, num_accepted, next_token, strict=True):
            s.num_cached += 1 + n
            self._outcome[s.request_id] = (n, t)
            emitted.append(r["tokens"][:n] + [t])
            self._count(s.stats, [r], [n], waited, hidden)
            if timing["fanout"] is not None:  # the F the adaptive fan-out ran this round
                s.stats["adaptive_fanout"] = timing["fanout"]
        self._count(self.stats, rows, num_accepted, waited, hidden)
        if timing["fanout"] is not None:
            self.stats["adaptive_fanout"] = timing["fanout"]
        record_logprobs(seqs, logits, emitted)
        return emitted

    def fallback(self) -> ARDecoder:
        """A decoder that carries on without the draft: AR over the same target runner and cache. Every running
        sequence is in the state AR expects (its last token not yet in the cache) because a lost draft is noticed
        before the target's forward of a round."""
        return ARDecoder(self.runner)

    def release(self, seq: Sequence) -> None:
        self.runner.release(seq.slot, seq.all_ids[: seq.num_cached])
        self._outcome.pop(seq.request_id, None)
        self._finished.append(seq.request_id)

    # ---- metrics ------------------------------------------------------------------------------------------------

    def _count(self, stats: dict, rows: list[dict], accepted: list[int], waited: float, hidden: float) -> None:
        for r, n in zip(rows, accepted, strict=True):
            spec_metrics.count_draft(stats, len(r["tokens"]), n)
        stats["hits"] += sum(r["hit"] for r in rows)
        stats["misses"] += sum(not r["hit"] for r in rows)
        stats["fallback_jit"] += sum(r["fallback"] == "jit" for r in rows)
        stats["fallback_fast"] += sum(r["fallback"] == "fast" for r in rows)
        stats["wait_s"] += waited
        stats["hidden_s"] += hidden
        stats["cache_hit_rate"] = stats["hits"] / (stats["hits"] + stats["misses"])

    # ---- helpers ----------------------------------------------------------------------------------------------

    @staticmethod
    def _draft_probs(seqs: list[Sequence], draft: torch.Tensor, q_of: dict[int, torch.Tensor], V: int):
        """(B, K, V) q for verification, or None when every row is greedy; a greedy row's q is one-hot at its
        draft tokens (the rule then accepts exactly the target's argmax)."""
        if all(s.params.greedy for s in seqs):
            return None
        q = torch.nn.functional.one_hot(draft, V).float()
        for i, s in enumerate(seqs):
            if s.request_id in q_of:
                q[i] = q_of[s.request_id].to(q.device)
        return q

    def _take_finished(self) -> list[int]:
        out, self._finished = self._finished, []
        return out

    # ---- the draft process ------------------------------------------------------------------------------------

    def _start_draft(self, draft_dir: Path, target_dir: str | Path | None) -> None:
        cfg = self.config
        if not draft_dir.is_dir():
            raise UserError(f"draft model directory {draft_dir} does not exist: pass --draft DIR of a saved model")
        self._store = dist.TCPStore("127.0.0.1", 0, 2, True, timeout=timedelta(seconds=cfg.startup_timeout_s),
                                    wait_for_workers=False)
        ctx = mp.get_context("spawn")
        self.process = ctx.Process(
            target=draft_process_main, name="paperclub-ssd-draft", daemon=True,
            args=(self._store.port, str(draft_dir), None if target_dir is None else str(target_dir), cfg,
                  self.runner.max_positions),
        )
        self.channel: Channel | None = None
        # "clean" is False from the moment a message goes out until the exchange it starts is over: an interrupt
        # (Ctrl-C) in between leaves half a message or an unread answer on the channel, and the draft is then
        # stopped by force at shutdown, since it would read a polite "stop" as the rest of that message
        self._link = {"clean": True}
        with _sigint_deferred():  # a Ctrl-C here would leave the child half its start-up data (see below)
            self.process.start()
            # until the channel is up there is nobody to say "stop" to: a draft stopped in start-up is killed at once
            self._finalizer = weakref.finalize(self, _shutdown, self.process, None, False)
        deadline = time.monotonic() + cfg.startup_timeout_s
        self._await_draft("draft_up", deadline)
        self.channel = Channel.connect(self._store, TARGET, timedelta(seconds=cfg.startup_timeout_s))
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shutdown, self.process, self.channel, True, self._link)
        # the draft loads its model now (seconds): wait on the store, in Python, where Ctrl-C can interrupt; a
        # gloo receive blocks in C++, where no signal handler runs until the message comes
        self._link["clean"] = False  # until "ready" is read, the draft is not listening for a polite "stop"
        self._await_draft("draft_answers", deadline)
        ready, _ = self._recv(max(1.0, deadline - time.monotonic()))
        if ready["vocab_size"] != self.runner.cfg.vocab_size:
            self._fail(f"the draft's vocabulary has {ready['vocab_size']} tokens but the target's has "
                       f"{self.runner.cfg.vocab_size}: pick a draft model with the target's tokenizer")
        if ready["max_position_embeddings"] < self.runner.max_positions:
            self._fail(f"the draft supports {ready['max_position_embeddings']} positions but the target runs with "
                       f"{self.runner.max_positions}: lower the context length or pick another draft")
        log.info("SSD draft process %d ready (k=%d, fanout=%s)", self.process.pid, cfg.k, cfg.fanout)

    def _await_draft(self, key: str, deadline: float) -> None:
        """Poll the store until the draft process sets `key`; fail if it dies or the start-up time runs out."""
        while not self._store.check([key]):
            if not self.process.is_alive():
                hint = ""
                if getattr(sys.modules.get("__main__"), "__file__", None):  # run from a script: the usual cause
                    hint = (" (the draft process is spawned and imports the main script: start SSD under "
                            "`if __name__ == \"__main__\":`)")
                self._fail(f"the draft process exited during start-up (exit code {self.process.exitcode}){hint}")
            if time.monotonic() > deadline:
                self._fail(f"the draft process did not start within {self.config.startup_timeout_s:.0f} s")
            time.sleep(0.02)

    def _send(self, msg: dict, answered: bool = False) -> None:
        """Send one message; `answered`: the exchange ends with the answer `_recv` reads."""
        self._link["clean"] = False
        try:
            self.channel.send(msg, timeout_s=self.config.recv_timeout_s)
        except TransportError as e:
            self._lost(e, self.config.recv_timeout_s)
        self._link["clean"] = not answered

    def _recv(self, timeout_s: float) -> tuple[dict, list[torch.Tensor]]:
        self._link["clean"] = False
        try:
            msg, tensors = self.channel.recv(timeout_s)
        except TransportError as e:
            self._lost(e, timeout_s)
        self._link["clean"] = True
        if msg["kind"] == "error":
            self._fail(f"the draft process failed: {msg['message']}")
        return msg, tensors

    def _lost(self, e: TransportError, timeout_s: float) -> None:
        self.process.join(timeout=0.2)  # a killed process needs a moment to be reported dead
        if self.process.is_alive():
            self._fail(f"lost the draft process: no answer within {timeout_s:g} s ({e})")
        self._fail(f"lost the draft process: it died (exit code {self.process.exitcode}) ({e})")

    def _fail(self, why: str) -> None:
        self._error = why
        self._finalizer.detach()
        _shutdown(self.process, self.channel, polite=False)
        raise DraftLost(f"SSD: {why}. The request cannot continue; rerun, or use --mode ar.")

    def _check_alive(self) -> None:
        if self._error is not None:
            raise DraftLost(f"SSD: the draft process is gone ({self._error}); create a new engine")

    def close(self, force: bool = False) -> None:
        """Stop the draft process (politely, then by force; `force`: kill it at once) and tear the process group
        down. Idempotent."""
        if not hasattr(self, "_finalizer"):  # interrupted before the draft process was started
            return
        if force and self._finalizer.alive:
            self._finalizer.detach()
            _shutdown(self.process, self.channel, polite=False)
        self._finalizer()
        if self._error is None:
            self._error = "closed"

    def __enter__(self) -> SSDDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_LIVE: weakref.WeakSet[SSDDecoder] = weakref.WeakSet()


def kill_drafts() -> None:
    """Kill every live draft process now: on Ctrl-C nothing of theirs is worth waiting for (a polite stop, with the
    draft's teardown, took over 5 s on a loaded 2-core machine)."""
    for decoder in list(_LIVE):
        decoder.close(force=True)


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch threads (None: as they are), then restore the count: the target's steps run
    beside the draft process without sharing its cores, and anything else in this process keeps its threads."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) until the block is done, then raise it. `Process.start()` forks the child and then
    writes the child's start-up data into a pipe; a KeyboardInterrupt between the two left the child reading a
    short pipe, and it printed "EOFError: Ran out of input" with a traceback. Masking the signal in this thread is
    not enough (the kernel hands it to another thread, and Python raises it in the main thread all the same), so
    the Python-level handler is swapped for one that only takes note. Outside the main thread: a plain block."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def _shutdown(process, channel: Channel | None, polite: bool = True, link: dict | None = None) -> None:
    if link is not None and not link["clean"]:
        polite = False  # interrupted mid-exchange: see SSDDecoder._link
    if not polite:
        process.kill()
    elif channel is not None and process.is_alive():
        try:
            channel.send({"kind": "stop"}, timeout_s=2.0)  # never the connection's long default timeout
        except TransportError:
            pass
    # after "stop" the draft tears down its process group and interpreter: well under a second on an idle machine,
    # but it once took over 2 s on a loaded 2-core one, so it gets a generous grace period before SIGTERM
    process.join(timeout=10.0 if polite else 2.0)
    if process.is_alive():
        process.terminate()
        process.join(timeout=2.0)
    if process.is_alive():
        process.kill()
        process.join()
    if channel is not None:
        channel.close()


def _draft_seed(seq: Sequence) -> int:
    """The draft's random stream for a request: derived from the request's seed but never equal to the target's
    (correlated draft and acceptance uniforms would break exactness)."""
    if seq.params.seed is None:
        return int(torch.randint(0, 2**62, ()).item())
    return (seq.params.seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**62
