"""MLflow runs written a batch at a time read back, through MLflow's own client, exactly as the public calls
(create_run, log_batch, set_terminated) write them: the reference is the same run logged both ways."""

from __future__ import annotations

from pathlib import Path

from harness.tracking import ChildRun, MatrixRun


def children() -> list[ChildRun]:
    cell = {"harness.role": "cell", "model": "lenet_300_100"}
    curve = [("top1", 0.5, 0), ("top1", 0.75, 1), ("top1", 0.7, 2), ("finetune-0.val_top1", 0.4, 0)]
    return [
        ChildRun("cell-a", {**cell, "cell_id": "a"}, {"sparsity": 0.5, "finetune.lr": 0.01}, curve, False),
        ChildRun("cell-b", {**cell, "cell_id": "b", "error": "RuntimeError: boom"}, {"sparsity": 0.9}, [], True),
        ChildRun("trial", {"harness.role": "trial"}, {}, [("val_top1", 0.3, 0), ("val_top1", 0.3, 0)], False),
    ]


def test_a_batch_of_runs_reads_back_as_the_public_calls_write_them(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    matrix = MatrixRun.start(uri, "bench", tmp_path, {"cells": 3})
    batch = matrix.log_children(children())
    one_by_one = [matrix.log_child(child) for child in children()]
    client = MlflowClient(uri)
    for bulk_id, public_id in zip(batch, one_by_one, strict=True):
        bulk, public = client.get_run(bulk_id), client.get_run(public_id)
        for field in ("status", "run_name", "experiment_id", "user_id", "lifecycle_stage"):
            assert getattr(bulk.info, field) == getattr(public.info, field), field
        assert bulk.info.artifact_uri == public.info.artifact_uri.replace(public_id, bulk_id)
        assert bulk.data.tags == public.data.tags and bulk.data.tags["mlflow.parentRunId"] == matrix.run_id
        assert bulk.data.params == public.data.params
        assert bulk.data.metrics == public.data.metrics  # the latest value of each: top1 at step 2 is 0.7
        for key in public.data.metrics:
            history = [[(m.step, m.value) for m in client.get_metric_history(r, key)] for r in (bulk_id, public_id)]
            assert sorted(history[0]) == sorted(history[1])
    assert client.get_run(batch[0]).data.metrics["top1"] == 0.7
    assert [client.get_run(run_id).info.status for run_id in batch] == ["FINISHED", "FAILED", "FINISHED"]
    found = client.search_runs([matrix.experiment_id], "tags.cell_id = 'a'")
    assert sorted(run.info.run_id for run in found) == sorted([batch[0], one_by_one[0]])
