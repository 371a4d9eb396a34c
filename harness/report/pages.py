"""The report's content, whatever the format: pages made of sections of notes, figures and tables.

HTML and Markdown render these same objects, so the two never say different things. Every value
is formatted here; the templates only lay it out (and escape it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import quote

import matplotlib
import pandas as pd

from harness.leaderboard import method_label
from harness.report.checklist import checklist
from harness.report.data import ReportData, many_classes, slug
from harness.report.plots import PLOT_POINTS, Baseline, Figure, Line, evenly_spaced, styles, tradeoff_svg
from harness.report.ranking import Ranking, pareto_front, rank
from harness.report.tuning import history, provenance_notes, study_rows


@dataclass(frozen=True)
class Cell:
    """A value in a table or a note: text, optionally a link, a shade (heatmap) or bold."""

    text: str
    page: str | None = None  # another page of this site, by slug
    anchor: str | None = None  # a row on that page (or this one)
    url: str | None = None  # a link outside the site
    shade: str | None = None  # background colour, as #rrggbb
    bold: bool = False

    def href(self, ext: str) -> str | None:
        if self.url:
            return self.url
        if self.page is None and self.anchor is None:
            return None
        return (f"{self.page}{ext}" if self.page else "") + (f"#{self.anchor}" if self.anchor else "")


@dataclass
class Table:
    headers: list[str]
    rows: list[list[list[Cell]]]  # row → column → the cells shown in it (usually one)
    anchors: list[str | None] = field(default_factory=list)  # an id per row, where rows are link targets
    align: str = ""  # "l" or "r" per column; by default names left, numbers right
    wrap: bool = False  # long prose in cells wraps; otherwise the table scrolls sideways

    def alignment(self, column: int) -> str:
        return self.align[column] if column < len(self.align) else ("l" if column < 2 else "r")


@dataclass
class Section:
    title: str
    anchor: str
    notes: list[list[Cell]] = field(default_factory=list)  # paragraphs of text runs and links
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


@dataclass
class Page:
    slug: str
    title: str
    sections: list[Section]
    summary: str = ""
    ranking: Ranking | None = None  # a data set × model page's ranking, for the LaTeX tables


@dataclass(frozen=True)
class Options:
    heatmap_at: float = 8.0  # the compression the per-layer sparsity heatmap is drawn at
    mlflow_url: str = "http://127.0.0.1:5000"


# -- formatting --------------------------------------------------------------------------------


def _nan(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def percent(value: float | None, std: float | None = None) -> str:
    if _nan(value):
        return "—"
    return f"{100 * value:.2f}" + ("" if _nan(std) else f" ± {100 * std:.2f}")


def times(value: float | None) -> str:
    return "—" if _nan(value) else ("∞" if math.isinf(value) else f"{value:.3g}×")


def count(value: float | None) -> str:
    if _nan(value):
        return "—"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:g}"


def size(value: float | None) -> str:
    if _nan(value):
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def text(*values: str) -> list[Cell]:
    return [Cell(v) for v in values]


def _size_axis(value: float, _: int) -> str:
    return size(value)


def _bits_axis(value: float, _: int) -> str:
    return f"{value:g}"


# -- the pages ---------------------------------------------------------------------------------


def build_pages(
    data: ReportData, options: Options, spec_links: dict[tuple[str, str], list[str]], extra: tuple[Page, ...] = ()
) -> list[Page]:
    """The index first, then one page per data set × model, then ``extra`` pages (linked from the index)."""
    style = styles(sorted(data.points["series"].unique()))  # a method has one colour on every page
    pairs = [_PairBuilder(data, dataset, model, options, spec_links, style) for dataset, model in data.pairs]
    tuning = _tuning_page(data)
    index = Page(
        "index",
        "Leaderboard",
        [_sources_section(data, spec_links)]
        + [pair.summary_section() for pair in pairs]
        + ([_tuning_summary(data)] if tuning else [])
        + _checklist_sections(data)
        + [Section(page.title, page.slug, notes=[[Cell(f"{page.summary} →", page=page.slug)]]) for page in extra]
        + [_definitions_section()],
        summary=f"{len(pairs)} data set × model pairs from {', '.join(s.label for s in data.sources)}",
    )
    return [index] + [pair.page() for pair in pairs] + ([tuning] if tuning else []) + list(extra)


TUNING_SLUG = "tuning"


def _tuning_summary(data: ReportData) -> Section:
    notes = [
        [Cell(note)]
        for (_, benchmark), tuned in sorted(data.tuned.items())
        for note in provenance_notes(benchmark, tuned)[:1]
    ]
    studies = data.trials["study"].nunique() if not data.trials.empty else 0
    notes.append([Cell(f"{studies} studies: optimisation histories and parameter importances →", page=TUNING_SLUG)])
    return Section("Tuning", "tuning", notes=notes)


def _tuning_page(data: ReportData) -> Page | None:
    """Each tuned benchmark's protocol and chosen points, then every study's history and importances."""
    if not data.tuned and data.trials.empty:
        return None
    sections = []
    for (source, benchmark), tuned in sorted(data.tuned.items()):
        table = Table(["data set / model", "method", "sparsity", "trials", "best val top-1 %", "chosen", "study"], [])
        table.align, table.wrap = "llrrrll", True
        for row in study_rows(tuned):
            table.rows.append(
                [
                    [Cell(f"{row['dataset']} / {row['model']}")],
                    [Cell(row["method"])],
                    [Cell(f"{row['sparsity']:g}")],
                    [Cell(str(row["trials"]))],
                    [Cell(percent(row.get("best_val_top1")))],
                    [Cell(row["chosen"])],
                    [Cell(row["study"], anchor=row["study"])],
                ]
            )
        name = benchmark if len(data.sources) == 1 else f"{source}/{benchmark}"
        notes = [[Cell(note)] for note in provenance_notes(name, tuned)]
        sections.append(
            Section(f"Protocol: {name}", f"protocol-{slug(source, benchmark)}", notes=notes, tables=[table])
        )
    trials = data.trials
    for study, rows in trials.groupby("study", sort=True) if not trials.empty else []:
        first = rows.iloc[0]
        title = f"{first['method']} at sparsity {first['sparsity']:g} on {first['dataset']} / {first['model']}"
        counted = rows[rows["counted"].fillna(False).astype(bool)]
        states = counted["state"].value_counts()
        note = (
            f"{study}: {len(counted)} counted trials ({', '.join(f'{n} {s.lower()}' for s, n in states.items())}), "
            f"{int(counted['epochs'].fillna(0).sum())} epochs, best validation top-1 "
            f"{percent(counted.loc[counted['state'] == 'COMPLETE', 'value'].max())}%."
        )
        importances = data.importances.get(study, {})
        table = Table(["parameter", "importance (fANOVA)"], [], align="lr")
        for parameter, value in sorted(importances.items(), key=lambda item: -item[1]):
            table.rows.append([[Cell(parameter)], [Cell(f"{value:.3f}")]])
        notes = [[Cell(note)]] + ([] if importances else [[Cell("importances: too few complete trials that differ")]])
        figure = Figure(f"history-{study}", f"{title}: optimisation history", history(trials, study))
        sections.append(Section(title, study, notes=notes, figures=[figure], tables=[table] if importances else []))
    return Page(TUNING_SLUG, "Tuning", sections, summary="tuning protocols, optimisation histories, importances")


def _sources_section(data: ReportData, spec_links: dict[tuple[str, str], list[str]]) -> Section:
    table = Table(["source", "folder", "benchmark", "cells ok", "cells failed", "pairs", "schema", "spec"], [])
    table.align = "lllrrrll"
    cells = data.cells
    for source in data.sources:
        mine = cells[cells["source"] == source.label]
        for benchmark, rows in mine.groupby("benchmark", sort=True):
            ok = rows["all_ok"].astype(bool)
            specs = spec_links.get((source.label, benchmark), [])
            table.rows.append(
                [
                    [Cell(source.label)],
                    [Cell(str(source.path))],
                    [Cell(benchmark)],
                    [Cell(str(int(ok.sum())))],
                    [Cell(str(int((~ok).sum())))],
                    [Cell(str(rows[rows["ok_rows"] > 0].groupby(["dataset", "model"]).ngroups))],
                    [Cell(", ".join(f"v{v}" for v in data.schema_versions.get((source.label, benchmark), [])))],
                    [Cell(href.rsplit("/", 1)[-1], url=href) for href in specs] or [Cell("—")],
                ]
            )
    return Section("Results", "results", tables=[table])


def _checklist_sections(data: ReportData) -> list[Section]:
    sections = []
    for (source, benchmark), rows in data.cells.groupby(["source", "benchmark"], sort=True):
        points = data.points[(data.points["source"] == source) & (data.points["benchmark"] == benchmark)]
        table = Table(["", "ShrinkBench recommends", "here"], [], align="lll", wrap=True)
        for check in checklist(rows, points):
            mark = {True: "✓", False: "✗", None: "–"}[check.passed]
            table.rows.append([[Cell(mark, bold=check.passed is False)], [Cell(check.item)], [Cell(check.detail)]])
        name = benchmark if data.cells["source"].nunique() == 1 else f"{source}/{benchmark}"
        sections.append(Section(f"Checklist: {name}", f"checklist-{slug(source, benchmark)}", tables=[table]))
    return sections


def _definitions_section() -> Section:
    notes = [
        "Compression ratio = all parameters / nonzero parameters (weights, biases, BatchNorm, classifier). "
        "Theoretical speedup = dense multiply-adds / nonzero multiply-adds of Conv and Linear layers, "
        "counted from real output shapes (definitions: harness/metrics.py).",
        "Accuracy is test top-1 after the level's fine-tuning (final epoch, never the best test epoch), "
        "mean ± sample std over seeds. Bands on the plots are ± one std.",
        "Accuracy at 2×…32× is interpolated linearly in log2(compression) between measured points and never "
        "extrapolated; the mean column is the area under the curve over the compression range every ranked "
        "method covers, divided by its width in log2 — methods are ranked by it.",
        "Every marker links to its operating point; each operating point lists its cells, and each cell its "
        "MLflow run, the benchmark file it came from and the versions that produced it.",
    ]
    return Section("Definitions", "definitions", notes=[[Cell(n)] for n in notes])


class _PairBuilder:
    """Everything about one data set × model: curves, ranking, front, heatmap, points, cells."""

    def __init__(
        self,
        data: ReportData,
        dataset: str,
        model: str,
        options: Options,
        spec_links: dict[tuple[str, str], list[str]],
        style: dict[str, tuple[str, str]],
    ) -> None:
        self.dataset, self.model, self.options, self.spec_links = dataset, model, options, spec_links
        self.title = f"{dataset} / {model}"
        self.slug = slug(dataset, model)
        self.points = data.pair_points(dataset, model)
        self.cells = data.pair_cells(dataset, model)
        self.layer_rows = data.layer_rows
        self._links: dict[tuple[str, str], Cell] = {}
        self.sources = [s.label for s in data.sources]
        self.many_classes = many_classes(dataset)
        curves = {
            series: (group["compression_ratio_mean"].tolist(), group["top1_mean"].tolist())
            for series, group in self.points.groupby("series")
        }
        self.ranking: Ranking = rank(curves)
        self.order = [row.series for row in self.ranking.rows]
        self.style = style
        self.dense = data.pair_dense(dataset, model)
        self.reference = data.pair_reference(dataset, model)
        self.figures = self._figures()

    # -- figures

    def _baselines(self, column: str) -> list[Baseline]:
        """One line per distinct dense accuracy: several only when compared runs trained different models."""
        dense = self.dense[self.dense[column].notna()]
        if dense[column].nunique() <= 1:
            return [Baseline("dense", 100 * value) for value in dense[column].head(1)]
        return [Baseline(f"dense [{r.source}/{r.benchmark}]", 100 * getattr(r, column)) for r in dense.itertuples()]

    def _lines(self, x: str, y: str) -> tuple[list[Line], int]:
        """Each series' points by ``x``, at most its share of ``PLOT_POINTS`` of them (evenly spaced along
        ``x``, both ends kept), and how many points there were in all."""
        points = self.points
        groups = []
        for series in self.order:
            group = points[(points["series"] == series) & points[x].map(math.isfinite) & points[f"{y}_mean"].notna()]
            if not group.empty:
                groups.append((series, group.sort_values(x, kind="stable")))
        share = max(1, PLOT_POINTS // max(1, len(groups)))
        lines = []
        for series, group in groups:
            group = group.iloc[evenly_spaced(len(group), share)]
            lines.append(
                Line(
                    series,
                    group[x].tolist(),
                    (100 * group[f"{y}_mean"]).tolist(),
                    (100 * group[f"{y}_std"]).tolist(),
                    [f"{self.slug}.html#{pid}" for pid in group["point_id"]],
                )
            )
        return lines, sum(len(group) for _, group in groups)

    def _figure(self, kind: str, title: str, x: str, y: str, xlabel: str, front: bool = False, **kw) -> Figure:
        name = f"{self.slug}-{kind}"
        lines, total = self._lines(x, y)
        front_xy, note = None, ""
        if front:
            xs, ys = self.points[x].tolist(), (100 * self.points[f"{y}_mean"]).tolist()
            on_front = pareto_front(xs, ys)
            on_front = [on_front[i] for i in evenly_spaced(len(on_front), PLOT_POINTS)]
            front_xy = ([xs[i] for i in on_front], [ys[i] for i in on_front])
        drawn = sum(len(line.x) for line in lines)
        if drawn < total:
            note = (
                f"{drawn:,} of {total:,} operating points drawn: each method's, evenly spaced along the x axis "
                "with both ends kept; the Operating points table lists every one."
            )
        ylabel = f"test {y.replace('top', 'top-')} (%)"
        svg = tradeoff_svg(name, lines, self._baselines(f"{y}_mean"), xlabel, ylabel, self.style, front_xy, **kw)
        return Figure(name, f"{self.title}: {title}", svg, note)

    def _figures(self) -> list[Figure]:
        figures = [
            self._figure("top1-compression", "top-1 vs compression", "compression_ratio_mean", "top1",
                         "compression ratio (log2)", front=True),
            self._figure("top1-speedup", "top-1 vs theoretical speedup", "theoretical_speedup_mean", "top1",
                         "theoretical speedup (log2)"),
        ]  # fmt: skip
        if self.many_classes and self.points["top5_mean"].notna().any():
            figures += [
                self._figure("top5-compression", "top-5 vs compression", "compression_ratio_mean", "top5",
                             "compression ratio (log2)"),
                self._figure("top5-speedup", "top-5 vs theoretical speedup", "theoretical_speedup_mean", "top5",
                             "theoretical speedup (log2)"),
            ]  # fmt: skip
        if self.points["size_bytes_mean"].notna().any():
            figures.append(
                self._figure("top1-size", "top-1 vs stored size", "size_bytes_mean", "top1", "size (log2)",
                             x_format=_size_axis)
            )  # fmt: skip
        if self.points["bits_per_weight_mean"].notna().any():
            figures.append(
                self._figure("top1-bits", "top-1 vs bits per weight", "bits_per_weight_mean", "top1",
                             "bits per weight (log2)", x_format=_bits_axis)
            )  # fmt: skip
        return figures

    # -- tables

    def dense_note(self) -> list[Cell]:
        parts = [
            f"dense {percent(r.top1_mean, r.top1_std)}% top-1"
            + (f", {percent(r.top5_mean)}% top-5" if self.many_classes else "")
            + f" ({r.seeds} seeds, {count(r.params)} parameters, {count(r.flops)} multiply-adds)"
            + (f" [{r.source}/{r.benchmark}]" if len(self.dense) > 1 else "")
            for r in self.dense.itertuples()
        ]
        return [Cell("; ".join(parts) or "no dense baseline recorded")]

    def dense_table(self) -> Table:
        table = Table(["baseline", "top-1 %", "top-5 %", "seeds", "parameters", "size (float32)", "multiply-adds"], [])
        for r in self.dense.itertuples():
            table.rows.append(
                [[Cell(f"{r.source}/{r.benchmark}")]]
                + [[Cell(v)] for v in (percent(r.top1_mean, r.top1_std), percent(r.top5_mean), str(r.seeds))]
                + [[Cell(count(r.params))], [Cell(size(r.size_bytes))], [Cell(count(r.flops))]]
            )
        return table

    def ranking_table(self) -> Table:
        common = self.ranking.common
        area = f"mean {times(common[0])}–{times(common[1])}" if common else "mean (no common range)"
        table = Table(["#", "method", *(f"{c:g}×" for c in self.ranking.compressions), area], [])
        columns = list(zip(*(row.at + (row.area,) for row in self.ranking.rows), strict=True))
        best = [max((v for v in col if not _nan(v)), default=math.nan) for col in columns]
        for number, row in enumerate(self.ranking.rows, 1):
            values = [*row.at, row.area]
            table.rows.append(
                [[Cell(str(number))], [Cell(row.series)]]
                + [[Cell(percent(v), bold=not _nan(v) and v == b)] for v, b in zip(values, best, strict=True)]
            )
        return table

    def front_table(self) -> Table:
        xs = self.points["compression_ratio_mean"].tolist()
        ys = self.points["top1_mean"].tolist()
        table = Table(["method", "compression", "speedup", "top-1 %", "point"], [], align="lrrrl")
        for i in pareto_front(xs, ys):
            point = self.points.iloc[i]
            table.rows.append(
                [
                    [Cell(point["series"])],
                    [Cell(times(point["compression_ratio_mean"]))],
                    [Cell(times(point["theoretical_speedup_mean"]))],
                    [Cell(percent(point["top1_mean"], point["top1_std"]))],
                    [Cell(point["point_id"], anchor=point["point_id"])],
                ]
            )
        return table

    def heatmap_table(self) -> Table | None:
        """Per-layer sparsity of each method at its operating point nearest ``heatmap_at`` (log2 distance)."""
        target = math.log2(self.options.heatmap_at)
        columns, layer_order, values = [], {}, {}
        for series in self.order:
            group = self.points[(self.points["series"] == series) & self.points["compression_ratio_mean"].notna()]
            finite = group[group["compression_ratio_mean"].map(math.isfinite)]
            if finite.empty:
                continue
            point = finite.loc[(finite["compression_ratio_mean"].map(math.log2) - target).abs().idxmin()]
            rows = self.layer_rows(point["source"], point["cell_ids"], int(point["level"]), point["control"])
            if rows.empty:
                continue
            column = f"{series} at {times(point['compression_ratio_mean'])}"
            columns.append(column)
            for layer in rows["layer"]:
                layer_order.setdefault(layer, len(layer_order))
            density = (rows["nonzero"] / rows["params"]).groupby(rows["layer"]).mean()
            params = rows.groupby("layer")["params"].max()
            for layer, value in density.items():
                values[(layer, column)] = 1.0 - value
                values[(layer, "params")] = params[layer]
        if not columns:
            return None
        cmap = matplotlib.colormaps["Blues"]
        table = Table(["layer", "parameters", *columns], [])
        for layer in sorted(layer_order, key=layer_order.get):
            row = [[Cell(layer)], [Cell(count(values.get((layer, "params"))))]]
            for column in columns:
                value = values.get((layer, column))
                shade = (
                    None if value is None else matplotlib.colors.to_hex(cmap(0.05 + 0.55 * value))
                )  # text stays legible
                row.append([Cell("—" if value is None else f"{100 * value:.0f}%", shade=shade)])
            table.rows.append(row)
        return table

    def points_table(self) -> Table:
        extra = [c for c in ("size_bytes", "bits_per_weight") if self.points[f"{c}_mean"].notna().any()]
        headers = ["point", "method", "level", "sparsity", "compression", "speedup", "top-1 %"]
        headers += ["top-5 %"] * self.many_classes + [
            {"size_bytes": "size", "bits_per_weight": "bits/weight"}[c] for c in extra
        ]
        table = Table([*headers, "seeds", "cells"], [], align="ll" + "r" * (len(headers) - 1) + "l")
        for point in self.points.sort_values(["series", "compression_ratio_mean"]).itertuples():
            row = [
                [Cell(point.point_id)],
                [Cell(point.series)],
                [Cell(str(int(point.level)))],
                [Cell(f"{point.sparsity:.4g}")],
                [Cell(times(point.compression_ratio_mean))],
                [Cell(times(point.theoretical_speedup_mean))],
                [Cell(percent(point.top1_mean, point.top1_std))],
            ]
            if self.many_classes:
                row.append([Cell(percent(point.top5_mean, point.top5_std))])
            for column in extra:
                value = getattr(point, f"{column}_mean")
                row.append([Cell(size(value) if column == "size_bytes" else ("—" if _nan(value) else f"{value:.3g}"))])
            row.append([Cell(str(point.seeds))])
            row.append([self.cell_link(point.source, cell_id) for cell_id in point.cell_ids])
            table.rows.append(row)
            table.anchors.append(point.point_id)
        return table

    def cell_anchor(self, source: str, cell_id: str) -> str:
        return f"cell-{self.sources.index(source)}-{quote(cell_id, safe='')}"

    def cell_link(self, source: str, cell_id: str) -> Cell:
        """A link to a cell's row; one object per cell, since every level's point links to it."""
        key = (source, cell_id)
        if key not in self._links:
            self._links[key] = Cell(cell_id, anchor=self.cell_anchor(source, cell_id))
        return self._links[key]

    def cells_table(self) -> Table:
        several = len(self.sources) > 1 or self.cells["benchmark"].nunique() > 1
        headers = ["cell", *(["from"] if several else []), "method", "seed", "levels", "top-1 % (last level)"]
        table = Table([*headers, "status", "MLflow run", "benchmark file", "versions", "finished"], [])
        table.align = "l" * (len(headers) - 3) + "rrr" + "lllll"
        for cell in self.cells.sort_values(["series", "sparsity", "seed"], kind="stable").itertuples():
            status = cell.status if cell.status == "ok" else f"{cell.status}: {str(cell.error).splitlines()[0][:200]}"
            run = cell.mlflow_run_id
            versions = f"harness {cell.harness_version}, torch {cell.torch_version}"
            if isinstance(cell.git_commit, str):
                versions += f", git {cell.git_commit[:10]}"
            specs = self.spec_links.get((cell.source, cell.benchmark), [])
            table.rows.append(
                [[Cell(cell.cell_id)]]
                + ([[Cell(f"{cell.source}/{cell.benchmark}")]] if several else [])
                + [
                    [Cell(cell.series)],
                    [Cell(str(cell.seed))],
                    [Cell(str(cell.levels))],
                    [Cell(percent(cell.top1))],
                    [Cell(status, bold=cell.status != "ok")],
                    [Cell(run[:12], url=f"{self.options.mlflow_url.rstrip('/')}/#/runs/{quote(run, safe='')}")]
                    if isinstance(run, str)
                    else [Cell("—")],
                    [Cell(href.rsplit("/", 1)[-1], url=href) for href in specs] or [Cell("—")],
                    [Cell(versions)],
                    [Cell(str(cell.finished_at)[:19] if not pd.isna(cell.finished_at) else "—")],
                ]
            )
            table.anchors.append(self.cell_anchor(cell.source, cell.cell_id))
        return table

    def reference_table(self) -> Table | None:
        """The leaderboard entries a reference row matches: yours beside the reference run's top-1."""
        if self.reference.empty:
            return None
        several = len(self.sources) > 1 or self.reference["benchmark"].nunique() > 1
        headers = [*(["from"] if several else []), "method", "sparsity", "seeds", "top-1 %", "reference top-1 %"]
        table = Table([*headers, "reference seeds", "difference (pt)", "inside spread"], [])
        table.align = "l" * (len(headers) - 4) + "rrrrrrl"
        rows = self.reference.sort_values(["benchmark", "sparsity", "top1_mean"], ascending=[True, True, False])
        for row in rows.itertuples():
            inside = "—" if pd.isna(row.inside_spread) else ("yes" if row.inside_spread else "no")
            table.rows.append(
                ([[Cell(f"{row.source}/{row.benchmark}")]] if several else [])
                + [
                    [Cell(method_label(row.method, row.method_params))],
                    [Cell(f"{row.sparsity:.4g}")],
                    [Cell(str(row.seeds))],
                    [Cell(percent(row.top1_mean, row.top1_std))],
                    [Cell(percent(row.reference_top1_mean, row.reference_top1_std))],
                    [Cell(str(int(row.reference_seeds)))],
                    [Cell(f"{round(100 * row.top1_diff, 2) + 0.0:+.2f}")],
                    [Cell(inside, bold=inside == "no")],
                ]
            )
        return table

    # -- sections

    def summary_section(self) -> Section:
        reference = self.reference_table()
        notes = [
            self.dense_note(),
            [Cell("details: curves, Pareto front, per-layer sparsity, every point →", page=self.slug)],
        ]
        if reference:
            notes.append(
                [
                    Cell(
                        "Reference: the shipped `make reproduce-quick` run (benchmarks/papers/reference/numbers.csv), "
                        "final level, mean ± std over its seeds; inside spread: within 2 of its std."
                    )
                ]
            )
        return Section(
            self.title,
            self.slug,
            notes=notes,
            figures=self.figures[:1],
            tables=[self.ranking_table(), *([reference] if reference else [])],
        )

    def page(self) -> Page:
        heatmap = self.heatmap_table()
        sections = [
            Section("Dense baseline", "dense", notes=[self.dense_note()], tables=[self.dense_table()]),
            Section("Trade-off curves", "curves", figures=self.figures),
            Section("Ranking", "ranking", tables=[self.ranking_table()]),
            Section("Pareto front", "pareto", tables=[self.front_table()]),
        ]
        if heatmap:
            sections.append(
                Section(
                    f"Per-layer sparsity near {times(self.options.heatmap_at)}",
                    "layers",
                    notes=[[Cell("each method at its operating point nearest the chosen compression (--heatmap-at)")]],
                    tables=[heatmap],
                )
            )
        sections += [
            Section("Operating points", "points", tables=[self.points_table()]),
            Section("Cells", "cells", tables=[self.cells_table()]),
        ]
        return Page(self.slug, self.title, sections, summary=self.dense_note()[0].text, ranking=self.ranking)
