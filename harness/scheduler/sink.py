"""Where results go: the results folder first, MLflow beside it, with bounded waits between the two.

One thread writes the results folder (the driver is its single writer), so the scheduler's loop
never waits on a disk. A finished cell's MLflow run is logged by the tracking process; its rows
wait at most :data:`LINK_SECONDS` for that run's id and are written without it after that, so a
slow or broken tracking server never holds the table back. A cell's finished levels are written
at once (rows ``partial``), with the checkpoint a rerun continues from.
"""

from __future__ import annotations

import concurrent.futures
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from harness.cell import DenseCheckpoint
from harness.config import CellSpec
from harness.scheduler.backends import error_text
from harness.schema import CellResult
from harness.store import ResultsStore
from harness.tracking import ChildRun, TrackingWriter

LINK_SECONDS = 30.0  # the longest a result's rows wait for its MLflow run id


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
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="harness-results")
        self.writes: deque[Future] = deque()
        self.ok = 0
        self.failed = 0
        self.warned = False

    def dense(self, cell: CellSpec, data: bytes) -> None:
        """A dense model trained by this run: kept for reruns, logged as a pretraining run."""
        self.store.save_checkpoint(cell.pretrain_key, data)
        if self.tracking:
            dense = DenseCheckpoint.from_bytes(data)
            self.tracking.submit("log_child", ChildRun.of_pretraining(cell, dense.metrics, dense.epochs))

    def level(self, cell: CellSpec, rows: CellResult, checkpoint: bytes) -> None:
        """A finished level: its checkpoint, then the cell's rows so far (``partial``)."""
        self._queue(self._write_level, cell, rows, checkpoint)

    def result(self, cell: CellSpec, result: CellResult) -> None:
        """A finished cell: its rows, whose presence (not ``partial``) means done."""
        run_id = None
        if self.tracking:
            run_id = self.tracking.submit("log_child", ChildRun.of_cell(cell, result.rows, result.epochs))
        self._queue(self._write_result, cell, result, run_id)

    def close(self) -> None:
        """Write what is queued; raises the first write error."""
        self.writer.shutdown(wait=True)
        self.check(wait=True)

    def check(self, wait: bool = False) -> None:
        """Raise a write's error in the driver's loop (a full disk must stop the matrix)."""
        while self.writes and (wait or self.writes[0].done()):
            self.writes.popleft().result()

    def _queue(self, write: Callable, *args: object) -> None:
        self.writes.append(self.writer.submit(write, *args))
        self.check()

    def _write_level(self, cell: CellSpec, rows: CellResult, checkpoint: bytes) -> None:
        self.store.save_level(cell.cell_id, checkpoint)
        self.store.write(rows)

    def _write_result(self, cell: CellSpec, result: CellResult, run_id: Future | None) -> None:
        mlflow_run_id = self._link(run_id) if run_id else None
        for row in result.rows:
            row["mlflow_run_id"] = mlflow_run_id
        self.store.write(result)
        self.store.save_log(cell.cell_id, result.log)
        if result.ok:
            self.store.drop_level(cell.cell_id)  # done: a rerun has nothing to continue
            self.ok += 1
        else:
            self.failed += 1  # the finished levels' checkpoint stays: --retry-failed continues after them
        try:
            self.on_result(cell, result)
        except Exception as exc:  # showing one result must not stop the matrix: its rows are written already
            warnings.warn(f"cell {cell.cell_id} is saved, but showing it failed: {error_text(exc)}", stacklevel=1)

    def _link(self, future: Future) -> str | None:
        """The MLflow run id of a logged result; None (warned once) if the tracking process is slow or broke."""
        try:
            return future.result(timeout=LINK_SECONDS)
        except concurrent.futures.TimeoutError:
            self._warn(f"MLflow took over {LINK_SECONDS:.0f} s to log a cell; rows are written without its run id")
        except Exception as exc:
            self._warn(f"MLflow logging failed; the results table is complete: {error_text(exc)}")
        return None

    def _warn(self, message: str) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(message, stacklevel=1)
