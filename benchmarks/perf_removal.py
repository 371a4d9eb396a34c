"""Measured against theoretical speedup of filter pruning, masked and with the channels removed.

Builds each model at CIFAR size (3x32x32, 10 classes), masks half of every layer's filters by L1
norm (``filter_l1`` at 0.5), removes them (``remove: true``'s :func:`harness.removal.remove_pruned_channels`)
and prints, per model, the theoretical speedup and the measured one at batch 64 and at batch 1 with
the harness's own protocol (:mod:`harness.latency`: median of repeats after warm-up, one thread on
the CPU). The goal: the removed model's measured batch speedup at least half the speedup of its
shapes (``flops_dense / flops_physical``); a masked model measures ~1× whatever its theory says.

    python benchmarks/perf_removal.py [--models resnet20 vgg16] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os

import torch

from harness.latency import median_ms
from harness.masks import apply_masks, prunable_weights
from harness.methods import create_method
from harness.methods.base import PruningContext
from harness.metrics import architecture, model_metrics
from harness.models import create_model
from harness.removal import remove_pruned_channels

SHAPE = (3, 32, 32)
GOAL = 0.5  # measured batch speedup / theoretical speedup of the removed model


def measure(name: str, device: torch.device, params: dict | None = None) -> dict[str, float]:
    """Theoretical, shape and measured speedups of ``filter_l1`` at 0.5 (with ``params``) on ``name``."""
    torch.manual_seed(0)
    model = create_model(name, SHAPE, 10).to(device).eval()
    weights = prunable_weights(model)
    ctx = PruningContext(model, weights, {}, lambda: None, lambda: None, 0, SHAPE)
    masks = create_method("filter_l1", params).prune_masks(ctx, 0.5)
    apply_masks(model, masks)
    masked = copy.deepcopy(model)
    batch = torch.randn(64, *SHAPE, device=device)
    original = architecture(masked, batch[:1])
    removal = remove_pruned_channels(model, masks, batch[:16])
    original = dataclasses.replace(original, kept_removed=removal.kept_removed)
    row, _ = model_metrics(model, prunable_weights(model), batch[:1], original=original)
    times = {
        f"{label}{size}": median_ms(net, batch[:size]) for label, net in (("masked", masked), ("removed", model))
        for size in (64, 1)
    }  # fmt: skip
    return {
        "theoretical": row["theoretical_speedup"],
        "physical": row["flops_dense"] / row["flops_physical"],
        "masked_64": times["masked64"],
        "removed_64": times["removed64"],
        "measured_64": times["masked64"] / times["removed64"],
        "measured_1": times["masked1"] / times["removed1"],
        "channels": removal.channels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, load average {os.getloadavg()[0]:.2f}")
    print("model      channels  theoretical  shapes  masked ms  removed ms  measured@64  measured@1  vs goal")
    for name in args.models:
        r = measure(name, device)
        ratio = r["measured_64"] / r["physical"] / GOAL
        print(
            f"{name:<10} {r['channels']:>8}  {r['theoretical']:>10.2f}x {r['physical']:>6.2f}x {r['masked_64']:>9.2f} "
            f"{r['removed_64']:>11.2f}  {r['measured_64']:>10.2f}x {r['measured_1']:>10.2f}x  {ratio:>6.2f}"
        )
    print(f"shapes: flops_dense / flops_physical; vs goal: measured@64 / (shapes · {GOAL}), >= 1 meets it")


if __name__ == "__main__":
    main()
