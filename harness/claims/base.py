"""A claim: a registered rule reading the results views through SQL (see harness/claims/__init__.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import pandas as pd

from harness.claims.stats import UNDECIDED, Verdict
from harness.results import query

Judge = Callable[[pd.DataFrame], tuple[Verdict, str]]


@dataclass(frozen=True)
class Claim:
    key: str
    paper: str
    statement: str
    sql: str
    judge: Judge

    def check(self, results_dir: str | os.PathLike) -> tuple[Verdict, str]:
        """The verdict on ``results_dir``; a column no cell recorded is "not enough data", named."""
        try:
            frame = query(results_dir, self.sql)
        except duckdb.BinderException as exc:
            missing = str(exc).split("\n")[0].removeprefix("Binder Error: ")
            return UNDECIDED, f"the results lack what this claim reads ({missing})"
        if frame.empty:
            return UNDECIDED, "no rows for this claim's methods in the results"
        return self.judge(frame)


CLAIMS: dict[str, Claim] = {}


def claim(key: str, paper: str, statement: str, sql: str) -> Callable[[Judge], Judge]:
    """Register ``judge`` as the rule of claim ``key``."""

    def register(judge: Judge) -> Judge:
        if key in CLAIMS:
            raise ValueError(f"claim {key!r} is registered twice")
        CLAIMS[key] = Claim(key, paper, statement, sql, judge)
        return judge

    return register
