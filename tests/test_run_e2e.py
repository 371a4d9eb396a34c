"""`harness run` end to end, with nothing faked: the installed CLI, Ray, Lightning training on digits,
an MLflow SQLite store and the Parquet tables.

One benchmark runs once for the whole module (``finished``): the five built-in methods, one with
the classifier pruned, the README's plugin and a plugin that raises, on digits and on MNIST whose
files are absent. Every other test reads what that run left, or reruns it.

Hand counts (lenet_300_100 on digits, see test_spec.py): prunable weights 19200 + 30000 = 49200,
classifier 1000 (1010 parameters with its bias); at sparsity 0.8 a layer-wise method removes
15360 and 24000 weights.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from harness.cell import DenseCheckpoint, execute_cell, pretrain
from harness.cli import app
from harness.results import load
from harness.spec import expand, load_spec
from harness.store import ResultsStore

pytestmark = [pytest.mark.slow, pytest.mark.ray]

HARNESS = Path(sys.executable).with_name("harness")  # the console script installed beside this Python

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
README_PLUGIN = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "@register_method" in b)

BROKEN_PLUGIN = '''\
from harness.methods import PruningMethod, register_method

@register_method("explodes")
class Explodes(PruningMethod):
    """Raises while scoring: stands in for a method with a bug."""

    def score(self, ctx):
        raise RuntimeError("this method is broken on purpose")
'''

BUILTIN_METHODS = [
    "random",
    "global_magnitude",
    "layer_magnitude",
    "global_gradient",
    "layer_gradient",
    {"name": "global_magnitude", "prune_classifier": True},
]
PLUGIN_METHODS = ["smallest_weights_per_layer", "explodes"]
FINETUNE_EPOCHS = 2

REQUIRED_COLUMNS = [
    "top1",
    "top5",
    "loss",
    "top1_pruned",
    "top5_pruned",
    "dense_top1",
    "dense_top5",
    "params_total",
    "params_nonzero",
    "compression_ratio",
    "sparsity_achieved",
    "flops_dense",
    "flops_nonzero",
    "theoretical_speedup",
    "pretrain_seconds",
    "prune_seconds",
    "finetune_seconds",
    "eval_seconds",
    "harness_version",
    "torch_version",
    "git_commit",
    "benchmark",
    "cell_id",
    "model",
    "dataset",
    "method",
    "method_params",
    "sparsity",
    "seed",
    "status",
    "error",
    "started_at",
    "finished_at",
]
MEASURED = REQUIRED_COLUMNS[: REQUIRED_COLUMNS.index("benchmark")]


def spec_text(methods: list, data_root: Path) -> str:
    """The module's benchmark; the same name, so the built-ins-only variant has the same cells."""
    return json.dumps(  # JSON is YAML
        {
            "name": "e2e",
            "models": ["lenet_300_100"],
            "datasets": ["digits", "mnist"],
            "methods": methods,
            "sparsities": [0.8],
            "seeds": [0],
            "data_root": str(data_root),
            "pretrain": {"epochs": 2, "lr": 0.05, "batch_size": 64},
            # step schedule: lr 0.01 in epoch 0, 0.001 in epoch 1, so an off-by-one lr column shows
            "finetune": {"epochs": FINETUNE_EPOCHS, "lr": 0.01, "schedule": "step", "milestones": [1], "gamma": 0.1},
        },
        indent=1,
    )


def harness(*args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "1000"}  # rich wraps tables at 80 columns when not on a terminal
    if pythonpath:  # in front of the caller's: the harness under test stays the one imported
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
    return subprocess.run([str(HARNESS), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@dataclass
class Finished:
    root: Path
    results: Path  # of e2e.yaml: all methods, so it needs the two plugins
    builtins_spec: Path  # the same benchmark without the plugin methods: loads with no plugin
    nodata: Path
    first: subprocess.CompletedProcess
    cells: pd.DataFrame


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    root = tmp_path_factory.mktemp("e2e")
    (root / "plugins").mkdir()
    (root / "plugins" / "readme_plugin.py").write_text(README_PLUGIN)
    (root / "plugins" / "broken_plugin.py").write_text(BROKEN_PLUGIN)
    nodata = root / "nodata"
    nodata.mkdir()
    (root / "e2e.yaml").write_text(spec_text(BUILTIN_METHODS + PLUGIN_METHODS, nodata))
    builtins_spec = root / "builtins.yaml"
    builtins_spec.write_text(spec_text(BUILTIN_METHODS, nodata))

    plugins = ["--plugin", "plugins/readme_plugin.py", "--plugin", "plugins/broken_plugin.py"]  # relative, as typed
    first = harness("run", "e2e.yaml", "--results", "results", *plugins, cwd=root)
    results = root / "results"
    return Finished(root, results, builtins_spec, nodata, first, load(results, "cells"))


def ok_digits(finished: Finished) -> pd.DataFrame:
    cells = finished.cells
    return cells[(cells.dataset == "digits") & (cells.status == "ok")]


def row_of(finished: Finished, method: str, method_params: str = "{}") -> pd.Series:
    cells = finished.cells
    [index] = cells.index[
        (cells.dataset == "digits") & (cells.method == method) & (cells.method_params == method_params)
    ]
    return cells.loc[index]


# -- the first run --------------------------------------------------------------------------------


def test_a_failing_cell_is_a_row_and_the_others_finish(finished: Finished) -> None:
    assert finished.first.returncode == 1, finished.first.stdout + finished.first.stderr
    assert "ran 16 cells: 7 ok, 9 failed" in finished.first.stdout  # exit 1 from the failures, not a crash
    assert "Traceback" not in finished.first.stderr
    cells = finished.cells
    assert len(cells) == 16 and cells.cell_id.is_unique  # 8 methods x 2 data sets, one level each
    assert len(ok_digits(finished)) == 7

    broken = row_of(finished, "explodes")
    assert broken.status == "failed"
    assert "RuntimeError: this method is broken on purpose" in broken.error
    assert "score" in broken.error  # the traceback says where
    assert f"failed {broken.cell_id}" in finished.first.stdout


def test_missing_data_files_fail_their_cells_naming_the_files(finished: Finished) -> None:
    mnist = finished.cells[finished.cells.dataset == "mnist"]
    assert len(mnist) == 8 and (mnist.status == "failed").all()
    for error in mnist.error:
        assert "train-images-idx3-ubyte" in error and "t10k-labels-idx1-ubyte" in error
        assert str(finished.nodata) in error
    # the console's one line per failed cell names them too
    failed_lines = [line for line in finished.first.stdout.splitlines() if line.startswith("failed")]
    assert (
        sum("DatasetNotFound: mnist: missing" in line and "train-images-idx3-ubyte" in line for line in failed_lines)
        == 8
    )


def test_every_row_has_the_required_columns(finished: Finished) -> None:
    cells = finished.cells
    assert set(REQUIRED_COLUMNS) <= set(cells.columns)
    ok = ok_digits(finished)
    assert ok[MEASURED + ["git_commit", "started_at", "finished_at"]].notna().all().all()
    assert ok.error.isna().all() and (ok.benchmark == "e2e").all()
    assert (ok.harness_version.str.len() > 0).all() and (ok.torch_version == torch.__version__).all()
    assert (ok.params_total == 50610).all()  # 49200 + 1000 weights + 410 biases
    assert (ok.started_at <= ok.finished_at).all()


def test_each_method_reaches_its_sparsity_over_the_weights_it_may_prune(finished: Finished) -> None:
    for row in ok_digits(finished).itertuples():
        prunable = 50200 if json.loads(row.method_params).get("prune_classifier") else 49200
        assert abs(row.sparsity_achieved * prunable - 0.8 * prunable) <= 1, row.method
        assert row.compression_ratio == pytest.approx(row.params_total / row.params_nonzero)
        assert row.theoretical_speedup == pytest.approx(row.flops_dense / row.flops_nonzero)


def test_the_classifier_stays_dense_unless_asked_and_the_plugin_prunes_per_layer(finished: Finished) -> None:
    layers = load(finished.results, "layers")

    def nonzero(row: pd.Series) -> dict[str, int]:
        table = layers[layers.cell_id == row.cell_id]
        return dict(zip(table.layer, table.nonzero, strict=True))

    assert nonzero(row_of(finished, "global_magnitude"))["5"] == 1010
    assert nonzero(row_of(finished, "global_magnitude", '{"prune_classifier": true}'))["5"] < 1010
    # the README's plugin: 80% of each layer, biases untouched: 19200 − 15360 + 300, 30000 − 24000 + 100
    assert nonzero(row_of(finished, "smallest_weights_per_layer")) == {"1": 4140, "3": 6100, "5": 1010}


def test_epoch_curves_in_the_table_and_in_mlflow(finished: Finished) -> None:
    from mlflow.tracking import MlflowClient

    row = row_of(finished, "global_gradient")
    epochs = load(finished.results, "epochs")
    curve = epochs[epochs.cell_id == row.cell_id].sort_values("epoch")
    assert curve.epoch.tolist() == list(range(FINETUNE_EPOCHS))
    assert curve.lr.tolist() == pytest.approx([0.01, 0.001])
    assert curve[["train_loss", "train_top1", "val_loss", "val_top1"]].notna().all().all()

    client = MlflowClient(f"sqlite:///{finished.results / 'mlflow.db'}")
    run = client.get_run(row.mlflow_run_id)
    [train_loss] = [key for key in run.data.metrics if key.endswith("train_loss") and "finetune" in key]
    history = sorted(client.get_metric_history(run.info.run_id, train_loss), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(FINETUNE_EPOCHS))
    assert [m.value for m in history] == pytest.approx(curve.train_loss.tolist())


def test_mlflow_holds_one_parent_and_one_tagged_child_per_cell(finished: Finished) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{finished.results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = {r.data.tags["cell_id"]: r for r in runs if "cell_id" in r.data.tags}
    assert set(children) == set(finished.cells.cell_id)
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children.values())

    for row in finished.cells.itertuples():
        run = children[row.cell_id]
        tags = run.data.tags
        assert (tags["benchmark"], tags["model"], tags["dataset"], tags["method"]) == (
            "e2e",
            "lenet_300_100",
            row.dataset,
            row.method,
        )
        assert (float(tags["sparsity"]), int(tags["seed"])) == (0.8, 0)
        assert run.info.status == ("FINISHED" if row.status == "ok" else "FAILED")
    broken = children[row_of(finished, "explodes").cell_id]
    assert "broken on purpose" in broken.data.tags["error"]
    assert children[row_of(finished, "random").cell_id].data.metrics["top1"] == pytest.approx(
        row_of(finished, "random").top1
    )


def test_the_dense_checkpoint_loads_with_weights_only(finished: Finished) -> None:
    [path] = (finished.results / "checkpoints").glob("*.pt")  # digits only: MNIST never trained
    saved = torch.load(path, weights_only=True, map_location="cpu")
    assert {"pretrain_key", "init_state", "trained_state", "metrics"} <= set(saved)
    assert saved["pretrain_key"] == path.stem == row_of(finished, "random").pretrain_key
    assert saved["trained_state"]["1.weight"].shape == (300, 64)
    assert saved["metrics"]["dense_top1"] == pytest.approx(row_of(finished, "random").dense_top1)


def test_the_same_spec_and_seed_give_identical_numbers_again(finished: Finished) -> None:
    """Pretraining and a cell run again here, in this process, reproduce the Ray workers' numbers exactly."""
    cells = {(c.dataset, c.method): c for c in expand(load_spec(finished.builtins_spec))}
    cell = cells["digits", "global_gradient"]  # calibration batch, gradients and fine-tuning all involved
    stored = ResultsStore(finished.results).load_checkpoint(cell.pretrain_key)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray worker with one CPU
    try:
        again = pretrain(cell)
        result = execute_cell(cell, stored)
    finally:
        torch.set_num_threads(threads)

    trained = DenseCheckpoint.from_bytes(stored).trained_state
    assert all(torch.equal(again.trained_state[name], trained[name]) for name in trained)
    [row] = result.rows
    first = row_of(finished, "global_gradient")
    assert {k: row[k] for k in MEASURED if not k.endswith("_seconds")} == {
        k: first[k] for k in MEASURED if not k.endswith("_seconds")
    }


# -- reruns, queries, listings --------------------------------------------------------------------


def files_and_mtimes(results: Path) -> dict[str, int]:
    return {str(p.relative_to(results)): p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}


def test_a_rerun_trains_nothing_with_plugins_loaded_by_module_name(finished: Finished) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{finished.results / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("e2e").experiment_id
    runs_before = len(client.search_runs([experiment_id], max_results=1000))
    before = files_and_mtimes(finished.results)

    plugins = ["--plugin", "readme_plugin", "--plugin", "broken_plugin"]
    rerun = harness(
        "run", "e2e.yaml", "--results", "results", *plugins, cwd=finished.root, pythonpath=finished.root / "plugins"
    )
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr  # not every cell of the matrix succeeded
    assert "16 cells — 7 done, 9 failed before, 0 to run" in rerun.stdout
    assert "9 cells failed in an earlier run; rerun them with --retry-failed" in rerun.stderr
    after = files_and_mtimes(finished.results)
    assert {k: v for k, v in after.items() if k.endswith((".pt", ".parquet", ".db"))} == {
        k: v for k, v in before.items() if k.endswith((".pt", ".parquet", ".db"))
    }
    assert len(client.search_runs([experiment_id], max_results=1000)) == runs_before


def states_listed(output: str) -> dict[str, str]:
    """``{cell_id: state}`` from the CSV ``--dry-run --format csv`` prints (its count line goes to stderr)."""
    listed = pd.read_csv(StringIO(output), dtype=str)
    return dict(zip(listed.cell_id, listed.state, strict=True))


def test_dry_run_prints_every_cell_and_its_state_and_writes_nothing(finished: Finished, tmp_path: Path) -> None:
    before = files_and_mtimes(finished.results)
    dry = CliRunner().invoke(
        app, ["run", str(finished.builtins_spec), "--results", str(finished.results), "--dry-run", "--format", "csv"]
    )
    assert dry.exit_code == 0, dry.output
    assert "12 cells — 6 done, 6 failed before, 0 to run" in dry.stderr
    builtin_rows = finished.cells[~finished.cells.method.isin(PLUGIN_METHODS)]
    expected = dict(zip(builtin_rows.cell_id, builtin_rows.status.map({"ok": "done", "failed": "failed"}), strict=True))
    assert states_listed(dry.stdout) == expected
    assert files_and_mtimes(finished.results) == before

    fresh = tmp_path / "fresh"
    dry = CliRunner().invoke(
        app, ["run", str(finished.builtins_spec), "--results", str(fresh), "--dry-run", "--format", "csv"]
    )
    assert dry.exit_code == 0 and "12 cells — 0 done, 0 failed before, 12 to run" in dry.stderr
    assert states_listed(dry.stdout) == dict.fromkeys(expected, "pending")
    assert not fresh.exists()


SQL = "SELECT method, sparsity, avg(top1) FROM cells GROUP BY ALL ORDER BY ALL"


def test_query_answers_in_table_csv_and_json(finished: Finished) -> None:
    expected = finished.cells.groupby(["method", "sparsity"], as_index=False).top1.mean()  # NaN skipped, as in SQL

    def query(fmt: str) -> str:
        answer = CliRunner().invoke(app, ["query", SQL, "--results", str(finished.results), "--format", fmt])
        assert answer.exit_code == 0, answer.output
        return answer.stdout

    as_csv = pd.read_csv(StringIO(query("csv")))
    assert as_csv.columns.tolist() == ["method", "sparsity", "avg(top1)"]
    assert as_csv.method.tolist() == sorted(expected.method)
    assert as_csv["avg(top1)"].tolist() == pytest.approx(expected.top1.tolist(), nan_ok=True)

    as_json = json.loads(query("json"))
    assert [r["method"] for r in as_json] == as_csv.method.tolist()
    assert as_json[0].keys() == {"method", "sparsity", "avg(top1)"}

    table = query("table")
    assert all(method in table for method in expected.method) and "avg(top1)" in table


def test_list_methods_shows_where_each_plugin_came_from(finished: Finished) -> None:
    listed = harness(
        "list",
        "methods",
        "--plugin",
        "plugins/readme_plugin.py",
        "--plugin",
        "broken_plugin",
        cwd=finished.root,
        pythonpath=finished.root / "plugins",
    )
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[2:]}  # a pipe gets whole plain lines
    assert "plugin plugins/readme_plugin.py" in lines["smallest_weights_per_layer"]
    assert "the same fraction in every layer" in lines["smallest_weights_per_layer"]  # the docstring's first line
    assert "plugin broken_plugin" in lines["explodes"]
    assert "builtin" in lines["global_magnitude"]


TWIN = '''\
from harness.methods import PruningMethod, register_method

@register_method("{name}")
class Twin(PruningMethod):
    """One of two methods with one name."""

    def score(self, ctx):
        return {{n: w.abs() for n, w in ctx.weights.items()}}
'''


def test_two_methods_with_one_name_are_refused(finished: Finished, tmp_path: Path) -> None:
    for name in ("twin_a", "twin_b"):
        (tmp_path / f"{name}.py").write_text(TWIN.format(name="twin"))
    listed = harness("list", "methods", "--plugin", "twin_a.py", "--plugin", "twin_b.py", cwd=tmp_path)
    assert listed.returncode == 2, listed.stdout + listed.stderr
    assert "error: method 'twin' is registered twice: by plugin twin_a.py and by plugin twin_b.py" in listed.stderr

    # a plugin taking a built-in's name is refused before it registers anything, so this can run in-process
    shadow = tmp_path / "shadow.py"
    shadow.write_text(TWIN.format(name="random"))
    results = tmp_path / "results"
    args = ["run", str(finished.builtins_spec), "--results", str(results), "--plugin", str(shadow)]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 2, run.output
    assert f"error: method 'random' is registered twice: by builtin and by plugin {shadow}" in run.stderr
    assert not results.exists()
