"""What the scheduler costs: four figures, each printed as a ratio against its goal (issue 11).

    overhead    one cell of ~30 s of CPU compute through the whole path (Ray task, Lightning, MLflow,
                Parquet) vs a plain PyTorch loop doing the same training on the same data   goal <= 1.05x
    epoch       one epoch of MNIST-1D through the harness's training (Lightning, the epoch
                history) vs the same epoch in a plain PyTorch loop                         goal <= 1.3x
    speed-up    a 16-cell matrix on a local Ray of 2 CPUs vs the same cells one at a time    goal >= 1.8x
    scheduling  2,000 cells that train nothing (a no-op method, 0 epochs) through the full
                path, Ray start and stop included                                           goal <= 30 s

    python benchmarks/perf_scheduler.py [--only overhead|epoch|speedup|scheduling] [--cells 2000] [--repeats 2]

Both sides of a comparison train on one thread (Ray gives a 1-CPU task OMP_NUM_THREADS=1). Worker
processes are started before timing the overhead and speed-up (a matrix pays that once); the
scheduling figure includes everything. This file is also the plugin that registers the no-op method.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from harness.methods import Method, register_method

PLUGIN = str(Path(__file__).resolve())
OVERHEAD_TARGET, EPOCH_TARGET, SPEEDUP_TARGET, SCHEDULING_TARGET = 1.05, 1.3, 1.8, 30.0


class NoOp(Method):
    """Records the dense model as it is: no pruning, no training. Measures the harness alone."""

    def apply(self, job) -> None:
        job.finish_level()


if __name__ != "__main__":  # loaded as the cells' plugin, in the driver and in every worker
    register_method("noop")(NoOp)


def cells(text: str) -> list:
    from harness.spec import expand, load_spec

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "perf.yaml"
        path.write_text(f"plugins: [{PLUGIN}]\n{text}")
        return expand(load_spec(path))


def run_through_harness(matrix_cells: list, folder: Path, **scheduling) -> tuple[float, object]:
    """Seconds of ``run_matrix`` into a fresh results folder, from submitting the cells to the last row
    and MLflow run written. The parent MLflow run (a new SQLite store: ~1 s, once per folder) is made before."""
    from harness.runner import run_matrix
    from harness.store import ResultsStore
    from harness.tracking import MatrixRun, resolve_tracking_uri

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    matrix = MatrixRun.start(resolve_tracking_uri(None, folder), "perf", folder, {"cells": len(matrix_cells)})
    start = time.perf_counter()
    progress = run_matrix(matrix_cells, ResultsStore(folder), matrix, **scheduling)
    seconds = time.perf_counter() - start
    matrix.finish({"ok": progress.ok, "failed": progress.failed})
    assert progress.failed == 0, f"{progress.failed} cells failed; see {folder}/logs"
    return seconds, progress


# -- overhead ---------------------------------------------------------------------------------------

OVERHEAD_SPEC = """
name: overhead
models: [resnet56]
datasets: [digits]
methods: [global_magnitude]
sparsities: [0.9]
seeds: [0]
pretrain: {{epochs: {pretrain}, optimizer: sgd, lr: 0.05, momentum: 0.9, batch_size: 64}}
finetune: {{epochs: {finetune}, lr: 0.01}}
"""


PRETRAIN_EPOCHS, FINETUNE_EPOCHS = 24, 12  # ~30 s on one core


def plain_accuracy(model: nn.Module, dataset) -> float:
    model.eval()
    with torch.no_grad():
        loader = torch.utils.data.DataLoader(dataset, batch_size=512)
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    model.train()
    return correct / len(dataset)


def plain_fit(model: nn.Module, data, recipe, masks: dict[str, torch.Tensor], evaluate) -> None:
    """``recipe``'s epochs as a plain PyTorch loop (SGD with momentum, masks enforced), validating each epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    params = dict(model.named_parameters())
    for _ in range(recipe.epochs):
        for x, y in torch.utils.data.DataLoader(data.train, batch_size=recipe.batch_size, shuffle=True):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            for name, mask in masks.items():
                params[name].grad.mul_(mask)
            optimizer.step()
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
        evaluate(data.val)


def plain_loop(cell) -> float:
    """The cell's training as a plain PyTorch loop: pretrain, validate each epoch, prune, fine-tune, test."""
    from harness.data import load_splits
    from harness.masks import prunable_weights
    from harness.models import create_model

    start = time.perf_counter()
    torch.manual_seed(cell.seed)
    data = load_splits(cell.dataset, cell.data_root, cell.seed)
    model = create_model(cell.model, data.input_shape, data.num_classes)

    def evaluate(dataset) -> float:
        return plain_accuracy(model, dataset)

    plain_fit(model, data, cell.pretrain, {}, evaluate)
    evaluate(data.test)
    weights = prunable_weights(model)
    scores = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    threshold = scores.kthvalue(round(cell.sparsity * scores.numel())).values
    masks = {name: (w.detach().abs() > threshold).float() for name, w in weights.items()}
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].mul_(mask)
    evaluate(data.test)  # accuracy right after pruning, as the harness records it
    plain_fit(model, data, cell.finetune, masks, evaluate)
    evaluate(data.test)
    return time.perf_counter() - start


def overhead(work: Path, repeats: int) -> None:
    """Best of ``repeats`` for each side, taken in turns, so a noisy neighbour hits both alike."""
    from harness.runner import ray_session

    (cell,) = cells(OVERHEAD_SPEC.format(pretrain=PRETRAIN_EPOCHS, finetune=FINETUNE_EPOCHS))
    torch.set_num_threads(1)
    started = time.perf_counter()
    with ray_session():
        ray_start = time.perf_counter() - started
        warm_up = cells(OVERHEAD_SPEC.format(pretrain=1, finetune=1))
        run_through_harness(warm_up, work / "overhead-warm")  # starts a worker: a matrix pays that once
        harness_times, plain_times = [], []
        for attempt in range(repeats):
            harness_times.append(run_through_harness([cell], work / f"overhead-{attempt}")[0])
            plain_times.append(plain_loop(cell))
        started = time.perf_counter()
    ray_stop = time.perf_counter() - started
    harness_seconds, plain_seconds = min(harness_times), min(plain_times)
    ratio = harness_seconds / plain_seconds
    print(
        f"overhead: {ratio:.3f}x (goal <= {OVERHEAD_TARGET}x: {OVERHEAD_TARGET / ratio:.2f} of goal) — "
        "one resnet56/digits cell, "
        f"{PRETRAIN_EPOCHS} + {FINETUNE_EPOCHS} epochs, best of {repeats}: "
        f"{harness_seconds:.1f} s through Ray task + Lightning + MLflow + Parquet vs {plain_seconds:.1f} s in a "
        f"plain PyTorch loop; once per run on top: Ray start {ray_start:.1f} s, stop {ray_stop:.1f} s"
    )


# -- one epoch -----------------------------------------------------------------------------------

EPOCH_SPEC = """
name: epoch
models: [mnist1d_mlp]
datasets: [mnist1d]
methods: [global_magnitude]
sparsities: [0.9]
seeds: [0]
pretrain: {epochs: 20, optimizer: sgd, lr: 0.05, momentum: 0.9, batch_size: 64}
"""


def epoch_cost(repeats: int) -> None:
    """Seconds per pretraining epoch: the harness's ``train`` (what every cell and pretraining calls) vs a
    plain loop, both on one thread, the data loaded once; best of ``repeats`` each, taken in turns."""
    from harness.data import load_splits
    from harness.models import create_model
    from harness.training import train

    (cell,) = cells(EPOCH_SPEC)
    torch.set_num_threads(1)
    data = load_splits(cell.dataset, cell.data_root, cell.seed)
    recipe = cell.pretrain
    harness_times, plain_times = [], []
    train(
        create_model(cell.model, data.input_shape, data.num_classes),
        data.train,
        data.val,
        recipe.model_copy(update={"epochs": 1}),
        seed=0,
        phase="warm-up",
    )  # imports, first-call costs
    for _ in range(repeats):
        model = create_model(cell.model, data.input_shape, data.num_classes)
        started = time.perf_counter()
        train(model, data.train, data.val, recipe, seed=cell.seed, phase="pretrain")
        harness_times.append((time.perf_counter() - started) / recipe.epochs)
        model = create_model(cell.model, data.input_shape, data.num_classes)
        started = time.perf_counter()
        plain_fit(model, data, recipe, {}, functools.partial(plain_accuracy, model))
        plain_times.append((time.perf_counter() - started) / recipe.epochs)
    ratio = min(harness_times) / min(plain_times)
    print(
        f"epoch: {ratio:.2f}x (goal <= {EPOCH_TARGET}x: {EPOCH_TARGET / ratio:.2f} of goal) — mnist1d_mlp/mnist1d, "
        f"{len(data.train)} training examples, batch {recipe.batch_size}, best of {repeats}: "
        f"{1000 * min(harness_times):.0f} ms per epoch through harness.training.train vs "
        f"{1000 * min(plain_times):.0f} ms in a plain PyTorch loop (both validate every epoch)"
    )


# -- parallel speed-up ------------------------------------------------------------------------------

SPEEDUP_SPEC = """
name: speedup
models: [resnet20]
datasets: [digits]
methods: [global_magnitude, layer_magnitude, random, global_gradient]
sparsities: [0.5, 0.9]
seeds: [0, 1]
pretrain: {epochs: 8, optimizer: sgd, lr: 0.05, momentum: 0.9, batch_size: 64}
finetune: {epochs: 8, lr: 0.01}
"""


def speedup(work: Path) -> None:
    import ray

    from harness.runner import ray_session

    matrix_cells = cells(SPEEDUP_SPEC)
    with ray_session():
        cpus = ray.cluster_resources()["CPU"]
        warm_up = cells(SPEEDUP_SPEC.replace("epochs: 8", "epochs: 0"))
        run_through_harness(warm_up, work / "speedup-warm")  # starts two workers: a matrix pays that once
        one_at_a_time, _ = run_through_harness(matrix_cells, work / "serial", max_parallel=1)
        parallel, _ = run_through_harness(matrix_cells, work / "parallel")
    print(
        f"speed-up: {one_at_a_time / parallel:.2f}x (goal >= {SPEEDUP_TARGET}x: "
        f"{one_at_a_time / parallel / SPEEDUP_TARGET:.2f} of goal) — {len(matrix_cells)} "
        f"resnet20/digits cells and their 2 pretrainings on {cpus:g} CPUs: {parallel:.1f} s vs {one_at_a_time:.1f} s "
        "one at a time (--max-parallel 1)"
    )


# -- scheduling -------------------------------------------------------------------------------------


def scheduling(work: Path, count: int) -> None:
    """Everything a user waits for: Ray start, the parent MLflow run, the cells, Ray stop."""
    sparsities = ", ".join(f"{i / count:.6f}" for i in range(count))
    matrix_cells = cells(
        f"""
name: scheduling
models: [mnist1d_mlp]
datasets: [digits]
methods: [noop]
sparsities: [{sparsities}]
seeds: [0]
pretrain: {{epochs: 0}}
finetune: {{epochs: 0}}
"""
    )
    started = time.perf_counter()
    _, progress = run_through_harness(matrix_cells, work / "scheduling")  # starts and stops a local Ray
    seconds = time.perf_counter() - started
    print(
        f"scheduling: {seconds:.1f} s for {progress.ok} no-op cells (goal <= {SCHEDULING_TARGET:.0f} s for 2,000: "
        f"{SCHEDULING_TARGET * progress.ok / 2000 / seconds:.2f} of goal) — "
        f"local Ray start and stop, 1 pretraining, a Ray task, an MLflow child run and Parquet rows per cell: "
        f"{1000 * seconds / progress.ok:.1f} ms per cell"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("overhead", "epoch", "speedup", "scheduling"))
    parser.add_argument("--cells", type=int, default=2000, help="cells of the scheduling figure")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side of the overhead figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="perf-scheduler-") as folder:
        work = Path(folder)
        if args.only in (None, "overhead"):
            overhead(work, args.repeats)
        if args.only in (None, "epoch"):
            epoch_cost(args.repeats)
        if args.only in (None, "speedup"):
            speedup(work)
        if args.only in (None, "scheduling"):
            scheduling(work, args.cells)


if __name__ == "__main__":
    main()
