"""SSD's knobs in one typed config, and the fan-out policies that decide how many bonus tokens to bet on.

After the target verifies a round of K draft tokens, the outcome is (k accepted, bonus token). The draft
bets on F_k bonus candidates for each k = 0..K; the fan-out policy picks the F_k:

* ``uniform``: F_k = F for every k.
* ``geometric``: spread a budget of branches like the outcome probabilities of a draft whose tokens are
  accepted independently with rate alpha (P(k) = alpha^k (1 - alpha) for k < K, P(K) = alpha^K), each F_k
  capped at F and at least 1: likely outcomes get more candidates.
* ``adaptive``: uniform, with F chosen while decoding from 1..``fanout_size`` by the seconds per emitted token
  each value gives on this machine (`adaptive_fanout.AdaptiveFanout`); after a miss, F plus
  (``miss_fanout`` - ``fanout_size``), capped at ``miss_fanout``.
* after a miss, the next round's cache is built with its own fan-out ``miss_fanout`` at every k (a fast
  fallback leaves a single k = 0 position, where the wider bet pays).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paperclub.errors import UserError

FANOUTS = ("uniform", "geometric", "adaptive")
FALLBACKS = ("jit", "fast", "auto")


@dataclass
class SSDConfig:
    k: int = 4  # draft tokens per round
    # "adaptive" (default: times F = 1..fanout_size on this machine and runs the fastest) | "uniform" | "geometric"
    fanout: str = "adaptive"
    fanout_size: int = 3  # F: candidates per k (uniform), the cap per k (geometric), the largest F tried (adaptive)
    geometric_alpha: float = 0.7  # assumed acceptance rate of the geometric policy
    geometric_budget: int = 12  # branches per sequence the geometric policy spreads over k = 0..K
    miss_fanout: int = 4  # candidates per k when building the cache right after a miss
    fallback: str = "auto"  # on a miss: "jit" (draft K tokens now) | "fast" (bonus only) | "auto" (by batch size)
    auto_jit_max_batch: int = 4  # "auto" uses jit up to this many running sequences, fast above
    saguaro_c: float | None = None  # cache-aware sampling: scale the draft's top-F probabilities by C in (0, 1)
    draft_threads: int = 1  # torch threads of the draft process
    # torch threads of the target while SSD runs. None: when the draft runs on the CPU, the cores this process may
    # use minus the draft's threads (at least 1), so that the two processes never share a core; else unchanged.
    # Oversubscribed, OpenMP's barriers stall: on 2 cores, target 2 + draft 1 threads decoded 45 tok/s, 1 + 1 68.
    target_threads: int | None = None
    draft_device: str = "cpu"
    draft_dtype: torch.dtype = torch.float32
    startup_timeout_s: float = 180.0  # draft process start + model load
    recv_timeout_s: float = 30.0  # longest the target waits for one answer before declaring the draft dead

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.k, int) and self.k >= 1, f"k must be an integer >= 1, got {self.k}"),
            (self.fanout in FANOUTS, f"fanout must be one of {FANOUTS}, got {self.fanout!r}"),
            (isinstance(self.fanout_size, int) and self.fanout_size >= 1,
             f"fanout_size must be an integer >= 1, got {self.fanout_size}"),
            (0 < self.geometric_alpha < 1, f"geometric_alpha must be in (0, 1), got {self.geometric_alpha}"),
            (isinstance(self.geometric_budget, int) and self.geometric_budget >= 1,
             f"geometric_budget must be an integer >= 1, got {self.geometric_budget}"),
            (isinstance(self.miss_fanout, int) and self.miss_fanout >= 1,
             f"miss_fanout must be an integer >= 1, got {self.miss_fanout}"),
            (self.fallback in FALLBACKS, f"fallback must be one of {FALLBACKS}, got {self.fallback!r}"),
            (isinstance(self.auto_jit_max_batch, int) and self.auto_jit_max_batch >= 0,
             f"auto_jit_max_batch must be an integer >= 0, got {self.auto_jit_max_batch}"),
            (self.saguaro_c is None or 0 < self.saguaro_c < 1,
             f"saguaro_c must be in (0, 1) (or None for off), got {self.saguaro_c}"),
            (isinstance(self.draft_threads, int) and self.draft_threads >= 1,
             f"draft_threads must be an integer >= 1, got {self.draft_threads}"),
            (self.target_threads is None or (isinstance(self.target_threads, int) and self.target_threads >= 1),
             f"target_threads must be an integer >= 1 (or None for automatic), got {self.target_threads}"),
            (self.startup_timeout_s > 0 and self.recv_timeout_s > 0, "timeouts must be > 0 seconds"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def target_threads_for(self, available: int, current: int) -> int | None:
        """Torch threads for the target given the cores this process may use and its current thread count
        (None: leave them)."""
        if self.target_threads is not None:
            return self.target_threads
        if torch.device(self.draft_device).type != "cpu":
            return None
        return max(1, min(current, available - self.draft_threads))

    def fallback_for(self, batch_size: int) -> str:
        if self.fallback != "auto":
            return self.fallback
        return "jit" if batch_size <= self.auto_jit_max_batch else "fast"

    def fanout_sizes(self, num_spec: int, after_miss: bool, level: int | None = None) -> list[int]:
        """F_k for k = 0..num_spec, for a round that drafted `num_spec` tokens (`level`: the F the adaptive policy
        runs now; None means ``fanout_size``)."""
        if self.fanout == "adaptive":
            f = self.fanout_size if level is None else level
            if after_miss:
                f = max(1, min(self.miss_fanout, f + self.miss_fanout - self.fanout_size))
            return [f] * (num_spec + 1)
        if after_miss:
            return [self.miss_fanout] * (num_spec + 1)
        if self.fanout == "uniform":
            return [self.fanout_size] * (num_spec + 1)
        a = self.geometric_alpha
        weights = [a**k * (1 - a) for k in range(num_spec)] + [a**num_spec]
        return [min(self.fanout_size, max(1, round(self.geometric_budget * w))) for w in weights]

    @property
    def max_branches(self) -> int:
        """The most branches one sequence's cache build can hold (sizes the draft's KV cache)."""
        return (self.k + 1) * max(self.fanout_size, self.miss_fanout)
