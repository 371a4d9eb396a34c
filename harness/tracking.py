"""MLflow tracking: one parent run per ``harness run``, one child run per cell. Nothing else imports mlflow.

Writes are batched (one ``log_batch`` per cell, one per epoch from Lightning) because a SQLite
store serialises writers: single-metric calls cost ~30 ms each under contention.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.spec import CellSpec


def resolve_tracking_uri(configured: str | None, results_dir: Path) -> str:
    """The spec's URI, else ``$MLFLOW_TRACKING_URI``, else a SQLite file under the results folder."""
    if configured or os.environ.get("MLFLOW_TRACKING_URI"):
        return configured or os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def _client(uri: str):  # imported lazily: mlflow costs ~1 s to import
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@dataclass(frozen=True)
class MatrixRun:
    """The parent run of one invocation; picklable, so workers can attach child runs to it."""

    uri: str
    experiment_id: str
    run_id: str

    @classmethod
    def start(cls, uri: str, benchmark: str, artifact_root: Path, params: dict[str, Any]) -> MatrixRun:
        client = _client(uri)
        experiment = client.get_experiment_by_name(benchmark)
        if experiment is None:
            artifact_location = None if uri.startswith("http") else (artifact_root / "mlartifacts").resolve().as_uri()
            experiment_id = client.create_experiment(benchmark, artifact_location=artifact_location)
        else:
            experiment_id = experiment.experiment_id
        run = client.create_run(experiment_id, run_name=f"{benchmark}-matrix", tags={"harness.role": "matrix"})
        client.log_batch(run.info.run_id, params=_params(params))
        return cls(uri, experiment_id, run.info.run_id)

    def finish(self, counts: dict[str, int]) -> None:
        client = _client(self.uri)
        client.log_batch(self.run_id, metrics=_metrics(counts))
        client.set_terminated(self.run_id, "FAILED" if counts.get("failed") else "FINISHED")

    def start_cell(self, cell: CellSpec) -> CellRun:
        client = _client(self.uri)
        tags = {
            "mlflow.parentRunId": self.run_id,
            "cell_id": cell.cell_id,
            "benchmark": cell.benchmark,
            "model": cell.model,
            "dataset": cell.dataset,
            "method": cell.method,
            "sparsity": str(cell.sparsity),
            "seed": str(cell.seed),
        }
        name = f"{cell.model}-{cell.dataset}-{cell.method}-s{cell.sparsity}-seed{cell.seed}"
        run = client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = {
            "model": cell.model,
            "dataset": cell.dataset,
            "method": cell.method,
            "method_params": json.dumps(cell.method_params, sort_keys=True),
            "sparsity": cell.sparsity,
            "seed": cell.seed,
            **{f"pretrain.{k}": v for k, v in cell.pretrain.model_dump().items()},
            **{f"finetune.{k}": v for k, v in cell.finetune.model_dump().items()},
        }
        client.log_batch(run.info.run_id, params=_params(params))
        return CellRun(self.uri, run.info.run_id)


@dataclass(frozen=True)
class CellRun:
    """One cell's MLflow run."""

    uri: str
    run_id: str

    def lightning_logger(self, prefix: str) -> Any:
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(tracking_uri=self.uri, run_id=self.run_id, prefix=prefix)

    def finish(self, final_metrics: dict[str, Any], failed: bool, error: str | None = None) -> None:
        client = _client(self.uri)
        tags = {"error": error[-5000:]} if error else {}
        client.log_batch(self.run_id, metrics=_metrics(final_metrics), tags=_tags(tags))
        client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def _params(params: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in params.items()]


def _metrics(metrics: dict[str, Any]) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(k, float(v), now, 0)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]


def _tags(tags: dict[str, str]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]
