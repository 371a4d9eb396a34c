"""GPU packing: LeNet-size cells four to a GPU (``gpus: 0.25``) against one cell per GPU at a time.

Small cells leave a GPU mostly idle (kernel launches and Python dominate), so packing several on one
device should multiply throughput. Prints the ratio (target ≥ 3×). Cells go through Ray's fractional
GPUs when Ray is importable; otherwise through worker processes sharing the device, which is what
Ray does with 0.25-GPU tasks (four worker processes on one GPU). Skips on a machine without CUDA.

    python benchmarks/perf_gpu_packing.py [--cells 16] [--epochs 10]
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from harness.cell import execute_cell, pretrain
from harness.spec import CellSpec, Recipe, Resources


def cells(count: int, epochs: int, gpus: float) -> list[CellSpec]:
    recipe = Recipe(epochs=epochs, lr=0.05, batch_size=64)
    return [
        CellSpec(
            benchmark="gpu-packing",
            model="lenet_300_100",
            dataset="digits",
            method="global_magnitude",
            sparsity=0.5 + 0.4 * i / count,  # distinct cells, same dense model
            seed=0,
            pretrain=recipe,
            finetune=recipe,
            resources=Resources(cpus=1, gpus=gpus),
        )
        for i in range(count)
    ]


def _run_one(args: tuple[CellSpec, bytes]) -> str:
    return execute_cell(*args).rows[-1]["status"]


def with_processes(batch: list[CellSpec], dense: bytes, per_gpu: int) -> float:
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(per_gpu, mp_context=context) as pool:
        list(pool.map(_run_one, [(c, dense) for c in batch[:per_gpu]]))  # warm-up: CUDA context per worker
        start = time.perf_counter()
        statuses = list(pool.map(_run_one, [(c, dense) for c in batch]))
        seconds = time.perf_counter() - start
    assert statuses == ["ok"] * len(batch), statuses
    return seconds


def with_ray(batch: list[CellSpec], dense: bytes, per_gpu: int) -> float:
    from harness.runner import run_matrix
    from harness.store import ResultsStore

    with tempfile.TemporaryDirectory() as folder:
        store = ResultsStore(folder)
        store.save_checkpoint(batch[0].pretrain_key, dense)
        start = time.perf_counter()
        progress = run_matrix(batch, store)
        seconds = time.perf_counter() - start
    assert progress.failed == 0
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("GPU packing: skipped (no CUDA device on this machine)")
        return
    try:
        import ray  # noqa: F401

        run, path = with_ray, "Ray fractional GPUs"
    except ImportError:
        run, path = with_processes, "worker processes sharing the GPU (Ray not installed here)"
    dense = pretrain(cells(1, args.epochs, 1.0)[0]).to_bytes()
    one = run(cells(args.cells, args.epochs, 1.0), dense, 1)
    four = run(cells(args.cells, args.epochs, 0.25), dense, 4)
    print(
        f"GPU packing ({torch.cuda.get_device_name()}, {datetime.date.today()}, {path}): "
        f"{args.cells} lenet_300_100/digits cells of {args.epochs} fine-tuning epochs — "
        f"one per GPU {one:.1f} s, four per GPU (0.25 each) {four:.1f} s: "
        f"throughput ratio {one / four:.2f}x (target >= 3x)"
    )


if __name__ == "__main__":
    main()
