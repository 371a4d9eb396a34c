"""Analyses over a results folder (``harness analyze``): tables, torch-free, read through harness.results.

- ``density``: per-layer density (nonzero / params) of each method's final level, mean and spread
  over seeds — the layer-wise sparsity profile a global criterion chooses;
- ``lmc``: the linear-mode-connectivity error barriers (validation split) of iterative methods run with
  ``lmc_points``: between successive levels (``lmc_barrier``) and, with ``lmc_copies``, between a level's
  network and its copy trained in another data order (``lmc_barrier_copies``, Frankle et al. 2020's
  stability test), beside the level's accuracy gap to dense;
- ``gradient-flow``: the GradientFlow callback's per-epoch norms (``gradient_flow``, and
  ``gradient_flow_init`` / per-layer ``gradient_flow/<weight>`` columns where recorded), mean over seeds;
- ``masks``: the Jaccard overlap of the recorded masks (``masks/<benchmark>/<cell_id>.npz``) of two
  cells at their final levels, between methods and across seeds, per parameter and overall, beside
  the overlap two random masks of the same densities would have (:func:`mask_overlap`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from harness import maskfile
from harness.results import query
from harness.store import ResultsStore


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


ALL_LAYERS = "(all)"  # the ``layer`` of a pair's overall row


@dataclass(frozen=True)
class Overlap:
    """The counts of two masks over ``n`` weights: kept in A, kept in B, kept in both, kept in either."""

    n: int
    a: int
    b: int
    both: int
    either: int

    @classmethod
    def of(cls, a: maskfile.PackedMask, b: maskfile.PackedMask) -> Overlap:
        """Counted on the packed bits (the zero padding of the last byte adds nothing to any count)."""
        both = int(np.bitwise_count(a.bits & b.bits).sum())
        either = int(np.bitwise_count(a.bits | b.bits).sum())
        return cls(a.size, a.kept(), b.kept(), both, either)

    def __add__(self, other: Overlap) -> Overlap:
        return Overlap(*(x + y for x, y in zip(self.counts, other.counts, strict=True)))

    @property
    def counts(self) -> tuple[int, int, int, int, int]:
        return self.n, self.a, self.b, self.both, self.either

    def jaccard_kept(self) -> float:
        return _ratio(self.both, self.either)

    def jaccard_pruned(self) -> float:
        """Pruned in both / pruned in either: (n − |A ∪ B|) / (n − |A ∩ B|)."""
        return _ratio(self.n - self.either, self.n - self.both)


def chance_jaccard(layers: list[Overlap], pruned: bool = False) -> float:
    """The Jaccard of two random masks of the same per-layer densities: Σ E|A ∩ B| / Σ E|A ∪ B|.

    In a layer of n weights, a mask keeping a weights chosen uniformly at random and an independent
    one keeping b share E|A ∩ B| = a·b/n of them (a hypergeometric mean), and E|A ∪ B| = a + b − a·b/n.
    For one layer of densities p = a/n and q = b/n the ratio is p·q / (p + q − p·q) (e.g. 1/3 at
    p = q = 1/2); over several layers the sums are taken first, as the overall Jaccard sums its counts.
    It is the ratio of the expectations, within O(1/n) of the expected ratio. For the pruned sets
    the same with n − a and n − b weights pruned.
    """
    both = either = 0.0
    for layer in layers:
        a, b = (layer.n - layer.a, layer.n - layer.b) if pruned else (layer.a, layer.b)
        shared = a * b / layer.n if layer.n else 0.0
        both += shared
        either += a + b - shared
    return _ratio(both, either)


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")  # two empty sets: the overlap is undefined, not 0 or 1


@dataclass(frozen=True)
class _Cell:
    benchmark: str
    cell_id: str
    model: str
    dataset: str
    method: str
    params: str
    sparsity: float
    seed: int
    level: int

    @property
    def label(self) -> str:
        return self.method if self.params in ("{}", "") else f"{self.method} {self.params}"


def mask_overlap(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Jaccard of kept and of pruned weights between two cells' masks at their final levels, per parameter
    and overall (``layer`` = ``(all)``), with :func:`chance_jaccard` beside each.

    Pairs: two methods (or one method's two parameter sets) at the same benchmark, model, data set,
    sparsity and seed (``compare`` = ``method``), and two seeds of the same method and sparsity
    (``compare`` = ``seed``). Only cells whose every row is ``ok`` and whose final level's masks were
    recorded count. A parameter one cell masked and the other did not is wholly kept in the other;
    a parameter whose shapes differ (channels removed, ``remove: true``) is left out of the pair.
    """
    final = _query(
        results_dir,
        """
        SELECT benchmark, cell_id, any_value(model) AS model, any_value(dataset) AS dataset,
               any_value(method) AS method, any_value(method_params) AS params,
               round(arg_max(sparsity, level), 6) AS sparsity, any_value(seed) AS seed, max(level) AS level
        FROM cells GROUP BY benchmark, cell_id HAVING bool_and(status = 'ok') ORDER BY ALL
        """,
        "finished cells",
    )
    store = ResultsStore(results_dir)
    masks: dict[_Cell, maskfile.LevelMasks] = {}
    for row in final.itertuples(index=False):
        cell = _Cell(
            row.benchmark, row.cell_id, row.model, row.dataset, row.method, row.params or "{}",
            float(row.sparsity), int(row.seed), int(row.level),
        )  # fmt: skip
        data = store.load_masks(cell.benchmark, cell.cell_id)
        levels = maskfile.decode(data) if data else {}
        if cell.level in levels:
            masks[cell] = levels[cell.level]
    if not masks:
        raise MissingColumns(
            f"{results_dir}: no finished cell has recorded masks (masks/<benchmark>/<cell_id>.npz); cells keep "
            "them unless the spec says record_masks: false (cells run before masks were kept: harness run --force)"
        )
    rows = [row for kind, a, b in _pairs(list(masks)) for row in _pair_rows(kind, a, b, masks[a], masks[b])]
    if not rows:
        raise MissingColumns(
            f"{results_dir}: {len(masks)} cells have masks, but no two share a setting (model, data set, sparsity "
            "and seed for methods; method and sparsity for seeds)"
        )
    return pd.DataFrame(rows)


def _pairs(cells: list[_Cell]) -> Iterator[tuple[str, _Cell, _Cell]]:
    setting = lambda c: (c.benchmark, c.model, c.dataset, c.sparsity)  # noqa: E731
    by_seed = lambda c: (*setting(c), c.seed)  # noqa: E731
    by_method = lambda c: (*setting(c), c.method, c.params)  # noqa: E731
    for kind, key, order in (("method", by_seed, lambda c: c.label), ("seed", by_method, lambda c: c.seed)):
        for _, group in itertools.groupby(sorted(cells, key=lambda c: (key(c), order(c))), key):
            yield from ((kind, a, b) for a, b in itertools.combinations(list(group), 2))


def _pair_rows(kind: str, a: _Cell, b: _Cell, masks_a: maskfile.LevelMasks, masks_b: maskfile.LevelMasks):
    layers: dict[str, Overlap] = {}
    for name in sorted(masks_a.keys() | masks_b.keys()):
        ma, mb = masks_a.get(name), masks_b.get(name)
        ma = ma or maskfile.PackedMask.full(mb.shape)
        mb = mb or maskfile.PackedMask.full(ma.shape)
        if ma.shape == mb.shape:
            layers[name] = Overlap.of(ma, mb)
    common = {
        "benchmark": a.benchmark, "model": a.model, "dataset": a.dataset, "sparsity": a.sparsity, "compare": kind,
        "method_a": a.label, "method_b": b.label, "seed_a": a.seed, "seed_b": b.seed,
    }  # fmt: skip
    overall = [(ALL_LAYERS, sum(layers.values(), Overlap(0, 0, 0, 0, 0)), list(layers.values()))]
    for layer, counts, parts in overall + [(name, o, [o]) for name, o in layers.items()]:
        yield {
            **common,
            "layer": layer,
            "weights": counts.n,
            "density_a": _ratio(counts.a, counts.n),
            "density_b": _ratio(counts.b, counts.n),
            "jaccard_kept": counts.jaccard_kept(),
            "chance_kept": chance_jaccard(parts),
            "jaccard_pruned": counts.jaccard_pruned(),
            "chance_pruned": chance_jaccard(parts, pruned=True),
        }


def _query(results_dir: str | os.PathLike, sql: str, what: str) -> pd.DataFrame:
    try:
        frame = query(results_dir, sql)
    except duckdb.BinderException as exc:
        raise MissingColumns(f"{results_dir}: the results lack {what}: {str(exc).splitlines()[0]}") from None
    if frame.empty:
        raise MissingColumns(f"{results_dir}: no rows with {what}")
    return frame


ANALYSES = {"density": density_profile, "lmc": lmc_barriers, "gradient-flow": gradient_flow, "masks": mask_overlap}
