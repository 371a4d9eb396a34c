"""Clusters fail clearly: an address nothing listens at, a missing dashboard, Ctrl-C and SIGKILL mid-run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = """\
name: faults
models: [lenet_300_100]
datasets: [digits]
methods: [random, global_magnitude]
sparsities: [0.5, 0.9]
seeds: [0]
pretrain: {epochs: 40, batch_size: 32, lr: 0.05}
finetune: {epochs: 2}
"""


def free_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "COLUMNS")}
    return env | {"PYTHONPATH": str(ROOT)} | extra


def harness(*args: str, cwd: Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - start


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_where_nothing_listens_fails_in_seconds_with_one_message(tmp_path: Path, scheme: str) -> None:
    (tmp_path / "faults.yaml").write_text(SPEC)
    address = f"{scheme}127.0.0.1:{free_port()}"
    done, seconds = harness("run", "faults.yaml", "--results", "results", "--address", address, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert seconds < 30
    assert done.stderr.strip().splitlines() == [
        f"error: cannot reach the Ray cluster at {address} (Connection refused on 127.0.0.1:{address.rsplit(':')[-1]} "
        "within 10 s); start it (ray up, ray start --head) or fix --address / $RAY_ADDRESS"
    ]
    assert not (tmp_path / "results" / "mlflow.db").exists()  # checked before anything was written


def test_submit_to_a_missing_dashboard_is_one_message_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "faults.yaml").write_text(SPEC)
    address = f"http://127.0.0.1:{free_port()}"
    done, seconds = harness("submit", "faults.yaml", "--results", "/tmp/r", "--address", address, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: no Ray dashboard answers at --address {address};")
    assert seconds < 30


def connecting_to(port: int) -> bool:
    """Whether some process here waits for a TCP handshake with 127.0.0.1:``port`` (state SYN_SENT)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        remote, state = line.split()[2:4]
        if remote == f"0100007F:{port:04X}" and state == "02":
            return True
    return False


@pytest.mark.parametrize("command", ["run", "tune"])
def test_ctrl_c_while_joining_a_cluster_ends_with_the_users_options_in_the_resume_command(
    tmp_path: Path, command: str
) -> None:
    """The address takes no connection (its accept queue is full), so the driver waits for the cluster
    when Ctrl-C comes; no Ray starts. The resume command holds every option the user gave."""
    (tmp_path / "faults.yaml").write_text(SPEC)
    plugin = str(ROOT / "tests" / "ray_plugins.py")
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port))  # fills the queue: the next handshake hangs
        options = ["--results", "my results", "--plugin", plugin, "--address", f"127.0.0.1:{port}"]
        options += ["--max-parallel", "2"]
        args = [sys.executable, "-m", "harness.cli", command, "faults.yaml", *options]
        driver = subprocess.Popen(args, cwd=tmp_path, env=environment(), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not connecting_to(port):
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "the driver never tried the address"
            time.sleep(0.1)
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=60)
        queued.close()
    assert driver.returncode == 130
    kept = {"run": "cells", "tune": "trials"}[command]
    more = "--max-parallel 2" if command == "run" else "--trials 8 --protocol equal --sampler tpe --pruner none"
    more += " --max-parallel 2" * (command == "tune")
    assert stderr.strip().splitlines() == [
        f"interrupted; finished {kept} are saved. Resume with: harness {command} faults.yaml --results 'my results' "
        f"--plugin {plugin} --address 127.0.0.1:{port} {more}"
    ]
    assert not (tmp_path / "my results" / "mlflow.db").exists()  # it stopped before anything was written


def start_driver(folder: Path, **env: str) -> subprocess.Popen:
    """``harness run`` in a session of its own (its local Ray too), stdout and stderr to files, as under sbatch."""
    out, err = (folder / "out.txt").open("w"), (folder / "err.txt").open("w")
    command = [sys.executable, "-m", "harness.cli", "run", "faults.yaml", "--results", "results"]
    return subprocess.Popen(command, cwd=folder, env=environment(**env), stdout=out, stderr=err, start_new_session=True)


def wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def parent_runs(results: Path) -> list[tuple[str, str]]:
    """(run id, status) of the benchmark's parent runs, oldest first, read with MLflow's own client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("faults")
    runs = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'matrix'", order_by=["start_time"])
    return [(run.info.run_id, run.info.status) for run in runs]


@pytest.mark.slow
@pytest.mark.ray
def test_ctrl_c_ends_with_the_resume_hint_and_a_sigkilled_run_is_marked_killed_next_time(tmp_path: Path) -> None:
    (tmp_path / "faults.yaml").write_text(SPEC)
    results = tmp_path / "results"

    interrupted = start_driver(tmp_path)  # Ctrl-C while Ray starts or the dense model trains
    wait_for(results / "matrix-run.json")
    time.sleep(2)
    os.killpg(interrupted.pid, signal.SIGINT)
    assert interrupted.wait(120) == 130
    stderr = (tmp_path / "err.txt").read_text()
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "interrupted; finished cells are saved. Resume with: harness run faults.yaml --results results"
    )
    [(first, status)] = parent_runs(results)
    assert status == "KILLED"

    killed = start_driver(tmp_path)
    wait_for(results / "matrix-run.json")
    time.sleep(2)
    os.killpg(killed.pid, signal.SIGKILL)  # no handler runs: the parent run stays RUNNING
    killed.wait(60)
    (second, status) = parent_runs(results)[1]
    assert status == "RUNNING"

    finished = start_driver(tmp_path, HARNESS_PROGRESS_SECONDS="0")
    assert finished.wait(600) == 0, (tmp_path / "err.txt").read_text()
    runs = dict(parent_runs(results))
    assert (runs[first], runs[second]) == ("KILLED", "KILLED")
    assert sorted(runs.values()) == ["FINISHED", "KILLED", "KILLED"]
    assert not (results / "matrix-run.json").exists()
    progress = [line for line in (tmp_path / "err.txt").read_text().splitlines() if " cells " in line]
    assert progress[0].endswith("cells 0/4 done, 0 failed, 0 running, 0.00 cells/s, elapsed 0:00:00, ETA unknown")
    assert " cells 4/4 done, 0 failed, " in progress[-1] and progress[-1].endswith("ETA 0:00:00")


def test_the_note_of_a_live_driver_is_left_alone_and_a_dead_ones_run_is_marked_killed(tmp_path: Path) -> None:
    import json

    from mlflow.tracking import MlflowClient

    from harness.tracking import RUNNING_FILE, MatrixRun, mark_killed_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    matrix = MatrixRun.start(uri, "faults", tmp_path, {"cells": 1})
    note = json.loads((tmp_path / RUNNING_FILE).read_text())
    assert (note["run_id"], note["pid"]) == (matrix.run_id, os.getpid())

    assert mark_killed_runs(tmp_path) == []  # its driver (this process) is alive: another run in progress
    assert client.get_run(matrix.run_id).info.status == "RUNNING"

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no process has any more
    (tmp_path / RUNNING_FILE).write_text(json.dumps(note | {"pid": gone.pid}))
    assert mark_killed_runs(tmp_path) == [matrix.run_id]
    assert client.get_run(matrix.run_id).info.status == "KILLED"
    assert not (tmp_path / RUNNING_FILE).exists()

    second = MatrixRun.start(uri, "faults", tmp_path, {"cells": 1})
    second.finish({"ok": 1, "failed": 0})
    assert client.get_run(second.run_id).info.status == "FINISHED"
    assert not (tmp_path / RUNNING_FILE).exists()  # a run that ends removes its note
