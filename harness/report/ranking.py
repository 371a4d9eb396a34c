"""The ranking maths: accuracy at fixed compressions, area under the trade-off curve, the Pareto front.

Compression is compared on a log2 axis (2x → 4x is the same step as 16x → 32x), so interpolation
and area are linear in log2(compression). Nothing is extrapolated: outside the measured range a
method has no value, rather than a made-up one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COMPRESSIONS = (2, 4, 8, 16, 32)  # ShrinkBench's operating points


def _curve(xs: Sequence[float], ys: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """log2(x) ascending with finite values only; points sharing an x are averaged."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    logs, inverse = np.unique(np.log2(x[keep]), return_inverse=True)
    means = np.bincount(inverse, weights=y[keep], minlength=len(logs)) / np.bincount(inverse, minlength=len(logs))
    return logs, means


def interpolate_log2(xs: Sequence[float], ys: Sequence[float], at: float) -> float:
    """y at ``at``, linear in log2(x) between the measured points; NaN outside their range."""
    logs, means = _curve(xs, ys)
    where = math.log2(at)
    if not len(logs) or where < logs[0] - 1e-12 or where > logs[-1] + 1e-12:
        return math.nan
    return float(np.interp(where, logs, means))


def mean_over_log_range(xs: Sequence[float], ys: Sequence[float], lo: float, hi: float) -> float:
    """Area under y(log2 x) between ``lo`` and ``hi`` divided by the width: the mean y over that range.

    NaN when the curve does not cover [lo, hi] or the range is empty.
    """
    logs, means = _curve(xs, ys)
    a, b = math.log2(lo), math.log2(hi)
    if not len(logs) or not b > a or a < logs[0] - 1e-12 or b > logs[-1] + 1e-12:
        return math.nan
    inside = (logs > a) & (logs < b)
    grid = np.concatenate([[a], logs[inside], [b]])
    values = np.interp(grid, logs, means)
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid)) / (b - a))


def common_range(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[float, float] | None:
    """The compression range every curve with at least two distinct points covers (None if empty)."""
    spans = []
    for xs, ys in curves:
        logs, _ = _curve(xs, ys)
        if len(logs) >= 2:
            spans.append((logs[0], logs[-1]))
    if not spans:
        return None
    lo, hi = max(s[0] for s in spans), min(s[1] for s in spans)
    return (2.0**lo, 2.0**hi) if hi > lo else None


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher x and higher y are better),
    ordered by x ascending."""
    order = sorted(
        (i for i in range(len(xs)) if math.isfinite(xs[i]) and math.isfinite(ys[i])), key=lambda i: (-xs[i], -ys[i])
    )
    front, best_y = [], -math.inf
    for i in order:  # from the highest x down: a point is on the front if it beats every y seen so far
        if ys[i] > best_y:
            front.append(i)
            best_y = ys[i]
    return front[::-1]


@dataclass(frozen=True)
class RankedSeries:
    series: str
    at: tuple[float, ...]  # accuracy at each of COMPRESSIONS (NaN outside the measured range)
    area: float  # mean accuracy over the common range (NaN when there is none)


@dataclass(frozen=True)
class Ranking:
    compressions: tuple[float, ...]
    common: tuple[float, float] | None  # the compression range the area is taken over
    rows: list[RankedSeries]  # best first


def rank(curves: dict[str, tuple[Sequence[float], Sequence[float]]], compressions=COMPRESSIONS) -> Ranking:
    """Rank series by their mean accuracy over the compression range all of them cover.

    ``curves`` maps a series to its (compression, accuracy) points. Series without an area (a
    single point, or no common range) come last, in name order.
    """
    common = common_range(list(curves.values()))
    rows = []
    for series, (xs, ys) in curves.items():
        area = mean_over_log_range(xs, ys, *common) if common else math.nan
        rows.append(RankedSeries(series, tuple(interpolate_log2(xs, ys, c) for c in compressions), area))
    rows.sort(key=lambda r: (math.isnan(r.area), -r.area if not math.isnan(r.area) else 0.0, r.series))
    return Ranking(tuple(compressions), common, rows)
