"""What planning a large matrix costs: a 100,000-cell ``harness run --dry-run``, measured as a user runs it.

    plan   10 models × 5 data sets × 10 methods × 20 sparsities × 10 seeds, ``--dry-run`` into an empty
           results folder, in a subprocess whose stdout is a pipe: wall time and peak RSS   target < 10 s, < 2 GB

    python benchmarks/perf_plan.py [--repeats 1]

The figure includes everything the command does: Python and torch start-up, loading the method
registry, the 50 model × data-set forward passes on the meta device, expanding and hashing every
cell, reading the (empty) results table and printing the summary by axis. The load average is
printed beside it: on a shared machine the wall time grows with the load (the CPU time much less).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIME_TARGET, MEMORY_TARGET = 10.0, 2.0  # seconds, GB

MODELS = ["conv2", "conv4", "conv6", "lenet_300_100", "lenet5", "vgg11", "vgg16", "resnet20", "resnet32", "resnet56"]
DATASETS = ["cifar10", "cifar100", "mnist", "digits", "imagenet"]
METHODS = ["global_magnitude", "layer_magnitude", "random", "filter_l1", "filter_l2"]
METHODS += ["snip", "grasp", "synflow", "global_gradient", "layer_gradient"]
SPARSITIES = [round(0.05 * k, 2) for k in range(1, 20)] + [0.97]
SEEDS = list(range(10))
CELLS = len(MODELS) * len(DATASETS) * len(METHODS) * len(SPARSITIES) * len(SEEDS)


def spec_text() -> str:
    return (
        f"name: plan\nmodels: {MODELS}\ndatasets: {DATASETS}\nmethods: {METHODS}\n"
        f"sparsities: {SPARSITIES}\nseeds: {SEEDS}\n"
    ).replace("'", "")


def dry_run(folder: Path) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in GB, stdout) of one dry run in a child process."""
    spec = folder / "plan.yaml"
    spec.write_text(spec_text())
    command = [sys.executable, "-m", "harness.cli", "run", str(spec), "--dry-run", "--results", str(folder / "r")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = child.communicate()
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"the dry run failed ({child.returncode}): {err.strip()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    peak = after.ru_maxrss / 2**20  # the largest child so far; KB -> GB
    return seconds, cpu, peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="Dry runs; the fastest is reported.")
    args = parser.parse_args()
    assert CELLS == 100_000, CELLS
    runs = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            runs.append(dry_run(Path(folder)))
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores"
    seconds, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
    peak = max(r[2] for r in runs)
    output = runs[0][3]
    if f"{CELLS} cells" not in output:
        raise SystemExit("the dry run's output does not count the 100,000 cells")
    print(
        f"plan: {seconds:.1f} s = {seconds / TIME_TARGET:.2f}x of the {TIME_TARGET:.0f} s target "
        f"({cpu:.1f} s of CPU: the wall time on an idle core), "
        f"peak {peak:.2f} GB = {peak / MEMORY_TARGET:.2f}x of the {MEMORY_TARGET:.0f} GB target — "
        f"`harness run --dry-run` of {CELLS:,} cells ({len(MODELS)} models × {len(DATASETS)} data sets × "
        f"{len(METHODS)} methods × {len(SPARSITIES)} sparsities × {len(SEEDS)} seeds), "
        f"{len(output.splitlines())} lines printed; {load}"
    )


if __name__ == "__main__":
    main()
