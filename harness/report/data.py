"""What a report is made of: the rows of one or more results folders, and their operating points.

A *series* is one line on a plot: a method with its parameters, from one benchmark of one results
folder. An *operating point* is a series at one (level, sparsity), averaged over seeds; every
finished level is one, so an iterative method contributes its whole curve.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from harness.leaderboard import method_label
from harness.report.tuning import load_importances, tuned_section, tuning_mark
from harness.results import load
from harness.storage import is_remote
from harness.store import ResultsStore

MANY_CLASSES = 100  # from this many classes on, top-5 is reported beside top-1
POINT_METRICS = ("top1", "top5", "compression_ratio", "theoretical_speedup", "size_bytes", "bits_per_weight")


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
    """Every row of every source (``source`` column added) and the derived tables."""

    sources: list[Source]
    cells: pd.DataFrame  # every row, ok or failed
    layers: pd.DataFrame
    points: pd.DataFrame  # operating points of the ok rows
    specs: dict[tuple[str, str], dict[str, str]]  # (source, benchmark) -> {file name: text} of its benchmark files
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)  # the trials view of every source
    importances: dict[str, dict[str, float]] = field(default_factory=dict)  # study -> parameter -> importance
    tuned: dict[tuple[str, str], dict] = field(default_factory=dict)  # (source, benchmark) -> its `tuned:` section

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(dataset, model) pairs with at least one ok row, sorted."""
        return sorted({(d, m) for d, m in zip(self.points["dataset"], self.points["model"], strict=True)})

    def pair_points(self, dataset: str, model: str) -> pd.DataFrame:
        return self.points[(self.points["dataset"] == dataset) & (self.points["model"] == model)]

    def pair_cells(self, dataset: str, model: str) -> pd.DataFrame:
        return self.cells[(self.cells["dataset"] == dataset) & (self.cells["model"] == model)]


def load_report_data(sources: list[Source]) -> ReportData:
    cells, layers, trials, specs, importances, tuned = [], [], [], {}, {}, {}
    for source in sources:
        cells.append(load(source.path, "cells").assign(source=source.label))
        layers.append(load(source.path, "layers").assign(source=source.label))
        trials.append(load(source.path, "trials").assign(source=source.label))
        importances.update(load_importances(source.path))
        store = ResultsStore(source.path)
        for benchmark in cells[-1]["benchmark"].dropna().unique():
            specs[(source.label, benchmark)] = {p.name: store.read_spec(p) for p in store.specs(benchmark)}
            if (section := tuned_section(list(specs[(source.label, benchmark)].values()))) is not None:
                tuned[(source.label, benchmark)] = section
    frame = pd.concat(cells, ignore_index=True)
    frame["series"] = _series_labels(frame, tuned)
    return ReportData(
        sources,
        frame,
        pd.concat(layers, ignore_index=True),
        operating_points(frame),
        specs,
        pd.concat(trials, ignore_index=True),
        importances,
        tuned,
    )


def _series_labels(cells: pd.DataFrame, tuned: dict[tuple[str, str], dict] | None = None) -> pd.Series:
    """``method(params)``, marked with how it was tuned, qualified by source and benchmark only when the
    report holds several."""
    tuned = tuned or {}
    base = {  # a tuned cell's parameters -> its spec entry's, so that a method stays one series across sparsities
        (source, benchmark, c["model"], c["dataset"], c["method"], _canonical({**c["method_params"], **c["params"]})):
        _canonical(c["method_params"])
        for (source, benchmark), section in tuned.items()
        for c in section.get("cells") or []
    }  # fmt: skip
    keys = zip(cells["source"], cells["benchmark"], cells["model"], cells["dataset"], cells["method"], strict=True)
    params = [
        base.get((*key, _canonical(json.loads(p or "{}"))), p)
        for key, p in zip(keys, cells["method_params"], strict=True)
    ]
    labels = [method_label(m, p) for m, p in zip(cells["method"], params, strict=True)]
    marks = {key: tuning_mark(section) for key, section in tuned.items()}
    labels = [
        f"{label} ({marks[(source, benchmark)]})" if (source, benchmark) in marks else label
        for label, source, benchmark in zip(labels, cells["source"], cells["benchmark"], strict=True)
    ]
    qualify = [key for key in ("source", "benchmark") if cells[key].nunique() > 1]
    if qualify:
        where = cells[qualify].astype(str).agg("/".join, axis=1)
        labels = [f"{label} [{w}]" for label, w in zip(labels, where, strict=True)]
    return pd.Series(labels, index=cells.index, dtype=object)


def _canonical(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


POINT_KEYS = ["dataset", "model", "series", "source", "benchmark", "level", "sparsity"]


def operating_points(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per operating point: mean, std and seed count of each metric, and the cells behind it."""
    ok = cells[cells["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=[*POINT_KEYS, "seeds", "cell_ids", "point_id"])
    grouped = ok.groupby(POINT_KEYS, sort=True, dropna=False)
    stats = grouped[list(POINT_METRICS)].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    points = stats.join(grouped["seed"].nunique().rename("seeds"))
    points = points.join(grouped["cell_id"].agg(lambda ids: sorted(set(ids))).rename("cell_ids")).reset_index()
    points = points.sort_values(["dataset", "model", "series", "compression_ratio_mean"], ignore_index=True)
    points["point_id"] = [f"pt{i}" for i in range(len(points))]
    return points


def dense_baselines(cells: pd.DataFrame) -> pd.DataFrame:
    """The unpruned model of each (source, benchmark): absolute top-1/top-5, size and FLOPs, over seeds."""
    ok = cells[(cells["status"] == "ok") & cells["dense_top1"].notna()]
    per_model = ok.drop_duplicates(["source", "benchmark", "pretrain_key"])
    grouped = per_model.groupby(["source", "benchmark"], sort=True)
    frame = grouped.agg(
        top1_mean=("dense_top1", "mean"),
        top1_std=("dense_top1", "std"),
        top5_mean=("dense_top5", "mean"),
        seeds=("seed", "nunique"),
        params=("params_total", "max"),
        flops=("flops_dense", "max"),
    ).reset_index()
    frame["size_bytes"] = frame["params"] * 4.0  # float32
    return frame


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
