"""The results folder, written by one process only (the driver).

Layout::

    results/
      cells/benchmark=<name>/cell-<cell_id>.parquet   fresh: one file per cell written since compaction
      cells/benchmark=<name>/seg-<lo>-<hi>.parquet    compacted segments of many cells
      epochs/…, layers/…                              the same, for per-epoch curves and per-layer tables
      checkpoints/<pretrain_key>.pt                   shared dense models
      levels/<cell_id>.pt                             a running or failed cell's last finished level
      logs/<cell_id>.log                              each cell's captured log
      specs/<name>/<hash>.yaml                        every benchmark file that was run
      mlflow.db                                       embedded tracking store

Every file is written under a temporary name and renamed into place, so a crash never leaves a
half-written file. A cell's fresh file is keyed by its id, so a rerun replaces rather than
duplicates; a fresh file also hides that cell's rows in the segments (the latest write wins), and a
cell with no rows in a view still gets an empty fresh file there, so stale rows cannot survive.

One file per cell makes a large table slow to scan, so when a benchmark's partition holds
``fresh_limit`` fresh files they are compacted into a new segment, and ``FANOUT`` segments of equal
span are merged into one (a log-structured merge: every row is rewritten about log_8(cells) times
and a partition holds at most a few dozen files). Segments are named by the range of compactions
they hold, ``seg-<lo>-<hi>``; a merge that crashed before deleting its inputs leaves segments whose
range another one covers, and those are ignored by readers and deleted by the next compaction.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from harness.schema import CELL_VIEWS, CellResult, empty_select, to_arrow

FRESH_LIMIT = 64  # fresh cell files in a partition that trigger a compaction
FANOUT = 8  # segments of equal span merged into one
ROW_GROUP_SIZE = 122_880  # DuckDB's own: one row group per scan thread
READ_ATTEMPTS = 3  # a compaction may delete a file between listing and reading it; the next listing is whole

T = TypeVar("T")
_PARTITION = "benchmark="
_FRESH = re.compile(r"^cell-(.+)\.parquet$")
_SEGMENT = re.compile(r"^seg-(\d+)-(\d+)\.parquet$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_table(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_retrying(read: Callable[[], T]) -> T:
    """``read()``, listed and read again if a compaction removed one of its files meanwhile."""
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return read()
        except duckdb.IOException:
            continue
    return read()


def _sql_string(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _read_parquet(files: list[Path], filename: bool = False) -> str:
    """``read_parquet`` over exact files; columns come from the files, never from the folder names."""
    listed = ", ".join(map(_sql_string, files))
    return f"read_parquet([{listed}], union_by_name = true, hive_partitioning = false, filename = {filename})"


@dataclass(frozen=True)
class Segment:
    path: Path
    lo: int
    hi: int

    @property
    def span(self) -> int:
        return self.hi - self.lo + 1


@dataclass
class Partition:
    """One benchmark's files of one view, as they are now."""

    folder: Path
    benchmark: str
    segments: list[Segment]  # oldest first, covered (superseded) ones left out
    covered: list[Segment]  # inputs of a merge that crashed before deleting them
    fresh: dict[str, Path]  # cell_id -> its fresh file

    @classmethod
    def scan(cls, folder: Path) -> Partition:
        segments, fresh = [], {}
        for entry in os.scandir(folder):
            if match := _SEGMENT.match(entry.name):
                segments.append(Segment(Path(entry.path), int(match[1]), int(match[2])))
            elif match := _FRESH.match(entry.name):
                fresh[unquote(match[1])] = Path(entry.path)
        segments.sort(key=lambda s: (s.lo, -s.hi))
        live, covered = [], []
        for segment in segments:
            if live and segment.hi <= live[-1].hi:
                covered.append(segment)
            else:
                live.append(segment)
        return cls(folder, unquote(folder.name.removeprefix(_PARTITION)), live, covered, dict(sorted(fresh.items())))


class ResultsStore:
    """Reads what is done; writes cell results and dense checkpoints atomically; compacts as it grows."""

    def __init__(self, root: str | os.PathLike, fresh_limit: int = FRESH_LIMIT) -> None:
        self.root = Path(root)
        self.fresh_limit = fresh_limit
        self._lock = threading.Lock()  # the driver may call write() from more than one thread

    def view_dir(self, view: str) -> Path:
        return self.root / view

    def partition_dir(self, view: str, benchmark: str) -> Path:
        return self.view_dir(view) / f"{_PARTITION}{quote(benchmark, safe='')}"

    def partitions(self, view: str) -> list[Partition]:
        folder = self.view_dir(view)
        if not folder.is_dir():
            return []
        return [Partition.scan(Path(e.path)) for e in sorted(os.scandir(folder), key=lambda e: e.name) if e.is_dir()]

    # -- writing ------------------------------------------------------------------------------

    def write(self, result: CellResult) -> None:
        """Write a cell's three tables, the ``cells`` file last since its presence means done."""
        benchmark = result.rows[0].get("benchmark") if result.rows else None
        if not isinstance(benchmark, str) or not benchmark:
            raise ValueError(f"cell {result.cell_id}: its rows carry no 'benchmark' to file them under")
        name = f"cell-{quote(result.cell_id, safe='')}.parquet"
        keys = {"benchmark": benchmark, "cell_id": result.cell_id}
        tables = {
            "epochs": to_arrow("epochs", [{**row, **keys} for row in result.epochs]),
            "layers": to_arrow("layers", [{**row, **keys} for row in result.layers]),
            "cells": to_arrow("cells", [{**row, **keys} for row in result.rows]),
        }
        with self._lock:
            for view, table in tables.items():
                _atomic_write_table(self.partition_dir(view, benchmark) / name, table)
            if self._fresh_count(benchmark) >= self.fresh_limit:
                self._compact(benchmark)

    def compact(self, benchmark: str | None = None) -> None:
        """Fold fresh files into segments now (one benchmark, or all); writes do it on their own."""
        with self._lock:
            names = [benchmark] if benchmark else [p.benchmark for p in self.partitions("cells")]
            for name in names:
                self._compact(name)

    def _fresh_count(self, benchmark: str) -> int:
        return sum(1 for e in os.scandir(self.partition_dir("cells", benchmark)) if e.name.startswith("cell-"))

    def _compact(self, benchmark: str) -> None:
        for view in CELL_VIEWS:
            folder = self.partition_dir(view, benchmark)
            if folder.is_dir():
                _compact_partition(Partition.scan(folder))

    def write_trials(self, benchmark: str, study: str, rows: list[dict]) -> None:
        """Replace one study's rows of the ``trials`` view (written by ``harness tune``, never compacted)."""
        name = f"cell-{quote(study, safe='')}.parquet"  # the fresh-file name readers list
        _atomic_write_table(self.partition_dir("trials", benchmark) / name, to_arrow("trials", rows))

    # -- reading ------------------------------------------------------------------------------

    def view_sql(self, view: str) -> str:
        """A SELECT over the files that hold ``view`` now: segments minus rewritten cells, plus fresh files."""
        parts = self.partitions(view)
        segments = [s.path for p in parts for s in p.segments]
        fresh = [path for p in parts for path in p.fresh.values()]
        rewritten = [(p.benchmark, cell_id) for p in parts for cell_id in p.fresh]
        selects = []
        if segments:
            select = f"SELECT * FROM {_read_parquet(segments)}"
            if rewritten:
                values = ", ".join(f"({_sql_string(b)}, {_sql_string(c)})" for b, c in rewritten)
                select += f" ANTI JOIN (VALUES {values}) AS rewritten(benchmark, cell_id) USING (benchmark, cell_id)"
            selects.append(select)
        if fresh:
            selects.append(f"SELECT * FROM {_read_parquet(fresh)}")
        if not selects:
            return empty_select(view)
        return " UNION ALL BY NAME ".join(f"({s})" for s in selects)

    def statuses(self, benchmark: str | None = None) -> dict[str, str]:
        """``{cell_id: "ok" | "failed" | "partial"}`` for every cell in the table, or in one benchmark's partition
        (``partial``: some levels finished, the cell did not; a rerun continues it).

        Per benchmark because a benchmark's views and reports read its own partition: a cell that
        another benchmark already ran must still land in this one.
        """

        def read() -> list[tuple[str, bool]]:
            where = "" if benchmark is None else "WHERE benchmark = ?"
            status = (
                "CASE WHEN bool_or(status = 'failed') THEN 'failed' "
                "WHEN bool_and(status = 'ok') THEN 'ok' ELSE 'partial' END"
            )
            sql = f"SELECT cell_id, {status} FROM ({self.view_sql('cells')}) {where} GROUP BY cell_id"
            return duckdb.connect().execute(sql, [] if benchmark is None else [benchmark]).fetchall()

        return dict(read_retrying(read))

    def source_hashes(self, benchmark: str) -> dict[str, str | None]:
        """``{cell_id: method_source_hash}`` of one benchmark's cells (None for rows that predate the column)."""

        def read() -> list[tuple[str, str | None]]:
            cells = self.view_sql("cells")
            sql = f"SELECT cell_id, max(method_source_hash) FROM ({cells}) WHERE benchmark = ? GROUP BY cell_id"
            try:
                return duckdb.connect().execute(sql, [benchmark]).fetchall()
            except duckdb.BinderException:  # every file predates the column
                sql = f"SELECT DISTINCT cell_id, NULL FROM ({cells}) WHERE benchmark = ?"
                return duckdb.connect().execute(sql, [benchmark]).fetchall()

        return dict(read_retrying(read))

    # -- dense checkpoints ------------------------------------------------------------------------

    def checkpoint_path(self, pretrain_key: str) -> Path:
        return self.root / "checkpoints" / f"{pretrain_key}.pt"

    def load_checkpoint(self, pretrain_key: str) -> bytes | None:
        path = self.checkpoint_path(pretrain_key)
        return path.read_bytes() if path.exists() else None

    def save_checkpoint(self, pretrain_key: str, data: bytes) -> None:
        atomic_write_bytes(self.checkpoint_path(pretrain_key), data)

    # -- finished levels of cells not done ---------------------------------------------------------

    def level_path(self, cell_id: str) -> Path:
        return self.root / "levels" / f"{quote(cell_id, safe='')}.pt"

    def load_level(self, cell_id: str) -> bytes | None:
        path = self.level_path(cell_id)
        return path.read_bytes() if path.exists() else None

    def save_level(self, cell_id: str, data: bytes) -> None:
        atomic_write_bytes(self.level_path(cell_id), data)

    def drop_level(self, cell_id: str) -> None:
        self.level_path(cell_id).unlink(missing_ok=True)

    # -- cell logs ----------------------------------------------------------------------------------

    def log_path(self, cell_id: str) -> Path:
        return self.root / "logs" / f"{quote(cell_id, safe='')}.log"

    def save_log(self, cell_id: str, text: str) -> None:
        """Keep what a cell printed, warned or logged; an empty log removes an older run's."""
        if text:
            atomic_write_bytes(self.log_path(cell_id), text.encode())
        else:
            self.log_path(cell_id).unlink(missing_ok=True)

    # -- benchmark files ---------------------------------------------------------------------------

    def save_spec(self, benchmark: str, text: str) -> Path:
        """Keep the benchmark file a run came from, so every result can be traced to it."""
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = self.root / "specs" / quote(benchmark, safe="") / f"{digest}.yaml"
        if not path.exists():
            atomic_write_bytes(path, text.encode())
        return path

    def specs(self, benchmark: str) -> list[Path]:
        """The benchmark files run under ``benchmark``, oldest first."""
        folder = self.root / "specs" / quote(benchmark, safe="")
        return sorted(folder.glob("*.yaml"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []


# -- compaction --------------------------------------------------------------------------------


def _compact_partition(partition: Partition) -> None:
    """Fresh files → one new segment; older segments drop the rewritten cells; equal spans merge."""
    for segment in partition.covered:
        segment.path.unlink(missing_ok=True)
    segments = list(partition.segments)
    con = duckdb.connect()
    if partition.fresh:
        seq = (segments[-1].hi if segments else 0) + 1
        new = Segment(partition.folder / f"seg-{seq:08d}-{seq:08d}.parquet", seq, seq)
        _copy_atomic(con, f"SELECT * FROM {_read_parquet(list(partition.fresh.values()))}", new.path)
        if segments:
            _drop_cells(con, segments, list(partition.fresh))
        segments.append(new)
        for path in partition.fresh.values():
            path.unlink()
    while len(segments) >= FANOUT and len({s.span for s in segments[-FANOUT:]}) == 1:
        inputs = segments[-FANOUT:]
        merged = Segment(
            partition.folder / f"seg-{inputs[0].lo:08d}-{inputs[-1].hi:08d}.parquet", inputs[0].lo, inputs[-1].hi
        )
        _copy_atomic(con, f"SELECT * FROM {_read_parquet([s.path for s in inputs])}", merged.path)
        for segment in inputs:
            segment.path.unlink()
        segments[-FANOUT:] = [merged]


def _drop_cells(con: duckdb.DuckDBPyConnection, segments: list[Segment], cell_ids: list[str]) -> None:
    """Rewrite the segments that hold an older write of ``cell_ids`` without those rows."""
    listed = ", ".join(map(_sql_string, cell_ids))
    holding = con.execute(
        f"SELECT DISTINCT filename FROM {_read_parquet([s.path for s in segments], filename=True)} "
        f"WHERE cell_id IN ({listed})"
    ).fetchall()
    for (filename,) in holding:
        path = Path(filename)
        _copy_atomic(con, f"SELECT * FROM {_read_parquet([path])} WHERE cell_id NOT IN ({listed})", path)


def _copy_atomic(con: duckdb.DuckDBPyConnection, select: str, path: Path) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    try:
        con.execute(
            f"COPY ({select}) TO {_sql_string(tmp)} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_SIZE})"
        )
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
