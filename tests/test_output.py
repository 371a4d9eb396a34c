"""Output in pipes and logs: tables print whole, a dry run of a large matrix is a summary, progress is log lines."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from results_factory import fake_cell, write_benchmark
from rich.console import Console

from harness.leaderboard import leaderboard, print_leaderboard
from harness.output import SECTION, ProgressReport, plain_table
from harness.results import connect
from harness.schema import CellResult
from harness.spec import expand, load_spec
from harness.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]


def harness(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI with stdout and stderr as pipes, the way sbatch, `| less` or `> file` see it (COLUMNS unset)."""
    environment = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PYTHONPATH": str(ROOT)} | (env or {})
    command = [sys.executable, "-m", "harness.cli", *args]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def test_a_plain_table_is_aligned_and_holds_every_value_whole() -> None:
    text = plain_table(
        ("method", "top1"), [("deep_compression(bits=5)", "0.91"), SECTION, ("random", "0.5")], "t", right=("top1",)
    )
    assert text == (
        "t\n"
        "method                    top1\n"
        "------------------------  ----\n"
        "deep_compression(bits=5)  0.91\n"
        "\n"
        "random                     0.5\n"
    )


def test_list_in_a_pipe_shows_every_name_and_summary_whole(tmp_path: Path) -> None:
    listed = harness("list", "methods", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()[2:]]
    assert "deep_compression" in names and "global_activation" in names
    assert "…" not in listed.stdout and "│" not in listed.stdout


def test_query_table_in_a_pipe_prints_every_column_of_select_star(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "results", methods=("deep_compression",), sparsities=(0.5,), seeds=(0, 1))
    answer = harness("query", "SELECT * FROM cells ORDER BY seed", "--results", "results", cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    frame = connect(tmp_path / "results").execute("SELECT * FROM cells ORDER BY seed").df()
    header, rule, *lines = answer.stdout.splitlines()
    assert header.split() == list(frame.columns)  # no column squeezed out, none cut
    assert len(lines) == len(frame) == 2
    assert all(line.split()[list(frame.columns).index("method")] == "deep_compression" for line in lines)
    assert "…" not in answer.stdout


def test_the_leaderboard_off_a_terminal_keeps_method_names_whole(tmp_path: Path) -> None:
    write_benchmark(tmp_path, methods=("deep_compression", "random"), sparsities=(0.5,), seeds=(0, 1))
    out = io.StringIO()
    print_leaderboard(leaderboard(connect(tmp_path), "demo"), Console(file=out, width=40))
    lines = out.getvalue().splitlines()
    assert lines[0] == "digits / lenet_300_100  (dense top1 95.10%)"  # (0.95 + 0.952) / 2
    assert [line.split()[0] for line in lines[3:]] == ["deep_compression", "random"]


def test_the_leaderboard_shows_a_tickets_control_arms_as_lines_of_their_own(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    for seed in (0, 1):
        base = fake_cell("demo", "digits", "lenet_300_100", "imp", 0.9, seed, method_params={"controls": ["reinit"]})
        row = base.rows[0]
        ticket, reinit = {**row, "top1": 0.8 + 0.02 * seed}, {**row, "top1": 0.5 + 0.02 * seed, "control": "reinit"}
        store.write(CellResult(base.cell_id, [reinit, ticket], base.epochs, base.layers))
    board = leaderboard(connect(tmp_path), "demo")
    out = io.StringIO()
    print_leaderboard(board, Console(file=out, width=40))
    lines = [line.split("  ")[0] for line in out.getvalue().splitlines()[3:]]
    assert lines == ["imp(controls=['reinit'])", "imp(controls=['reinit']) (reinit)"]
    assert board["top1_mean"].tolist() == pytest.approx([0.81, 0.51])  # each arm over its own rows, both seeds


SPEC = """\
name: axes
models: [lenet_300_100, mnist1d_mlp]
datasets: [digits]
methods: [random, {name: global_magnitude, prune_classifier: true}]
sparsities: [0.5, 0.9, 0.99]
seeds: [0, 1]
"""


def test_dry_run_prints_counts_per_axis_and_csv_lists_every_cell(tmp_path: Path) -> None:
    (tmp_path / "axes.yaml").write_text(SPEC)
    cells = expand(load_spec(tmp_path / "axes.yaml"))
    assert len(cells) == 2 * 2 * 3 * 2
    summary = harness("run", "axes.yaml", "--dry-run", "--results", "results", cwd=tmp_path)
    assert summary.returncode == 0, summary.stderr
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in summary.stdout.splitlines() if line[:1].isalpha()}
    assert rows[("model", "lenet_300_100")] == ["0", "0", "12"]  # 2 methods × 3 sparsities × 2 seeds
    assert rows[("sparsity", "0.99")] == ["0", "0", "8"]
    assert rows[("seed", "1")] == ["0", "0", "12"]
    assert ("method", 'global_magnitude{"prune_classifier":') in rows
    assert rows[("all", "0")] == ["0", "24"]  # value column empty: done, failed, pending
    assert len(summary.stdout.splitlines()) < 30  # a summary, not a line per cell

    listed = harness("run", "axes.yaml", "--dry-run", "--format", "csv", "--results", "results", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    table = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert [row["cell_id"] for row in table] == [cell.cell_id for cell in cells]
    assert {row["state"] for row in table} == {"pending"}
    assert "24 cells — 0 done, 0 failed before, 24 to run" in listed.stderr
    assert not (tmp_path / "results").exists()


def test_status_in_a_pipe_counts_done_cells_from_the_table(tmp_path: Path) -> None:
    (tmp_path / "axes.yaml").write_text(SPEC.replace("mnist1d_mlp", "lenet5"))
    cells = expand(load_spec(tmp_path / "axes.yaml"))
    store = ResultsStore(tmp_path / "results")
    for cell in cells[:5]:  # seed 0, lenet_300_100: random × 3, global_magnitude × 2
        fake = fake_cell("axes", cell.dataset, cell.model, cell.method, cell.sparsity, cell.seed, cell_id=cell.cell_id)
        store.write(CellResult(cell.cell_id, fake.rows, fake.epochs, fake.layers))
    shown = harness("status", "axes.yaml", "--results", "results", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in shown.stdout.splitlines() if line[:1].isalpha()}
    assert rows[("model", "lenet_300_100")] == ["5", "0", "7"]
    assert rows[("method", "random")] == ["3", "0", "9"]
    assert rows[("all", "5")] == ["0", "19"]


def test_progress_off_a_terminal_is_a_log_line_with_rate_and_eta(capsys: pytest.CaptureFixture) -> None:
    report = ProgressReport(Console(file=io.StringIO()), total=20, seconds=3600)
    with report:
        report.start = time.monotonic() - 10  # 10 s ago
        report.update(finished=5, failed=1, running=2)  # within the interval: no line
        assert report.line() == ("cells 5/20 done, 1 failed, 2 running, 0.50 cells/s, elapsed 0:00:10, ETA 0:00:30")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # one when it starts, one when it ends
    assert lines[0].endswith("cells 0/20 done, 0 failed, 0 running, 0.00 cells/s, elapsed 0:00:00, ETA unknown")
    assert lines[1].endswith("cells 5/20 done, 1 failed, 2 running, 0.50 cells/s, elapsed 0:00:10, ETA 0:00:30")


def test_the_leaderboard_names_the_files_it_pools_and_warns_of_cells_from_another(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from harness.cli import _print_summary

    store = write_benchmark(tmp_path, methods=("random",), sparsities=(0.5,), seeds=(0, 1), spec_text="name: demo\n")
    other = store.save_spec("demo", "name: demo\n# another file of the same name\n")
    mine = tmp_path / "demo.yaml"
    mine.write_text("name: demo\n")
    ids = sorted(connect(tmp_path).execute("SELECT cell_id FROM cells").df().cell_id)
    _print_summary("demo", tmp_path, {"ok": 1, "failed": 0}, {ids[0]}, mine)
    out, err = capsys.readouterr()
    [pooled] = [line for line in out.splitlines() if line.startswith("leaderboard of")]
    assert pooled.startswith("leaderboard of 2 ok cells of benchmark 'demo' from 2 benchmark files: ")
    assert f"{other}" in pooled and "(this file)" in pooled
    assert err.strip() == (
        f"warning: 1 of those cells are not in {mine}: they came from another benchmark file named 'demo'; "
        "give this one its own name to rank it alone"
    )
    assert len(ids) == 2


def test_progress_can_also_be_a_line_every_n_cells(capsys: pytest.CaptureFixture) -> None:
    with ProgressReport(Console(file=io.StringIO()), total=10, seconds=3600, cells=4) as report:
        for finished in range(1, 11):
            report.update(finished=finished, failed=0, running=1)
    done = [line.split(" cells ")[1].split(" done")[0] for line in capsys.readouterr().err.splitlines()]
    assert done == ["0/10", "4/10", "8/10", "10/10"]  # the start, every 4 cells, the end
