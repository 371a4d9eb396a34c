"""Reference numbers: the leaderboard of a reference run, shipped as a CSV, and a user's numbers beside it.

``numbers_table`` is the leaderboard (:data:`harness.leaderboard.LEADERBOARD_SQL`, the final level of
every finished cell, mean and sample standard deviation over seeds) of every benchmark in a results
folder; ``benchmarks/papers/reference/write_reference.py`` writes it as ``numbers.csv`` from a
``make reproduce-quick`` run, and ``harness reference`` and the report put a user's leaderboard beside
it. No torch: this runs wherever the results can be read.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import duckdb
import pandas as pd

from harness.leaderboard import leaderboard
from harness.results import connect
from harness.store import read_retrying

NUMBERS = Path(__file__).resolve().parents[2] / "benchmarks" / "papers" / "reference" / "numbers.csv"
# a row of the reference is one leaderboard entry of one benchmark: these columns name it
# (a lottery ticket's control arm is an entry of its own: ``control`` is ``none`` for the ticket itself)
KEYS = ["benchmark", "dataset", "model", "method", "method_params", "control", "sparsity"]
MEASURED = ["seeds", "top1_mean", "top1_std"]  # what a reference row must have besides its keys
NUMERIC = [
    "sparsity",
    "seeds",
    "top1_mean",
    "top1_std",
    "dense_top1",
    "compression_ratio",
    "storage_compression",
    "theoretical_speedup",
]
SPREAD = 2.0  # a user's mean inside the reference mean ± SPREAD reference standard deviations is "inside"
SPARSITY_DIGITS = 9  # sparsities match after rounding: a CSV round trip must not make two entries


class NumbersError(ValueError):
    """A reference numbers file that is missing or cannot be read as one."""


def numbers_table(results: str | os.PathLike) -> pd.DataFrame:
    """The leaderboard of every benchmark in ``results``, one row per (benchmark, data set, model,
    method with its parameters, control arm, sparsity): seeds, top-1 mean and std, dense top-1, the compression
    and speedup columns the leaderboard shows, and whether a layer collapsed."""
    return leaderboards(connect(results))


def leaderboards(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """``numbers_table`` over a connection that has the views already (the report's)."""
    benchmarks = [b for (b,) in read_retrying(lambda: con.execute(BENCHMARKS_SQL).fetchall())]
    # no benchmark: the leaderboard of a name no row has, so that the columns are the same
    frames = [read_retrying(lambda b=b: leaderboard(con, b)).assign(benchmark=b) for b in benchmarks or [""]]
    frame = pd.concat(frames, ignore_index=True)
    return frame[["benchmark", *(c for c in frame.columns if c != "benchmark")]]


BENCHMARKS_SQL = "SELECT DISTINCT benchmark FROM cells WHERE status = 'ok' AND benchmark IS NOT NULL ORDER BY 1"


def read_numbers(path: str | os.PathLike) -> pd.DataFrame:
    """A numbers CSV (``#`` lines at the top are its provenance); NumbersError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise NumbersError(f"reference numbers {path} is not a file; pass a CSV written by write_reference.py")
    try:
        lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
        header, *rows = list(csv.reader(lines)) or [[]]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise NumbersError(f"reference numbers {path} is not a CSV: {exc}") from None
    if not header:
        raise NumbersError(f"reference numbers {path} is not a CSV: it has no header line")
    for number, row in enumerate(rows, 1):
        if len(row) != len(header):
            raise NumbersError(
                f"reference numbers {path} is not a CSV: row {number} has {len(row)} fields, the header {len(header)}"
            )
    missing = [c for c in [*KEYS, *MEASURED] if c not in header]
    if missing:
        raise NumbersError(
            f"reference numbers {path} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"a numbers CSV has {', '.join([*KEYS, *MEASURED])} and the leaderboard's other columns"
        )
    frame = pd.DataFrame(rows, columns=header, dtype=str)
    for column in (c for c in NUMERIC if c in frame.columns):
        blank = frame[column].str.strip() == ""
        values = pd.to_numeric(frame[column].where(~blank), errors="coerce")
        bad = ~blank & values.isna()
        if bad.any():
            row = int(bad.idxmax())
            shown = frame[column][row][:40]
            raise NumbersError(f"reference numbers {path}, row {row + 1}, column {column}: {shown!r} is not a number")
        frame[column] = values
    if "layer_collapse" in frame.columns:  # written by pandas as True / False
        frame["layer_collapse"] = frame["layer_collapse"].map({"True": True, "False": False}).astype("boolean")
    frame["method_params"] = frame["method_params"].replace("", "{}")
    frame["control"] = frame["control"].replace("", "none")
    twice = _key_columns(frame).duplicated()
    if twice.any():
        row = int(twice.idxmax())
        raise NumbersError(f"reference numbers {path}, row {row + 1}: a second row for the same {', '.join(KEYS)}")
    return frame


def beside_reference(user: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """``user`` (a numbers table) with the matching reference row's top-1 beside each of its rows.

    Added: ``reference_top1_mean``, ``reference_top1_std``, ``reference_seeds``, ``top1_diff`` (user −
    reference mean) and ``inside_spread``: |top1_diff| ≤ 2 reference standard deviations. Two,
    because the reference's std is the seed-to-seed spread of one run: a single new seed of the same
    experiment lands within two of them about 95 % of the time (a user's mean over several seeds
    more often still), so a row outside points at something other than the seed — code, versions,
    data — rather than at chance. Empty where no reference row matches (same benchmark, data set,
    model, method and parameters, control arm, sparsity) or the reference has fewer than two seeds, whose std
    says nothing.
    """
    shown = reference[[*KEYS, "top1_mean", "top1_std", "seeds"]].rename(
        columns={c: f"reference_{c}" for c in ("top1_mean", "top1_std", "seeds")}
    )
    merged = _with_key(user).merge(_with_key(shown).drop(columns=KEYS), on="_key", how="left").drop(columns="_key")
    merged["top1_diff"] = merged["top1_mean"] - merged["reference_top1_mean"]
    spread_known = merged["reference_seeds"] >= 2
    inside = merged["top1_diff"].abs() <= SPREAD * merged["reference_top1_std"] + 1e-12
    merged["inside_spread"] = pd.Series(inside, dtype="boolean").where(spread_known, pd.NA)
    return merged


def _key_columns(frame: pd.DataFrame) -> pd.DataFrame:
    keys = frame[KEYS].copy()
    keys["sparsity"] = keys["sparsity"].round(SPARSITY_DIGITS)
    keys["method_params"] = keys["method_params"].fillna("{}")
    keys["control"] = keys["control"].fillna("none")
    return keys


def _with_key(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with one ``_key`` column naming its entry, so that a merge never mixes dtypes of the keys."""
    keys = _key_columns(frame).itertuples(index=False)
    return frame.assign(_key=["\x1f".join(map(str, key)) for key in keys])
