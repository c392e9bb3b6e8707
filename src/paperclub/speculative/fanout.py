"""The adaptive fan-out: pick the number of bonus candidates per accepted length F by timing it on this machine.

A wider bet (larger F) raises the speculation cache's hit rate, so fewer rounds pay for a fallback. It also
makes the cache build longer. The build runs while the target verifies, and that only pays if it is hidden. A
draft on hardware of its own can afford a wide bet. A draft that shares a small CPU with the target finishes
late, so the target waits for it, and it competes with the verification for memory bandwidth. On a 2-core
AMD EPYC, F = 1 decoded 1.2-1.3x faster than F = 3, the fixed default chosen earlier on a Xeon with AMX. No F is
right everywhere, so the draft measures.

The measure is what the user gets: seconds of wall time per emitted token, from the target's own clock. Each
step message carries the time it was sent, and the outcomes of the round that just ended (k accepted plus one
bonus token per sequence). So for consecutive rounds over the same sequences:

    seconds per token = (sent_i - sent_{i-1}) / sum over sequences of (k + 1)

With the jit fallback, a miss drafts the same tokens a hit would have, so F does not change what is emitted,
only how long it takes: there the unit is a sequence-round instead of a token (the same ordering of F, without
the round-to-round noise of the accepted count).

Rounds around a change of batch (a prefill, a finished sequence) are not counted, and neither is the first
round after F changes, because its cache was built under the old F. The schedule:

* sweep: try every F from the configured one down to 1, `window` counted rounds each;
* exploit: run the F with the fewest seconds per token;
* re-probe: every `period` counted rounds, measure the running F's neighbours again, since load changes, and
  move to one only if it is at least 3% faster (noise is not a reason); after a move, probe again after a
  quarter period, so that a move made on a lucky window is undone soon.
A level's score is its seconds over its units, summed over its windows, each older window weighing 0.7x.
"""

from __future__ import annotations

from paperclub.speculative.config import SSDConfig


class AdaptiveFanout:
    KEEP = 0.7  # weight of a level's earlier windows against its newest one
    MARGIN = 0.03  # leave the running F only for one at least this much faster (noise is not a reason)

    def __init__(self, config: SSDConfig, window: int = 16, period: int = 256):
        self.max_level, self.window, self.period = config.fanout_size, window, period
        self._sums: dict[int, list[float]] = {}  # F -> decayed [seconds, units] over its windows
        self.plan = list(range(self.max_level, 0, -1))  # the levels still to measure in this cycle, in order
        self.level = self.plan.pop(0)  # the F of the builds now
        self.choice = self.level  # the F to run between measurement cycles
        self.rounds_at_level = {f: 0 for f in range(1, self.max_level + 1)}
        self._cycle = True  # measuring (the first sweep or a re-probe)
        self._next_probe = period
        self._skip = 0  # rounds not to count (built under the previous F)
        self._seconds, self._tokens, self._n = 0.0, 0, 0
        self._since_probe = 0

    @property
    def scores(self) -> dict[int, float]:
        """Seconds per emitted token (or sequence-round) of each F measured so far."""
        return {f: sec / max(units, 1e-9) for f, (sec, units) in self._sums.items()}

    @property
    def best(self) -> int:
        """The F run between measurement cycles."""
        return self.choice

    def round_done(self, seconds: float, tokens: int) -> int:
        """Record one counted round (wall seconds, tokens it emitted or its unit); returns the F for the next
        build."""
        self.rounds_at_level[self.level] += 1
        if self._skip:
            self._skip -= 1
            return self.level
        self._seconds, self._tokens, self._n = self._seconds + seconds, self._tokens + tokens, self._n + 1
        self._since_probe += 1
        if self._n < self.window:
            return self.level
        sec, units = self._sums.get(self.level, (0.0, 0.0))
        self._sums[self.level] = [self.KEEP * sec + self._seconds, self.KEEP * units + self._tokens]
        self._seconds, self._tokens, self._n = 0.0, 0, 0
        if self.plan:  # the cycle goes on
            self._switch(self.plan.pop(0))
        elif self._cycle:  # the cycle is over: decide, on fresh numbers only (the running F's are always fresh)
            self._cycle, old = False, self.choice
            scores = self.scores
            fastest = min(scores, key=scores.__getitem__)
            if old not in scores or scores[fastest] < (1 - self.MARGIN) * scores[old]:
                self.choice = fastest
            # a switch may have been bad luck in a short window: check it again soon
            self._next_probe = self.period if self.choice == old else self.period // 4
            self._since_probe = 0
            self._switch(self.choice)
        elif self._since_probe >= self._next_probe:  # time to look at the neighbours again
            self.plan = [f for f in (self.choice - 1, self.choice + 1) if 1 <= f <= self.max_level]
            self._cycle = bool(self.plan)
            if self.plan:
                self._switch(self.plan.pop(0))
        return self.level

    def _switch(self, level: int) -> None:
        if level != self.level:
            self.level, self._skip = level, 1
