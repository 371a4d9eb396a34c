"""How fast the results table answers as it grows: a 1,000,000-row ``cells`` table, written cell by cell
through the ResultsStore (so compaction runs as it does in a real run), then the leaderboard aggregate.

Target: the leaderboard over 1M rows in under a second (connect + query, the way ``harness run`` and
``harness query`` do it). Prints the write throughput, the file count and the aggregate's time.

    python benchmarks/perf_results.py [--cells 10000] [--levels 100] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from harness.leaderboard import leaderboard
from harness.results import connect
from harness.schema import CellResult
from harness.store import ResultsStore

TARGET_SECONDS = 1.0
BENCHMARK = "perf"
DATASETS = ("cifar10", "cifar100", "imagenet", "mnist", "digits")
MODELS = ("resnet20", "resnet56", "vgg16", "lenet_300_100")
METHODS = ("random", "global_magnitude", "layer_magnitude", "global_gradient", "snip", "rigl", "quant8", "huffman")
SPARSITIES = (0.5, 0.75, 0.875, 0.9375, 0.96875)


def synthetic_cell(index: int, levels: int, now: datetime) -> CellResult:
    """A plausible finished cell with ``levels`` rows (as an iterative method writes them)."""
    cell_id = f"{index:016x}"
    sparsity = SPARSITIES[index % len(SPARSITIES)]
    identity = {
        "benchmark": BENCHMARK,
        "cell_id": cell_id,
        "pretrain_key": f"{index % 97:016x}",
        "model": MODELS[index // 5 % len(MODELS)],
        "dataset": DATASETS[index // 20 % len(DATASETS)],
        "method": METHODS[index // 100 % len(METHODS)],
        "method_params": "{}",
        "seed": index // 800,
        "status": "ok",
        "error": None,
        "started_at": now,
        "finished_at": now,
        "dense_top1": 0.92,
        "dense_top5": 0.99,
        "harness_version": "0.1.0",
        "torch_version": "2.13.0",
        "git_commit": "0" * 40,
        "mlflow_run_id": f"{index:032x}",
    }
    rows = []
    for level in range(levels):
        kept = 1 - sparsity * (level + 1) / levels
        rows.append(
            {
                **identity,
                "level": level,
                "sparsity": round(1 - kept, 6),
                "top1": 0.92 - 0.1 * (1 - kept) ** 3 - 0.001 * (index % 7),
                "top5": 0.99,
                "loss": 0.3,
                "params_total": 266_610,
                "params_nonzero": int(266_610 * kept),
                "compression_ratio": 1 / kept,
                "sparsity_achieved": 1 - kept,
                "flops_dense": 266_200,
                "flops_nonzero": 266_200 * kept,
                "theoretical_speedup": 1 / kept,
                "finetune_seconds": 1.0,
                "eval_seconds": 0.1,
            }
        )
    return CellResult(cell_id, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--levels", type=int, default=100)
    shm = Path("/dev/shm")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="perf-results-", dir=shm if shm.is_dir() else None))
    try:
        store = ResultsStore(root)
        now = datetime.now(UTC)
        started = time.perf_counter()
        for index in range(args.cells):
            store.write(synthetic_cell(index, args.levels, now))
        write_seconds = time.perf_counter() - started
        files = sum(1 for _ in (root / "cells").rglob("*.parquet"))
        rows = connect(root).execute("SELECT count(*) FROM cells").fetchone()[0]
        print(
            f"wrote {rows:,} rows ({args.cells:,} cells × {args.levels} levels) into {root}: "
            f"{args.cells / write_seconds:,.0f} cells/s, {files} files in cells/ after compaction"
        )

        timings = []
        for _ in range(5):
            started = time.perf_counter()
            frame = leaderboard(connect(root), BENCHMARK)
            timings.append(time.perf_counter() - started)
        best, worst = min(timings), max(timings)
        print(
            f"leaderboard aggregate over {rows:,} rows → {len(frame)} entries: best {best:.3f} s, worst {worst:.3f} s; "
            f"target {TARGET_SECONDS:.1f} s → {TARGET_SECONDS / worst:.1f}x headroom"
        )
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
