"""Reading results: DuckDB views over the Parquet tables, and pandas frames for Python users."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pandas as pd

from harness.store import VIEWS


def connect(results_dir: str | os.PathLike = "results") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per results table (``cells``, ``epochs``, ``layers``)."""
    root = Path(results_dir).resolve()
    con = duckdb.connect()
    for view in VIEWS:
        files = sorted((root / view).glob("*.parquet"))
        if files:
            pattern = str(root / view / "*.parquet").replace("'", "''")
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{pattern}', union_by_name = true)")
    return con


def load(results_dir: str | os.PathLike = "results", view: str = "cells") -> pd.DataFrame:
    """One results table as a DataFrame (empty when nothing has been written yet)."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; allowed: {', '.join(VIEWS)}")
    con = connect(results_dir)
    if view not in {name for (name,) in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}:
        return pd.DataFrame()
    return con.execute(f"SELECT * FROM {view}").df()
