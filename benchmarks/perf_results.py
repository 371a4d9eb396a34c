"""How the read side scales: ``harness query`` and ``harness report`` over a 1,000,000-row ``cells`` table.

    board    the leaderboard ``harness run`` prints, in process (connect + aggregate)  target < 1 s
    query    ``harness query`` of a leaderboard-like aggregate over 1M rows, in a subprocess whose
             stdout is a pipe: wall time and peak RSS                                target < 1 s
    report   ``harness report`` (HTML and Markdown) of the same table                target < 30 s, < 2 GB

    python benchmarks/perf_results.py [--cells 10000] [--levels 100] [--layers 2] [--dir DIR]

The table is written cell by cell through the project's own ResultsStore (so compaction runs as in a
real run): 10,000 iterative cells × 100 levels, 20 data set × model pairs, 8 methods, 5 sparsities,
12–13 seeds, with ``--layers`` rows per level in the ``layers`` view. With ``--dir`` an existing table
there is reused (written first if the folder is empty), so repeated measurements skip the writing.
Each figure includes everything the command does, Python start-up and imports included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from harness.leaderboard import leaderboard
from harness.results import connect
from harness.schema import CellResult
from harness.store import ResultsStore

QUERY_TARGET = 1.0  # seconds
REPORT_TARGET, REPORT_MEMORY_TARGET = 30.0, 2.0  # seconds, GB
BENCHMARK = "perf"
DATASETS = ("cifar10", "cifar100", "imagenet", "mnist", "digits")
MODELS = ("resnet20", "resnet56", "vgg16", "lenet_300_100")
METHODS = ("random", "global_magnitude", "layer_magnitude", "global_gradient", "snip", "rigl", "quant8", "huffman")
SPARSITIES = (0.5, 0.75, 0.875, 0.9375, 0.96875)
QUERY = "SELECT dataset, model, method, count(*) AS n, avg(top1) AS top1 FROM cells GROUP BY ALL ORDER BY ALL"


def synthetic_cell(index: int, levels: int, layers: int, now: datetime) -> CellResult:
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
    rows, layer_rows = [], []
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
        for layer in range(layers):
            params = 100_000 * (layer + 1)
            layer_rows.append(
                {"level": level, "layer": f"features.{layer}", "kind": "Conv2d", "params": params,
                 "nonzero": int(params * kept), "weight_sparsity": 1 - kept, "prunable": True}
            )  # fmt: skip
    return CellResult(cell_id, rows, layers=layer_rows)


def write_table(root: Path, cells: int, levels: int, layers: int) -> None:
    store = ResultsStore(root)
    now = datetime.now(UTC)
    started = time.perf_counter()
    for index in range(cells):
        store.write(synthetic_cell(index, levels, layers, now))
    seconds = time.perf_counter() - started
    files = sum(1 for _ in (root / "cells").rglob("*.parquet"))
    print(f"wrote {cells * levels:,} rows ({cells:,} cells × {levels} levels) in {seconds:.0f} s, {files} cells files")


def run_measured(command: list[str]) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in GB, stdout) of one CLI command in a child process whose
    stdout is a pipe; CPU and peak are this child's own (``os.wait4``), not the largest child's so far."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = _drain(child)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    code = child.returncode = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(command[2:4])} failed ({code}): {err.strip()[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20, out


def _drain(child: subprocess.Popen) -> tuple[str, str]:
    """Both pipes read to the end without reaping the child (``communicate`` would reap it)."""
    chunks: dict[str, str] = {}
    reader = threading.Thread(target=lambda: chunks.setdefault("err", child.stderr.read()))
    reader.start()
    out = child.stdout.read()
    reader.join()
    return out, chunks["err"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--levels", type=int, default=100)
    parser.add_argument("--layers", type=int, default=2, help="rows per level in the layers view")
    parser.add_argument("--repeats", type=int, default=3, help="queries run; the fastest and slowest are shown")
    parser.add_argument("--dir", type=Path, default=None, help="a table to reuse or write (default: a temporary one)")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    root = args.dir or Path(tempfile.mkdtemp(prefix="perf-results-", dir=shm if shm.is_dir() else None))
    cli = [sys.executable, "-m", "harness.cli"]
    try:
        if not (root / "cells").is_dir():
            write_table(root, args.cells, args.levels, args.layers)
        count = [*cli, "query", "SELECT count(*) FROM cells", "--results", str(root), "--format", "csv"]
        rows = int(run_measured(count)[3].split()[-1])
        boards = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            entries = len(leaderboard(connect(root), BENCHMARK))
            boards.append(time.perf_counter() - started)
        print(
            f"board: {min(boards):.2f} s = {min(boards) / QUERY_TARGET:.2f}x of the {QUERY_TARGET:.0f} s target "
            f"(slowest of {args.repeats}: {max(boards):.2f} s) — the leaderboard over {rows:,} rows, {entries} entries"
        )
        query = [run_measured([*cli, "query", QUERY, "--results", str(root)]) for _ in range(args.repeats)]
        best, worst = min(q[0] for q in query), max(q[0] for q in query)
        print(
            f"query: {best:.2f} s = {best / QUERY_TARGET:.2f}x of the {QUERY_TARGET:.0f} s target (slowest of "
            f"{args.repeats}: {worst:.2f} s; {min(q[1] for q in query):.2f} s of CPU), peak "
            f"{max(q[2] for q in query):.2f} GB — `harness query` of a GROUP BY over {rows:,} rows, "
            f"{len(query[0][3].splitlines())} lines printed"
        )
        with tempfile.TemporaryDirectory() as site:
            seconds, cpu, peak, _ = run_measured([*cli, "report", "--results", str(root), "--out", site])
            pages = sorted(Path(site).glob("*.html"))
            size = sum(p.stat().st_size for p in Path(site).rglob("*") if p.is_file()) / 2**20
        print(
            f"report: {seconds:.1f} s = {seconds / REPORT_TARGET:.2f}x of the {REPORT_TARGET:.0f} s target "
            f"({cpu:.1f} s of CPU), peak {peak:.2f} GB = {peak / REPORT_MEMORY_TARGET:.2f}x of the "
            f"{REPORT_MEMORY_TARGET:.0f} GB target — `harness report` (html, markdown) of {rows:,} rows: "
            f"{len(pages)} HTML pages, {size:.1f} MiB written"
        )
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
