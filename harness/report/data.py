"""What a report is made of: per results folder, DuckDB aggregates of its rows, never the rows themselves.

A *series* is one line on a plot: a method with its parameters, from one benchmark of one results
folder. An *operating point* is a series at one (level, sparsity), averaged over seeds; every
finished level is one, so an iterative method contributes its whole curve. DuckDB groups the
``cells`` view into operating points, one summary row per cell and the dense baselines, so the
rows that reach Python grow with the cells and points of a benchmark, not with its table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import duckdb
import pandas as pd

from harness.claims.numbers import NUMBERS, beside_reference, leaderboards, read_numbers
from harness.leaderboard import method_label
from harness.report.tuning import load_importances, tuned_section, tuning_mark
from harness.results import connect
from harness.storage import is_remote
from harness.store import ResultsStore, read_retrying

MANY_CLASSES = 100  # from this many classes on, top-5 is reported beside top-1
POINT_METRICS = ("top1", "top5", "compression_ratio", "theoretical_speedup", "size_bytes", "bits_per_weight")
# what names a series in a source: a lottery ticket's control arm is a series of its own
SERIES_KEYS = ["benchmark", "model", "dataset", "method", "method_params", "control"]
POINT_KEYS = ["dataset", "model", "series", "source", "benchmark", "level", "sparsity"]
_SERIES_TABLE = "__report_series"  # the series of each key (columns key_<name>), registered on each connection
_SERIES_JOIN = f"JOIN {_SERIES_TABLE} ON " + " AND ".join(f"{k} IS NOT DISTINCT FROM key_{k}" for k in SERIES_KEYS)

# one row per cell: its last level (what the cells table shows), and what the checklist asks of all its rows
CELLS_SQL = f"""
SELECT benchmark, cell_id, series,
       count(*) AS levels,
       bool_and(status = 'ok') AS all_ok,
       count(*) FILTER (status = 'ok') AS ok_rows,
       {", ".join(f"arg_max({c}, level) AS {c}" for c in (
           "pretrain_key", "dataset", "model", "method", "method_params", "sparsity", "seed", "status", "error",
           "top1", "mlflow_run_id", "harness_version", "torch_version", "git_commit", "finished_at"))},
       coalesce(bool_or(compression_ratio IS NULL) FILTER (status = 'ok'), false) AS compression_ratio_missing,
       coalesce(bool_or(theoretical_speedup IS NULL) FILTER (status = 'ok'), false) AS theoretical_speedup_missing,
       count(dense_top1) FILTER (status = 'ok') AS dense_rows,
       count(layer_collapse) FILTER (status = 'ok') AS collapse_recorded,
       coalesce(list(DISTINCT sparsity ORDER BY sparsity) FILTER (status = 'ok' AND layer_collapse), [])
           AS collapsed_at
FROM cells {_SERIES_JOIN}
GROUP BY benchmark, cell_id, series
ORDER BY benchmark, cell_id
"""  # fmt: skip

POINTS_SQL = f"""
SELECT dataset, model, series, control, benchmark, level, sparsity,
       {", ".join(f"avg({m}) AS {m}_mean, stddev_samp({m}) AS {m}_std" for m in POINT_METRICS)},
       count(DISTINCT seed) AS seeds,
       list(DISTINCT cell_id ORDER BY cell_id) AS cell_ids
FROM finished_levels {_SERIES_JOIN}
GROUP BY dataset, model, series, control, benchmark, level, sparsity
"""

# the unpruned model of each (benchmark, data set, model): one row per dense model (pretrain_key), its
# first finished row, then mean and spread over those models
DENSE_SQL = """
WITH per_model AS (
    SELECT benchmark, dataset, model, pretrain_key,
           arg_min(dense_top1, (cell_id, level)) AS dense_top1, arg_min(dense_top5, (cell_id, level)) AS dense_top5,
           arg_min(seed, (cell_id, level)) AS seed, arg_min(params_total, (cell_id, level)) AS params_total,
           arg_min(flops_dense, (cell_id, level)) AS flops_dense
    FROM finished_levels WHERE dense_top1 IS NOT NULL
    GROUP BY ALL
)
SELECT benchmark, dataset, model, avg(dense_top1) AS top1_mean, stddev_samp(dense_top1) AS top1_std,
       avg(dense_top5) AS top5_mean, count(DISTINCT seed) AS seeds, max(params_total) AS params,
       max(flops_dense) AS flops
FROM per_model GROUP BY ALL
"""

SCHEMAS_SQL = "SELECT benchmark, list(DISTINCT schema_version ORDER BY schema_version) FROM cells GROUP BY ALL"


@dataclass(frozen=True)
class Source:
    """One results folder (or object-store URI) and the name it goes by in the report."""

    label: str
    path: str | Path


def sources_from(paths: list[str | os.PathLike], labels: list[str] | None = None) -> list[Source]:
    """Label each folder by ``labels`` or else its name (its parent's too where names repeat)."""
    paths = [str(p).rstrip("/") if is_remote(p) else Path(p) for p in paths]
    if labels and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} results folders; give one --label per --results")
    if not labels:
        full = [PurePosixPath(p.split("://", 1)[1]) if isinstance(p, str) else p.resolve() for p in paths]
        names = [p.name for p in full]
        labels = [f"{p.parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(full, names, strict=True)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two results folders share the label in {labels}; name them with --label")
    return [Source(label, path) for label, path in zip(labels, paths, strict=True)]


@dataclass
class ReportData:
    """The aggregates of every source (``source`` column added) and a connection to each for the rest."""

    sources: list[Source]
    cells: pd.DataFrame  # one row per cell, ok or failed: its last level, and counts over all its rows
    points: pd.DataFrame  # operating points of the ok rows
    dense: pd.DataFrame  # the dense baseline per (source, benchmark, dataset, model)
    schema_versions: dict[tuple[str, str], list[int]]  # (source, benchmark) -> schema versions of its rows
    specs: dict[tuple[str, str], dict[str, str]]  # (source, benchmark) -> {file name: text} of its benchmark files
    readers: dict[str, duckdb.DuckDBPyConnection] = field(default_factory=dict)  # source -> views, for layer rows
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)  # the trials view of every source
    importances: dict[str, dict[str, float]] = field(default_factory=dict)  # study -> parameter -> importance
    tuned: dict[tuple[str, str], dict] = field(default_factory=dict)  # (source, benchmark) -> its `tuned:` section
    # every source's leaderboard entries that a reference row matches, the reference beside (beside_reference)
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(dataset, model) pairs with at least one ok row, sorted."""
        return sorted({(d, m) for d, m in zip(self.points["dataset"], self.points["model"], strict=True)})

    def pair_points(self, dataset: str, model: str) -> pd.DataFrame:
        return self.points[(self.points["dataset"] == dataset) & (self.points["model"] == model)]

    def pair_cells(self, dataset: str, model: str) -> pd.DataFrame:
        return self.cells[(self.cells["dataset"] == dataset) & (self.cells["model"] == model)]

    def pair_reference(self, dataset: str, model: str) -> pd.DataFrame:
        if self.reference.empty:
            return self.reference
        return self.reference[(self.reference["dataset"] == dataset) & (self.reference["model"] == model)]

    def pair_dense(self, dataset: str, model: str) -> pd.DataFrame:
        return self.dense[(self.dense["dataset"] == dataset) & (self.dense["model"] == model)]

    def layer_rows(self, source: str, cell_ids: list[str], level: int, control: str = "none") -> pd.DataFrame:
        """The ``layers`` rows of some cells at one level and arm, in the order they were written (the model's)."""
        listed = ", ".join("?" for _ in cell_ids)
        sql = f"SELECT layer, params, nonzero FROM layers WHERE level = ? AND control = ? AND cell_id IN ({listed})"
        return read_retrying(lambda: self.readers[source].execute(sql, [level, control, *cell_ids]).df())


def load_report_data(sources: list[Source], numbers: Path | None = NUMBERS) -> ReportData:
    """Every source's aggregates; ``numbers``: the reference numbers CSV shown beside (none if absent)."""
    readers, specs, importances, tuned, keys = {}, {}, {}, {}, []
    for source in sources:
        con = readers[source.label] = connect(source.path)
        keys.append(_fetch(con, f"SELECT DISTINCT {', '.join(SERIES_KEYS)} FROM cells").assign(source=source.label))
        importances.update(load_importances(source.path))
        store = ResultsStore(source.path)
        for benchmark in sorted(keys[-1]["benchmark"].dropna().unique()):
            specs[(source.label, benchmark)] = {p.name: store.read_spec(p) for p in store.specs(benchmark)}
            if (section := tuned_section(list(specs[(source.label, benchmark)].values()))) is not None:
                tuned[(source.label, benchmark)] = section
    series = pd.concat(keys, ignore_index=True)
    series["series"] = _series_labels(series, tuned)
    cells, points, dense, trials, versions, beside = [], [], [], [], {}, []
    shipped = read_numbers(numbers) if numbers is not None and numbers.is_file() else None
    for source in sources:
        con = readers[source.label]
        mine = series.loc[series["source"] == source.label, [*SERIES_KEYS, "series"]]
        con.register(_SERIES_TABLE, mine.rename(columns={k: f"key_{k}" for k in SERIES_KEYS}))
        cells.append(_fetch(con, CELLS_SQL).assign(source=source.label))
        points.append(_fetch(con, POINTS_SQL).assign(source=source.label))
        dense.append(_fetch(con, DENSE_SQL).assign(source=source.label))
        trials.append(_fetch(con, "SELECT * FROM trials").assign(source=source.label))
        if shipped is not None:
            matched = beside_reference(leaderboards(con), shipped)
            beside.append(matched[matched["reference_top1_mean"].notna()].assign(source=source.label))
        for benchmark, listed in con.execute(SCHEMAS_SQL).fetchall():
            versions[(source.label, benchmark)] = [v for v in listed if v is not None]
    return ReportData(
        sources,
        pd.concat(cells, ignore_index=True),
        _numbered(pd.concat(points, ignore_index=True)),
        _dense(pd.concat(dense, ignore_index=True)),
        versions,
        specs,
        readers,
        pd.concat(trials, ignore_index=True),
        importances,
        tuned,
        pd.concat(beside, ignore_index=True) if beside else pd.DataFrame(),
    )


def _fetch(con: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    return read_retrying(lambda: con.execute(sql).df())


def _series_labels(keys: pd.DataFrame, tuned: dict[tuple[str, str], dict] | None = None) -> pd.Series:
    """``method(params)``, marked with how it was tuned, qualified by source and benchmark only when the
    report holds several."""
    tuned = tuned or {}
    base = {  # a tuned cell's parameters -> its spec entry's, so that a method stays one series across sparsities
        (source, benchmark, c["model"], c["dataset"], c["method"], _canonical({**c["method_params"], **c["params"]})):
        _canonical(c["method_params"])
        for (source, benchmark), section in tuned.items()
        for c in section.get("cells") or []
    }  # fmt: skip
    names = zip(keys["source"], keys["benchmark"], keys["model"], keys["dataset"], keys["method"], strict=True)
    params = [
        base.get((*key, _canonical(json.loads(p or "{}"))), p)
        for key, p in zip(names, keys["method_params"], strict=True)
    ]
    labels = [method_label(m, p, c) for m, p, c in zip(keys["method"], params, keys["control"], strict=True)]
    marks = {key: tuning_mark(section) for key, section in tuned.items()}
    labels = [
        f"{label} ({marks[(source, benchmark)]})" if (source, benchmark) in marks else label
        for label, source, benchmark in zip(labels, keys["source"], keys["benchmark"], strict=True)
    ]
    qualify = [key for key in ("source", "benchmark") if keys[key].nunique() > 1]
    if qualify:
        where = keys[qualify].astype(str).agg("/".join, axis=1)
        labels = [f"{label} [{w}]" for label, w in zip(labels, where, strict=True)]
    return pd.Series(labels, index=keys.index, dtype=object)


def _canonical(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _numbered(points: pd.DataFrame) -> pd.DataFrame:
    """Points in plotting order (by pair, series, compression), each with its id ``pt0``, ``pt1``, …"""
    points = points.sort_values(
        ["dataset", "model", "series", "compression_ratio_mean", "source", "benchmark", "level", "sparsity"],
        ignore_index=True,
        kind="stable",
    )
    points["cell_ids"] = points["cell_ids"].map(list)
    points["point_id"] = [f"pt{i}" for i in range(len(points))]
    return points


def _dense(dense: pd.DataFrame) -> pd.DataFrame:
    dense = dense.sort_values(["source", "benchmark", "dataset", "model"], ignore_index=True)
    dense["size_bytes"] = dense["params"] * 4.0  # float32
    return dense


def num_classes(dataset: str) -> int | None:
    """Classes of a registered data set; None for one this installation does not know."""
    from harness.data import DATASETS

    return DATASETS.get(dataset).num_classes if dataset in DATASETS else None


def many_classes(dataset: str) -> bool:
    classes = num_classes(dataset)
    return classes is not None and classes >= MANY_CLASSES


def slug(*parts: str) -> str:
    """A file name for a page: readable, and unique even when names differ only in odd characters."""
    text = "--".join(parts)
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:60] or "pair"
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"
