"""Filter pruning on ResNet-20: the masked speedup against the physical one, per ``residual_layers`` mode.

``filter_l1`` at 0.5 on ResNet-20 at CIFAR size (3x32x32, 10 classes), once with ``residual_layers:
skip`` (Li et al.: the layers writing the residual stream stay whole) and once with ``per_layer``.
Prints per mode: the masked model's MACs speedup (``theoretical_speedup``: multiply-adds counted as
if the masked channels were gone), the removed model's (``flops_dense / flops_physical``: the shapes
Torch-Pruning leaves) and the measured latency ratio masked / removed at batch 64 and at batch 1
(:mod:`harness.latency`'s protocol), the median over ``--repeats`` fresh runs with their range: on a
shared CPU one run's batch-1 ratio can be off by 2x. Under ``skip`` the first two agree; under ``per_layer`` the
masked count promises what removal cannot deliver (docs/metrics.md, "Masked and removed speedup").

    python benchmarks/residual_filter_latency.py [--model resnet20] [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from perf_removal import measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{args.model}, filter_l1 at 0.5, device {device}, load average {os.getloadavg()[0]:.2f}")
    print("mode       channels  masked MACs  physical MACs  masked/physical  latency@64 (range)   latency@1 (range)")
    for mode in ("skip", "per_layer"):
        runs = [measure(args.model, device, {"residual_layers": mode}) for _ in range(args.repeats)]
        r = runs[0]  # the counts are the same in every run
        latency = {size: sorted(run[f"measured_{size}"] for run in runs) for size in (64, 1)}
        shown = {size: f"{statistics.median(v):.2f}x ({v[0]:.2f}-{v[-1]:.2f})" for size, v in latency.items()}
        print(
            f"{mode:<10} {r['channels']:>8}  {r['theoretical']:>10.3f}x {r['physical']:>13.3f}x "
            f"{r['theoretical'] / r['physical']:>15.3f}  {shown[64]:>18}  {shown[1]:>18}"
        )
    print("mode: residual_layers; masked MACs: theoretical_speedup; physical MACs: flops_dense / flops_physical")
    print(f"latency: masked / removed ms, median of {args.repeats} runs; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
