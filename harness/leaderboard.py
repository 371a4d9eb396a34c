"""The leaderboard printed after a run: method × sparsity → mean ± std over seeds of each cell's last level
(a lottery ticket's control arms, rows of its cell, are lines of their own).

Columns: top-1; parameter compression ``params ×`` (``compression_ratio``); storage compression
``storage ×`` (``storage_compression``, real stored bytes); theoretical speedup; ``collapse`` when a
layer of some seed's model is ≥ 99 % pruned (``layer_collapse``).
"""

from __future__ import annotations

import json

import duckdb
import pandas as pd
from rich.console import Console

from harness.output import print_table

LEADERBOARD_SQL = """
SELECT dataset, model, method, method_params, control, sparsity,
       count(DISTINCT seed)           AS seeds,
       avg(top1)                      AS top1_mean,
       coalesce(stddev_samp(top1), 0) AS top1_std,
       avg(dense_top1)                AS dense_top1,
       avg(compression_ratio)         AS compression_ratio,
       avg(storage_compression)       AS storage_compression,
       avg(theoretical_speedup)       AS theoretical_speedup,
       bool_or(layer_collapse)        AS layer_collapse
FROM final_cells  -- finished cells only: a failed level's earlier levels are not its result
WHERE benchmark = $benchmark
GROUP BY ALL
-- ties, to the rounding of a parallel sum, in a fixed order
ORDER BY dataset, model, sparsity, round(top1_mean, 12) DESC, control, method, method_params
"""


def leaderboard(con: duckdb.DuckDBPyConnection, benchmark: str) -> pd.DataFrame:
    """One row per (dataset, model, method with its params, control arm, sparsity): the final level of every
    finished cell."""
    return con.execute(LEADERBOARD_SQL, {"benchmark": benchmark}).df()


def cells_pooled(con: duckdb.DuckDBPyConnection, benchmark: str) -> set[str]:
    """The ids of the ok cells the leaderboard of ``benchmark`` averages over (any spec file of that name)."""
    sql = "SELECT cell_id FROM final_cells WHERE benchmark = $b"
    rows = con.execute(sql, {"b": benchmark})
    return {cell_id for (cell_id,) in rows.fetchall()}


def method_label(method: str, method_params: str | None, control: str | None = "none") -> str:
    """``method`` or ``method(k=v, …)``: two parameterisations of a method are two entries; a lottery ticket's
    control arm is one more, ``method(…) (reinit)``."""
    params = json.loads(method_params) if method_params else {}
    label = f"{method}({', '.join(f'{k}={v}' for k, v in sorted(params.items()))})" if params else method
    return label if control in (None, "none") else f"{label} ({control})"


def print_leaderboard(frame: pd.DataFrame, console: Console) -> None:
    """One table per (dataset, model); in a pipe or a log, plain text with every method name whole."""
    # parameter compression (params_total / params_nonzero) and storage compression (dense bytes / stored
    # bytes) differ as soon as a quantiser or an encoder is involved: both are shown, named
    columns = ("method", "sparsity", "top1 % (mean ± std)", "seeds", "params ×", "storage ×", "speedup", "collapse")
    for (dataset, model), group in frame.groupby(["dataset", "model"], sort=False):
        dense = group["dense_top1"].mean()
        rows = [
            (
                method_label(row.method, row.method_params, row.control),
                f"{row.sparsity:g}",
                f"{100 * row.top1_mean:.2f} ± {100 * row.top1_std:.2f}",
                str(row.seeds),
                _times(row.compression_ratio),
                _times(row.storage_compression),
                _times(row.theoretical_speedup),
                "yes" if not pd.isna(row.layer_collapse) and bool(row.layer_collapse) else "",
            )
            for row in group.itertuples()
        ]
        print_table(console, columns, rows, f"{dataset} / {model}  (dense top1 {100 * dense:.2f}%)", right=columns[1:])


def _times(value: float | None) -> str:
    """``4.00x``, or ``–`` where rows written before the column existed leave it empty."""
    return "–" if value is None or pd.isna(value) else f"{value:.2f}x"
