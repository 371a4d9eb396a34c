"""The matrix as a DAG, without Ray: one pretraining per missing dense model, every cell after its own.

Cells are released breadth-first in matrix order as their dense model becomes available; the DAG
also says when the last cell of a dense model is back, so a backend can let go of its copy.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable

from harness.config import CellSpec


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
