"""The results folder, written by one process only (the driver).

Layout::

    results/
      cells/<cell_id>.parquet     one file per cell: a row per level (the ``cells`` view)
      epochs/<cell_id>.parquet    per-epoch curves
      layers/<cell_id>.parquet    per-layer parameters, nonzeros, FLOPs
      checkpoints/<pretrain_key>.pt   shared dense models
      mlflow.db                   embedded tracking store

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file; a cell's file is keyed by its id, so a rerun replaces rather than duplicates.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harness.cell import CellResult

VIEWS = ("cells", "epochs", "layers")


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


class ResultsStore:
    """Reads what is done; writes cell results and dense checkpoints atomically."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def view_dir(self, view: str) -> Path:
        return self.root / view

    def write(self, result: CellResult) -> None:
        """Write a cell's three tables; the ``cells`` file last, since its presence means done."""
        for view, rows in (("epochs", result.epochs), ("layers", result.layers), ("cells", result.rows)):
            path = self.view_dir(view) / f"{result.cell_id}.parquet"
            if rows:
                _atomic_write_table(path, pa.Table.from_pylist(rows))
            elif view != "cells":
                path.unlink(missing_ok=True)  # a rerun that produced no curve must not keep the old one

    def statuses(self) -> dict[str, str]:
        """``{cell_id: "ok" | "failed"}`` for every cell in the table."""
        folder = self.view_dir("cells")
        if not folder.exists():
            return {}
        out = {}
        for path in folder.glob("*.parquet"):
            status = pq.read_table(path, columns=["status"]).column("status").to_pylist()
            out[path.stem] = "ok" if all(s == "ok" for s in status) else "failed"
        return out

    def checkpoint_path(self, pretrain_key: str) -> Path:
        return self.root / "checkpoints" / f"{pretrain_key}.pt"

    def load_checkpoint(self, pretrain_key: str) -> bytes | None:
        path = self.checkpoint_path(pretrain_key)
        return path.read_bytes() if path.exists() else None

    def save_checkpoint(self, pretrain_key: str, data: bytes) -> None:
        atomic_write_bytes(self.checkpoint_path(pretrain_key), data)
