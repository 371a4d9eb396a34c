"""Reading results: DuckDB views ``cells``, ``epochs``, ``layers``, ``trials`` over the store's Parquet files,
and ``finished_levels`` / ``final_cells``: the rows of finished cells, which every ranking, claim,
analysis and plot counts (a partial or failed cell, or an older write of a cell, is in none of them).

``connect`` gives a connection with the views registered, ``load`` a pandas frame, ``load_masks`` a
cell's recorded masks as numpy arrays (``masks/<benchmark>/<cell_id>.npz``), and ``query``
(a frame) or ``query_rows`` (names and tuples: what ``harness query`` prints, with pandas never
imported, since importing it takes longer than a query over a million rows) run a user's SQL
read-only: one or more SELECT statements, and no file outside the results folder can be read
(DuckDB's ``enable_external_access`` is off, with the folder the only allowed directory, and the
configuration is locked so the query cannot turn it back on). On an object store
(``s3://BUCKET/PREFIX``) DuckDB may read no file at all: pyarrow reads the table's files for it.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import duckdb
import numpy as np

from harness import maskfile
from harness.schema import VIEWS, core_first
from harness.storage import is_remote, shown_uri, sql_string
from harness.store import ResultsStore, read_retrying

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")


# Each finished cell once: its latest write (rows of one write share ``finished_at``; the store keeps
# one write per cell, but folders merged by hand, older tables or a crash between two files may hold
# several) when every row of it is ok, i.e. neither partial nor failed. ``written`` is NULL for a cell
# written once, which needs no second pass over its rows.
_FINISHED_WRITES = """
WITH per_cell AS (
    SELECT benchmark, cell_id, max(level) AS level, bool_and(status = 'ok') AS ok,
           CASE WHEN min(finished_at) < max(finished_at) THEN max(finished_at) END AS written
    FROM cells GROUP BY ALL
), rewritten AS (
    SELECT benchmark, cell_id, max(c.level) AS level, bool_and(c.status = 'ok') AS ok, p.written
    FROM cells c JOIN per_cell p USING (benchmark, cell_id)
    WHERE p.written IS NOT NULL AND c.finished_at = p.written
    GROUP BY ALL
)
SELECT benchmark, cell_id, level, written FROM per_cell WHERE written IS NULL AND ok
UNION ALL SELECT benchmark, cell_id, level, written FROM rewritten WHERE ok
"""
_OF_WRITE = "c.benchmark = w.benchmark AND c.cell_id = w.cell_id AND (w.written IS NULL OR c.finished_at = w.written)"

FINISHED_VIEWS = {
    # every level of every finished cell, once: what operating points, curves and claims count
    "finished_levels": f"SELECT c.* FROM cells c SEMI JOIN ({_FINISHED_WRITES}) w ON {_OF_WRITE}",
    # the last level of every finished cell, one row per (benchmark, cell_id, control arm): its result
    "final_cells": f"SELECT c.* FROM cells c SEMI JOIN ({_FINISHED_WRITES}) w ON {_OF_WRITE} AND c.level = w.level",
}


class ReadOnlyError(ValueError):
    """A query tried to write, change settings, or read outside the results folder."""


def connect(results_dir: str | os.PathLike = "results", read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views ``cells``, ``epochs``, ``layers`` and ``trials``,
    and ``finished_levels`` and ``final_cells`` over ``cells`` (:data:`FINISHED_VIEWS`).

    ``results_dir`` is a folder or an object-store URI (``s3://BUCKET/PREFIX``). Each view has the
    schema's core columns first, in order (NULL where no file has one yet), then any other column
    some file has. The views are a snapshot of the files present now. With ``read_only`` no file
    outside ``results_dir`` can be read and settings cannot be changed.
    """
    store = ResultsStore(results_dir if is_remote(results_dir) else Path(results_dir).resolve())
    if not store.exists():
        raise FileNotFoundError(f"results folder {store.location} does not exist; run a benchmark or pass its folder")
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    # DuckDB spills to <cwd>/.tmp by default, and a read-only query could read what lies there: its
    # spill folder is a fresh unguessable path instead, created only if needed and removed on close
    spill = Path(tempfile.gettempdir()) / f"harness-duckdb-{secrets.token_hex(8)}"
    con.execute(f"SET temp_directory = {sql_string(spill)}")
    con.execute("SET parquet_metadata_cache = true")  # each file's footer is read once, not at every bind
    for view, files in store.view_sqls(con, list(VIEWS)).items():
        present = [name for name, *_ in con.execute(f"DESCRIBE {files}").fetchall()]
        con.execute(f"CREATE VIEW {view} AS SELECT {core_first(view, present)} FROM ({files})")
    for view, sql in FINISHED_VIEWS.items():
        con.execute(f"CREATE VIEW {view} AS {sql}")
    if read_only:  # object-store files are read by pyarrow, through the datasets registered above
        allowed = "" if store.files.remote else sql_string(str(store.root).rstrip("/") + "/")
        con.execute(f"SET allowed_directories = [{allowed}]")
        for setting in ("enable_external_access", "autoinstall_known_extensions", "autoload_known_extensions"):
            con.execute(f"SET {setting} = false")
        con.execute("SET lock_configuration = true")
    return con


def load(results_dir: str | os.PathLike = "results", view: str = "cells") -> pd.DataFrame:
    """One view as a DataFrame (its core columns and no rows when nothing has been written yet)."""
    if view not in VIEWS and view not in FINISHED_VIEWS:
        raise ValueError(f"unknown view {view!r}; allowed: {', '.join([*VIEWS, *FINISHED_VIEWS])}")
    return _read(results_dir, f"SELECT * FROM {view}", lambda answer: answer.df(), read_only=False)


def load_masks(
    results_dir: str | os.PathLike, cell_id: str, level: int | None = None, benchmark: str | None = None
) -> dict[str, np.ndarray]:
    """A cell's masks at ``level`` (default: the last one recorded), ``{parameter: bool array}``, True = kept.

    A parameter the method gave no mask is wholly kept and absent here. ``benchmark`` is needed only when
    the same cell id was run under several benchmarks. Raises FileNotFoundError when nothing was recorded
    (``record_masks: false``, or a cell run before masks were kept) and KeyError for a level not recorded.
    """
    store = ResultsStore(results_dir)
    found = [benchmark] if benchmark else store.masks_benchmarks(cell_id)
    data = store.load_masks(found[0], cell_id) if len(found) == 1 else None
    if len(found) > 1:
        raise ValueError(f"cell {cell_id} has masks under benchmarks {', '.join(found)}; pass benchmark=")
    if data is None:
        raise FileNotFoundError(
            f"{store.location}: no masks recorded for cell {cell_id} (masks/<benchmark>/{cell_id}.npz); "
            "they are kept unless the spec says record_masks: false"
        )
    levels = maskfile.decode(data)
    chosen = max(levels) if level is None else level
    if chosen not in levels:
        raise KeyError(f"cell {cell_id}: no masks of level {chosen}; recorded levels: {sorted(levels)}")
    return {name: mask.unpack() for name, mask in levels[chosen].items()}


def query(results_dir: str | os.PathLike, sql: str) -> pd.DataFrame:
    """Run SQL over the views read-only; the result of the last statement as a DataFrame."""
    return _query(results_dir, sql, lambda answer: answer.df())


def query_rows(results_dir: str | os.PathLike, sql: str) -> tuple[list[str], list[tuple]]:
    """``query``'s answer as column names and rows of Python values (NULL is None)."""
    return _query(results_dir, sql, lambda answer: ([c[0] for c in answer.description], answer.fetchall()))


def _query(results_dir: str | os.PathLike, sql: str, fetch: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    statements = duckdb.connect().extract_statements(sql)
    if not statements:
        raise ReadOnlyError("the query is empty; e.g. SELECT method, avg(top1) FROM cells GROUP BY method")
    for number, statement in enumerate(statements, 1):
        if statement.type != duckdb.StatementType.SELECT:
            raise ReadOnlyError(
                f"queries are read-only: statement {number} is {statement.type.name} "
                f"({statement.query.strip()[:80]!r}); only SELECT, WITH, FROM, DESCRIBE, SHOW and SUMMARIZE "
                f"are allowed. To export, use --format csv or json, or harness.results.connect() in Python"
            )
    try:
        return _read(results_dir, sql, fetch, read_only=True)
    except duckdb.PermissionException as exc:
        raise ReadOnlyError(f"queries may read only the views and files under {_shown(results_dir)}: {exc}") from None


def _read(
    results_dir: str | os.PathLike, sql: str, fetch: Callable[[duckdb.DuckDBPyConnection], T], read_only: bool
) -> T:
    return read_retrying(lambda: fetch(connect(results_dir, read_only).execute(sql)))


def _shown(results_dir: str | os.PathLike) -> str:
    return shown_uri(str(results_dir)) if is_remote(results_dir) else str(Path(results_dir).resolve())
