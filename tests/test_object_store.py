"""Results on an object store: a real S3 API served by moto's server mode on a local port, written by
the harness through pyarrow and read back independently with boto3.

Nothing is faked on the harness's side: the CLI, Ray, Lightning, MLflow (SQLite, since an object-store
results root needs a tracking store of its own) and DuckDB over the bucket's Parquet files.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from results_factory import fake_cell
from typer.testing import CliRunner

from harness import maskfile
from harness.cli import app
from harness.results import load, load_masks, query
from harness.store import ResultsStore

HARNESS = Path(sys.executable).with_name("harness")
MOTO = Path(sys.executable).with_name("moto_server")
REPO = Path(__file__).resolve().parent.parent

SPEC = """
name: tiny
models: [lenet_300_100]
datasets: [digits]
methods: [global_magnitude, layer_magnitude]
sparsities: [0.5]
seeds: [0]
pretrain: {epochs: 1, optimizer: sgd, lr: 0.05, batch_size: 64}
finetune: {epochs: 1, lr: 0.01}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    """``moto_server`` on a free loopback port for this module; its URL."""
    port = _free_port()
    server = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket (made with a plain PUT), and the standard AWS variables pointing at moto."""
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    name = f"b-{uuid.uuid4().hex[:12]}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{name}", method="PUT"), timeout=10).close()
    return name


def s3_objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix``, read with boto3: a reader that shares no code with the harness."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def parquet_rows(objects: dict[str, bytes], view: str) -> pd.DataFrame:
    frames = [
        pq.read_table(io.BytesIO(data)).to_pandas()
        for key, data in objects.items()
        if f"/{view}/" in key and key.endswith(".parquet")
    ]
    return pd.concat(frames, ignore_index=True)


@pytest.mark.slow
@pytest.mark.ray
def test_a_matrix_runs_into_s3_and_status_query_and_report_read_it_back(
    endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    results = f"s3://{bucket}/exp/one"
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(REPO)}
    ran = subprocess.run(
        [str(HARNESS), "run", str(spec), "--results", results], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2 cells — 0 done, 0 failed before, 2 to run" in ran.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "tiny.yaml"], "no local s3:/ folder"

    objects = s3_objects(endpoint, bucket, "exp/one/")
    cells = parquet_rows(objects, "cells")
    assert sorted(cells["method"]) == ["global_magnitude", "layer_magnitude"]
    assert (cells["status"] == "ok").all() and cells["mlflow_run_id"].notna().all()
    (pretrain_key,) = set(cells["pretrain_key"])
    assert f"exp/one/checkpoints/{pretrain_key}.pt" in objects
    assert [k for k in objects if k.startswith("exp/one/specs/tiny/")] and objects[
        next(k for k in objects if k.startswith("exp/one/specs/tiny/"))
    ].decode() == SPEC
    runs = {key.split("/")[4] for key in objects if key.startswith("exp/one/cells/")}
    assert len(runs) == 1 and runs.pop().startswith("run="), "one driver, one run partition"
    tables = {view: sorted(k.rsplit("/", 1)[1] for k in objects if f"/{view}/" in k) for view in ("cells", "layers")}
    # each batch of finished cells is one segment per view, never a file per cell (the two cells may finish
    # within one batch's second or not)
    assert tables["cells"] == tables["layers"] and tables["cells"] in (
        ["seg-00000001-00000001.parquet"],
        ["seg-00000001-00000001.parquet", "seg-00000002-00000002.parquet"],
    )

    # query reads the same numbers boto3 found in the files
    monkeypatch.chdir(tmp_path)
    shown = CliRunner().invoke(
        app, ["query", "SELECT cell_id, top1 FROM cells ORDER BY cell_id", "--results", results, "--format", "csv"]
    )
    assert shown.exit_code == 0, shown.output
    expected = cells.sort_values("cell_id")[["cell_id", "top1"]]
    assert shown.output == expected.to_csv(index=False)
    assert len(load(results, "layers")) == len(parquet_rows(objects, "layers")) == 2 * 3

    status = CliRunner().invoke(app, ["status", str(spec), "--results", results], terminal_width=200)
    assert status.exit_code == 0, status.output
    assert [line.split() for line in status.output.splitlines() if line.split()[:1] == ["all"]] == [
        ["all", "2", "0", "0"]  # a pipe gets the plain table: axis, value (empty), done, failed, pending
    ]

    again = CliRunner().invoke(app, ["run", str(spec), "--results", results])  # resumes: nothing to run
    assert again.exit_code == 0 and "2 cells — 2 done, 0 failed before, 0 to run" in again.output, again.output

    site = tmp_path / "site"
    built = CliRunner().invoke(app, ["report", "--results", results, "--out", str(site)])
    assert built.exit_code == 0, built.output
    index = (site / "index.html").read_text()
    assert "global_magnitude" in index and "layer_magnitude" in index
    (copied,) = (site / "specs").rglob("*.yaml")
    assert copied.read_text() == SPEC


def cell(seed: int, top1: float, curve: bool = True):
    result = fake_cell("two", "digits", "lenet_300_100", "global_magnitude", 0.5, seed, top1=top1)
    if not curve:
        result.epochs = []
    return result


def test_two_drivers_on_one_prefix_keep_every_row_and_the_newest_write_of_a_cell(endpoint: str, bucket: str) -> None:
    root = f"s3://{bucket}/shared"
    first = ResultsStore(root, fresh_limit=3)  # both compact several times while the other writes
    time.sleep(0.01)
    second = ResultsStore(root, fresh_limit=3)  # started later: its write of a shared cell is the newer one
    assert first.run_id < second.run_id

    def write(store: ResultsStore, seeds: range, top1: float, curve: bool) -> None:
        for seed in seeds:
            store.write(cell(seed, top1, curve))

    with ThreadPoolExecutor(2) as pool:  # seeds 5..9 are written by both, at the same time
        jobs = [
            pool.submit(write, first, range(0, 10), 0.1, True),
            pool.submit(write, second, range(5, 15), 0.2, False),
        ]
        for job in jobs:
            job.result()

    objects = s3_objects(endpoint, bucket, "shared/")
    for key in objects:  # every file lies in the partition of the driver that wrote it
        assert f"run={first.run_id}/" in key or f"run={second.run_id}/" in key
    both = parquet_rows(objects, "cells")
    assert sorted(both["seed"]) == sorted([*range(10), *range(5, 15)]), "no driver replaced another's file"

    cells = load(root).sort_values("seed")
    assert cells["seed"].tolist() == list(range(15))
    assert cells["top1"].tolist() == [0.1] * 5 + [0.2] * 10
    # the newer write of seeds 5..9 recorded no curve, and its absence wins in the epochs view too
    epochs = load(root, "epochs")
    assert set(epochs["cell_id"]) == {cell(seed, 0.1).cell_id for seed in range(5)}
    layers = load(root, "layers")
    assert len(layers) == 15 * 3 and layers.groupby("cell_id").size().eq(3).all()
    assert query(root, "SELECT count(DISTINCT cell_id) AS n, count(*) AS rows FROM cells").iloc[0].tolist() == [15, 15]
    assert first.statuses() == {cell(seed, 0).cell_id: "ok" for seed in range(15)}

    first.compact()  # compacts the first driver's own files only
    assert all(f"run={first.run_id}/" in k for k in set(s3_objects(endpoint, bucket, "shared/")) - set(objects))
    assert load(root).sort_values("seed")["top1"].tolist() == [0.1] * 5 + [0.2] * 10


def test_on_an_object_store_each_driver_has_its_own_note_and_a_dead_or_silent_ones_run_is_marked_killed(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    import boto3
    from mlflow.tracking import MlflowClient

    from harness.tracking import RUNNING_FOLDER, STALE_SECONDS, MatrixRun, mark_killed_runs

    uri, root = f"sqlite:///{tmp_path / 'mlflow.db'}", f"s3://{bucket}/shared"
    client, s3 = MlflowClient(uri), boto3.client("s3", endpoint_url=endpoint)

    def notes() -> dict[str, dict]:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"shared/{RUNNING_FOLDER}/").get("Contents", [])
        keys = [o["Key"] for o in listed if o["Key"].endswith(".json")]  # not the folder markers pyarrow writes
        return {key: json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in keys}

    def rewrite(run_id: str, **fields) -> None:
        key = f"shared/{RUNNING_FOLDER}/{run_id}.json"
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(notes()[key] | fields).encode())

    first = MatrixRun.start(uri, "faults", root, {"cells": 1})
    second = MatrixRun.start(uri, "faults", root, {"cells": 1})  # a second driver on the same prefix
    assert sorted(notes()) == sorted(f"shared/{RUNNING_FOLDER}/{r.run_id}.json" for r in (first, second))
    assert mark_killed_runs(root) == []  # both drivers (this process) are alive

    gone = subprocess.Popen(["true"])
    gone.wait()
    rewrite(first.run_id, pid=gone.pid)  # this host, a pid no process has any more
    assert mark_killed_runs(root) == [first.run_id]
    assert client.get_run(first.run_id).info.status == "KILLED"
    assert [n["run_id"] for n in notes().values()] == [second.run_id]

    rewrite(second.run_id, host="elsewhere", beat=time.time() - STALE_SECONDS / 2)  # another host, beating
    assert mark_killed_runs(root) == []
    second.log_progress({"ok": 0}, 0)  # its driver's progress log rewrites the note: fresh again
    assert notes()[f"shared/{RUNNING_FOLDER}/{second.run_id}.json"]["beat"] > time.time() - 60
    rewrite(second.run_id, host="elsewhere", beat=time.time() - STALE_SECONDS - 1)  # silent too long: gone
    assert mark_killed_runs(root) == [second.run_id]
    assert client.get_run(second.run_id).info.status == "KILLED" and notes() == {}

    third = MatrixRun.start(uri, "faults", root, {"cells": 1})
    third.finish({"ok": 1, "failed": 0})
    assert client.get_run(third.run_id).info.status == "FINISHED" and notes() == {}  # an ended run takes its note


@pytest.mark.slow
@pytest.mark.ray
def test_harness_tune_keeps_its_results_in_s3_and_its_optuna_storage_in_a_database(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC.replace("layer_magnitude", "random") + "tune: {max_epochs: 1}\n")
    results = f"s3://{bucket}/tune"
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(REPO)}

    def tune(*extra: str) -> subprocess.CompletedProcess:
        command = [str(HARNESS), "tune", str(spec), "--trials", "2", "--results", results, *extra]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)

    refused = tune()  # no --storage: the journal would have to live in the bucket
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "the Optuna journal cannot live on an object store" in refused.stderr
    assert "--storage" in refused.stderr and s3_objects(endpoint, bucket, "tune/") == {}

    ran = tune("--storage", f"sqlite:///{tmp_path / 'optuna.db'}")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    objects = s3_objects(endpoint, bucket, "tune/")
    trials = parquet_rows(objects, "trials")
    assert sorted(trials.groupby("study").size()) == [2, 2] and (trials["state"] == "COMPLETE").all()
    assert [k for k in objects if k.startswith("tune/tuning/checkpoints/") and k.endswith(".pt")]
    assert json.loads(objects["tune/tuning/tiny.importances.json"]).keys() <= set(trials["study"])
    local = tmp_path / "tuned" / "tiny.yaml"  # harness run reads a local file; the bucket keeps a copy
    assert objects["tune/tuned/tiny.yaml"] == local.read_bytes()
    assert f"harness run tuned/tiny.yaml --results {results}" in " ".join(ran.stdout.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "optuna.db", "tiny.yaml", "tuned"]


def test_a_reader_sees_every_cell_once_while_a_driver_compacts_and_deletes_its_files(bucket: str) -> None:
    root = f"s3://{bucket}/busy"
    writer = ResultsStore(root, fresh_limit=4)  # a compaction (new segment, fresh files deleted) every 4 cells
    seen: list[list[int]] = []
    with ThreadPoolExecutor(1) as pool:
        writing = pool.submit(lambda: [writer.write(cell(seed, 0.3)) for seed in range(16)])
        while not writing.done() or len(seen) < 2:
            seen.append(load(root)["seed"].tolist() if writer.exists() else [])
        writing.result()
    assert len({len(s) for s in seen}) > 2, "the reads overlapped the writes"
    for seeds in seen:  # each snapshot holds every cell written so far, once: a prefix of the writes
        assert sorted(seeds) == list(range(len(seeds)))
    assert [len(s) for s in seen] == sorted(len(s) for s in seen)
    assert sorted(load(root)["seed"]) == list(range(16))


def test_harness_query_on_s3_loads_no_torch_lightning_ray_or_mlflow(bucket: str) -> None:
    from test_import_structure import heavy_modules_after

    root = f"s3://{bucket}/light"
    ResultsStore(root).write(cell(0, 0.4))
    code = (
        "import sys\nfrom harness.cli import app\n"
        f"sys.argv = ['harness', 'query', 'SELECT seed, top1 FROM cells', '--results', {root!r}, '--format', 'csv']\n"
        "try:\n    app()\nexcept SystemExit as exit:\n    assert exit.code in (0, None), exit.code"
    )
    loaded, done = heavy_modules_after(code)
    assert done.stdout.splitlines()[:2] == ["seed,top1", "0,0.4"]
    assert loaded == []


def test_bad_object_store_results_exit_2_before_anything_is_written(
    endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    no_tracking = CliRunner().invoke(app, ["run", str(spec), "--results", f"s3://{bucket}/p"])
    assert no_tracking.exit_code == 2 and "MLFLOW_TRACKING_URI" in no_tracking.output, no_tracking.output

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    missing = CliRunner().invoke(app, ["run", str(spec), "--results", "s3://no-such-bucket/p"])
    assert missing.exit_code == 2 and "bucket 'no-such-bucket' does not exist" in missing.output, missing.output

    unknown = CliRunner().invoke(app, ["query", "SELECT 1", "--results", "nosuchfs://x/y"])
    assert unknown.exit_code == 2 and "no filesystem for nosuchfs://" in unknown.output, unknown.output
    empty = CliRunner().invoke(app, ["query", "SELECT 1", "--results", f"s3://{bucket}/nothing"])
    assert empty.exit_code == 2 and "does not exist" in empty.output, empty.output
    tune = CliRunner().invoke(app, ["tune", str(spec), "--results", f"s3://{bucket}/p"])
    assert tune.exit_code == 2 and "the Optuna journal cannot live on an object store" in tune.output, tune.output

    assert s3_objects(endpoint, bucket, "") == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_any_fsspec_filesystem_holds_a_results_table() -> None:
    """A scheme pyarrow does not know goes through fsspec: here its in-memory filesystem."""
    root = f"memory://results-{uuid.uuid4().hex[:8]}/table"
    store = ResultsStore(root, fresh_limit=2)
    with store.locked(), ResultsStore(root).locked():  # no lock on an object store: two drivers may hold it
        for seed in range(3):
            store.write(cell(seed, top1=0.5 + seed / 10))
    assert not store.files.exists(store.root / ".lock")
    store.save_spec("two", "name: two\n")
    assert load(root).sort_values("seed")["top1"].tolist() == [0.5, 0.6, 0.7]
    assert [store.read_spec(p) for p in store.specs("two")] == ["name: two\n"]


@pytest.mark.slow
def test_levels_of_an_iterative_cell_live_on_the_object_store_and_a_retry_continues_after_them(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    from test_scheduler import imp_spec

    log, flag = tmp_path / "calls", tmp_path / "fail"
    flag.touch()
    spec = tmp_path / "levels.yaml"
    spec.write_text(imp_spec(log, flag, fail_call=2))
    results = f"s3://{bucket}/lv"
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(REPO)}
    command = [str(HARNESS), "run", str(spec), "--results", results, "--backend", "local"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 1, first.stdout + first.stderr

    objects = s3_objects(endpoint, bucket, "lv/")
    cells = parquet_rows(objects, "cells").sort_values("level")
    assert cells[["level", "status"]].values.tolist() == [[0, "ok"], [1, "ok"], [2, "failed"]]
    (cell_id,) = set(cells["cell_id"])
    assert f"lv/levels/{cell_id}.pt" in objects, "the finished levels' checkpoint is under the prefix"
    assert list(maskfile.decode(objects[f"lv/masks/levels/{cell_id}.npz"])) == [0, 1], "the finished levels' masks"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls", "fail", "levels.yaml", "mlflow.db"]

    flag.unlink()
    second = subprocess.run([*command, "--retry-failed"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert log.read_text().split() == ["0", "1", "2"], "levels 0 and 1 were not pruned again"
    assert f"lv/levels/{cell_id}.pt" not in s3_objects(endpoint, bucket, "lv/"), "done: nothing left to resume"
    assert load(results).sort_values("level")[["level", "status"]].values.tolist() == [[0, "ok"], [1, "ok"], [2, "ok"]]
    levels = maskfile.decode(s3_objects(endpoint, bucket, "lv/masks/")[f"lv/masks/levels/{cell_id}.npz"])
    assert list(levels) == [0, 1, 2], "a resumed cell keeps the masks of the levels before the retry"
    kept = [sum(m.kept() for m in level.values()) / sum(m.size for m in level.values()) for level in levels.values()]
    assert kept == pytest.approx([0.5, 0.25, 0.2], abs=1e-3)  # the schedule's targets 0.5, 0.75, 0.8
    final = load_masks(results, cell_id)  # read back through pyarrow's S3 filesystem
    assert all(np.array_equal(final[name], mask.unpack()) for name, mask in levels[2].items())
