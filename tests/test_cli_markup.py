"""User text (method parameters, docstrings, error messages, SQL) is printed as it is, never as Rich markup:
``glob[al]_magnitude`` keeps its brackets and ``[/x]`` cannot raise MarkupError in any command."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from harness.results import load
from harness.runner import run_matrix
from harness.spec import expand, load_spec
from harness.store import ResultsStore

pytestmark = pytest.mark.slow

HARNESS = str(Path(sys.executable).with_name("harness"))
LABEL = "glob[al]_magnitude [/x] [bold]b[/bold]"

PLUGIN = '''\
from harness.methods import PruningMethod, register_method


@register_method("bracketed")
class Bracketed(PruningMethod):
    """Smallest |w| per layer; its summary holds [/x] and glob[al]_magnitude."""

    scope = "layer"

    class Params(PruningMethod.Params):
        label: str = "[/x]"
        fail: bool = False

    def score(self, ctx):
        if self.params.fail:
            raise RuntimeError(f"failed on purpose [/x] {self.params.label}")
        return {name: w.abs() for name, w in ctx.weights.items()}
'''


def harness(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a wide pseudo-terminal width, so no table folds a label over two lines."""
    env = os.environ | {"COLUMNS": "400"}
    return subprocess.run([HARNESS, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def bracketed(write_spec, tmp_path: Path) -> Path:
    (tmp_path / "bracketed.py").write_text(PLUGIN)
    return write_spec(f"""
name: brackets
plugins: [{tmp_path / "bracketed.py"}]
models: [lenet_300_100]
datasets: [digits]
methods:
  - {{name: bracketed, label: "{LABEL}"}}
  - {{name: bracketed, label: "{LABEL}", fail: true}}
sparsities: [0.5]
seeds: [0]
pretrain: {{epochs: 1, lr: 0.05, batch_size: 64}}
finetune: {{epochs: 0}}
""")


def test_every_command_prints_brackets_as_they_are(bracketed, results_dir) -> None:
    results = ("--results", str(results_dir))
    dry = harness("run", str(bracketed), *results, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert LABEL in dry.stdout

    ran = harness("run", str(bracketed), *results)
    assert ran.returncode == 1, ran.stderr  # one cell failed on purpose; the other ran and was stored
    assert "MarkupError" not in ran.stdout + ran.stderr
    assert f"RuntimeError: failed on purpose [/x] {LABEL}" in ran.stdout
    assert "bracketed(label=glob[al]_magnitude [/x] [bold]b[/bold])" in ran.stdout  # the leaderboard's row
    assert sorted(load(results_dir)["status"]) == ["failed", "ok"]

    status = harness("status", str(bracketed), *results)
    assert status.returncode == 0, status.stderr
    assert f'"label": "{LABEL}"' in status.stdout

    listed = harness("list", "methods", "--plugin", str(bracketed.parent / "bracketed.py"))
    assert listed.returncode == 0, listed.stderr
    assert "its summary holds [/x] and glob[al]_magnitude" in listed.stdout

    bad_sql = harness("query", "SELECT [/x] FROM cells", *results)
    assert bad_sql.returncode == 2 and "MarkupError" not in bad_sql.stderr
    assert "error: query failed:" in bad_sql.stderr and "[/x]" in bad_sql.stderr


def test_an_error_in_the_result_callback_never_stops_the_matrix(write_spec, results_dir) -> None:
    spec = write_spec("""
name: callback
models: [lenet_300_100]
datasets: [digits]
methods: [global_magnitude]
sparsities: [0.3, 0.6, 0.9]
seeds: [0]
pretrain: {epochs: 1, lr: 0.05, batch_size: 64}
finetune: {epochs: 0}
""")
    cells = expand(load_spec(spec))
    shown = []

    def on_result(cell, result) -> None:
        shown.append(cell.cell_id)
        if len(shown) == 1:
            raise ValueError("the display broke [/x]")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        progress = run_matrix(cells, ResultsStore(results_dir), on_result=on_result, max_parallel=1)
    assert (progress.ok, progress.failed) == (3, 0)
    assert len(shown) == 3, "every later cell was still run and shown"
    assert sorted(load(results_dir)["sparsity"]) == [0.3, 0.6, 0.9]
    messages = [str(w.message) for w in caught]
    assert any(f"cell {shown[0]} is saved, but showing it failed" in m and "[/x]" in m for m in messages), messages
