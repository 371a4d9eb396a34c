"""`harness run` as a user runs it: a local Ray started and stopped by the harness, then Ctrl-C,
SIGKILL and reruns. Each run is a real subprocess, so the interruptions are real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.results import connect
from harness.runner import SchedulingError, run_matrix
from harness.spec import expand, load_spec
from harness.store import ResultsStore

HARNESS = str(Path(sys.executable).with_name("harness"))
PLUGIN = Path(__file__).with_name("ray_plugins.py")
CELLS = 8


def spec_text(folder: Path) -> str:
    """Eight cells of 1.5 s each, two at a time: about 6 s of cells to interrupt."""
    return f"""
name: resumable
plugins: [{PLUGIN}]
models: [lenet_300_100]
datasets: [digits]
methods: [{{name: rendezvous, folder: "{folder}", hold: 1.5}}]
sparsities: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
seeds: [0]
pretrain: {{epochs: 1, lr: 0.05, batch_size: 64}}
finetune: {{epochs: 0}}
"""


def harness(*args: str) -> subprocess.Popen:
    return subprocess.Popen([HARNESS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_cells(store: ResultsStore, more_than: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(store.statuses()) <= more_than:
        assert process.poll() is None, f"the run ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "no cell finished in time"
        time.sleep(0.2)


def finished_at(store: ResultsStore) -> dict[str, object]:
    return dict(connect(store.root).execute("SELECT cell_id, finished_at FROM cells").fetchall())


@pytest.mark.ray
def test_ctrl_c_then_sigkill_then_rerun_finishes_without_redoing_anything(write_spec, results_dir, tmp_path) -> None:
    spec = write_spec(spec_text(tmp_path / "arrived"))
    args = (str(spec), "--results", str(results_dir), "--max-parallel", "2")
    store = ResultsStore(results_dir)

    first = harness("run", *args)
    wait_for_cells(store, 0, first)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130
    assert f"Resume with: harness run {spec} --results {results_dir}" in stderr

    second = harness("run", *args)
    wait_for_cells(store, len(store.statuses()), second)
    second.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    second.wait()
    done_before = finished_at(store)
    checkpoint = next((results_dir / "checkpoints").glob("*.pt"))
    checkpoint_written = checkpoint.stat().st_mtime_ns
    assert 0 < len(done_before) < CELLS

    status = subprocess.run(
        [HARNESS, "status", str(spec), "--results", str(results_dir)], capture_output=True, text=True
    )
    assert status.returncode == 0
    all_row = re.search(r"^all\s+(\d+)\s+(\d+)\s+(\d+)$", status.stdout, re.MULTILINE)  # a pipe: plain text
    assert all_row, status.stdout
    assert tuple(map(int, all_row.groups())) == (len(done_before), 0, CELLS - len(done_before))  # done, failed, pending

    third = subprocess.run([HARNESS, "run", *args], capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert f"{len(done_before)} done, 0 failed before, {CELLS - len(done_before)} to run" in third.stdout
    assert "dense models: 0 trained, 1 reused" in third.stdout
    assert checkpoint.stat().st_mtime_ns == checkpoint_written
    done_after = finished_at(store)
    assert len(done_after) == CELLS
    assert {cell: done_after[cell] for cell in done_before} == done_before, "finished cells were not run again"
    count = connect(store.root).execute("SELECT count(*) FROM cells").fetchone()[0]
    assert count == CELLS, "one row per cell: no duplicates"
    assert not (Path(os.environ["HOME"]) / ".ray").exists(), "the local Ray left nothing in the home folder"


def local_cells(write_spec, resources: str):
    spec = f"""
name: local
models: [lenet_300_100]
datasets: [digits]
methods: [global_magnitude]
sparsities: [0.5]
seeds: [0]
pretrain: {{epochs: 1, lr: 0.05, batch_size: 64}}
finetune: {{epochs: 0}}
resources: {resources}
"""
    return expand(load_spec(write_spec(spec)))


@pytest.mark.ray
def test_a_gpu_spec_runs_on_the_cpu_of_a_local_ray_without_gpu(write_spec, results_dir) -> None:
    store = ResultsStore(results_dir)
    progress = run_matrix(local_cells(write_spec, "{cpus: 1, gpus: 0.5}"), store)
    assert (progress.ok, progress.failed) == (1, 0)
    gpu_ids = connect(store.root).execute("SELECT gpu_ids FROM cells").fetchall()
    assert gpu_ids == [("",)], "no GPU was asked of Ray"


@pytest.mark.ray
def test_cells_asking_for_what_a_local_ray_lacks_stop_before_running(write_spec, results_dir) -> None:
    with pytest.raises(SchedulingError, match=r"cells ask for \{'custom': \{'tpu_pod': 1.0\}\} but the Ray cluster"):
        run_matrix(local_cells(write_spec, "{custom: {tpu_pod: 1}}"), ResultsStore(results_dir))
    assert not results_dir.exists()


def test_submit_needs_an_absolute_results_path_on_the_cluster(write_spec, tmp_path) -> None:
    spec = write_spec(spec_text(tmp_path / "arrived"))
    result = subprocess.run([HARNESS, "submit", str(spec), "--results", "results"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--results results is relative" in result.stderr
