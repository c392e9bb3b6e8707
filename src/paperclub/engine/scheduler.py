"""The engine loop: schedule -> run the decoder -> post-process, with continuous batching.

New requests join between steps (their prompts are prefilled together, ragged; with AR on the compiled CPU
kernels in the same forward as the running sequences' next tokens), finished ones leave and give their cache
slot back. What one decode step does is the decoder's business (`decoder.py`: AR; speculative decoding and SSD
in `paperclub.speculative`): it returns, for every running sequence, the tokens it produced.
Post-processing applies stop conditions token by token, so a decoder may emit several tokens at once.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections import deque
from dataclasses import dataclass

from paperclub.engine.decoder import Decoder
from paperclub.engine.sampling import SamplingParams
from paperclub.engine.sequence import Sequence, Status
from paperclub.errors import DraftLost, UserError

log = logging.getLogger(__name__)


def trim_heap() -> None:
    """Ask glibc to return free heap pages to the OS (freed KV tensors below the mmap threshold stay otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# KV positions reserved beyond a sequence's current length: the cache grows as sequences do (doubling), so a
# request asking for the whole context does not take memory for it up front
RESERVE_AHEAD = 256


@dataclass
class EngineConfig:
    max_num_seqs: int = 16
    prefill_token_budget: int = 4096  # prompt tokens prefilled together in one step
    draft_fallback: bool = False  # on a lost draft, go on without it (AR) instead of failing the requests

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise UserError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")


class Engine:
    def __init__(self, decoder: Decoder, tokenizer=None, eos_token_ids=(), config: EngineConfig | None = None):
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.eos_token_ids = set(eos_token_ids)
        self.config = config or EngineConfig()
        self.max_len = decoder.runner.max_positions
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.draft_fallbacks = 0  # times a lost draft was replaced by decoding without it

    def check_prompt(self, prompt_ids: list[int]) -> None:
        """Raise a UserError if the engine cannot take this prompt (empty, ids outside the vocabulary, too long)."""
        if not prompt_ids:
            raise UserError("the prompt is empty: give at least one token of text")
        vocab = self.decoder.runner.cfg.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise UserError(f"prompt token ids must be in [0, {vocab}): the prompt does not fit this model")
        room = self.max_len - self.decoder.lookahead - 1
        if len(prompt_ids) > room:
            raise UserError(
                f"the prompt has {len(prompt_ids)} tokens but the context window allows {room}: shorten the prompt"
            )

    def room_for(self, prompt_len: int) -> int:
        """How many tokens a prompt of `prompt_len` tokens leaves room to generate."""
        return max(0, self.max_len - self.decoder.lookahead - prompt_len)

    def add_request(self, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        self.check_prompt(prompt_ids)
        seq = Sequence(list(prompt_ids), params)
        if self.tokenizer is not None:
            seq.detokenizer = self.tokenizer.stream_decoder(skip_special_tokens=True)
        self.waiting.append(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        """Drop a request wherever it is; its cache slot is given back."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
            self.decoder.release(seq)
        seq.status, seq.finish_reason = Status.FINISHED, seq.finish_reason or "abort"

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def release_memory(self) -> None:
        """When nothing is running, free the KV caches (they grew for the busiest moment) and return the freed
        heap to the OS. CUDA caches stay: their CUDA graphs hold the tensors' addresses."""
        if self.has_unfinished():
            return
        freed = False
        for runner in (self.decoder.runner, getattr(getattr(self.decoder, "proposer", None), "runner", None)):
            if runner is not None and runner.device.type == "cpu":
                freed |= runner.cache.reset()
        if freed:
            trim_heap()

    def step(self) -> list[Sequence]:
        """One engine step. Returns the sequences that received tokens (finished ones included)."""
        batch = self._schedule_prefill()
        if batch:
            self._reserve(self.running + batch)
            # AR on the compiled CPU kernels runs the new prompts and the running sequences' next tokens in one
            # forward (`prefill_and_step`); elsewhere the new prompts run alone, the running sequences waiting a step
            mixes = self.running and getattr(self.decoder, "mixes_prefill", lambda: False)()
            running = list(self.running) if mixes else []
            if running:
                new_tokens = self.decoder.prefill_and_step(batch, running)
            else:
                new_tokens = self._run_decoder("prefill", batch)
            now = time.perf_counter()
            for s in batch:
                s.status, s.t_first_token = Status.RUNNING, now
            self.running += batch
            batch = batch + running
        else:
            batch = list(self.running)
            self._reserve(batch)
            new_tokens = self._run_decoder("step", batch)
        for seq, tokens in zip(batch, new_tokens, strict=True):
            self._append(seq, tokens)
        for seq in batch:
            if seq.finished:
                self.running.remove(seq)
                self.decoder.release(seq)
        return batch

    def _schedule_prefill(self) -> list[Sequence]:
        batch: list[Sequence] = []
        budget = self.config.prefill_token_budget
        while self.waiting and len(self.running) + len(batch) < self.config.max_num_seqs:
            n = len(self.waiting[0].prompt_ids)
            if batch and n > budget:
                break
            budget -= n
            batch.append(self.waiting.popleft())
        return batch

    def _run_decoder(self, method: str, batch: list[Sequence]) -> list[list[int]]:
        try:
            return getattr(self.decoder, method)(batch)
        except DraftLost as e:
            fallback = getattr(self.decoder, "fallback", None)
            if not self.config.draft_fallback or fallback is None:
                raise
            log.warning("%s Going on without the draft for the %d running requests.", e, len(batch))
            self.decoder = fallback()
            self.draft_fallbacks += 1
            return getattr(self.decoder, method)(batch)

    def _reserve(self, seqs: list[Sequence]) -> None:
        """Cache room for the sequences' next RESERVE_AHEAD tokens (or up to their max_tokens, if fewer)."""
        ahead = max(s.length + min(RESERVE_AHEAD, s.params.max_tokens - len(s.output_ids)) for s in seqs)
        need = ahead + self.decoder.lookahead + 1
        self.decoder.runner.reserve(len(seqs), min(need, self.max_len))

    def _append(self, seq: Sequence, tokens: list[int]) -> None:
        params = seq.params
        for token in tokens:
            seq.output_ids.append(token)
            if seq.detokenizer is not None:
                delta = seq.detokenizer.push(token)
                seq.text += delta
                if params.stop and self._hit_stop_string(seq, len(delta)):
                    self._finish(seq, "stop", flush=False)  # the text is already cut at the stop string
                    return
            if (token in self.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
                self._finish(seq, "stop")
                return
            if len(seq.output_ids) >= params.max_tokens:
                self._finish(seq, "length")
                return
            if seq.length + self.decoder.lookahead >= self.max_len:
                self._finish(seq, "context")  # the context window is full before max_tokens
                return

    @staticmethod
    def _hit_stop_string(seq: Sequence, delta_len: int) -> bool:
        longest = max(len(s) for s in seq.params.stop)
        start = max(0, len(seq.text) - delta_len - longest + 1)
        hits = [i for s in seq.params.stop if (i := seq.text.find(s, start)) >= 0]
        if hits:
            seq.text = seq.text[: min(hits)]
            return True
        return False

    def _finish(self, seq: Sequence, reason: str, flush: bool = True) -> None:
        seq.status, seq.finish_reason, seq.t_finish = Status.FINISHED, reason, time.perf_counter()
        del seq.logprobs[len(seq.output_ids):]  # a decoder may have emitted tokens past the stop
        if flush and seq.detokenizer is not None:
            seq.text += seq.detokenizer.flush()
