"""The report's claims page: `harness claims` for every results folder, the shipped reference beside it,
and the analyses behind the claims (`harness analyze lmc`, `gradient-flow` and `masks`) where the results have them."""

from __future__ import annotations

import pandas as pd

from harness.analysis import ALL_LAYERS, MissingColumns, gradient_flow, lmc_barriers, mask_overlap
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
    if overlap := mask_overlap_section(label, path):
        sections.append(overlap)
    return sections


OVERLAP_KEYS = ["benchmark", "model", "dataset", "sparsity", "compare", "method_a", "method_b"]
OVERLAP_VALUES = ["jaccard_kept", "chance_kept", "jaccard_pruned", "chance_pruned"]


def mask_overlap_section(label: str, path) -> Section | None:
    """Overall Jaccard per pair of methods (mean over seeds) and per method across seeds (mean over seed
    pairs), beside the chance level; None where no masks were recorded."""
    try:
        frame = mask_overlap(path)
    except MissingColumns:
        return None
    overall = frame[frame["layer"] == ALL_LAYERS]
    means = overall.groupby(OVERLAP_KEYS, sort=True)[OVERLAP_VALUES].mean()
    means["pairs"] = overall.groupby(OVERLAP_KEYS, sort=True).size()
    table = Table([*OVERLAP_KEYS, *OVERLAP_VALUES, "pairs"], [], align="l" * len(OVERLAP_KEYS))
    for keys, row in means.iterrows():
        table.rows.append([[Cell(_text(v))] for v in (*keys, *row[OVERLAP_VALUES], int(row["pairs"]))])
    notes = [
        [
            Cell(
                "Jaccard |A ∩ B| / |A ∪ B| of the weights two cells' final masks keep (and prune), over every "
                "masked weight. method: two methods at one seed, mean over seeds; seed: one method at two "
                "seeds, mean over seed pairs. Chance: two random masks of the same per-layer densities. "
                "Per layer: harness analyze masks."
            )
        ]
    ]
    return Section(f"Mask overlap: {label}", f"mask-overlap-{label}", notes=notes, tables=[table])


def _text(value: object) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return str(value)
