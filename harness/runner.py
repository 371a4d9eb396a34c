"""Runs a matrix of cells: shared pretraining first, then every cell; the driver writes all results.

This is the in-process scheduler. Cells already in the results table are skipped, so a rerun
costs nothing and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from harness.cell import CellResult, execute_cell, failed_result, pretrain
from harness.spec import CellSpec
from harness.store import ResultsStore
from harness.tracking import MatrixRun


@dataclass
class Plan:
    """Which cells run and which are already in the table."""

    todo: list[CellSpec]
    done: list[CellSpec]
    failed_before: list[CellSpec]


def plan(cells: list[CellSpec], store: ResultsStore, retry_failed: bool = False) -> Plan:
    statuses = store.statuses()
    todo, done, failed = [], [], []
    for cell in cells:
        status = statuses.get(cell.cell_id)
        if status is None or (status == "failed" and retry_failed):
            todo.append(cell)
        else:
            (done if status == "ok" else failed).append(cell)
    return Plan(todo, done, failed)


def run_matrix(
    cells: list[CellSpec],
    store: ResultsStore,
    matrix: MatrixRun | None,
    on_result: Callable[[CellSpec, CellResult], None] = lambda cell, result: None,
    on_start: Callable[[CellSpec], None] = lambda cell: None,
) -> Counter:
    """Run ``cells`` one after another; returns counts of ``ok`` and ``failed`` cells."""
    counts: Counter = Counter()
    dense: dict[str, bytes | None] = {}
    for cell in cells:
        on_start(cell)
        if cell.pretrain_key not in dense:
            dense[cell.pretrain_key] = _dense_model(cell, store, matrix)
        if isinstance(dense[cell.pretrain_key], Exception):
            result = failed_result(cell, dense[cell.pretrain_key], phase="pretrain")
        else:
            result = execute_cell(cell, dense[cell.pretrain_key], matrix)
        store.write(result)
        counts["ok" if result.ok else "failed"] += 1
        on_result(cell, result)
    return counts


def _dense_model(cell: CellSpec, store: ResultsStore, matrix: MatrixRun | None) -> bytes | Exception:
    """The cached dense checkpoint, trained now if missing (an error is returned, not raised)."""
    data = store.load_checkpoint(cell.pretrain_key)
    if data is None:
        try:
            data = pretrain(cell, matrix).to_bytes()
        except Exception as exc:  # every cell that needs this model fails, the others go on
            return exc
        store.save_checkpoint(cell.pretrain_key, data)
    return data
