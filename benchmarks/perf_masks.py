"""What recording masks (``record_masks``, on by default) costs a ResNet-20 cell: time and bytes.

Builds ResNet-20 at CIFAR size, masks it by global |w| at each sparsity, and times what a cell does
per level with ``record_masks`` on: packing the masks (the worker, at the level's end), encoding the
file of every level so far (an iterative cell does so at each level, for its checkpoint and its
partial rows) and writing it into a results folder (the driver, fsync included). A cell trains at
least one epoch per level, so the goal is stated against one fine-tuning epoch of CIFAR-10
(50,000 images at batch 128 = 391 SGD steps, estimated from a few timed steps on ``--device``):
recording under 5 % of it, for a one-shot cell and for a 10-level iterative one (against 10 epochs).

    python benchmarks/perf_masks.py [--sparsities 0.5 0.9 0.98] [--levels 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from harness import maskfile
from harness.masks import prunable_weights
from harness.methods import create_method
from harness.methods.base import PruningContext
from harness.models import create_model
from harness.store import ResultsStore

SHAPE = (3, 32, 32)
GOAL = 0.05  # recording / the training it rides on
STEPS_PER_EPOCH = 391  # CIFAR-10's 50,000 training images at batch 128


def seconds(work, repeats: int = 5) -> float:
    """The median wall time of ``work()``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def epoch_seconds(model: torch.nn.Module, device: torch.device, steps: int = 3) -> float:
    """One CIFAR-10 epoch of SGD on ``model``, from the median of a few timed steps at batch 128."""
    model = model.to(device).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(128, *SHAPE, device=device), torch.randint(0, 10, (128,), device=device)

    def step() -> None:
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    return seconds(step, steps) * STEPS_PER_EPOCH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9, 0.98])
    parser.add_argument("--levels", type=int, default=10, help="levels of the iterative cell")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("resnet20", SHAPE, 10)
    weights = prunable_weights(model)
    epoch = epoch_seconds(model, torch.device(args.device))
    print(f"resnet20, {sum(w.numel() for w in weights.values())} prunable weights; load average "
          f"{os.getloadavg()[0]:.2f}; one CIFAR-10 epoch on {args.device} ≈ {epoch:.1f} s ({torch.get_num_threads()} "
          "threads)")  # fmt: skip
    print("sparsity  bytes/level  pack ms  encode ms  write ms  one-shot vs epoch  "
          f"{args.levels}-level ms  vs {args.levels} epochs  goal")  # fmt: skip
    ctx = PruningContext(model, weights, {}, lambda: None, lambda: None, 0, SHAPE)
    with tempfile.TemporaryDirectory() as folder:
        store = ResultsStore(folder)
        for sparsity in args.sparsities:
            chosen = create_method("global_magnitude").prune_masks(ctx, sparsity)
            masks = {name: m.numpy() for name, m in chosen.items()}
            pack = seconds(lambda: {name: maskfile.PackedMask.of(m) for name, m in masks.items()})  # noqa: B023
            level = {name: maskfile.PackedMask.of(m) for name, m in masks.items()}
            one = maskfile.encode({0: level})
            encode = seconds(lambda: maskfile.encode({0: level}))  # noqa: B023
            write = seconds(lambda: store.save_masks("perf", "cell", one))  # noqa: B023

            # an iterative cell: at each level k the file of levels 0..k is encoded and written
            def level_end(k: int, level: maskfile.LevelMasks = level) -> None:
                store.save_masks("perf", "cell", maskfile.encode(dict.fromkeys(range(k + 1), level)))

            iterative = args.levels * pack + sum(seconds(lambda k=k: level_end(k), 3) for k in range(args.levels))
            shot = pack + encode + write
            worst = max(shot / epoch, iterative / (args.levels * epoch))
            print(
                f"{sparsity:>8}  {len(one):>11,}  {pack * 1e3:>7.2f}  {encode * 1e3:>9.2f}  {write * 1e3:>8.2f}  "
                f"{shot / epoch:>16.3%}  {iterative * 1e3:>12.1f}  {iterative / (args.levels * epoch):>12.3%}  "
                f"{'meets' if worst < GOAL else 'MISSES'} < {GOAL:.0%}"
            )
    print(f"bytes/level: one level's file (1 bit per masked weight, deflated); {args.levels}-level: every level's "
          "packing, encoding and writing of the file so far")  # fmt: skip


if __name__ == "__main__":
    main()
