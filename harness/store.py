"""The results table, written by one process per results root (the driver).

Layout of a local folder::

    results/
      cells/benchmark=<name>/cell-<cell_id>.parquet   fresh: one file per cell written since compaction
      cells/benchmark=<name>/seg-<lo>-<hi>.parquet    compacted segments of many cells
      epochs/…, layers/…                              the same, for per-epoch curves and per-layer tables
      checkpoints/<pretrain_key>.pt                   shared dense models
      levels/<cell_id>.pt                             a running or failed cell's last finished level
      logs/<cell_id>.log                              each cell's captured log
      masks/<name>/<cell_id>.npz                      each level's masks (harness/maskfile.py; record_masks)
      specs/<name>/<hash>.yaml                        every benchmark file that was run
      mlflow.db                                       embedded tracking store
      .lock                                           held by the one driver writing here (its PID inside)

Every file is written under a temporary name and renamed into place, so a crash never leaves a
half-written file. A cell's fresh file is keyed by its id, so a rerun replaces rather than
duplicates; a fresh file also hides that cell's rows in the segments (the latest write wins), and a
cell with no rows in a view still gets an empty fresh file there, so stale rows cannot survive.

A driver holds ``.lock`` (``flock``) for as long as it writes, so two drivers never share a folder;
readers need no lock, since every file they see is complete. The lock's holder also removes the
temporary files of writers that were killed mid-write.

One file per cell makes a large table slow to scan, so when a benchmark's partition holds
``fresh_limit`` fresh files they are compacted into a new segment, and ``FANOUT`` segments of equal
span are merged into one (a log-structured merge: every row is rewritten about log_8(cells) times
and a partition holds at most a few dozen files). Segments are named by the range of compactions
they hold, ``seg-<lo>-<hi>``; a merge that crashed before deleting its inputs leaves segments whose
range another one covers, and those are ignored by readers and deleted by the next compaction.

The driver writes finished cells in batches (:meth:`ResultsStore.write_batch`): the cells no segment
holds yet go straight into one new segment per view, which then merges like any other, so a batch
costs three files instead of three per cell plus their compaction; a cell a segment holds already
(a rerun) is written as a fresh file, as above. Levels of a running cell are fresh files (one per
finished level, replaced); the batch that holds the cell's final rows removes them after writing.

On an object store (``s3://BUCKET/PREFIX``, ``gs://…``, see ``harness/storage.py``) there is no lock,
so each driver writes a partition of its own, ``cells/benchmark=<name>/run=<run_id>/``, laid out and
compacted as above by that driver alone; no driver ever writes or deletes another's file. Run ids
sort by the time the driver started, and readers keep each cell's rows from the newest run that
wrote it (in all three views, judged by the ``cells`` files whose presence means done).
Checkpoints, level checkpoints, logs, masks and spec copies sit under the prefix as on disk (one PUT each, whole or
absent; a cell two drivers ran keeps the masks of the last PUT).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import quote, unquote

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from harness.schema import CELL_VIEWS, CellResult, empty_select, to_arrow
from harness.storage import FileGone, Files, atomic_write_bytes, open_root, sql_string

FRESH_LIMIT = 64  # fresh cell files in a partition that trigger a compaction
FANOUT = 8  # segments of equal span merged into one
ROW_GROUP_SIZE = 122_880  # DuckDB's own: one row group per scan thread
READ_ATTEMPTS = 5  # a compaction may delete a file between listing and reading it; the next listing is whole
RETRY_SECONDS = 0.05  # waited before the second attempt, twice that before the third, ...
COPY_OPTIONS = f"FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_SIZE}"

T = TypeVar("T")
FilePath = Path | PurePosixPath
_PARTITION = "benchmark="
_RUN = "run="
_ARROW_READ = "reading the stream registered as"  # DuckDB's words when pyarrow failed to read a file
_RUN_COLUMN = "__harness_run"  # which driver run a row came from, while readers pick the newest
_FRESH = re.compile(r"^cell-(.+)\.parquet$")
_SEGMENT = re.compile(r"^seg-(\d+)-(\d+)\.parquet$")
_TEMPORARY = ".*.tmp"  # the names atomic writes use until their rename
# the folders the driver writes
WRITTEN = ("cells", "epochs", "layers", "checkpoints", "levels", "logs", "masks", "specs")


class ResultsLocked(RuntimeError):
    """Another driver is writing to this results folder."""


__all__ = [
    "FANOUT",
    "FRESH_LIMIT",
    "Partition",
    "ResultsLocked",
    "ResultsStore",
    "Segment",
    "atomic_write_bytes",
    "read_retrying",
]


def _atomic_write_table(files: Files, path: FilePath, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    files.write_bytes(path, sink.getvalue().to_pybytes())


def read_retrying(read: Callable[[], T]) -> T:
    """``read()``, listed and read again if a compaction removed one of its files meanwhile."""
    for attempt in range(READ_ATTEMPTS - 1):
        try:
            return read()
        except (duckdb.IOException, FileGone):
            pass
        except duckdb.InvalidInputException as exc:  # pyarrow's read of a registered dataset failed
            if _ARROW_READ not in str(exc):
                raise
        time.sleep(RETRY_SECONDS * 2**attempt)  # a compaction in progress deletes several files in a row
    return read()


def new_run_id() -> str:
    """Sorts by the time it was made (UTC, microseconds), unique across machines by its random tail."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Segment:
    path: FilePath
    lo: int
    hi: int

    @property
    def span(self) -> int:
        return self.hi - self.lo + 1


@dataclass
class Partition:
    """One benchmark's files of one view (of one driver run, on an object store), as they are now."""

    folder: FilePath
    benchmark: str
    segments: list[Segment]  # oldest first, covered (superseded) ones left out
    covered: list[Segment]  # inputs of a merge that crashed before deleting them
    fresh: dict[str, FilePath]  # cell_id -> its fresh file
    run: str | None = field(default=None)  # the driver run that wrote it; None in a local folder

    @classmethod
    def scan(cls, files: Files, folder: FilePath, benchmark: str, run: str | None = None) -> Partition:
        segments, fresh = [], {}
        for entry in files.list(folder):
            if match := _SEGMENT.match(entry.name):
                segments.append(Segment(entry.path, int(match[1]), int(match[2])))
            elif match := _FRESH.match(entry.name):
                fresh[unquote(match[1])] = entry.path
        segments.sort(key=lambda s: (s.lo, -s.hi))
        live, covered = [], []
        for segment in segments:
            if live and segment.hi <= live[-1].hi:
                covered.append(segment)
            else:
                live.append(segment)
        return cls(folder, benchmark, live, covered, dict(sorted(fresh.items())), run)


class ResultsStore:
    """Reads what is done; writes cell results and dense checkpoints atomically; compacts as it grows.

    ``root`` is a local folder or an object-store URI (``s3://BUCKET/PREFIX``); ``location`` names it
    in messages. On an object store this store writes under its own ``run_id``.
    """

    def __init__(self, root: str | os.PathLike, fresh_limit: int = FRESH_LIMIT) -> None:
        self.files = open_root(root)
        self.root = self.files.root
        self.location = self.files.location
        self.fresh_limit = fresh_limit
        self.run_id = new_run_id() if self.files.remote else None
        self._lock = threading.Lock()  # the driver may call write() from more than one thread
        self._in_segments: dict[str, set[str]] = {}  # benchmark -> cells its segments hold (write_batch)

    def exists(self) -> bool:
        return self.files.exists(self.root)

    def view_dir(self, view: str) -> FilePath:
        return self.root / view

    def partition_dir(self, view: str, benchmark: str) -> FilePath:
        """Where this store writes ``benchmark``'s files of ``view`` (on an object store: its run's own)."""
        folder = self.view_dir(view) / f"{_PARTITION}{quote(benchmark, safe='')}"
        return folder / f"{_RUN}{self.run_id}" if self.run_id else folder

    def partitions(self, view: str) -> list[Partition]:
        found = []
        for entry in sorted(self.files.list(self.view_dir(view)), key=lambda e: e.name):
            if not entry.is_dir or not entry.name.startswith(_PARTITION):
                continue
            benchmark = unquote(entry.name.removeprefix(_PARTITION))
            if not self.files.remote:
                found.append(Partition.scan(self.files, entry.path, benchmark))
                continue
            for run in sorted(self.files.list(entry.path), key=lambda e: e.name):
                if run.is_dir and run.name.startswith(_RUN):
                    found.append(Partition.scan(self.files, run.path, benchmark, run.name.removeprefix(_RUN)))
        return found

    # -- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock while writing; raise :class:`ResultsLocked` at once if a driver holds it.

        ``flock`` ends with its holder however it ends, SIGKILL included, so a lock never goes
        stale; the holder's PID and host are written inside so that the message can name it.
        An object store has no lock and needs none: this store writes only its own run's files.
        """
        if self.files.remote:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that is starting"
                raise ResultsLocked(
                    f"results folder {self.location} is in use by another harness run ({holder}); "
                    "wait for it to finish or pass another --results folder"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            self._remove_temporary_files()
            yield
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the lock

    def _remove_temporary_files(self) -> None:
        """Files of writers killed before their rename: no reader ever looks at them (held lock only)."""
        for folder in WRITTEN:
            for path in (self.root / folder).rglob(_TEMPORARY):
                if path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)

    def write(self, result: CellResult) -> None:
        """Write a cell's three tables, the ``cells`` file last since its presence means done."""
        benchmark = _benchmark_of(result)
        with self._lock:
            self._write_fresh(benchmark, result)
            if self._fresh_count(benchmark) >= self.fresh_limit:
                self._compact(benchmark)

    def write_batch(self, results: list[CellResult]) -> None:
        """Write many cells at once: per benchmark, one new segment per view holds the cells that no segment
        holds yet (no fresh file, no compaction; the ``cells`` segment last); a cell some segment holds
        already (a rerun) gets fresh files, which hide its older rows, as :meth:`write` does."""
        by_benchmark: dict[str, dict[str, CellResult]] = {}
        for result in results:  # a cell twice in one batch: its last write wins
            by_benchmark.setdefault(_benchmark_of(result), {})[result.cell_id] = result
        with self._lock:
            for benchmark, cells in by_benchmark.items():
                held = self._cells_in_segments(benchmark)
                new = [result for cell_id, result in cells.items() if cell_id not in held]
                for cell_id, result in cells.items():
                    if cell_id in held:
                        self._write_fresh(benchmark, result)
                if new:
                    self._write_segments(benchmark, new)
                if self._fresh_count(benchmark) >= self.fresh_limit:
                    self._compact(benchmark)

    def _write_fresh(self, benchmark: str, result: CellResult) -> None:
        name = f"cell-{quote(result.cell_id, safe='')}.parquet"
        for view, table in _tables([result], benchmark).items():
            _atomic_write_table(self.files, self.partition_dir(view, benchmark) / name, table)

    def _write_segments(self, benchmark: str, results: list[CellResult]) -> None:
        """New cells as one segment per view; then their fresh files (rows of finished levels) go."""
        con = duckdb.connect()
        for view, table in _tables(results, benchmark).items():
            partition = Partition.scan(self.files, self.partition_dir(view, benchmark), benchmark, self.run_id)
            if table.num_rows:
                seq = (partition.segments[-1].hi if partition.segments else 0) + 1
                path = partition.folder / f"seg-{seq:08d}-{seq:08d}.parquet"
                _atomic_write_table(self.files, path, table)
                partition.segments.append(Segment(path, seq, seq))
            _merge_equal_spans(self.files, con, partition.folder, partition.segments)
        for view in CELL_VIEWS:  # after the cells segment: until then a fresh file shows the cell as it was
            fresh = Partition.scan(self.files, self.partition_dir(view, benchmark), benchmark, self.run_id).fresh
            for result in results:
                if result.cell_id in fresh:
                    self.files.delete(fresh[result.cell_id])
        self._cells_in_segments(benchmark).update(result.cell_id for result in results)

    def _cells_in_segments(self, benchmark: str) -> set[str]:
        """The ids of cells with rows in this store's segments of ``benchmark`` (any view), read once."""
        if benchmark not in self._in_segments:
            con = duckdb.connect()
            held: set[str] = set()
            for view in CELL_VIEWS:
                partition = Partition.scan(self.files, self.partition_dir(view, benchmark), benchmark, self.run_id)
                if partition.segments:
                    files = self.files.relation(con, [s.path for s in partition.segments])
                    rows = con.execute(f"SELECT DISTINCT cell_id FROM {files}").fetchall()
                    held.update(cell_id for (cell_id,) in rows)
            self._in_segments[benchmark] = held
        return self._in_segments[benchmark]

    def compact(self, benchmark: str | None = None) -> None:
        """Fold fresh files into segments now (one benchmark, or all); writes do it on their own.
        On an object store only this store's own run is compacted: other drivers' files are theirs."""
        with self._lock:
            names = [benchmark] if benchmark else sorted({p.benchmark for p in self.partitions("cells")})
            for name in names:
                self._compact(name)

    def close(self) -> None:
        """At the end of a driver's run. On an object store its run's fresh files are compacted now:
        nobody else ever will, and every file costs readers a request."""
        if self.files.remote:
            self.compact()

    def _fresh_count(self, benchmark: str) -> int:
        return sum(1 for e in self.files.list(self.partition_dir("cells", benchmark)) if e.name.startswith("cell-"))

    def _compact(self, benchmark: str) -> None:
        for view in CELL_VIEWS:
            partition = Partition.scan(self.files, self.partition_dir(view, benchmark), benchmark, self.run_id)
            if partition.segments or partition.covered or partition.fresh:
                _compact_partition(self.files, partition)
                if benchmark in self._in_segments:
                    self._in_segments[benchmark].update(partition.fresh)

    def write_trials(self, benchmark: str, study: str, rows: list[dict]) -> None:
        """Replace one study's rows of the ``trials`` view (written by ``harness tune``, never compacted)."""
        name = f"cell-{quote(study, safe='')}.parquet"  # the fresh-file name readers list
        _atomic_write_table(self.files, self.partition_dir("trials", benchmark) / name, to_arrow("trials", rows))

    # -- reading ------------------------------------------------------------------------------

    def view_sql(self, view: str, con: duckdb.DuckDBPyConnection) -> str:
        """A SELECT over the files that hold ``view`` now, valid on ``con`` (object-store files are
        registered there): per partition, segments minus rewritten cells, plus fresh files; on an
        object store, each cell's rows from the newest run that wrote it."""
        return self.view_sqls(con, [view])[view]

    def view_sqls(self, con: duckdb.DuckDBPyConnection, views: list[str]) -> dict[str, str]:
        """``view_sql`` of several views at once: on an object store the ``cells`` files, which say
        which run's rows are the newest, are listed and registered once for all of them."""
        if not self.files.remote:
            return {v: _run_select(self.files, con, self.partitions(v)) or empty_select(v) for v in views}
        done = {run: _run_select(self.files, con, p) for run, p in _by_run(self.partitions("cells")).items()}
        newest = " UNION ALL ".join(
            f"(SELECT benchmark, cell_id, {sql_string(run)} AS {_RUN_COLUMN} FROM ({select}))"
            for run, select in done.items()
        )
        selects = {}
        for view in views:
            runs = (
                done
                if view == "cells"
                else {r: _run_select(self.files, con, p) for r, p in _by_run(self.partitions(view)).items()}
            )
            if not done or not runs:
                selects[view] = empty_select(view)
                continue
            tagged = " UNION ALL BY NAME ".join(
                f"(SELECT *, {sql_string(run)} AS {_RUN_COLUMN} FROM ({select}))" for run, select in runs.items()
            )
            selects[view] = (
                f"SELECT * EXCLUDE ({_RUN_COLUMN}) FROM ({tagged}) SEMI JOIN "
                f"(SELECT benchmark, cell_id, max({_RUN_COLUMN}) AS {_RUN_COLUMN} FROM ({newest}) GROUP BY ALL) "
                f"USING (benchmark, cell_id, {_RUN_COLUMN})"
            )
        return selects

    def statuses(self, benchmark: str | None = None) -> dict[str, str]:
        """``{cell_id: "ok" | "failed" | "partial"}`` for every cell in the table, or in one benchmark's partition
        (``partial``: some levels finished, the cell did not; a rerun continues it).

        Per benchmark because a benchmark's views and reports read its own partition: a cell that
        another benchmark already ran must still land in this one.
        """

        def read() -> list[tuple[str, bool]]:
            con = duckdb.connect()
            where = "" if benchmark is None else "WHERE benchmark = ?"
            status = (
                "CASE WHEN bool_or(status = 'failed') THEN 'failed' "
                "WHEN bool_and(status = 'ok') THEN 'ok' ELSE 'partial' END"
            )
            files = self.view_sql("cells", con)
            sql = f"SELECT cell_id, {status} FROM ({files}) {where} GROUP BY cell_id"
            return con.execute(sql, [] if benchmark is None else [benchmark]).fetchall()

        return dict(read_retrying(read))

    def source_hashes(self, benchmark: str) -> dict[str, str | None]:
        """``{cell_id: method_source_hash}`` of one benchmark's cells (None for rows that predate the column)."""

        def read() -> list[tuple[str, str | None]]:
            con = duckdb.connect()
            cells = self.view_sql("cells", con)
            sql = f"SELECT cell_id, max(method_source_hash) FROM ({cells}) WHERE benchmark = ? GROUP BY cell_id"
            try:
                return con.execute(sql, [benchmark]).fetchall()
            except duckdb.BinderException:  # every file predates the column
                sql = f"SELECT DISTINCT cell_id, NULL FROM ({cells}) WHERE benchmark = ?"
                return con.execute(sql, [benchmark]).fetchall()

        return dict(read_retrying(read))

    # -- dense checkpoints ------------------------------------------------------------------------

    def checkpoint_path(self, pretrain_key: str) -> FilePath:
        return self.root / "checkpoints" / f"{pretrain_key}.pt"

    def load_checkpoint(self, pretrain_key: str) -> bytes | None:
        return self.files.read_bytes(self.checkpoint_path(pretrain_key))

    def save_checkpoint(self, pretrain_key: str, data: bytes) -> None:
        self.files.write_bytes(self.checkpoint_path(pretrain_key), data)

    # -- finished levels of cells not done ---------------------------------------------------------

    def level_path(self, cell_id: str) -> FilePath:
        return self.root / "levels" / f"{quote(cell_id, safe='')}.pt"

    def load_level(self, cell_id: str) -> bytes | None:
        return self.files.read_bytes(self.level_path(cell_id))

    def save_level(self, cell_id: str, data: bytes) -> None:
        self.files.write_bytes(self.level_path(cell_id), data)

    def drop_level(self, cell_id: str) -> None:
        self.files.delete(self.level_path(cell_id))

    # -- cell logs ----------------------------------------------------------------------------------

    def log_path(self, cell_id: str) -> FilePath:
        return self.root / "logs" / f"{quote(cell_id, safe='')}.log"

    def log_location(self, cell_id: str) -> str:
        return self.shown(self.log_path(cell_id))

    def shown(self, path: FilePath) -> str:
        """Where a file of this store is, as a user would open it (a path, or a URI on an object store)."""
        return f"{self.location}/{path.relative_to(self.root)}" if self.files.remote else str(path)

    def load_log(self, cell_id: str) -> str | None:
        data = self.files.read_bytes(self.log_path(cell_id))
        return None if data is None else data.decode(errors="replace")

    def save_log(self, cell_id: str, text: str) -> None:
        """Keep what a cell printed, warned or logged; an empty log removes an older run's."""
        if text:
            self.files.write_bytes(self.log_path(cell_id), text.encode())
        else:
            self.files.delete(self.log_path(cell_id))

    # -- recorded masks ----------------------------------------------------------------------------

    def masks_path(self, benchmark: str, cell_id: str) -> FilePath:
        return self.root / "masks" / quote(benchmark, safe="") / f"{quote(cell_id, safe='')}.npz"

    def save_masks(self, benchmark: str, cell_id: str, data: bytes | None) -> None:
        """Keep a cell's masks file (harness/maskfile.py); ``None`` removes an older run's, which would
        no longer match the rows."""
        if data:
            self.files.write_bytes(self.masks_path(benchmark, cell_id), data)
        else:
            self.files.delete(self.masks_path(benchmark, cell_id))

    def load_masks(self, benchmark: str, cell_id: str) -> bytes | None:
        return self.files.read_bytes(self.masks_path(benchmark, cell_id))

    def masks_benchmarks(self, cell_id: str) -> list[str]:
        """The benchmarks that keep masks of ``cell_id``."""
        name = f"{quote(cell_id, safe='')}.npz"
        folders = [e for e in self.files.list(self.root / "masks") if e.is_dir]
        return sorted(unquote(e.name) for e in folders if self.files.exists(e.path / name))

    # -- benchmark files ---------------------------------------------------------------------------

    def save_spec(self, benchmark: str, text: str) -> FilePath:
        """Keep the benchmark file a run came from, so every result can be traced to it."""
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = self.root / "specs" / quote(benchmark, safe="") / f"{digest}.yaml"
        if not self.files.exists(path):
            self.files.write_bytes(path, text.encode())
        return path

    def specs(self, benchmark: str) -> list[FilePath]:
        """The benchmark files run under ``benchmark``, oldest first. In a local folder only regular
        files inside it, so a results folder from someone else cannot point a report at a file elsewhere."""
        entries = self.files.list(self.root / "specs" / quote(benchmark, safe=""))
        paths = [e.path for e in entries if e.name.endswith(".yaml") and not e.is_dir]
        if not self.files.remote:
            root = self.root.resolve()
            paths = [p for p in paths if _regular_file_inside(p, root)]
        return sorted(paths, key=self.files.mtime)

    def read_spec(self, path: FilePath) -> str:
        data = self.files.read_bytes(path)
        if data is None:
            raise FileNotFoundError(f"benchmark file {path} is gone from {self.location}")
        return data.decode()


def _regular_file_inside(path: Path, root: Path) -> bool:
    """A plain file (not a link to one) whose real location is under ``root``."""
    return path.is_file() and not path.is_symlink() and path.resolve().is_relative_to(root)


def _benchmark_of(result: CellResult) -> str:
    benchmark = result.rows[0].get("benchmark") if result.rows else None
    if not isinstance(benchmark, str) or not benchmark:
        raise ValueError(f"cell {result.cell_id}: its rows carry no 'benchmark' to file them under")
    return benchmark


def _tables(results: list[CellResult], benchmark: str) -> dict[str, pa.Table]:
    """The cells' rows of each view, ``cells`` last (its presence means done)."""
    rows: dict[str, list[dict]] = {"epochs": [], "layers": [], "cells": []}
    for result in results:
        keys = {"benchmark": benchmark, "cell_id": result.cell_id}
        rows["epochs"] += [{**row, **keys} for row in result.epochs]
        rows["layers"] += [{**row, **keys} for row in result.layers]
        rows["cells"] += [{**row, **keys} for row in result.rows]
    return {view: to_arrow(view, values) for view, values in rows.items()}


def _by_run(partitions: list[Partition]) -> dict[str | None, list[Partition]]:
    runs: dict[str | None, list[Partition]] = {}
    for partition in partitions:
        runs.setdefault(partition.run, []).append(partition)
    return runs


def _run_select(files: Files, con: duckdb.DuckDBPyConnection, parts: list[Partition]) -> str | None:
    """The rows of partitions one writer wrote: segments minus the cells rewritten since, plus fresh files."""
    segments = [s.path for p in parts for s in p.segments]
    fresh = [path for p in parts for path in p.fresh.values()]
    rewritten = [(p.benchmark, cell_id) for p in parts for cell_id in p.fresh]
    selects = []
    if segments:
        select = f"SELECT * FROM {files.relation(con, segments)}"
        if rewritten:
            values = ", ".join(f"({sql_string(b)}, {sql_string(c)})" for b, c in rewritten)
            select += f" ANTI JOIN (VALUES {values}) AS rewritten(benchmark, cell_id) USING (benchmark, cell_id)"
        selects.append(select)
    if fresh:
        selects.append(f"SELECT * FROM {files.relation(con, fresh)}")
    return " UNION ALL BY NAME ".join(f"({s})" for s in selects) or None


# -- compaction --------------------------------------------------------------------------------


def _compact_partition(files: Files, partition: Partition) -> None:
    """Fresh files → one new segment; older segments drop the rewritten cells; equal spans merge."""
    for segment in partition.covered:
        files.delete(segment.path)
    segments = list(partition.segments)
    con = duckdb.connect()
    if partition.fresh:
        seq = (segments[-1].hi if segments else 0) + 1
        new = Segment(partition.folder / f"seg-{seq:08d}-{seq:08d}.parquet", seq, seq)
        files.copy(con, f"SELECT * FROM {files.relation(con, list(partition.fresh.values()))}", new.path, COPY_OPTIONS)
        if segments:
            _drop_cells(files, con, segments, list(partition.fresh))
        segments.append(new)
        for path in partition.fresh.values():
            files.delete(path)
    _merge_equal_spans(files, con, partition.folder, segments)


def _merge_equal_spans(files: Files, con: duckdb.DuckDBPyConnection, folder: FilePath, segments: list[Segment]) -> None:
    """Merge the last ``FANOUT`` segments while they span equally many compactions (``segments`` follows)."""
    while len(segments) >= FANOUT and len({s.span for s in segments[-FANOUT:]}) == 1:
        inputs = segments[-FANOUT:]
        merged = Segment(folder / f"seg-{inputs[0].lo:08d}-{inputs[-1].hi:08d}.parquet", inputs[0].lo, inputs[-1].hi)
        files.copy(con, f"SELECT * FROM {files.relation(con, [s.path for s in inputs])}", merged.path, COPY_OPTIONS)
        for segment in inputs:
            files.delete(segment.path)
        segments[-FANOUT:] = [merged]


def _drop_cells(files: Files, con: duckdb.DuckDBPyConnection, segments: list[Segment], cell_ids: list[str]) -> None:
    """Rewrite the segments that hold an older write of ``cell_ids`` without those rows."""
    listed = ", ".join(map(sql_string, cell_ids))
    per_file = " UNION ALL ".join(
        f"SELECT {i} AS segment, cell_id FROM {files.relation(con, [s.path])}" for i, s in enumerate(segments)
    )
    holding = con.execute(f"SELECT DISTINCT segment FROM ({per_file}) WHERE cell_id IN ({listed})").fetchall()
    for (index,) in holding:
        path = segments[index].path
        files.copy(
            con, f"SELECT * FROM {files.relation(con, [path])} WHERE cell_id NOT IN ({listed})", path, COPY_OPTIONS
        )
