"""Where results go: the results folder, with MLflow beside it, in batches, with bounded waits between the two.

One thread writes the results folder (the driver is its single writer), so the scheduler's loop
never waits on a disk. Finished cells are written in batches: up to :data:`BATCH_CELLS` of them, or
what finished within :data:`BATCH_SECONDS` of the batch's first, as one MLflow transaction (a run
each, see ``MatrixRun.log_children``) and one Parquet file per view (``ResultsStore.write_batch``).
A batch's rows wait at most :data:`LINK_SECONDS` for its runs' ids and are written without them
after that, so a slow or broken tracking server never holds the table back. A cell's finished
levels are written at once (rows ``partial``), with the checkpoint a rerun continues from.

What a batch costs is what a matrix of many short cells waits on: 2,000 cells that train nothing
took 14 ms each in MLflow and 6 ms each in Parquet files and compactions, one cell at a time.
Killed mid-batch (SIGKILL), a run loses at most the last :data:`BATCH_SECONDS` of results, which a
rerun runs again; Ctrl-C and errors write the batch first.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future

from harness.cell import DenseCheckpoint
from harness.config import CellSpec
from harness.methods import METHODS
from harness.scheduler.backends import error_text
from harness.schema import CellResult
from harness.store import ResultsStore
from harness.tracking import ChildRun, TrackingWriter

BATCH_CELLS = 256  # finished cells written together
BATCH_SECONDS = 1.0  # the longest a finished cell waits for its batch to fill
LINK_SECONDS = 30.0  # the longest a batch's rows wait for its MLflow run ids

_CLOSE = object()  # the queue's last item


class ResultSink:
    """Writes levels, results and dense checkpoints; ``on_result`` is called once a result is written."""

    def __init__(
        self,
        store: ResultsStore,
        tracking: TrackingWriter | None,
        on_result: Callable[[CellSpec, CellResult], None],
    ) -> None:
        self.store = store
        self.tracking = tracking
        self.on_result = on_result
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.ok = 0
        self.failed = 0
        self.warned = False
        self.writer = threading.Thread(target=self._write_all, name="harness-results", daemon=True)
        self.writer.start()

    def dense(self, cell: CellSpec, data: bytes) -> None:
        """A dense model trained by this run: kept for reruns, logged as a pretraining run."""
        self.store.save_checkpoint(cell.pretrain_key, data)
        if self.tracking:
            dense = DenseCheckpoint.from_bytes(data)
            self.tracking.submit("log_child", ChildRun.of_pretraining(cell, dense.metrics, dense.epochs))

    def level(self, cell: CellSpec, rows: CellResult, checkpoint: bytes) -> None:
        """A finished level: its checkpoint, then the cell's rows so far (``partial``), written at once."""
        self.queue.put(("level", cell, rows, checkpoint))
        self.check()

    def result(self, cell: CellSpec, result: CellResult) -> None:
        """A finished cell: its rows, whose presence (not ``partial``) means done, with the next batch."""
        self.queue.put(("result", cell, result))
        self.check()

    def close(self) -> None:
        """Write what is queued; raises the first write error."""
        self.queue.put(_CLOSE)
        self.writer.join()
        self.check()

    def check(self) -> None:
        """Raise a write's error in the driver's loop (a full disk must stop the matrix)."""
        if self.error is not None:
            raise self.error

    # -- on the writer thread ----------------------------------------------------------------------

    def _write_all(self) -> None:
        batch: list[tuple[CellSpec, CellResult]] = []
        due = 0.0
        while True:
            try:
                item = self.queue.get(timeout=max(due - time.monotonic(), 0.0) if batch else None)
            except queue.Empty:  # the batch's time is up
                self._guarded(self._write_batch, batch)
                batch = []
                continue
            if item is _CLOSE:
                self._guarded(self._write_batch, batch)
                return
            if item[0] == "level":
                self._guarded(self._write_level, *item[1:])
                continue
            if not batch:
                due = time.monotonic() + BATCH_SECONDS
            batch.append(item[1:])
            if len(batch) >= BATCH_CELLS:
                self._guarded(self._write_batch, batch)
                batch = []

    def _guarded(self, write: Callable, *args: object) -> None:
        """Run a write unless one failed already (the driver stops on that error, see :meth:`check`)."""
        if self.error is None:
            try:
                write(*args)
            except BaseException as exc:
                self.error = exc

    def _write_level(self, cell: CellSpec, rows: CellResult, checkpoint: bytes) -> None:
        self.store.save_masks(cell.benchmark, cell.cell_id, rows.masks)  # before the rows that name its levels
        self.store.save_level(cell.cell_id, checkpoint)
        self.store.write(rows)

    def _write_batch(self, batch: list[tuple[CellSpec, CellResult]]) -> None:
        if not batch:
            return
        run_ids: list[str | None] = [None] * len(batch)
        if self.tracking:
            children = [ChildRun.of_cell(cell, result.rows, result.epochs) for cell, result in batch]
            run_ids = self._link(self.tracking.submit("log_children", children)) or run_ids
        for (_, result), run_id in zip(batch, run_ids, strict=True):
            for row in result.rows:
                row["mlflow_run_id"] = run_id
        for cell, result in batch:  # before the rows: a row never names a level whose masks are not there
            self.store.save_masks(cell.benchmark, cell.cell_id, result.masks)
        self.store.write_batch([result for _, result in batch])
        for cell, result in batch:
            self.store.save_log(cell.cell_id, result.log)
            if result.ok and METHODS.get(cell.method).resumable:
                self.store.drop_level(cell.cell_id)  # done: a rerun has nothing to continue
            if result.ok:
                self.ok += 1
            else:
                self.failed += 1  # the finished levels' checkpoint stays: --retry-failed continues after them
            try:
                self.on_result(cell, result)
            except Exception as exc:  # showing one result must not stop the matrix: its rows are written already
                warnings.warn(f"cell {cell.cell_id} is saved, but showing it failed: {error_text(exc)}", stacklevel=1)

    def _link(self, future: Future) -> list[str | None] | None:
        """The MLflow run ids of a logged batch; None (warned once) if the tracking process is slow or broke."""
        try:
            return future.result(timeout=LINK_SECONDS)
        except concurrent.futures.TimeoutError:
            self._warn(f"MLflow took over {LINK_SECONDS:.0f} s to log cells; rows are written without their run ids")
        except Exception as exc:
            self._warn(f"MLflow logging failed; the results table is complete: {error_text(exc)}")
        return None

    def _warn(self, message: str) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(message, stacklevel=1)
