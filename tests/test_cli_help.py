"""`harness --help` describes the tool, `--version` prints it, and a switch is shown as a switch."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import harness
from harness.cli import app

COMMANDS = ["run", "status", "submit", "list", "query", "report"]


def test_help_says_what_the_tool_does_and_what_its_exit_codes_mean() -> None:
    shown = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert shown.exit_code == 0
    assert "Benchmark neural-network pruning and compression methods" in shown.stdout
    assert "0 every cell ok, 1 a cell failed, 2 bad input" in shown.stdout
    assert all(command in shown.stdout for command in COMMANDS)


def test_version_prints_the_package_version_and_exits_0() -> None:
    shown = CliRunner().invoke(app, ["--version"])
    assert (shown.exit_code, shown.stdout) == (0, f"harness {harness.__version__}\n")


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["harness", *COMMANDS])
def test_flags_are_shown_as_flags_not_as_bool_values(command: list[str]) -> None:
    shown = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "<bool>" not in shown.stdout
    assert "--help" in shown.stdout


def test_a_boolean_option_still_works_as_a_switch(tmp_path) -> None:
    spec = tmp_path / "bench.yaml"
    spec.write_text(
        "name: tiny\nmodels: [lenet_300_100]\ndatasets: [digits]\nmethods: [random]\nsparsities: [0.5]\nseeds: [0]\n"
    )
    shown = CliRunner().invoke(app, ["run", str(spec), "--dry-run", "--results", str(tmp_path / "results")])
    assert shown.exit_code == 0, shown.output
    assert "tiny: 1 cells — 0 done, 0 failed before, 1 to run" in shown.stdout
    assert not (tmp_path / "results").exists()
