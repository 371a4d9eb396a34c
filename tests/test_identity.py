"""Code is part of a result's identity: a method's declared version enters the cell id (only when it is
not the default, so existing ids hold), every row records a hash of the method's source, and a dry
run or status says when rows in the table came from other code; ``run --force`` reruns them."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cell import execute_cell, pretrain
from harness.cli import app
from harness.methods import load_plugins, method_provenance
from harness.results import connect
from harness.spec import CellSpec, expand, load_spec
from harness.testing import tiny_cell

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "harness" / "methods" / "base.py"

PLUGIN = '''
from harness.methods import PruningMethod, register_method


@register_method("{name}_default")
class Default(PruningMethod):
    """|w|, version left at the default."""

    def score(self, ctx):
        return {{n: w.abs() for n, w in ctx.weights.items()}}


@register_method("{name}_two")
class Two(Default):
    """|w|, declared version 2."""

    version = "2"
'''


def write_plugin(folder: Path, name: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(PLUGIN.format(name=name))
    return path


def spec_for(folder: Path, methods: list[str], plugin: Path) -> Path:
    spec = folder / "bench.yaml"
    spec.write_text(
        f"name: ident\nmodels: [lenet_300_100]\ndatasets: [digits]\nmethods: [{', '.join(methods)}]\n"
        f"sparsities: [0.5]\nseeds: [0]\nplugins: [{plugin}]\n"
        "pretrain: {epochs: 1, lr: 0.05, batch_size: 256}\nfinetune: {epochs: 1, lr: 0.01, batch_size: 256}\n"
    )
    return spec


def test_a_non_default_version_changes_the_cell_id_and_the_default_does_not(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path, "versioned")
    spec = load_spec(spec_for(tmp_path, ["versioned_default", "versioned_two"], plugin))
    default, two = expand(spec)
    fields = {
        "benchmark": "ident",
        "model": "lenet_300_100",
        "dataset": "digits",
        "sparsity": 0.5,
        "seed": 0,
        "pretrain": spec.pretrain,
        "finetune": spec.finetune_recipe,
    }
    assert default.method_version is None
    assert default.cell_id == CellSpec(method="versioned_default", **fields).cell_id
    assert two.method_version == "2"
    assert two.cell_id != CellSpec(method="versioned_two", **fields).cell_id
    assert two.cell_id == CellSpec(method="versioned_two", method_version="2", **fields).cell_id


def source_hash(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p.resolve() for p in paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def test_rows_record_the_hash_of_the_method_s_source_and_an_edit_changes_it(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path, "hashed")
    load_plugins([str(plugin)])
    cell = tiny_cell("hashed_two")
    rows = execute_cell(cell, pretrain(cell)).rows
    assert {row["status"] for row in rows} == {"ok"}
    assert {row["method_source_hash"] for row in rows} == {source_hash(plugin, BASE)}
    assert {row["method_version"] for row in rows} == {"2"}
    # a built-in's hash covers its own module and the base classes'
    assert method_provenance("snip")["method_source_hash"] == source_hash(
        BASE, *(REPO / "harness" / "methods" / f"{m}.py" for m in ("score", "pruning_at_init"))
    )
    # a pipeline's covers its stages
    stages = {"stages": ["global_magnitude", "ptq"]}
    files = [BASE, *(REPO / "harness" / "methods" / f"{m}.py" for m in ("pipeline", "score", "quantization"))]
    assert method_provenance("pipeline", stages)["method_source_hash"] == source_hash(*files)

    plugin.write_text(plugin.read_text().replace("w.abs()", "w.abs() * 1.0"))
    assert method_provenance("hashed_two")["method_source_hash"] == source_hash(plugin, BASE)
    assert method_provenance("hashed_two")["method_source_hash"] != rows[0]["method_source_hash"]


def test_only_names_its_fields() -> None:
    answer = CliRunner().invoke(app, ["run", str(REPO / "benchmarks" / "quickstart.yaml"), "--only", "colour=red"])
    assert answer.exit_code == 2
    assert "--only 'colour=red': expected FIELD=VALUE with FIELD one of method, model, dataset, seed, sparsity" in (
        answer.stderr.replace("\n", " ")
    )


def harness(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "1000", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def table(results: Path) -> dict[str, tuple]:
    sql = "SELECT method, count(*), max(started_at), max(method_source_hash) FROM cells GROUP BY method"
    return {method: tuple(rest) for method, *rest in connect(results).execute(sql).fetchall()}


@pytest.mark.slow
def test_dry_run_and_status_name_rows_made_by_other_code_and_force_reruns_them(tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path, "edited")
    spec = spec_for(tmp_path, ["edited_default", "global_magnitude"], plugin)
    results = tmp_path / "results"
    first = harness("run", str(spec), "--results", str(results), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    before = table(results)
    assert {method: count for method, (count, *_) in before.items()} == {"edited_default": 1, "global_magnitude": 1}

    plugin.write_text(plugin.read_text().replace("w.abs()", "w.abs() + 0.0"))  # the plugin's score() is edited
    hint = (
        f"1 cells of edited_default in the table were produced by different code; rerun them with: "
        f"harness run {spec} --results {results} --force --only method=edited_default"
    )
    dry = harness("run", str(spec), "--results", str(results), "--dry-run", cwd=tmp_path)
    assert "ident: 2 cells — 2 done, 0 failed before, 0 to run" in dry.stdout
    assert hint in dry.stdout
    status = harness("status", str(spec), "--results", str(results), cwd=tmp_path)
    assert hint in status.stdout

    forced = harness(
        "run", str(spec), "--results", str(results), "--force", "--only", "method=edited_default", cwd=tmp_path
    )
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "ident: 1 cells — 0 done, 0 failed before, 1 to run" in forced.stdout
    after = table(results)
    assert after["global_magnitude"] == before["global_magnitude"]  # not in the filter: untouched
    count, started, new_hash = after["edited_default"]
    assert count == 1 and started > before["edited_default"][1]  # its row replaced, not duplicated
    assert new_hash == source_hash(plugin, BASE) != before["edited_default"][2]
    again = harness("run", str(spec), "--results", str(results), "--dry-run", cwd=tmp_path)
    assert "produced by different code" not in again.stdout
