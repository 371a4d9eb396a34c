"""The leaderboard printed after a run: method × sparsity → mean ± std over seeds."""

from __future__ import annotations

import duckdb
import pandas as pd
from rich.console import Console
from rich.table import Table

LEADERBOARD_SQL = """
SELECT dataset, model, method, sparsity,
       count(*)                 AS seeds,
       avg(top1)                AS top1_mean,
       coalesce(stddev_samp(top1), 0) AS top1_std,
       avg(dense_top1)          AS dense_top1,
       avg(compression_ratio)   AS compression_ratio,
       avg(theoretical_speedup) AS theoretical_speedup
FROM cells
WHERE status = 'ok' AND benchmark = ?
  AND level = (SELECT max(level) FROM cells c2 WHERE c2.cell_id = cells.cell_id)
GROUP BY ALL
ORDER BY dataset, model, sparsity, top1_mean DESC
"""


def leaderboard(con: duckdb.DuckDBPyConnection, benchmark: str) -> pd.DataFrame:
    """One row per (dataset, model, method, sparsity): the final level of every ok cell."""
    return con.execute(LEADERBOARD_SQL, [benchmark]).df()


def print_leaderboard(frame: pd.DataFrame, console: Console) -> None:
    for (dataset, model), group in frame.groupby(["dataset", "model"], sort=False):
        dense = group["dense_top1"].mean()
        table = Table(title=f"{dataset} / {model}  (dense top1 {100 * dense:.2f}%)", title_justify="left")
        for column in ("method", "sparsity", "top1 % (mean ± std)", "seeds", "compression", "speedup"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for row in group.itertuples():
            table.add_row(
                row.method,
                f"{row.sparsity:g}",
                f"{100 * row.top1_mean:.2f} ± {100 * row.top1_std:.2f}",
                str(row.seeds),
                f"{row.compression_ratio:.2f}x",
                f"{row.theoretical_speedup:.2f}x",
            )
        console.print(table)
