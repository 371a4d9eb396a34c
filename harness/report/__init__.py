"""``harness report``: the leaderboard as a static site, the same content as Markdown, LaTeX tables.

Data flows one way: results folders → :mod:`data` (rows, operating points) → :mod:`pages` (what
is said: sections of notes, figures and tables; uses :mod:`ranking`, :mod:`checklist`,
:mod:`plots`) → :mod:`render` (how it is written: HTML, Markdown, LaTeX).
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.claims.numbers import NUMBERS
from harness.report.claims import claims_page
from harness.report.data import ReportData, load_report_data, slug, sources_from
from harness.report.pages import Options, build_pages
from harness.report.render import write_html, write_latex, write_markdown

FORMATS = {"html": write_html, "markdown": write_markdown, "latex": write_latex}


class ReportError(ValueError):
    """Nothing to report, or a report asked for in a way that cannot work."""


def build_report(
    results: list[str | os.PathLike],
    out: os.PathLike,
    formats: tuple[str, ...] = ("html", "markdown"),
    labels: list[str] | None = None,
    options: Options = Options(),
    numbers: Path | None = NUMBERS,
) -> list[Path]:
    """Write the report of one or more results folders into ``out``; returns the files written.

    ``numbers``: the reference numbers whose top-1 the leaderboard shows beside yours (none if absent)."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ReportError(f"unknown format {', '.join(sorted(unknown))}; allowed: {', '.join(FORMATS)}")
    try:
        data = load_report_data(sources_from(results, labels), numbers)
    except (FileNotFoundError, ValueError) as exc:
        raise ReportError(str(exc)) from None
    if data.cells.empty:
        raise ReportError(f"no results in {', '.join(map(str, results))}: run a benchmark first")
    out = Path(out)
    specs = _copy_specs(data, out) if {"html", "markdown"} & set(formats) else {}
    pages = build_pages(data, options, specs, extra=(claims_page(data),))
    return [path for name in formats for path in FORMATS[name](pages, out)]


def _copy_specs(data: ReportData, out: Path) -> dict[tuple[str, str], list[str]]:
    """Copy each benchmark file beside the pages, so the site links to it offline."""
    links = {}
    for (source, benchmark), texts in data.specs.items():
        folder = Path("specs") / slug(source, benchmark)
        links[(source, benchmark)] = []
        for name, text in texts.items():
            (out / folder).mkdir(parents=True, exist_ok=True)
            (out / folder / name).write_text(text)
            links[(source, benchmark)].append((folder / name).as_posix())
    return links
