"""The decoding algorithm an engine step runs, and the simplest one: autoregressive decoding.

The engine loop (`scheduler.py`) does not know how tokens are produced: it hands the running sequences to a
`Decoder` and appends what comes back. AR is here; speculative decoding (SD) and SSD implement the same protocol in
`paperclub.speculative`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import next_tokens, record_logprobs
from paperclub.engine.sequence import Sequence


class Decoder(Protocol):
    """A decoding algorithm. `prefill` returns each new sequence's first token, `step` each running
    sequence's new tokens (one or more); `release` forgets a finished sequence."""

    runner: ModelRunner
    lookahead: int  # cache positions a step may write past a sequence's length

    def prefill(self, seqs: list[Sequence]) -> list[list[int]]: ...

    def step(self, seqs: list[Sequence]) -> list[list[int]]: ...

    def release(self, seq: Sequence) -> None: ...


def prefill_sequences(runner: ModelRunner, seqs: list[Sequence], running: list[Sequence] = (),
                      with_hidden: bool = False):
    """Prefill `seqs` (`ModelRunner.prefill`) and record where each now sits: its slot, its cached length, the
    prompt tokens the prefix cache served. `running` sequences take their next token in the same forward (their
    cached length grows by one). Returns the last-token logits of `seqs`, then of `running` (with `with_hidden`:
    `(logits, hidden)`, hidden (B, T, D) for the computed prompt tokens, those past `s.cached_prompt_tokens`)."""
    slots, hits, logits = runner.prefill(
        [s.prompt_ids for s in seqs],
        ([s.slot for s in running], [s.num_cached for s in running], [[s.output_ids[-1]] for s in running]),
        with_hidden)
    for s, slot, hit in zip(seqs, slots, hits, strict=True):
        s.slot, s.num_cached, s.cached_prompt_tokens = slot, len(s.prompt_ids), hit
    for s in running:
        s.num_cached += 1
    return logits


class ARDecoder:
    """Autoregressive decoding: one target forward per token."""

    lookahead = 1

    def __init__(self, runner: ModelRunner):
        self.runner = runner

    def prefill(self, seqs: list[Sequence]) -> list[list[int]]:
        return self._sample(prefill_sequences(self.runner, seqs), seqs)

    def mixes_prefill(self) -> bool:
        """Whether `prefill_and_step` runs as one forward (where ragged rows are packed without padding)."""
        return self.runner.packs_ragged_rows()

    def prefill_and_step(self, new: list[Sequence], running: list[Sequence]) -> list[list[int]]:
        """`prefill(new)` and `step(running)` in one forward: the weights are read once for both, and the running
        sequences do not stand still while the new ones start. Returns the tokens of `new`, then of `running`."""
        return self._sample(prefill_sequences(self.runner, new, running), new + running)

    def step(self, seqs: list[Sequence]) -> list[list[int]]:
        logits = self.runner.append(
            [s.slot for s in seqs], [s.num_cached for s in seqs], [[s.output_ids[-1]] for s in seqs], True
        )
        for s in seqs:
            s.num_cached += 1
        return self._sample(logits, seqs)

    def release(self, seq: Sequence) -> None:
        self.runner.release(seq.slot, seq.all_ids[: seq.num_cached])

    @staticmethod
    def _sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[list[int]]:
        tokens = next_tokens(logits, [s.params for s in seqs], [s.generator for s in seqs])
        emitted = [[t] for t in tokens.tolist()]
        record_logprobs(seqs, logits, emitted)
        return emitted
