"""The scheduler on a real multi-node Ray cluster: three simulated nodes with one GPU each.

The nodes declare GPUs this machine does not have: Ray schedules by the declared resources, hands
each task a GPU id, and the cell finds no CUDA and trains on the CPU.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from harness.runner import run_matrix
from harness.scheduler.dag import plan
from harness.spec import expand, load_spec
from harness.store import ResultsStore
from harness.tracking import MatrixRun

pytestmark = pytest.mark.ray
PLUGIN = Path(__file__).with_name("ray_plugins.py")


@pytest.fixture(scope="module")
def cluster():
    """A head that runs nothing (num_cpus=0) and three worker nodes of 2 CPUs and 1 GPU each; the
    last one also has a custom resource and a node label."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    nodes.append(cluster.add_node(num_cpus=2, num_gpus=1, resources={"bigmem": 1}, labels={"pool": "special"}))
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def cells_of(write_spec, text: str):
    return expand(load_spec(write_spec(f"plugins: [{PLUGIN}]\n" + text)))


def rows(store: ResultsStore) -> list[dict]:
    from harness.results import connect

    return connect(store.root).execute("SELECT * FROM cells").df().to_dict("records")


def test_cells_spread_over_nodes_and_half_gpus_pack_two_per_gpu(cluster, write_spec, results_dir, tmp_path) -> None:
    _, nodes = cluster
    # Six cells that each wait until all six run at once. CPUs would admit 8 per node (0.25 each);
    # the GPU admits 2 (0.5 each), so all six can only meet if Ray puts exactly two on every node.
    cells = cells_of(
        write_spec,
        f"""
name: packing
models: [lenet_300_100]
datasets: [digits]
methods: [{{name: rendezvous, folder: "{tmp_path / "arrived"}", count: 6}}]
sparsities: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
seeds: [0]
pretrain: {{epochs: 0}}
finetune: {{epochs: 0}}
resources: {{cpus: 0.25, gpus: 0.5}}
""",
    )
    store = ResultsStore(results_dir)
    progress = run_matrix(cells, store)

    table = rows(store)
    assert (progress.ok, progress.failed) == (6, 0)
    assert [row["peers"] for row in table] == [6] * 6, "all six cells ran at the same time"
    assert Counter(row["ray_node_id"] for row in table) == {node.node_id: 2 for node in nodes}
    assert {row["gpu_ids"] for row in table} == {"0"}, "each cell was given its node's GPU"


@pytest.mark.parametrize("resources", ["{custom: {bigmem: 0.5}}", "{labels: {pool: special}}"], ids=["custom", "label"])
def test_custom_resources_and_node_labels_pick_the_node(cluster, write_spec, results_dir, resources: str) -> None:
    _, nodes = cluster
    cells = cells_of(
        write_spec,
        f"""
name: placed
models: [lenet_300_100]
datasets: [digits]
methods: [random]
sparsities: [0.5, 0.9]
seeds: [0]
pretrain: {{epochs: 0}}
finetune: {{epochs: 0}}
resources: {resources}
""",
    )
    store = ResultsStore(results_dir)
    run_matrix(cells, store)
    assert {row["ray_node_id"] for row in rows(store)} == {nodes[2].node_id}


def test_exception_in_a_cell_is_a_failed_row_and_the_matrix_goes_on(cluster, write_spec, results_dir) -> None:
    cells = cells_of(
        write_spec,
        """
name: failing
models: [lenet_300_100]
datasets: [digits]
methods: [explode, global_magnitude]
sparsities: [0.5]
seeds: [0]
pretrain: {epochs: 1, lr: 0.05, batch_size: 64}
finetune: {epochs: 1, lr: 0.01}
""",
    )
    store = ResultsStore(results_dir)
    progress = run_matrix(cells, store, max_retries=2)

    by_method = {row["method"]: row for row in rows(store)}
    assert (progress.ok, progress.failed) == (1, 1)
    assert by_method["global_magnitude"]["status"] == "ok"
    failed = by_method["explode"]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("RuntimeError: boom: a plugin bug")
    assert "ray_plugins.py" in failed["error"], "the traceback summary points at the line that raised"
    log = store.log_path(failed["cell_id"]).read_text()
    assert "about to explode" in log and "RuntimeError: boom" in log
    assert [c.method for c in plan(cells, store, retry_failed=True).todo] == ["explode"]
    assert plan(cells, store).todo == []


def test_pretraining_runs_once_per_key_and_mlflow_keeps_every_cell(cluster, write_spec, results_dir) -> None:
    # 2 seeds × 3 methods × 2 sparsities = 12 cells over 2 dense models (one per seed); 6 run at once.
    cells = cells_of(
        write_spec,
        """
name: shared
models: [lenet_300_100]
datasets: [digits]
methods: [random, global_magnitude, layer_magnitude]
sparsities: [0.5, 0.9]
seeds: [0, 1]
pretrain: {epochs: 1, lr: 0.05, batch_size: 64}
finetune: {epochs: 2, lr: 0.01}
""",
    )
    store = ResultsStore(results_dir)
    uri = f"sqlite:///{results_dir / 'mlflow.db'}"
    results_dir.mkdir(parents=True)
    matrix = MatrixRun.start(uri, "shared", results_dir, {"cells": len(cells)})
    progress = run_matrix(cells, store, matrix)

    table = rows(store)
    assert (progress.ok, progress.pretrained, progress.reused) == (12, 2, 0)
    assert len(list((results_dir / "checkpoints").glob("*.pt"))) == 2
    # every cell of a key carries the same measured pretraining time: one training, not several
    assert len({(row["pretrain_key"], row["pretrain_seconds"]) for row in table}) == 2

    client = MlflowClient(uri)
    children = client.search_runs([matrix.experiment_id], f"tags.mlflow.parentRunId = '{matrix.run_id}'")
    roles = Counter(run.data.tags["harness.role"] for run in children)
    assert roles == {"cell": 12, "pretrain": 2}
    cell_runs = {run.info.run_id: run for run in children if run.data.tags["harness.role"] == "cell"}
    assert {row["mlflow_run_id"] for row in table} == set(cell_runs)
    for run_id, run in cell_runs.items():
        assert run.info.status == "FINISHED"
        assert "top1" in run.data.metrics
        curve = client.get_metric_history(run_id, "finetune-0.val_top1")
        assert [m.step for m in curve] == [0, 1], "both fine-tuning epochs are in the child run"


def test_node_removed_mid_matrix_every_cell_lands_once(cluster, write_spec, results_dir, tmp_path) -> None:
    """Runs last: it takes a node away from the module's cluster."""
    head, nodes = cluster
    arrived = tmp_path / "arrived"
    cells = cells_of(
        write_spec,
        f"""
name: nodeloss
models: [lenet_300_100]
datasets: [digits]
methods: [{{name: rendezvous, folder: "{arrived}", count: 6, hold: 3}}]
sparsities: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
seeds: [0]
pretrain: {{epochs: 0}}
finetune: {{epochs: 0}}
resources: {{cpus: 1, gpus: 0.5}}
""",
    )
    victim = nodes[0]

    def remove_when_all_running() -> None:
        while not arrived.exists() or len(list(arrived.iterdir())) < 6:
            time.sleep(0.05)
        head.remove_node(victim, allow_graceful=False)  # two cells are holding on it right now

    remover = threading.Thread(target=remove_when_all_running, daemon=True)
    remover.start()
    store = ResultsStore(results_dir)
    progress = run_matrix(cells, store, max_retries=2)
    remover.join(timeout=30)

    table = rows(store)
    assert not remover.is_alive()
    assert (progress.ok, progress.failed) == (6, 0)
    assert sorted(row["cell_id"] for row in table) == sorted(cell.cell_id for cell in cells)
    assert victim.node_id not in {row["ray_node_id"] for row in table}, "the lost cells were retried elsewhere"
