"""Every paper-scale spec and CPU twin in benchmarks/papers/ loads (load_spec needs no data files),
says where it comes from, and names only claims that exist; the Makefile's twins are all there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.claims import CLAIMS
from harness.spec import load_spec

PAPERS = Path(__file__).resolve().parents[1] / "benchmarks" / "papers"
SPECS = sorted(PAPERS.glob("*.yaml")) + sorted((PAPERS / "cpu").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(PAPERS)))
def test_spec_loads_and_states_its_source(path: Path):
    spec = load_spec(path)
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert re.search(r"\b(19|20)\d\d\b", header), f"{path.name}: the header comment must name its paper and year"
    named = (
        set(re.findall(r"\b([a-z_0-9]+\.[a-z_0-9*]+)\b", header.split("Claims read:")[-1]))
        if "Claims read:" in header
        else set()
    )
    for name in named:
        prefix = name.removesuffix("*")
        assert any(key == name or key.startswith(prefix) for key in CLAIMS), f"{path.name} names unknown claim {name}"
    assert spec.seeds and len(spec.seeds) >= 3, "a verdict needs three seeds or more"


def test_makefile_twins_exist():
    makefile = (PAPERS.parents[1] / "Makefile").read_text()
    twins = re.findall(r"^(?:QUICK_TWINS|ALL_TWINS)\s*:=((?:.*\\\n)*.*)$", makefile, re.M)
    names = " ".join(twins).replace("\\", " ").replace("$(QUICK_TWINS)", " ").split()
    assert len(names) >= 10
    for name in names:
        assert (PAPERS / "cpu" / f"{name}.yaml").is_file(), name
    assert set(names) == {p.stem for p in (PAPERS / "cpu").glob("*.yaml")}, "every twin is run by make reproduce"
