"""Analyses over a results folder (``harness analyze``): tables, torch-free, read through harness.results.

- ``density``: per-layer density (nonzero / params) of each method's final level, mean and spread
  over seeds — the layer-wise sparsity profile a global criterion chooses;
- ``lmc``: the linear-mode-connectivity error barriers (validation split) of iterative methods run with
  ``lmc_points``: between successive levels (``lmc_barrier``) and, with ``lmc_copies``, between a level's
  network and its copy trained in another data order (``lmc_barrier_copies``, Frankle et al. 2020's
  stability test), beside the level's accuracy gap to dense;
- ``gradient-flow``: the GradientFlow callback's per-epoch norms (``gradient_flow``, and
  ``gradient_flow_init`` / per-layer ``gradient_flow/<weight>`` columns where recorded), mean over seeds.

Mask overlap (Jaccard between methods and across seeds) needs the masks themselves, which the results
folder does not keep (only counts per layer): see docs/reproduce.md for what recording them takes.
"""

from __future__ import annotations

import os

import duckdb
import pandas as pd

from harness.results import query


class MissingColumns(ValueError):
    """The results lack the columns an analysis reads (the cells were run without that option)."""


def density_profile(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Per (setting, method, params, sparsity, layer): mean and standard deviation over seeds of the density."""
    return _query(
        results_dir,
        """
        WITH final AS (SELECT benchmark, cell_id, level, method, method_params, model, dataset, sparsity, seed
                       FROM final_cells)
        SELECT f.benchmark, f.model, f.dataset, f.method, f.method_params, f.sparsity, l.layer,
               avg(l.nonzero / l.params) AS density, stddev_samp(l.nonzero / l.params) AS density_sd,
               count(*) AS seeds
        FROM layers l JOIN final f USING (benchmark, cell_id, level)
        WHERE l.params > 0
        GROUP BY ALL ORDER BY ALL
        """,
        "per-layer rows",
    )


def lmc_barriers(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Per level of iterative methods with ``lmc_points``: both barriers' means (null where not measured), their
    spread over seeds and the gap to dense."""
    return _query(
        results_dir,
        """
        SELECT benchmark, model, dataset, method, method_params, level, sparsity,
               avg(lmc_barrier) AS barrier, stddev_samp(lmc_barrier) AS barrier_sd,
               avg(lmc_barrier_copies) AS barrier_copies, stddev_samp(lmc_barrier_copies) AS barrier_copies_sd,
               avg(top1 - dense_top1) AS top1_minus_dense, count(*) AS seeds
        FROM finished_levels WHERE lmc_barrier IS NOT NULL OR lmc_barrier_copies IS NOT NULL
        GROUP BY ALL ORDER BY ALL
        """,
        "lmc_barrier (run an iterative method with lmc_points: 11)",
    )


def gradient_flow(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Per (setting, method, sparsity, phase, epoch): the mean of every gradient-flow column over seeds."""
    con_columns = query(results_dir, "SELECT * FROM epochs LIMIT 0").columns
    columns = [c for c in con_columns if c.startswith("gradient_flow")]
    if not columns:
        raise MissingColumns(
            f"{results_dir}: no gradient_flow columns in the epochs view; run rigl, set or lottery_anatomy "
            "with gradient_flow: true"
        )
    means = ", ".join(f'avg(e."{c}") AS "{c}"' for c in columns)
    return _query(
        results_dir,
        f"""
        SELECT c.benchmark, c.model, c.dataset, c.method, c.method_params, c.sparsity, e.phase, e.epoch, {means},
               count(DISTINCT c.seed) AS seeds
        FROM epochs e JOIN (SELECT DISTINCT benchmark, cell_id, model, dataset, method, method_params, sparsity, seed
                            FROM finished_levels) c USING (benchmark, cell_id)
        WHERE e."{columns[0]}" IS NOT NULL
        GROUP BY ALL ORDER BY ALL
        """,
        "gradient flow",
    )


def _query(results_dir: str | os.PathLike, sql: str, what: str) -> pd.DataFrame:
    try:
        frame = query(results_dir, sql)
    except duckdb.BinderException as exc:
        raise MissingColumns(f"{results_dir}: the results lack {what}: {str(exc).splitlines()[0]}") from None
    if frame.empty:
        raise MissingColumns(f"{results_dir}: no rows with {what}")
    return frame


ANALYSES = {"density": density_profile, "lmc": lmc_barriers, "gradient-flow": gradient_flow}
