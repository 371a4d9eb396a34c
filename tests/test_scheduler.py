"""The scheduler's parts: the matrix DAG without Ray, and levels as units of work on the in-process backend.

An iterative cell writes every level the moment it finishes; a failure in level k keeps levels
0…k−1 and records k as failed; a driver killed mid-cell leaves its finished levels in the table;
a rerun continues after the last finished level without training the earlier ones again, and
ends with the same rows as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from harness.config import CellSpec
from harness.leaderboard import leaderboard
from harness.results import connect
from harness.scheduler.dag import MatrixDag
from harness.spec import expand, load_spec
from harness.store import ResultsStore

HARNESS = str(Path(sys.executable).with_name("harness"))
PLUGIN = Path(__file__).with_name("level_plugins.py")


def cell(model: str, seed: int, sparsity: float) -> CellSpec:
    return CellSpec(
        benchmark="b", model=model, dataset="digits", method="global_magnitude", sparsity=sparsity, seed=seed
    )


# -- the DAG -------------------------------------------------------------------------------------


def test_dag_pretrains_each_missing_dense_model_once_and_releases_its_cells_in_matrix_order() -> None:
    cells = [cell(m, s, x) for m in ("lenet_300_100", "mnist1d_mlp") for s in (0, 1) for x in (0.5, 0.9)]
    keys = [c.pretrain_key for c in cells]
    assert len(set(keys)) == 4  # two models × two seeds; the sparsities share a dense model
    dag = MatrixDag(cells, have_dense={keys[0]})  # lenet seed 0 is already trained
    assert list(dag.ready) == cells[0:2]
    assert [c.pretrain_key for c in dag.pretrain] == [keys[2], keys[4], keys[6]]  # one task each, matrix order
    assert dag.dense_ready(keys[4]) == cells[4:6]
    assert list(dag.ready) == [*cells[0:2], *cells[4:6]]
    assert dag.dense_failed(keys[2]) == cells[2:4]
    assert not dag.cell_done(cells[0])  # cells[1] still needs the dense model
    assert dag.cell_done(cells[1])
    assert dag.cell_done(cells[4]) is False and dag.cell_done(cells[5]) is True
    dag.pretrain.clear()
    dag.ready.clear()
    assert dag.pending() is False and dag.dense_ready(keys[6]) == cells[6:8] and dag.pending() is True


def test_dag_module_imports_no_ray_and_no_torch() -> None:
    code = "import sys, harness.scheduler.dag; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- levels as units of work ---------------------------------------------------------------------


def imp_spec(log: Path, flag: Path, fail_call: int = -1) -> str:
    """IMP to 0.8 at rate 0.5 on the digits MLP: targets 0.5, 0.75, 0.8, so three levels, three prunings; the
    error barrier between successive levels (``lmc_points``) needs the level before, also after a resume."""
    score = {"log": str(log), "fail_flag": str(flag), "fail_call": fail_call}
    return f"""
name: levels
plugins: [{PLUGIN}]
models: [lenet_300_100]
datasets: [digits]
methods: [{{name: imp, rate: 0.5, lmc_points: 3, score: counted_magnitude, score_params: {score}}}]
sparsities: [0.8]
seeds: [0]
pretrain: {{epochs: 2, lr: 0.05, batch_size: 64}}
finetune: {{epochs: 1, lr: 0.01}}
"""


def cell_rows(results: Path) -> list[tuple]:
    con = duckdb.connect()
    cells = ResultsStore(results).view_sql("cells", con)
    sql = f"SELECT level, status, sparsity, top1, error, lmc_barrier FROM ({cells}) ORDER BY level"
    return con.execute(sql).fetchall()


def levels_written(results: Path) -> int:
    con = duckdb.connect()
    return con.execute(f"SELECT count(*) FROM ({ResultsStore(results).view_sql('cells', con)})").fetchone()[0]


def epochs_by_phase(results: Path) -> dict[str, int]:
    con = duckdb.connect()
    sql = f"SELECT phase, count(*) FROM ({ResultsStore(results).view_sql('epochs', con)}) GROUP BY phase"
    return dict(con.execute(sql).fetchall())


def run(spec: Path, results: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [HARNESS, "run", str(spec), "--results", str(results), "--backend", "local", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_a_failed_level_keeps_the_levels_before_it_and_a_retry_continues_after_them(write_spec, tmp_path) -> None:
    log, flag, results = tmp_path / "calls", tmp_path / "fail", tmp_path / "results"
    flag.touch()
    spec = write_spec(imp_spec(log, flag, fail_call=2))
    first = run(spec, results)
    assert first.returncode == 1, first.stderr
    rows = cell_rows(results)
    assert [(level, status) for level, status, *_ in rows] == [(0, "ok"), (1, "ok"), (2, "failed")]
    assert [s for _, _, s, *_ in rows[:2]] == [0.5, 0.75]
    assert "level 2 broke on purpose" in rows[2][4]
    assert log.read_text().split() == ["0", "1"]  # the third pruning raised
    assert ResultsStore(results).load_level(expand(load_spec(spec))[0].cell_id) is not None
    assert leaderboard(connect(results), "levels").empty, "a cell cut short at level 2 has no final result"

    flag.unlink()
    second = run(spec, results, "--retry-failed")
    assert second.returncode == 0, second.stderr
    assert log.read_text().split() == ["0", "1", "2"]  # one more pruning: levels 0 and 1 were not redone
    after = cell_rows(results)
    assert [(level, status) for level, status, *_ in after] == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert after[:2] == [(*row[:4], None, row[5]) for row in rows[:2]]  # the kept levels are the first run's
    assert after[0][5] is None and after[1][5] is not None and after[2][5] is not None  # barrier from level 1 on
    # one fine-tuning epoch per level, and θ0 → the whole pretrain recipe per IMP round (2 epochs) once each
    assert epochs_by_phase(results) == {"finetune-0": 2, "finetune-1": 2, "finetune-2": 2}
    assert ResultsStore(results).load_level(expand(load_spec(spec))[0].cell_id) is None  # done: nothing to resume
    board = leaderboard(connect(results), "levels")
    assert board[["sparsity", "seeds", "top1_mean"]].values.tolist() == [[0.8, 1, after[2][3]]]  # the last level

    # the same cell never interrupted: the same rows (CPU training is deterministic)
    fresh = tmp_path / "fresh"
    log.unlink()
    assert run(spec, fresh).returncode == 0
    assert [row[:4] + row[5:] for row in cell_rows(fresh)] == [row[:4] + row[5:] for row in after]


def test_a_driver_killed_mid_imp_leaves_its_levels_and_the_rerun_continues_after_them(write_spec, tmp_path) -> None:
    log, results = tmp_path / "calls", tmp_path / "results"
    spec = write_spec(imp_spec(log, tmp_path / "no-flag"))
    command = [HARNESS, "run", str(spec), "--results", str(results), "--backend", "local"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    store = ResultsStore(results)
    while not (store.view_dir("cells").is_dir() and levels_written(results) >= 2):  # level 0 has no barrier
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no two levels finished in time"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    kept = cell_rows(results)
    finished = len(kept)
    assert finished in (2, 3) and {status for _, status, *_ in kept} == {"partial"}
    calls_before = len(log.read_text().split())

    rerun = run(spec, results)
    assert rerun.returncode == 0, rerun.stderr
    after = cell_rows(results)
    assert [(level, status) for level, status, *_ in after] == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert [(level, s, top1) for level, _, s, top1, *_ in after[:finished]] == [
        (level, s, top1) for level, _, s, top1, *_ in kept
    ]
    # the rerun pruned only the levels the killed run had not finished (a level cut off mid-way counts once more)
    assert len(log.read_text().split()) - calls_before == 3 - finished


@pytest.mark.ray
def test_levels_stream_back_from_ray_workers(write_spec, tmp_path) -> None:
    log, flag, results = tmp_path / "calls", tmp_path / "fail", tmp_path / "results"
    flag.touch()
    spec = write_spec(imp_spec(log, flag, fail_call=2))
    command = [HARNESS, "run", str(spec), "--results", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    assert [(level, status) for level, status, *_ in cell_rows(results)] == [(0, "ok"), (1, "ok"), (2, "failed")]
    flag.unlink()
    again = subprocess.run([*command, "--retry-failed"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert log.read_text().split() == ["0", "1", "2"]
    assert [(level, status) for level, status, *_ in cell_rows(results)] == [(0, "ok"), (1, "ok"), (2, "ok")]


def test_a_worker_caches_each_dense_checkpoint_by_its_bytes_not_only_its_key() -> None:
    """A cluster's worker outlives a matrix: another results folder may hold another training of one key."""
    import torch

    from harness.cell import DenseCheckpoint, dense_checkpoint

    state = {"w": torch.zeros(2)}
    first = DenseCheckpoint("key", state, state, {"pretrain_seconds": 1.0}).to_bytes()
    second = DenseCheckpoint("key", state, state, {"pretrain_seconds": 2.0}).to_bytes()
    assert dense_checkpoint(first, "key").metrics == {"pretrain_seconds": 1.0}
    assert dense_checkpoint(second, "key").metrics == {"pretrain_seconds": 2.0}
    assert dense_checkpoint(first, "key") is not dense_checkpoint(second, "key")
    assert dense_checkpoint(first, "key") is dense_checkpoint(first, "key")  # deserialised once


@pytest.mark.ray
def test_cancel_running_interrupts_politely_and_forces_only_a_task_that_does_not_stop() -> None:
    import ray

    from harness.scheduler.backends import cancel_running

    def polite() -> None:
        for _ in range(1200):  # Python code, like a training loop: the KeyboardInterrupt lands between sleeps
            time.sleep(0.1)

    def stubborn() -> None:
        for _ in range(240):
            with contextlib.suppress(KeyboardInterrupt):  # refuses to stop: only killing its worker ends it
                time.sleep(0.5)

    def stream():
        yield 1
        polite()
        yield 2

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        finished = ray.remote(lambda: 7).remote()
        assert ray.get(finished) == 7
        polite_ref, stubborn_ref = ray.remote(polite).remote(), ray.remote(stubborn).remote()
        generator = ray.remote(num_returns="streaming")(stream).remote()
        assert ray.get(next(generator)) == 1
        time.sleep(2)  # all three are running
        start = time.monotonic()
        forced = cancel_running([finished, polite_ref, stubborn_ref, generator], seconds=3)
        assert forced == [stubborn_ref]
        assert 3 <= time.monotonic() - start < 20
        assert ray.get(finished) == 7  # a finished task is left alone
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(polite_ref, timeout=30)
        with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
            ray.get(stubborn_ref, timeout=30)
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(next(generator), timeout=30)
    finally:
        ray.shutdown()
