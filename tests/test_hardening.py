"""What a careless user or a hostile file cannot do: share a results folder between two drivers, leave
temporary files behind, make a report copy files from elsewhere, run code through a CIFAR batch,
read DuckDB's spill folder through a query; and every written file has the mode the umask says."""

from __future__ import annotations

import os
import pickle
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from results_factory import write_benchmark

from harness.data.cifar import read_batches
from harness.report import build_report
from harness.results import query
from harness.store import ResultsLocked, ResultsStore

HARNESS = str(Path(sys.executable).with_name("harness"))
SPEC = """
name: locked
models: [lenet_300_100]
datasets: [digits]
methods: [global_magnitude]
sparsities: [0.5]
seeds: [0]
pretrain: {epochs: 1, lr: 0.05, batch_size: 64}
finetune: {epochs: 0}
"""


# -- one driver per results folder ------------------------------------------------------------------


def test_a_second_driver_exits_2_at_once_naming_the_holder_and_readers_go_on(write_spec, results_dir) -> None:
    spec = write_spec(SPEC)
    store = ResultsStore(results_dir)
    with store.locked():
        assert (results_dir / ".lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
        second = subprocess.run(
            [HARNESS, "run", str(spec), "--results", str(results_dir)], capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 2, second.stderr
        assert f"is in use by another harness run (pid {os.getpid()} on {socket.gethostname()})" in second.stderr
        assert sorted(p.name for p in results_dir.iterdir()) == [".lock"], "it started and wrote nothing"
        # the lock is per open file: even this process cannot take it twice
        with pytest.raises(ResultsLocked), store.locked():
            pass
        status = subprocess.run(
            [HARNESS, "status", str(spec), "--results", str(results_dir)], capture_output=True, text=True, timeout=120
        )
        assert status.returncode == 0 and "pending" in status.stdout  # readers take no lock
        dry = subprocess.run(
            [HARNESS, "run", str(spec), "--results", str(results_dir), "--dry-run"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dry.returncode == 0 and "1 to run" in dry.stdout
    with store.locked():  # released when its holder is done
        pass
    assert (results_dir / ".lock").read_text() == ""


def test_the_lock_dies_with_a_killed_holder(results_dir) -> None:
    code = "import sys, time\nfrom harness.store import ResultsStore\nwith ResultsStore(sys.argv[1]).locked():\n"
    code += "    print('held', flush=True); time.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(results_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(ResultsLocked, match=f"pid {holder.pid} on "), ResultsStore(results_dir).locked():
        pass
    holder.kill()
    holder.wait()
    with ResultsStore(results_dir).locked():  # SIGKILL released it: no stale lock to remove by hand
        pass


def test_the_lock_holder_removes_temporary_files_of_killed_writers(results_dir) -> None:
    store = write_benchmark(results_dir)
    partition = store.partition_dir("cells", "demo")
    stray = [
        partition / ".cell-abc.parquet.k3j2.tmp",  # atomic_write_bytes' name
        partition / ".seg-00000001-00000001.parquet.tmp",  # a compaction's
        results_dir / "checkpoints" / ".key.pt.x9.tmp",
    ]
    for path in stray:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    before = sorted(p for p in results_dir.rglob("*") if p.is_file() and p not in stray)
    rows = len(query(results_dir, "SELECT * FROM cells"))
    with store.locked():
        assert not any(path.exists() for path in stray)
    assert sorted(p for p in results_dir.rglob("*") if p.is_file()) == sorted([*before, results_dir / ".lock"])
    assert len(query(results_dir, "SELECT * FROM cells")) == rows


# -- files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_have_the_mode_the_umask_gives(results_dir, tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        store = write_benchmark(results_dir)
        store.save_checkpoint("key", b"dense")
        written = build_report([results_dir], tmp_path / "site")
    finally:
        os.umask(old)
    files = [*written, store.checkpoint_path("key"), *store.specs("demo"), *results_dir.rglob("*.parquet")]
    modes = {oct(stat.S_IMODE(path.stat().st_mode)) for path in files}
    assert modes == {oct(0o666 & ~umask)}


def test_the_report_copies_no_file_from_outside_the_results_folder(results_dir, tmp_path) -> None:
    store = write_benchmark(results_dir)
    secret = tmp_path / "secret.yaml"
    secret.write_text("password: hunter2\n")
    folder = store.specs("demo")[0].parent
    (folder / "leak.yaml").symlink_to(secret)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "other.yaml").write_text("password: hunter3\n")
    (results_dir / "specs" / "other").symlink_to(outside, target_is_directory=True)  # a whole folder linked
    assert store.specs("demo") == [folder / next(p.name for p in folder.iterdir() if p.name != "leak.yaml")]
    assert store.specs("other") == []
    site = tmp_path / "site"
    build_report([results_dir], site)
    copied = [p for p in (site / "specs").rglob("*") if p.is_file()]
    assert [p.read_text() for p in copied] == ["name: demo\n"]
    assert not any("hunter" in p.read_text() for p in site.rglob("*") if p.is_file())


def test_duckdb_spills_nowhere_a_query_can_read(results_dir, tmp_path, monkeypatch) -> None:
    write_benchmark(results_dir)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "planted.csv").write_text("secret\nhunter2\n")
    with pytest.raises(Exception, match="may read only the views and files under"):
        query(results_dir, "SELECT * FROM read_csv('.tmp/planted.csv')")
    assert len(query(results_dir, "SELECT * FROM cells")) > 0


# -- the CIFAR loader -----------------------------------------------------------------------------


class RunsCode:
    """What a hostile pickle does: unpickling calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path) -> None:
    marker = tmp_path / "ran"
    hostile = tmp_path / "data_batch_1"
    hostile.write_bytes(pickle.dumps({b"data": RunsCode(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1: not a CIFAR batch file: .*system is not part of a CIFAR"):
        read_batches((hostile,), b"labels")
    assert not marker.exists()
    pickle.loads(hostile.read_bytes())  # the same file through plain pickle: the code runs
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_valid_cifar_batch_still_loads(tmp_path, protocol) -> None:
    images = np.arange(2 * 3072, dtype=np.uint64).reshape(2, 3072).astype(np.uint8)
    batch = {b"batch_label": b"training batch 1 of 5", b"data": images, b"labels": [3, 7], b"filenames": [b"a.png"]}
    data = pickle.dumps(batch, protocol=protocol)
    if protocol == 2:  # as the official files name it: written before numpy 2 moved numpy.core
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / f"batch-{protocol}"
    path.write_bytes(data)
    read_batches.cache_clear()
    x, y = read_batches((path,), b"labels")
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.uint8
    assert x[1, 2, 31, 31] == (2 * 3072 - 1) % 256 and x[0, 0, 0, 1] == 1
    assert y.tolist() == [3, 7]
