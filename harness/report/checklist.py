"""ShrinkBench's reporting checklist, checked against what one benchmark actually holds.

Blalock et al. (2020) found that most pruning papers cannot be compared with each other; these are
their recommendations, made mechanical so a report says plainly what is still missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.report.data import MANY_CLASSES, many_classes

MIN_PAIRS = 3
MIN_POINTS = 5
MIN_SEEDS = 3
SPAN = (2.0, 32.0)
SPAN_SLACK = math.sqrt(2)  # half an octave: a point at 2.5x still counts as reaching 2x
BASELINES = ("magnitude", "random")  # method names containing these count as the baselines
LISTED = 6  # shortcomings named in a detail before "and N more"


@dataclass(frozen=True)
class Check:
    item: str
    passed: bool | None  # None: does not apply to this benchmark
    detail: str


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


def checklist(cells: pd.DataFrame, points: pd.DataFrame) -> list[Check]:
    """The checklist for one benchmark: its cells (one summary row each, see :mod:`harness.report.data`)
    and operating points (``points``)."""
    ok = cells[cells["ok_rows"] > 0]  # cells with a finished level
    pairs = sorted({(d, m) for d, m in zip(points["dataset"], points["model"], strict=True)})
    names = [f"{d}/{m}" for d, m in pairs]
    by_pair = {pair: group for pair, group in points.groupby(["dataset", "model"])}
    checks = [
        Check(
            f"at least {MIN_PAIRS} data set × model pairs",
            len(pairs) >= MIN_PAIRS,
            f"{len(pairs)}: {_listing(names)}" if pairs else "no pair has a finished cell",
        )
    ]

    few_points = [
        f"{d}/{m} {series} ({n})"
        for (d, m, series), n in points.groupby(["dataset", "model", "series"]).size().items()
        if n < MIN_POINTS
    ]
    checks.append(
        Check(
            f"at least {MIN_POINTS} operating points per method",
            bool(pairs) and not few_points,
            f"too few: {_listing(few_points)}" if few_points else "every method has enough",
        )
    )

    seeds = points["seeds"] if len(points) else pd.Series([0])
    checks.append(
        Check(
            f"mean ± std over at least {MIN_SEEDS} seeds",
            int(seeds.min()) >= MIN_SEEDS,
            f"seeds per operating point: {int(seeds.min())} to {int(seeds.max())}",
        )
    )

    short = []
    for (d, m), group in by_pair.items():
        lo, hi = group["compression_ratio_mean"].min(), group["compression_ratio_mean"].max()
        if not (lo <= SPAN[0] * SPAN_SLACK and hi >= SPAN[1] / SPAN_SLACK):
            short.append(f"{d}/{m} ({lo:.3g}×–{hi:.3g}×)")
    checks.append(
        Check(
            f"operating points span compression {SPAN[0]:g}×–{SPAN[1]:g}×",
            bool(pairs) and not short,
            f"short of it: {_listing(short)}" if short else "every pair spans it",
        )
    )

    missing = [c for c in ("compression_ratio", "theoretical_speedup") if ok.empty or ok[f"{c}_missing"].any()]
    checks.append(
        Check(
            "both compression ratio and theoretical speedup",
            not missing,
            f"missing on some rows: {', '.join(missing)}" if missing else "on every row",
        )
    )

    no_dense = [f"{d}/{m}" for (d, m), g in ok.groupby(["dataset", "model"]) if not g["dense_rows"].any()]
    checks.append(
        Check(
            "the dense baseline's absolute accuracy, size and FLOPs",
            bool(pairs) and not no_dense,
            f"missing for {_listing(no_dense)}" if no_dense else "reported for every pair",
        )
    )

    many = [(d, m) for d, m in pairs if many_classes(d)]
    no_top5 = [f"{d}/{m}" for d, m in many if by_pair[(d, m)]["top5_mean"].isna().all()]
    checks.append(
        Check(
            f"top-5 on data sets with ≥ {MANY_CLASSES} classes",
            None if not many else not no_top5,
            "no such data set here" if not many else (f"missing for {_listing(no_top5)}" if no_top5 else "reported"),
        )
    )

    lacking = []
    for (d, m), group in ok.groupby(["dataset", "model"]):
        absent = [b for b in BASELINES if not group["method"].str.contains(b, regex=False).any()]
        if absent:
            lacking.append(f"{d}/{m} lacks {' and '.join(absent)}")
    checks.append(
        Check(
            "magnitude and random pruning as baselines",
            bool(pairs) and not lacking,
            _listing(lacking) if lacking else "present for every pair",
        )
    )

    # not ShrinkBench's: a point where a layer is (nearly) gone measures a broken network, not a method
    recorded = int(ok["collapse_recorded"].sum())  # finished rows that say whether a layer collapsed
    where = sorted(
        {f"{r.dataset}/{r.model} {r.method} at {sparsity:g}" for r in ok.itertuples() for sparsity in r.collapsed_at}
    )
    checks.append(
        Check(
            "no layer collapse (a layer ≥ 99 % pruned)",
            None if not recorded else not where,
            f"collapsed: {_listing(where)}" if where else ("no row collapsed" if recorded else "not recorded"),
        )
    )
    return checks
