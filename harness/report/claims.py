"""The report's claims page: `harness claims` for every results folder, the shipped reference beside it,
and the analyses behind the claims (`harness analyze lmc` and `gradient-flow`) where the results have them."""

from __future__ import annotations

import pandas as pd

from harness.analysis import MissingColumns, gradient_flow, lmc_barriers
from harness.claims import check_claims
from harness.report.data import ReportData
from harness.report.pages import Cell, Page, Section, Table

CLAIMS_SLUG = "claims"
SHADES = {"holds": "#d9f2d9", "does not hold": "#f7d4d4", "not enough data": "#eeeeee"}


def claims_page(data: ReportData) -> Page:
    """One section per results folder: each claim's verdict and evidence, and the reference run's verdict."""
    sections = []
    for source in data.sources:
        frame = check_claims(source.path)
        table = Table(["claim", "paper", "verdict", "evidence", "reference"], [], wrap=True, align="lllll")
        for row in frame.itertuples(index=False):
            table.rows.append(
                [
                    [Cell(row.claim)],
                    [Cell(row.paper)],
                    [Cell(row.verdict, shade=SHADES[row.verdict])],
                    [Cell(f"{row.statement}: {row.evidence}")],
                    [Cell(row.reference_verdict or "—", shade=SHADES.get(row.reference_verdict))],
                ]
            )
        counts = frame["verdict"].value_counts()
        summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in SHADES)
        notes = [
            [Cell(f"{summary}. Each verdict rests on a 95 % paired t-interval over seeds (harness/claims/stats.py).")],
            [Cell("Reference: `make reproduce-quick` on the project's CPU machine (benchmarks/papers/reference/).")],
        ]
        sections.append(Section(f"Claims: {source.label}", f"claims-{source.label}", notes=notes, tables=[table]))
        sections += analysis_sections(source.label, source.path)
    return Page(CLAIMS_SLUG, "Claims", sections, summary="the seed papers' claims checked on these results")


def analysis_sections(label: str, path) -> list[Section]:
    """The LMC barrier per level and the gradient flow per epoch, as tables; none where not recorded."""
    sections = []
    for title, analysis, columns in (
        (
            "Linear mode connectivity",
            lmc_barriers,
            ["barrier", "barrier_sd", "barrier_copies", "barrier_copies_sd", "top1_minus_dense"],
        ),
        ("Gradient flow", gradient_flow, None),
    ):
        try:
            frame = analysis(path)
        except MissingColumns:
            continue
        shown = columns or [c for c in frame.columns if c.startswith("gradient_flow")]
        keys = [c for c in ("benchmark", "model", "method", "sparsity", "level", "phase", "epoch") if c in frame]
        table = Table([*keys, *shown, "seeds"], [])
        for row in frame.to_dict("records"):
            table.rows.append([[Cell(_text(row[c]))] for c in [*keys, *shown, "seeds"]])
        sections.append(Section(f"{title}: {label}", f"{title.lower().replace(' ', '-')}-{label}", tables=[table]))
    return sections


def _text(value: object) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return str(value)
