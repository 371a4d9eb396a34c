"""Claims of the seed papers, checked against a results folder (``harness claims``).

A claim is a small registered object: its key, the paper, the statement, the SQL it reads from the
results views (through :func:`harness.results.query`, read-only) and a ``judge`` that turns those
rows into a verdict — ``holds``, ``does not hold`` or ``not enough data`` — and the evidence (numbers,
seeds and the interval used; the one rule is in :mod:`harness.claims.stats`). Register one with
``@claim(key, paper, statement, sql)`` on a function ``judge(frame) -> (verdict, evidence)``. No torch:
claims run wherever the results can be read.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

from harness.claims import papers  # noqa: F401  (registers the built-in claims)
from harness.claims.base import CLAIMS, Claim, claim

__all__ = ["CLAIMS", "Claim", "check_claims", "claim", "read_reference"]
REFERENCE = Path(__file__).resolve().parents[2] / "benchmarks" / "papers" / "reference" / "claims.csv"


def check_claims(results_dir: str | os.PathLike, reference: Path | None = REFERENCE) -> pd.DataFrame:
    """One row per registered claim: claim, paper, statement, verdict, evidence, and the shipped
    reference run's verdict and evidence beside them (empty where there is no reference file)."""
    shipped = read_reference(reference) if reference else {}
    rows = []
    for item in CLAIMS.values():
        verdict, evidence = item.check(results_dir)
        ref = shipped.get(item.key, {})
        rows.append(
            {
                "claim": item.key,
                "paper": item.paper,
                "statement": item.statement,
                "verdict": verdict,
                "evidence": evidence,
                "reference_verdict": ref.get("verdict", ""),
                "reference_evidence": ref.get("evidence", ""),
            }
        )
    return pd.DataFrame(rows)


def read_reference(path: Path) -> dict[str, dict[str, str]]:
    """The shipped reference table (benchmarks/papers/reference/claims.csv) by claim; {} when absent."""
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["claim"]: row for row in csv.DictReader(line for line in handle if not line.startswith("#"))}
