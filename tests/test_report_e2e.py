"""A real tiny benchmark, end to end and nothing faked: `harness run` (Ray, Lightning on digits, MLflow,
the Parquet store), then `harness report`, whose pages trace every point back to that run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_SPEC
from typer.testing import CliRunner

from harness.cli import app
from harness.results import load

HARNESS = Path(sys.executable).with_name("harness")


@pytest.mark.slow
@pytest.mark.ray
def test_a_tiny_benchmark_run_then_reported(write_spec, tmp_path: Path) -> None:
    spec = write_spec(TINY_SPEC)
    results, out = tmp_path / "results", tmp_path / "site"
    run = subprocess.run(
        [str(HARNESS), "run", str(spec), "--results", str(results)],
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    report = CliRunner().invoke(app, ["report", "--results", str(results), "--out", str(out)])
    assert report.exit_code == 0, report.output

    cells = load(results)
    assert len(cells) == 4 and set(cells["status"]) == {"ok"}
    [pair] = out.glob("digits--lenet_300_100-*.html")
    page = pair.read_text()
    index = (out / "index.html").read_text()
    assert index.count("<figure><svg") == 1 and "global_magnitude" in index and "layer_magnitude" in index
    # every cell of the run is on the pair page with its MLflow run and the benchmark file it came from
    for cell in cells.itertuples():
        assert f'id="cell-0-{cell.cell_id}"' in page
        assert f"/#/runs/{cell.mlflow_run_id}" in page
    [spec_copy] = (out / "specs").rglob("*.yaml")
    assert spec_copy.read_text() == TINY_SPEC
    assert f'href="specs/{spec_copy.parent.name}/{spec_copy.name}"' in page
    # the dense baseline's absolute accuracy is stated, as measured
    dense = cells["dense_top1"].iloc[0]
    assert f"dense {100 * dense:.2f}% top-1" in index
    assert (out / "index.md").exists() and (out / pair.with_suffix(".md").name).exists()
