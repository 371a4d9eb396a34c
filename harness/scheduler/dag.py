"""The matrix as a DAG, without Ray: which cells are still to run (:func:`plan`, read from the table),
then one pretraining per missing dense model, every cell after its own.

A dry run imports this module, not the runner: planning needs neither Ray nor Lightning. Cells are
released breadth-first in matrix order as their dense model becomes available; the DAG also says
when the last cell of a dense model is back, so a backend can let go of its copy.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.config import CellSpec

if TYPE_CHECKING:
    from harness.store import ResultsStore


@dataclass
class Plan:
    """Which cells run and which are already in the table; ``other_code``: cells in the table whose rows
    were produced by a different version of their method's source (rerun them with ``--force``)."""

    todo: list[CellSpec]
    done: list[CellSpec]
    failed_before: list[CellSpec]
    other_code: list[CellSpec] = field(default_factory=list)


def plan(cells: list[CellSpec], store: ResultsStore, retry_failed: bool = False, force: bool = False) -> Plan:
    """Sort ``cells`` into to run / done / failed before; ``force`` runs every one of them again."""
    benchmarks = {cell.benchmark for cell in cells}
    statuses = {benchmark: store.statuses(benchmark) for benchmark in benchmarks}
    recorded = {benchmark: store.source_hashes(benchmark) for benchmark in benchmarks}
    from harness.methods import method_provenance  # torch, needed only for cells already in the table

    current: dict[str, str | None] = {}
    todo, done, failed, other_code = [], [], [], []
    for cell in cells:
        status = statuses[cell.benchmark].get(cell.cell_id)
        if status is not None:
            key = json.dumps([cell.method, cell.method_params], sort_keys=True)
            if key not in current:
                current[key] = method_provenance(cell.method, cell.method_params)["method_source_hash"]
            was = recorded[cell.benchmark].get(cell.cell_id)
            if was is not None and current[key] is not None and was != current[key]:
                other_code.append(cell)
        if force or status in (None, "partial") or (status == "failed" and retry_failed):
            todo.append(cell)
        else:
            (done if status == "ok" else failed).append(cell)
    return Plan(todo, done, failed, other_code)


class MatrixDag:
    """Which pretrainings to run, which cells are ready, which dense models are still needed."""

    def __init__(self, cells: Iterable[CellSpec], have_dense: Iterable[str]) -> None:
        self.total = 0
        self.waiting: dict[str, list[CellSpec]] = {}  # pretrain_key -> cells that need that dense model
        for cell in cells:
            self.waiting.setdefault(cell.pretrain_key, []).append(cell)
            self.total += 1
        self.remaining = Counter({key: len(group) for key, group in self.waiting.items()})  # cells not back yet
        have = set(have_dense)
        self.pretrain: deque[CellSpec] = deque(group[0] for key, group in self.waiting.items() if key not in have)
        self.ready: deque[CellSpec] = deque()
        for key in [key for key in self.waiting if key in have]:
            self.dense_ready(key)

    @property
    def keys(self) -> list[str]:
        return list(self.remaining)

    def dense_ready(self, key: str) -> list[CellSpec]:
        """The dense model ``key`` is available: its cells become ready (and are returned)."""
        released = self.waiting.pop(key, [])
        self.ready.extend(released)
        return released

    def dense_failed(self, key: str) -> list[CellSpec]:
        """The dense model ``key`` could not be made: its cells, which will never be ready."""
        failed = self.waiting.pop(key, [])
        self.remaining[key] -= len(failed)
        return failed

    def cell_done(self, cell: CellSpec) -> bool:
        """A cell is back; True when it was the last one needing its dense model."""
        self.remaining[cell.pretrain_key] -= 1
        return self.remaining[cell.pretrain_key] == 0

    def pending(self) -> bool:
        """Anything left to submit."""
        return bool(self.pretrain or self.ready)
