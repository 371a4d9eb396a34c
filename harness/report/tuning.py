"""What the report says about tuning: which entries were tuned and how, and each study's search.

The facts come from the results folder only: the ``tuned:`` section of the benchmark file a run
came from (protocol, budget, the chosen point of each study), the ``trials`` view, and the
importances ``harness tune`` wrote beside its journal. No Optuna storage is opened here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness.report.plots import history_svg
from harness.storage import open_root


def tuned_section(spec_texts: list[str]) -> dict[str, Any] | None:
    """The ``tuned:`` section of the newest benchmark file a benchmark ran (texts oldest first), if
    ``harness tune`` wrote it."""
    if not spec_texts:
        return None
    raw = yaml.safe_load(spec_texts[-1]) or {}
    tuned = raw.get("tuned") if isinstance(raw, dict) else None
    return tuned if isinstance(tuned, dict) else None


def tuning_mark(tuned: dict[str, Any]) -> str:
    """How a leaderboard entry was tuned, short enough for a series label."""
    if tuned.get("protocol") == "defaults":
        return "untuned: published defaults"
    return f"tuned: {tuned.get('protocol')}, {tuned.get('sampler')}, {tuned.get('trials')} trials"


def load_importances(results: str | Path) -> dict[str, dict[str, float]]:
    """Every study's parameter importances under ``results/tuning/`` (a local folder or an object-store prefix)."""
    files = open_root(results)
    out: dict[str, dict[str, float]] = {}
    for entry in sorted(files.list(files.root / "tuning"), key=lambda e: e.name):
        if entry.name.endswith(".importances.json") and (data := files.read_bytes(entry.path)) is not None:
            out.update(json.loads(data))
    return out


def provenance_notes(benchmark: str, tuned: dict[str, Any]) -> list[str]:
    if tuned.get("protocol") == "defaults":
        return [f"{benchmark}: not tuned (protocol defaults): every method runs with the spec's own parameters."]
    return [
        f"{benchmark} was tuned from {tuned.get('source')} with protocol {tuned.get('protocol')} "
        f"(sampler {tuned.get('sampler')}, pruner {tuned.get('pruner')}): every study had {tuned.get('trials')} "
        f"trials (failed and pruned ones count) and at most {tuned.get('max_epochs')} fine-tune epochs per "
        f"trial, searched on seed {tuned.get('search_seed')}.",
        "Trials were scored on the validation split held out from training; the test split was never loaded "
        "into a trial. The accuracy on the leaderboard is test accuracy of the chosen points, over the spec's seeds.",
        "A pruner judges each trial's per-epoch validation curve after it came back (no compute saved). Methods "
        "that train with the pretrain recipe (lottery-ticket rewinding, pruning at init, sparse training) "
        "ignore searched fine-tune fields.",
    ]


def study_rows(tuned: dict[str, Any]) -> list[dict[str, Any]]:
    """The tuned cells, each with its chosen point in words."""
    rows = []
    for cell in tuned.get("cells") or []:
        chosen = {**{f"finetune.{k}": v for k, v in (cell.get("finetune") or {}).items()}, **(cell.get("params") or {})}
        rows.append({**cell, "chosen": ", ".join(f"{k}={_short(v)}" for k, v in chosen.items()) or "—"})
    return rows


def history(trials: pd.DataFrame, study: str):
    """The optimisation history figure of one study (counted trials, in trial order)."""
    mine = trials[(trials["study"] == study) & trials["counted"].fillna(False).astype(bool)].sort_values("trial")
    values = [None if pd.isna(v) else float(v) for v in mine["value"]]
    return history_svg(study, [int(n) for n in mine["trial"]], values, list(mine["state"]))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
