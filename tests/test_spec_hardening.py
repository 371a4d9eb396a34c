"""Hostile or careless input is refused before anything starts or is written: exit 2, one message.

Every spec here is written by the test. "Nothing written" means the results folder does not exist
afterwards (no ``mlflow.db``, no spec copy, no checkpoint), and nothing besides the spec file sits in
the working folder; the checks that come before Ray are fast enough that Ray cannot have started.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import pytest
from results_factory import fake_cell
from typer.testing import CliRunner

from harness.cli import app
from harness.config import SEED_MAX
from harness.spec import SpecError, count_cells, expand, load_spec
from harness.store import ResultsStore
from tests.test_spec import spec_text


def run_cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(result, *fragments: str) -> str:
    """The one error line of an exit-2 result, which must name every fragment; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert message.startswith("error: ")
    for fragment in fragments:
        assert fragment in message, message
    return message


def assert_nothing_written(tmp_path: Path, results: Path, *keep: str) -> None:
    assert not results.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


# (what the user wrote, the field the message names, what it says is allowed)
MISTAKES = {
    "negative seed": (dict(seeds=[0, -1]), "seeds[1]", f"allowed: integers 0 to {SEED_MAX}"),
    "seed 2^32": (dict(seeds=[2**32]), "seeds[0]", f"allowed: integers 0 to {SEED_MAX}"),
    "seed 1e20": (dict(seeds=[1e20]), "seeds[0]", f"allowed: integers 0 to {SEED_MAX}"),
    "infinite lr": (dict(pretrain={"lr": float("inf")}), "pretrain.lr", "allowed: finite numbers"),
    "nan in finetune": (dict(finetune={"momentum": float("nan")}), "finetune.momentum", "allowed: finite numbers"),
    "inf in method params": (
        dict(methods=[{"name": "iterative", "score_params": {"x": [1.0, float("-inf")]}}]),
        "methods[0].score_params.x[1]",
        "allowed: finite numbers",
    ),
    "inf sparsity": (dict(sparsities=[float("inf")]), "sparsities[0]", "allowed: finite numbers"),
    "name ..": (dict(name=".."), "name", "letters, digits"),
    "name .": (dict(name="."), "name", "starting with a letter or digit"),
    "name with a slash": (dict(name="a/b"), "name", "letters, digits"),
    "name too long": (dict(name="n" * 101), "name", "1 to 100"),
    "empty name": (dict(name=""), "name", "1 to 100"),
    "duplicate model": (dict(models=["lenet_300_100", "lenet_300_100"]), "models", "[1] repeats [0]"),
    "duplicate dataset": (dict(datasets=["digits", "digits"]), "datasets", "[1] repeats [0]"),
    "duplicate sparsity": (dict(sparsities=[0.5, 0.9, 0.50]), "sparsities", "[2] repeats [0]"),
    "duplicate seed": (dict(seeds=[0, 1, 0]), "seeds", "[2] repeats [0]"),
    "duplicate compression": (dict(sparsities=None, compressions=[2, 2.0]), "compressions", "[1] repeats [0]"),
    "gradual pruning that ends before it starts": (
        dict(methods=[{"name": "gmp", "start_fraction": 0.8, "end_fraction": 0.5}]),
        "methods[0]",
        "allowed: 0 <= start_fraction <= end_fraction <= 1",
    ),
    "duplicate method": (
        dict(methods=["global_magnitude", {"name": "global_magnitude", "prune_classifier": False}]),
        "methods[1]",
        "repeats methods[0]",
    ),
}


@pytest.mark.parametrize("changes, field, allowed", MISTAKES.values(), ids=MISTAKES.keys())
def test_a_hostile_value_is_refused_before_anything_is_written(
    changes: dict, field: str, allowed: str, write_spec, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_spec(spec_text(**changes))
    results = tmp_path / "results"
    message = refused(run_cli("run", path, "--results", results), f"{path}: {field}", allowed)
    assert len(message.splitlines()) == 1
    assert_nothing_written(tmp_path, results, "bench.yaml")


def test_the_edges_of_the_allowed_ranges_load(write_spec) -> None:
    spec = load_spec(write_spec(spec_text(name="A.b-c_1", seeds=[0, SEED_MAX])))
    assert [cell.seed for cell in expand(spec)] == [0, SEED_MAX]


def test_the_same_method_spelled_differently_is_a_duplicate(write_spec) -> None:
    methods = [{"name": "iterative", "rate": 0.2}, {"name": "iterative", "params": {"rate": 0.20}}]
    with pytest.raises(SpecError, match=r"methods\[1\]: repeats methods\[0\]"):
        load_spec(write_spec(spec_text(methods=methods)))
    different = [{"name": "iterative", "rate": 0.2}, {"name": "iterative", "rate": 0.3}]
    assert len(expand(load_spec(write_spec(spec_text(methods=different))))) == 2


def test_a_pipeline_stage_gets_the_recipe_check_a_method_alone_gets(write_spec) -> None:
    stages = [{"name": "iterative", "rewind": "epoch:2"}, "kmeans"]
    path = write_spec(spec_text(methods=[{"name": "pipeline", "stages": stages}], pretrain={"epochs": 3}))
    with pytest.raises(SpecError, match=r"methods\[0\]\.stages\[0\]: rewind 'epoch:2' needs .* save_epochs: \[2\]"):
        load_spec(path)
    kept = spec_text(methods=[{"name": "pipeline", "stages": stages}], pretrain={"epochs": 3, "save_epochs": [2]})
    assert len(expand(load_spec(write_spec(kept)))) == 1


def test_a_key_given_twice_in_the_yaml_is_refused(write_spec) -> None:
    path = write_spec(spec_text() + "seeds: [1]\n")
    with pytest.raises(SpecError, match=r"line 12: key 'seeds' appears twice"):
        load_spec(path)


# -- bounded work -------------------------------------------------------------------------------

ALIAS_BOMB = """\
name: bomb
models: [lenet_300_100]
datasets: [digits]
sparsities: [0.5]
seeds: [0]
methods:
  - name: iterative
    score_params:
      a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
      h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
      i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_a_yaml_alias_bomb_is_refused_fast_and_small(write_spec) -> None:
    path = write_spec(ALIAS_BOMB)
    assert len(ALIAS_BOMB.encode()) < 1000  # expands to 9^9 = 387,420,489 strings
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(SpecError, match=r"line 15: the document expands to more than 1,000,000 values") as caught:
        load_spec(path)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"alias bomb refused in {seconds * 1000:.1f} ms, peak {peak / 2**20:.2f} MiB traced")
    assert seconds < 5 and peak < 50 * 2**20
    assert len(str(caught.value)) < 300


def test_aliases_that_stay_small_are_fine(write_spec) -> None:
    text = spec_text(pretrain={"epochs": 1}).replace("pretrain:", "pretrain: &recipe") + "finetune: *recipe\n"
    spec = load_spec(write_spec(text))
    assert spec.finetune_recipe.epochs == 1


def test_a_huge_value_is_never_printed_whole(write_spec, tmp_path: Path) -> None:
    huge_name = "x" * 200_000
    message = refused(run_cli("run", write_spec(spec_text(name=huge_name)), "--results", tmp_path / "r"), "name")
    assert len(message) < 500 and "200002 characters" in message
    for changes in (dict(models=["m" * 200_000]), {"k" * 200_000: 1}):
        message = refused(run_cli("run", write_spec(spec_text(**changes)), "--results", tmp_path / "r"))
        assert len(message) < 700 and "characters)" in message
    message = refused(run_cli("run", write_spec(spec_text(seeds=[-1] * 50_000)), "--results", tmp_path / "r"))
    assert len(message.splitlines()) == 21 and message.endswith("… and 49980 more errors like these")
    huge_list = [1] * 100_000
    path = write_spec(spec_text(methods=[{"name": "global_magnitude", "prune_classifier": huge_list}]))
    message = refused(run_cli("run", path, "--results", tmp_path / "r"), "methods[0].prune_classifier")
    assert len(message) < 500


def test_the_cell_cap_is_counted_before_any_cell_is_made(write_spec, tmp_path: Path) -> None:
    sparsities = [round(i / 1000, 3) for i in range(1000)]
    seeds = list(range(2700))  # 1000 × 2700 = 2.7 M cells
    path = write_spec(spec_text(sparsities=sparsities, seeds=seeds))
    started = time.perf_counter()
    refused(run_cli("run", path, "--results", tmp_path / "r"), "2,700,000 cells", "at most 1,000,000", "--max-cells")
    assert time.perf_counter() - started < 30
    small = write_spec(spec_text(sparsities=[0.5, 0.9], seeds=[0, 1, 2]), "small.yaml")
    refused(run_cli("status", small, "--results", tmp_path / "r", "--max-cells", "5"), "6 cells", "at most 5")
    assert count_cells(load_spec(small, max_cells=6)) == 6


# -- checked before Ray, MLflow or the spec copy ----------------------------------------------


@pytest.mark.parametrize(
    "resources, asked",
    [({"cpus": 100_000}, "'cpus': 100000.0"), ({"custom": {"bigmem": 1}}, "'bigmem': 1.0")],
    ids=["cpus", "custom"],
)
def test_resources_this_machine_lacks_are_refused_before_ray_starts(
    resources: dict, asked: str, write_spec, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    results = tmp_path / "results"
    started = time.perf_counter()
    path = write_spec(spec_text(resources=resources))
    refused(run_cli("run", path, "--results", results), f"{path}: resources: cells ask for", asked, "lower")
    assert time.perf_counter() - started < 10  # a local Ray takes longer than that to start
    assert_nothing_written(tmp_path, results, "bench.yaml")


@pytest.mark.parametrize(
    "uri, says",
    [("http://127.0.0.1:9", "does not answer"), ("sqlite:////proc/version/mlflow.db", "not a folder")],
    ids=["server down", "unwritable store"],
)
def test_a_tracking_uri_that_cannot_work_is_refused_before_anything_is_written(
    uri: str, says: str, write_spec, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    path = write_spec(spec_text(tracking_uri=uri))
    refused(run_cli("run", path, "--results", results), f"{path}: tracking_uri: ", uri, says)
    assert_nothing_written(tmp_path, results, "bench.yaml")


# -- no tracebacks: every error named, exit 2 --------------------------------------------------


def test_a_file_that_is_not_a_readable_spec_is_named(tmp_path: Path) -> None:
    binary = tmp_path / "b.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    refused(run_cli("status", binary), "not a text file")
    refused(run_cli("status", tmp_path), "is a folder")
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 20_000 + "]" * 20_000 + "\n")
    started = time.perf_counter()
    refused(run_cli("status", deep), "nest")  # libyaml's own depth limit (1000) before ours
    assert time.perf_counter() - started < 5
    deep.write_text("name: t\nmodels: " + "[" * 100 + "]" * 100 + "\n")
    refused(run_cli("status", deep), "line 2: nested deeper than 64 levels")


@pytest.mark.parametrize(
    "source, says",
    [("def broken(:\n", "SyntaxError"), ("raise RuntimeError('plugin refuses to load')\n", "plugin refuses to load")],
    ids=["syntax error", "raises at import"],
)
def test_a_broken_plugin_is_named_not_a_traceback(source: str, says: str, write_spec, tmp_path: Path) -> None:
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text(source)
    refused(run_cli("status", write_spec(spec_text()), "--plugin", plugin), f"plugin {plugin} failed to import", says)
    in_spec = write_spec(spec_text(plugins=[str(plugin)]), "with_plugin.yaml")
    refused(run_cli("status", in_spec), "plugins", says)
    refused(run_cli("list", "methods", "--plugin", plugin), says)


def test_results_that_are_a_file_are_named(write_spec, tmp_path: Path) -> None:
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    spec = write_spec(spec_text())
    for command in (["run", spec], ["status", spec], ["query", "SELECT 1"], ["report", "--out", tmp_path / "site"]):
        refused(run_cli(*command, "--results", a_file), f"--results {a_file} is a file")
    refused(run_cli("run", spec, "--results", a_file / "inside"), "not a folder this user can write")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_results_folder_is_refused_before_anything_runs(write_spec, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(run_cli("run", write_spec(spec_text()), "--results", locked / "results"), "this user can write")
    finally:
        locked.chmod(0o755)


def corrupt_results(tmp_path: Path) -> Path:
    store = ResultsStore(tmp_path / "results")
    store.write(fake_cell("t", "digits", "lenet_300_100", "global_magnitude", 0.5, 0))
    (parquet,) = (store.root / "cells").rglob("*.parquet")
    parquet.write_bytes(b"PAR1 this is not parquet PAR1")
    return store.root


def test_a_corrupt_parquet_file_is_named_and_debug_shows_the_traceback(write_spec, tmp_path: Path) -> None:
    results = corrupt_results(tmp_path)
    spec = write_spec(spec_text())
    for command in (["run", spec], ["status", spec], ["report", "--out", tmp_path / "site"]):
        refused(run_cli(*command, "--results", results), ".parquet", "--debug")
    debug = run_cli("--debug", "status", spec, "--results", results)
    assert debug.exit_code == 1 and debug.exception is not None and not isinstance(debug.exception, SystemExit)
