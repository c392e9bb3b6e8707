"""One request as the engine sees it: tokens, where they sit in the KV cache, sampling state, metrics."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from paperclub.engine.sampling import SamplingParams, make_generator
from paperclub.speculative import metrics as spec_metrics

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: str | None = None  # "stop" | "length" (max_tokens) | "context" (window full) | "abort"
    slot: int = -1
    num_cached: int = 0  # tokens whose K/V are in the cache: the runtime's length for this slot
    cached_prompt_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache (not prefilled)
    text: str = ""
    detokenizer: Any = None  # incremental detokenizer (`StreamDecoder`), if the engine has a tokenizer
    generator: torch.Generator = field(init=False)
    t_arrival: float = field(default_factory=time.perf_counter)
    t_first_token: float | None = None
    t_finish: float | None = None
    stats: dict[str, float] = field(default_factory=dict)  # mode-specific counters (rounds, accepted, ...)
    logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)  # per output token

    def __post_init__(self) -> None:
        self.generator = make_generator(self.params.seed)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def metrics(self) -> dict[str, float]:
        end = self.t_finish or time.perf_counter()
        n = len(self.output_ids)
        elapsed = end - self.t_arrival
        out = {
            "prompt_tokens": len(self.prompt_ids),
            "generated_tokens": n,
            "time_to_first_token_s": (self.t_first_token or end) - self.t_arrival,
            "elapsed_s": elapsed,
            "tokens_per_s": n / elapsed if elapsed > 0 else 0.0,
        }
        out.update(self.stats)
        if self.stats.get("num_drafts"):
            out.update(spec_metrics.summary(self.stats))
        return out
