"""Results written through the real ResultsStore without training: rows shaped like ``execute_cell``'s.

The numbers follow simple rules so tests can state what a report must show: compression ratio is
1 / (1 - sparsity), speedup the same, and top-1 falls from the dense accuracy as sparsity rises,
more steeply for ``random`` than for the magnitude methods.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from harness.config import content_hash
from harness.schema import CellResult
from harness.store import ResultsStore

DENSE_TOP1 = 0.95
LAYERS = {"fc1": 1000, "fc2": 100, "fc3": 10}
DROP = {"random": 0.6, "global_magnitude": 0.2, "layer_magnitude": 0.3}


def top1_of(method: str, sparsity: float, seed: int) -> float:
    return DENSE_TOP1 - DROP.get(method, 0.25) * sparsity**4 + 0.002 * seed


def fake_cell(
    benchmark: str,
    dataset: str,
    model: str,
    method: str,
    sparsity: float,
    seed: int,
    *,
    top1: float | None = None,
    method_params: dict | None = None,
    status: str = "ok",
    mlflow_run_id: str | None = "0123456789abcdef0123456789abcdef",
    **extra,
) -> CellResult:
    """One finished (or failed) cell with its level row, per-layer table and a fine-tuning curve."""
    params = json.dumps(method_params or {}, sort_keys=True)
    cell_id = content_hash([dataset, model, method, params, sparsity, seed])
    identity = {
        "benchmark": benchmark,
        "cell_id": cell_id,
        "pretrain_key": content_hash([dataset, model, seed]),
        "model": model,
        "dataset": dataset,
        "method": method,
        "method_params": params,
        "sparsity": sparsity,
        "compression": None,
        "seed": seed,
        "status": status,
        "error": None if status == "ok" else "RuntimeError: boom\n  File x.py, line 1",
        "started_at": datetime(2026, 1, 1, tzinfo=UTC),
        "finished_at": datetime(2026, 1, 1, 0, 5, tzinfo=UTC),
        "dense_top1": DENSE_TOP1 + 0.002 * seed,
        "dense_top5": 0.999,
        "harness_version": "0.1.0",
        "torch_version": "2.13.0",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "mlflow_run_id": mlflow_run_id,
    }
    if status != "ok":
        return CellResult(cell_id, [{**identity, "level": 0}])
    total = sum(LAYERS.values())
    keep = 1 - sparsity
    row = {
        **identity,
        "level": 0,
        "top1": top1_of(method, sparsity, seed) if top1 is None else top1,
        "top5": 0.999,
        "loss": 0.2,
        "params_total": total,
        "params_nonzero": round(total * keep),
        "compression_ratio": 1 / keep,
        "sparsity_achieved": sparsity,
        "flops_dense": total,
        "flops_nonzero": total * keep,
        "theoretical_speedup": 1 / keep,
        "layer_collapse": sparsity >= 0.99,
        **extra,
    }
    # global methods prune the big layer harder; layer-wise ones prune every layer alike
    skew = {"fc1": 1.0, "fc2": 0.8, "fc3": 0.5} if method.startswith("global") else dict.fromkeys(LAYERS, 1.0)
    layers = [
        {"level": 0, "layer": name, "kind": "Linear", "params": n, "nonzero": round(n * (1 - sparsity * skew[name]))}
        | {"flops_dense": n, "flops_nonzero": n * (1 - sparsity * skew[name])}
        for name, n in LAYERS.items()
    ]
    epochs = [{"phase": "finetune-0", "epoch": 0, "lr": 0.01, "val_top1": row["top1"], "val_loss": 0.3}]
    return CellResult(cell_id, [row], epochs, layers)


def write_benchmark(
    root: Path,
    benchmark: str = "demo",
    pairs: tuple[tuple[str, str], ...] = (("digits", "lenet_300_100"),),
    methods: tuple[str, ...] = ("random", "global_magnitude", "layer_magnitude"),
    sparsities: tuple[float, ...] = (0.5, 0.75, 0.875, 0.9375, 0.96875),
    seeds: tuple[int, ...] = (0, 1, 2),
    spec_text: str | None = "name: demo\n",
) -> ResultsStore:
    store = ResultsStore(root)
    for dataset, model in pairs:
        for method in methods:
            for sparsity in sparsities:
                for seed in seeds:
                    store.write(fake_cell(benchmark, dataset, model, method, sparsity, seed))
    if spec_text:
        store.save_spec(benchmark, spec_text)
    return store
