"""The adaptive fan-out: as many speculation branches as the draft can build while the target verifies.

SSD hides the draft's work behind the target's verification only if the cache build ends before the target
sends its next outcome. A wider bet (more bonus candidates per accepted length) raises the hit rate, but once
the build takes longer than a verification, the target waits for it every round. Where that line falls depends
on the hardware: a draft on its own GPU builds 15 branches in a fraction of a verification; a draft sharing a
two-core CPU with the target does not finish even 5 in time. So the branch budget is measured, not set:

* after each build, the cost of one budget unit (one more branch for every sequence in the batch) is
  ``build seconds / branches built * sequences``, smoothed;
* when the target's next outcome arrives, the margin is ``sent - build end``: positive, the draft idled that
  long; negative, the target waited that long for the cache. Smoothed too, since single rounds are noisy;
* a negative margin shrinks the budget by as many units as the lateness costs (at least one), so a late
  draft catches up within a round or two; a margin of more than two units grows it by one, so the budget
  creeps back up when there is room and the two rules do not chase each other.

The budget stays in [K + 1, the config's cap]: at least one candidate for each accepted length.
"""

from __future__ import annotations

import math

from paperclub.ssd.ssd_config import SSDConfig


class FanoutBudget:
    SMOOTH = 0.3  # weight of the newest observation in the moving averages

    def __init__(self, config: SSDConfig):
        self.low, self.high = config.k + 1, config.max_branches
        self.budget = min(self.high, (config.k + 1) * config.fanout_size)  # start where uniform F would be
        self.unit_s: float | None = None  # seconds one more branch per sequence adds to a build
        self.margin_s: float | None = None  # smoothed (outcome sent - build end)

    def built(self, seconds: float, branches: int, sequences: int) -> None:
        """Record one cache build: its wall time, the branches it decoded, for how many sequences."""
        if branches <= 0 or sequences <= 0:
            return
        unit = seconds / branches * sequences
        self.unit_s = unit if self.unit_s is None else (1 - self.SMOOTH) * self.unit_s + self.SMOOTH * unit

    def outcome_arrived(self, margin_s: float) -> int:
        """Record when the target's outcome came relative to the end of the build; returns the new budget."""
        m = margin_s if self.margin_s is None else (1 - self.SMOOTH) * self.margin_s + self.SMOOTH * margin_s
        self.margin_s = m
        if self.unit_s is None or self.unit_s <= 0:
            return self.budget
        if m < 0:
            self.budget = max(self.low, self.budget - max(1, math.ceil(-m / self.unit_s)))
            self.margin_s = 0.0  # the next builds are shorter: judge them afresh
        elif m > 2 * self.unit_s:
            self.budget = min(self.high, self.budget + 1)
        return self.budget
