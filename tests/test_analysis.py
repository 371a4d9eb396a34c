"""`harness analyze` over results written by hand: densities, barriers and gradient flow averaged
over seeds as computed here, and a clear exit 2 when the results lack what an analysis reads."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.analysis import MissingColumns, density_profile, gradient_flow, lmc_barriers
from harness.store import ResultsStore
from tests.results_factory import write_benchmark
from tests.test_claims import gradient, imp


def test_density_profile_is_the_per_layer_mean_over_seeds(tmp_path: Path):
    write_benchmark(tmp_path, methods=("global_magnitude",), sparsities=(0.5,), seeds=(0, 1, 2))
    frame = density_profile(tmp_path).set_index("layer")
    # the factory prunes fc1 at 1.0 x sparsity, fc2 at 0.8 x, fc3 at 0.5 x (global skew)
    assert frame.loc["fc1", "density"] == pytest.approx(0.5, abs=1e-3)
    assert frame.loc["fc2", "density"] == pytest.approx(0.6, abs=1e-2)
    assert frame.loc["fc3", "density"] == pytest.approx(0.8, abs=1e-2)
    assert set(frame["seeds"]) == {3}


def test_lmc_barriers_average_the_levels_over_seeds(tmp_path: Path):
    store = ResultsStore(tmp_path)
    for seed, barrier in zip((0, 1, 2), (0.01, 0.02, 0.06), strict=True):
        store.write(imp(seed, [0.9, 0.9], barriers=[None, barrier]))
    frame = lmc_barriers(tmp_path)
    assert list(frame["level"]) == [1]
    assert frame["barrier"].iloc[0] == pytest.approx(0.03)
    assert frame["barrier_sd"].iloc[0] == pytest.approx(pd.Series([0.01, 0.02, 0.06]).std())
    assert frame["barrier_copies"].isna().all()  # not recorded: null, not zero


def test_lmc_barriers_show_the_copies_barrier_from_the_first_level(tmp_path: Path):
    store = ResultsStore(tmp_path)
    for seed, copies in zip((0, 1, 2), (0.01, 0.03, 0.05), strict=True):
        store.write(imp(seed, [0.9, 0.9], barriers=[None, 0.02], copies=[copies, 2 * copies]))
    frame = lmc_barriers(tmp_path).set_index("level")
    assert list(frame.index) == [0, 1]  # level 0 has a copy, though no level before it
    assert frame.loc[0, "barrier_copies"] == pytest.approx(0.03) and pd.isna(frame.loc[0, "barrier"])
    assert frame.loc[1, "barrier_copies"] == pytest.approx(0.06) and frame.loc[1, "barrier"] == pytest.approx(0.02)
    assert frame.loc[1, "barrier_copies_sd"] == pytest.approx(0.04)  # sd of 0.02, 0.06, 0.10: √((0.04² + 0.04²) / 2)


def test_gradient_flow_means_and_missing_columns(tmp_path: Path):
    store = ResultsStore(tmp_path / "g")
    for seed, value in zip((0, 1), (1.0, 3.0), strict=True):
        store.write(gradient("rigl", seed, 0.9, "gradient_flow", value))
    frame = gradient_flow(tmp_path / "g")
    assert list(frame["gradient_flow"]) == pytest.approx([2.0, 2.2])  # epoch e: mean of value * (1 + 0.1 e)
    write_benchmark(tmp_path / "plain", methods=("random",), sparsities=(0.5,), seeds=(0,))
    with pytest.raises(MissingColumns, match="gradient_flow: true"):
        gradient_flow(tmp_path / "plain")
    with pytest.raises(MissingColumns, match="lmc_points"):
        lmc_barriers(tmp_path / "plain")


def test_cli_analyze_csv_and_mask_overlap_without_masks_says_what_it_needs(tmp_path: Path):
    write_benchmark(tmp_path, methods=("layer_magnitude",), sparsities=(0.75,), seeds=(0, 1, 2))
    cli = [sys.executable, "-m", "harness.cli", "analyze"]
    out = subprocess.run(
        [*cli, "density", "--results", str(tmp_path), "--format", "csv"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    frame = pd.read_csv(io.StringIO(out.stdout))
    assert frame["density"].tolist() == pytest.approx([0.25, 0.25, 0.2])  # fc3: round(10 * 0.25) = 2 of 10
    masks = subprocess.run([*cli, "masks", "--results", str(tmp_path)], capture_output=True, text=True)
    assert masks.returncode == 2 and "record_masks: false" in masks.stdout + masks.stderr  # none written here


def test_the_report_claims_page_shows_the_barriers(tmp_path: Path):
    from harness.report import build_report

    store = ResultsStore(tmp_path / "r")
    for seed, barrier in zip((0, 1, 2), (0.01, 0.02, 0.06), strict=True):
        store.write(imp(seed, [0.9, 0.9], barriers=[None, barrier]))
    build_report([tmp_path / "r"], tmp_path / "site", formats=("markdown",))
    page = (tmp_path / "site" / "claims.md").read_text()
    section = page.split("## Linear mode connectivity")[1]
    assert "| imp | 0.8 | 1 | 0.03 |" in section
    assert "## Gradient flow" not in page  # not recorded: no section
