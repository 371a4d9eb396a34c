"""The one statistical rule every claim uses: a 95 % Student t-interval of a mean difference over seeds.

Differences are paired by seed (the same dense model, data split and pruning seed on both sides), so
the interval measures how much the difference itself varies from seed to seed. A claim is decided
only when the whole interval sits on one side of its threshold; with fewer than ``MIN_SEEDS`` pairs,
or an interval across the threshold, the answer is "not enough data".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import stats

MIN_SEEDS = 3
CONFIDENCE = 0.95

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "not enough data"
Verdict = Literal["holds", "does not hold", "not enough data"]


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences with its t-interval over ``n`` seeds."""

    mean: float
    low: float
    high: float
    n: int

    def text(self, scale: float = 100.0, unit: str = " pt") -> str:
        """e.g. ``+12.3 pt [95% CI +10.1, +14.5], n=3``; accuracy differences shown in points by default."""
        return (
            f"{self.mean * scale:+.2f}{unit} [95% CI {self.low * scale:+.2f}, {self.high * scale:+.2f}], "
            f"paired t over {self.n} seeds"
        )


def paired_interval(differences: Sequence[float]) -> Interval | None:
    """The t-interval of the mean of ``differences`` (one per seed), or None with fewer than MIN_SEEDS."""
    values = [float(d) for d in differences if d is not None and math.isfinite(d)]
    n = len(values)
    if n < MIN_SEEDS:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def above(interval: Interval | None, threshold: float = 0.0) -> Verdict:
    """ "a − b > threshold": holds when the interval is above it, fails when it is at or below it."""
    if interval is None:
        return UNDECIDED
    if interval.low > threshold:
        return HOLDS
    if interval.high <= threshold:
        return FAILS
    return UNDECIDED


def below(interval: Interval | None, threshold: float = 0.0) -> Verdict:
    """ "a − b < threshold", the mirror of :func:`above`."""
    if interval is None:
        return UNDECIDED
    if interval.high < threshold:
        return HOLDS
    if interval.low >= threshold:
        return FAILS
    return UNDECIDED


def all_of(verdicts: Sequence[Verdict]) -> Verdict:
    """The parts of one claim: any failure fails it; it holds when every part holds."""
    if FAILS in verdicts:
        return FAILS
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    return UNDECIDED


def across(verdicts: Sequence[Verdict]) -> Verdict:
    """One claim over the settings (benchmark, model, data set) it was checked in: a failure anywhere
    fails it; otherwise it holds where at least one setting decided it (the rest lacked seeds)."""
    if FAILS in verdicts:
        return FAILS
    return HOLDS if HOLDS in verdicts else UNDECIDED
