"""The report over many seeds and levels: DuckDB's aggregates equal a pandas computation over every row,
and plots draw a bounded number of markers, saying so."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from results_factory import fake_cell

from harness.report.data import load_report_data, sources_from
from harness.report.pages import Options, build_pages
from harness.report.plots import (
    HEIGHT,
    LEGEND_ENTRY,
    LEGEND_LINE,
    LEGEND_PAD,
    PLOT_POINTS,
    Baseline,
    Line,
    evenly_spaced,
    legend_height,
    styles,
    tradeoff_svg,
)
from harness.results import load
from harness.store import ResultsStore

LEVELS = 50
METHODS = ("global_magnitude", "random")
SPARSITIES = (0.5, 0.75, 0.875, 0.9375, 0.96875)
SEEDS = tuple(range(4))


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 methods × 5 sparsities × 4 seeds, each cell with 50 levels: 2,000 rows and 500 operating points."""
    root = tmp_path_factory.mktemp("many") / "results"
    store = ResultsStore(root)
    for method in METHODS:
        for sparsity in SPARSITIES:
            for seed in SEEDS:
                cell = fake_cell("demo", "digits", "lenet_300_100", method, sparsity, seed)
                first = cell.rows[0]
                rows = []
                for level in range(LEVELS):
                    reached = sparsity * (level + 1) / LEVELS
                    rows.append(
                        first
                        | {"level": level, "sparsity": round(reached, 6), "compression_ratio": 1 / (1 - reached)}
                        | {"top1": first["top1"] - 0.01 * level + 0.003 * seed}
                    )
                store.write(replace(cell, rows=rows, layers=[], epochs=[]))
    return root


def test_operating_points_and_cells_equal_a_pandas_computation_over_every_row(many: Path) -> None:
    data = load_report_data(sources_from([many]))
    rows = load(many, "cells")
    assert len(rows) == len(METHODS) * len(SPARSITIES) * len(SEEDS) * LEVELS
    expected = rows.groupby(["method", "level", "sparsity"]).agg(
        top1_mean=("top1", "mean"), top1_std=("top1", "std"), seeds=("seed", "nunique"),
        compression=("compression_ratio", "mean"), cells=("cell_id", lambda ids: sorted(set(ids))),
    )  # fmt: skip
    points = data.points.set_index(["series", "level", "sparsity"]).sort_index()
    assert len(points) == len(expected) == len(METHODS) * len(SPARSITIES) * LEVELS
    for (method, level, sparsity), want in expected.iterrows():
        got = points.loc[(method, level, sparsity)]
        assert got["top1_mean"] == pytest.approx(want["top1_mean"])
        assert got["top1_std"] == pytest.approx(want["top1_std"])
        assert got["compression_ratio_mean"] == pytest.approx(want["compression"])
        assert got["seeds"] == want["seeds"] == len(SEEDS)
        assert got["cell_ids"] == want["cells"]
    last = rows.sort_values("level").groupby("cell_id").tail(1).set_index("cell_id")
    cells = data.cells.set_index("cell_id")
    assert sorted(cells.index) == sorted(last.index)
    assert (cells["levels"] == LEVELS).all()
    assert cells["top1"].to_dict() == pytest.approx(last["top1"].to_dict())
    dense = data.dense.iloc[0]  # one dense model per seed: fake_cell adds 0.002 per seed
    per_seed = rows.drop_duplicates("pretrain_key")["dense_top1"]
    assert dense["top1_mean"] == pytest.approx(per_seed.mean()) and dense["top1_std"] == pytest.approx(per_seed.std())


def test_plots_draw_a_bounded_number_of_points_and_say_so(many: Path) -> None:
    pages = build_pages(load_report_data(sources_from([many])), Options(), {})
    pair = pages[1]
    curves = next(s for s in pair.sections if s.title == "Trade-off curves")
    total = len(METHODS) * len(SPARSITIES) * LEVELS
    for figure in curves.figures:
        markers = len(re.findall(rf'href="{re.escape(pair.slug)}\.html#pt\d+"', str(figure.svg)))
        assert 0 < markers <= PLOT_POINTS < total
        assert figure.note.startswith(f"{markers:,} of {total:,} operating points drawn")
    points = next(s for s in pair.sections if s.title == "Operating points").tables[0]
    assert len(points.rows) == total  # the table still lists every point


def test_thinning_is_even_keeps_both_ends_and_is_the_same_every_time() -> None:
    assert evenly_spaced(5, 10) == [0, 1, 2, 3, 4]
    assert evenly_spaced(101, 5) == [0, 25, 50, 75, 100]
    assert evenly_spaced(1000, 7) == evenly_spaced(1000, 7) and len(evenly_spaced(1000, 7)) == 7
    assert pd.Series(evenly_spaced(1000, 400)).is_monotonic_increasing


def test_a_plot_with_many_long_labelled_series_keeps_its_axes_and_grows_its_legend() -> None:
    """18 series, three named like a pipeline with its parameters (119 characters): before labels were wrapped and
    the plot grown, the legend squeezed the axes to nothing (the published curve was unreadable)."""
    pipeline = "pipeline(stages=[{'name': 'global_magnitude'}, {'name': 'bloomier', 'params': {'cell_bits': 10}}])"

    def plot(count: int) -> str:
        labels = [f"method_{i} [cpu_benchmark]" for i in range(min(count, 15))]
        labels += [f"{pipeline} [cpu_compression] {i}" for i in range(15, count)]
        lines = [Line(label, [1, 2, 4], [0.9, 0.8, 0.5], [0.01] * 3, ["#"] * 3) for label in labels]
        return tradeoff_svg("many", lines, [Baseline("dense", 0.95)], "compression", "top-1", styles(labels))

    def height(svg: str) -> float:
        return float(re.search(r'<svg[^>]* height="([\d.]+)pt"', svg).group(1))

    def axes_box(svg: str) -> tuple[float, float]:
        """Width and height (pt) of the axes' background rectangle, the first path of the axes group."""
        x0, y0, x1, y1 = map(float, AXES_PATH.search(svg).groups())
        return x1 - x0, y0 - y1

    few, many = plot(2), plot(18)
    # 2 series + dense in two columns: 2 one-line entries in the first. 18 + dense: 10 entries in the first column,
    # 9 in the second: 5 one-line names, the 3 pipelines wrapped at 52 characters onto 3 lines each, and dense.
    assert height(few) == pytest.approx(72 * (HEIGHT + 2 * LEGEND_ENTRY + LEGEND_PAD), abs=1)
    assert height(many) == pytest.approx(72 * (HEIGHT + 9 * LEGEND_ENTRY + 6 * LEGEND_LINE + LEGEND_PAD), abs=1)
    # the axes are 7 − 0.75 − 0.25 = 6.0 in wide and 4.2 − 0.2 − 0.62 = 3.38 in high however long the legend
    assert axes_box(few) == pytest.approx((72 * 6.0, 72 * 3.38), abs=0.5)
    assert axes_box(many) == pytest.approx(axes_box(few), abs=0.5)
    assert "[cpu_compression] 17" in many and "{'name': 'bloomier', 'params': {'cell_bits': 10}}])" in many


AXES_PATH = re.compile(
    r'id="axes_1">\s*<g id="patch_2">\s*<path d="M ([\d.]+) ([\d.]+)\s*L ([\d.]+) [\d.]+\s*L [\d.]+ ([\d.]+)'
)


def test_the_legend_height_the_plot_grows_by_is_the_height_matplotlib_draws() -> None:
    """The computed height against the legend's extent as matplotlib lays it out (within 0.05 in)."""
    labels = ["one", "two\nlines", "three\nlines\nhere", "one", "one"]
    with plt.rc_context({"font.size": 9}):
        fig, ax = plt.subplots(figsize=(7, 4))
        for label in labels:
            ax.plot([0, 1], [0, 1], label=label)
        legend = fig.legend(ncol=2, frameon=False, fontsize=8, borderaxespad=0)
        fig.canvas.draw()
        drawn = legend.get_window_extent().height / fig.dpi
        plt.close(fig)
    assert legend_height(labels, 2) == pytest.approx(drawn, abs=0.05)


@pytest.mark.parametrize(
    ("x", "ticks"),
    [
        ([3.03, 3.59], ["3.1×", "3.2×", "3.3×", "3.4×", "3.5×", "3.6×"]),
        ([3.03, 3.9], ["3×", "3.5×"]),
        ([1.5, 9.0], ["2×", "4×", "8×"]),
    ],
)
def test_a_narrow_compression_range_still_has_labelled_ticks(x: list[float], ticks: list[str]) -> None:
    # 3.03×–3.59× (ShrinkBench's MNIST-1D MLP at 90 % and 97 %) holds no power of two, and had no labelled tick:
    # ticks between the powers fill in; a range holding two powers or more keeps the powers alone
    svg = tradeoff_svg("narrow", [Line("a", x, [0.7, 0.4], [0.0, 0.0], ["#", "#"])], [], "c", "t", styles(["a"]))
    assert re.findall(r"[\d.]+×", svg) == ticks
