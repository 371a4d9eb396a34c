"""Trade-off curves as SVG text made with matplotlib: no JavaScript, nothing fetched, works offline.

Text stays text (``svg.fonttype = none``) and matplotlib escapes it, so a method's name cannot become
markup. Every marker links to its operating point's row, which names the cells, their MLflow runs
and the benchmark file they came from. A plot draws at most ``PLOT_POINTS`` markers per kind however
large the results, so its SVG stays small; the caller says when points were left out.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass

import matplotlib
import numpy as np
from markupsafe import Markup

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

MARKERS = "osD^vPX*<>"
PLOT_POINTS = 400  # markers a plot draws at most (shared among its lines); the tables list every point
WIDTH, HEIGHT = 7.0, 4.2  # inches of a trade-off plot without its legend
LEGEND_COLUMNS, LEGEND_CHARS = 2, 52  # an 8-pt column of a 7-inch plot holds 52 characters
# a legend's height in inches, measured with matplotlib at 8 pt: 0.175 an entry, 0.155 each further line of a
# wrapped label, and the padding (10 one-line entries: 1.76 in; 10 of three lines: 4.65 in)
LEGEND_ENTRY, LEGEND_LINE, LEGEND_PAD = 0.175, 0.155, 0.04
# fixed margins in inches (ticks and axis labels at 9 pt), so every plot's axes are the same size and nothing
# has to be measured before drawing (matplotlib's constrained layout drew each plot twice: 30 % of its time)
LEFT, RIGHT, TOP, BOTTOM, LEGEND_GAP = 0.75, 0.25, 0.2, 0.62, 0.12


@dataclass(frozen=True)
class Line:
    """One series: a point per operating point, its std over seeds, and the link of each point."""

    label: str
    x: list[float]
    y: list[float]
    y_std: list[float]
    urls: list[str]


@dataclass(frozen=True)
class Baseline:
    label: str
    y: float


@dataclass(frozen=True)
class Figure:
    """A plot ready to place: its name (file stem), title, and the SVG text."""

    name: str
    title: str
    svg: Markup  # matplotlib escaped every label in it: safe to inline in HTML
    note: str = ""  # what the plot leaves out, if anything


def evenly_spaced(count: int, most: int) -> list[int]:
    """Positions of at most ``most`` of ``count`` ordered items, evenly spaced, the first and last kept:
    the same items every time, so a report is reproducible."""
    if count <= most:
        return list(range(count))
    if most <= 1:
        return [0][:most]
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def styles(labels: list[str]) -> dict[str, tuple[str, str]]:
    """A colour and marker per series, the same on every plot of a page."""
    colors = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20").colors
    return {label: (colors[i % len(colors)], MARKERS[i % len(MARKERS)]) for i, label in enumerate(labels)}


def _text(label: str, width: int | None = None) -> str:
    """A label as matplotlib shows it literally: ``$`` is not mathtext, a leading ``_`` is not hidden;
    with ``width``, wrapped onto lines of at most that many characters (a long method name cannot widen a
    legend past its plot)."""
    if width:
        label = textwrap.fill(label, width, break_on_hyphens=False)
    label = label.replace("$", r"\$")
    return "\u200b" + label if label.startswith("_") else label


def legend_height(labels: list[str], columns: int) -> float:
    """Inches of a legend's tallest column: matplotlib fills its columns in order, as ``np.array_split``
    splits (the first ``len % columns`` columns one entry longer)."""
    lines = np.array([label.count("\n") + 1 for label in labels], dtype=int)
    tallest = max(
        (len(chunk) * LEGEND_ENTRY + (chunk - 1).sum() * LEGEND_LINE for chunk in np.array_split(lines, columns)),
        default=0.0,
    )
    return float(tallest) + LEGEND_PAD


def _log2_locator(low: float, high: float) -> LogLocator:
    """Ticks at the powers of two, and between them where fewer than two powers fall in view (a plot of
    compressions from 3.0× to 3.6× would have no labelled tick at all)."""
    if math.floor(math.log2(high)) - math.ceil(math.log2(low)) >= 1:
        return LogLocator(base=2)
    return LogLocator(base=2, subs=(1.0, 1.25, 1.5, 1.75))


def _times(value: float, _: int) -> str:
    return f"{value:g}×"


def tradeoff_svg(
    name: str,
    lines: list[Line],
    baselines: list[Baseline],
    xlabel: str,
    ylabel: str,
    style: dict[str, tuple[str, str]],
    front: tuple[list[float], list[float]] | None = None,
    x_format=_times,
) -> Markup:
    """Accuracy against a log2 axis: a line and ±std band per series, dense baselines as horizontal lines.
    The legend sits below the axes, its labels wrapped to its columns, and the plot grows by its height, so
    however many series a page has the axes keep their size."""
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": name, "font.size": 9}):
        fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
        for line in lines:
            color, marker = style[line.label]
            order = np.argsort(line.x, kind="stable")
            x, y = np.asarray(line.x)[order], np.asarray(line.y)[order]
            std = np.nan_to_num(np.asarray(line.y_std, dtype=float)[order])  # one seed: no band
            ax.plot(x, y, color=color, linewidth=1.5, label=_text(line.label, LEGEND_CHARS))
            ax.fill_between(x, y - std, y + std, color=color, alpha=0.18, linewidth=0)
            points = ax.scatter(x, y, color=color, marker=marker, s=22, zorder=3)
            points.set_urls([line.urls[i] for i in order])
        for i, baseline in enumerate(baselines):
            ax.axhline(
                baseline.y,
                color="0.25",
                linestyle=("--", ":", "-.")[i % 3],
                linewidth=1,
                label=_text(baseline.label, LEGEND_CHARS),
            )
        if front and front[0]:
            ax.scatter(
                *front, s=90, facecolors="none", edgecolors="black", linewidths=0.9, zorder=4, label="Pareto front"
            )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(_log2_locator(*ax.get_xlim()))
        ax.xaxis.set_major_formatter(FuncFormatter(x_format))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", linewidth=0.4, alpha=0.5)
        handles, labels = ax.get_legend_handles_labels()
        legend = legend_height(labels, LEGEND_COLUMNS)
        height = HEIGHT + legend
        fig.set_size_inches(WIDTH, height)
        fig.subplots_adjust(
            left=LEFT / WIDTH, right=1 - RIGHT / WIDTH, top=1 - TOP / height, bottom=(BOTTOM + legend) / height
        )
        fig.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, (legend + LEGEND_GAP) / height),
            ncol=LEGEND_COLUMNS,
            frameon=False,
            fontsize=8,
            borderaxespad=0,
        )
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
        plt.close(fig)
    text = buffer.getvalue()
    return Markup(text[text.index("<svg") :])  # inline in HTML: no XML prolog or doctype


def history_svg(name: str, numbers: list[int], values: list[float | None], states: list[str]) -> Markup:
    """A study's optimisation history: each trial's validation score by trial number, and the best so far.

    Each kind of marker is thinned to ``PLOT_POINTS`` evenly spaced trials; the best-so-far line is exact
    (drawn through every trial where it rises)."""
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": name, "font.size": 9}):
        fig, ax = plt.subplots(figsize=(5.0, 2.8), layout="constrained")
        for state, marker, color in (("COMPLETE", "o", "tab:blue"), ("PRUNED", "x", "tab:orange")):
            shown = [(n, v) for n, v, s in zip(numbers, values, states, strict=True) if s == state and v is not None]
            shown = [shown[i] for i in evenly_spaced(len(shown), PLOT_POINTS)]
            if shown:
                ax.scatter(*zip(*shown, strict=True), marker=marker, color=color, s=20, label=state.lower(), zorder=3)
        complete = [(n, v) for n, v, s in zip(numbers, values, states, strict=True) if s == "COMPLETE"]
        if complete:
            best = np.maximum.accumulate([v for _, v in complete])
            rises = [i for i in range(len(best)) if i == 0 or best[i] > best[i - 1]] + [len(best) - 1]
            steps = sorted(set(rises))
            ax.step([complete[i][0] for i in steps], best[steps], where="post", color="0.2", linewidth=1.2,
                    label="best so far")  # fmt: skip
        failed = [n for n, s in zip(numbers, states, strict=True) if s == "FAIL"]
        failed = [failed[i] for i in evenly_spaced(len(failed), PLOT_POINTS)]
        if failed:
            ax.scatter(failed, [0.0] * len(failed), marker="v", color="tab:red", s=20, label="failed (at 0)")
        ax.set_xlabel("trial")
        ax.set_ylabel("validation top-1")
        ax.grid(True, linewidth=0.4, alpha=0.5)
        ax.legend(loc="lower right", frameon=False, fontsize=7)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
        plt.close(fig)
    text = buffer.getvalue()
    return Markup(text[text.index("<svg") :])
