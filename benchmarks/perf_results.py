"""How fast the results table answers as it grows: a 1,000,000-row ``cells`` table, written cell by cell
through the ResultsStore (so compaction runs as it does in a real run), then what a user runs on it.

Goals (issue 11), each printed as a ratio: the leaderboard aggregate in under a second (connect +
query, in process); ``harness query`` under a second end to end (a fresh process: imports
included); ``harness report`` under 30 s and 2 GB peak memory. Also prints the write throughput
and the file count.

    python benchmarks/perf_results.py [--cells 10000] [--levels 100] [--dir DIR] [--report-timeout 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from harness.leaderboard import leaderboard
from harness.results import connect
from harness.schema import CellResult
from harness.store import ResultsStore

TARGET_SECONDS = 1.0
QUERY_SECONDS, REPORT_SECONDS, REPORT_BYTES = 1.0, 30.0, 2 * 1024**3
HARNESS = str(Path(sys.executable).with_name("harness"))
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


def timed(command: list[str], timeout: float) -> tuple[float, int, int | None]:
    """Wall seconds, peak resident bytes and exit code (None: stopped at ``timeout``) of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            return time.perf_counter() - started, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)
        if time.perf_counter() > deadline:
            process.kill()
            _, _, usage = os.wait4(process.pid, 0)
            return time.perf_counter() - started, usage.ru_maxrss * 1024, None
        time.sleep(0.02)


def query_cli(root: Path) -> None:
    sql = "SELECT method, sparsity, avg(top1) AS top1 FROM cells GROUP BY ALL ORDER BY ALL"
    timings = [timed([HARNESS, "query", sql, "--results", str(root), "--format", "csv"], 120) for _ in range(3)]
    best = min(seconds for seconds, _, _ in timings)
    print(
        f"harness query: {best:.2f} s (goal < {QUERY_SECONDS:.0f} s: {QUERY_SECONDS / best:.2f} of goal) — "
        f"best of 3 fresh processes, imports included: {sql!r} --format csv"
    )


def report_cli(root: Path, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="perf-report-") as out:
        seconds, peak, code = timed([HARNESS, "report", "--results", str(root), "--out", out], timeout)
    outcome = f"exit {code}" if code is not None else f"stopped after {timeout:.0f} s, unfinished"
    print(
        f"harness report: {seconds:.1f} s (goal < {REPORT_SECONDS:.0f} s: {REPORT_SECONDS / seconds:.2f} of goal), "
        f"peak {peak / 1024**3:.2f} GB (goal < {REPORT_BYTES / 1024**3:.0f} GB: {REPORT_BYTES / peak:.2f} of goal), "
        f"{outcome} — the HTML site over the whole table"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--levels", type=int, default=100)
    shm = Path("/dev/shm")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--report-timeout", type=float, default=300.0, help="seconds before the report is stopped")
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
        query_cli(root)
        report_cli(root, args.report_timeout)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
