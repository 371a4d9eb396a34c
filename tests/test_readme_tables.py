"""The README's method, model and data-set tables are exactly what the registries say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("registry", ["methods", "models", "datasets"])
def test_readme_table_matches_harness_list_markdown(registry: str) -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "harness.cli", "list", registry, "--markdown"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert listing.count("\n") > 3
    assert listing in README, f"README is out of date: paste `harness list {registry} --markdown`"
