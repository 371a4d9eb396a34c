"""Command line: parse, call the layers below, map errors to exit codes (0 ok, 1 a cell failed, 2 bad input)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split(":")[0])
console = Console()
errors = Console(stderr=True)

ResultsOption = Annotated[Path, typer.Option("--results", help="Results folder.")]
PluginOption = Annotated[
    list[str] | None, typer.Option("--plugin", help="Plugin module (importable name or .py path); repeatable.")
]


def _fail_input(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(2)


@app.command()
def run(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="Benchmark file.")],
    results: ResultsOption = Path("results"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the cells and what is done; run nothing.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run the failed cells again.")] = False,
    plugin: PluginOption = None,
) -> None:
    """Run every cell of a benchmark that is not in the results table yet, then print the leaderboard."""
    from harness.methods import load_plugins
    from harness.registry import RegistryError
    from harness.spec import SpecError, expand, load_spec

    try:
        load_plugins(plugin or [])
        spec = load_spec(spec_path)
        cells = expand(spec)
    except (SpecError, RegistryError, ImportError) as exc:
        raise _fail_input(str(exc)) from None

    from harness.runner import plan
    from harness.store import ResultsStore

    store = ResultsStore(results)
    todo = plan(cells, store, retry_failed)
    console.print(
        f"[bold]{spec.name}[/bold]: {len(cells)} cells — {len(todo.done)} done, "
        f"{len(todo.failed_before)} failed before, {len(todo.todo)} to run"
    )
    if dry_run:
        _print_cells(cells, {c.cell_id for c in todo.done}, {c.cell_id for c in todo.failed_before})
        return
    counts = {"ok": 0, "failed": 0}
    if todo.todo:
        counts = _run_with_progress(spec, spec_path, todo.todo, store, results, plugin or [])
    _print_summary(spec.name, results, counts)
    raise typer.Exit(1 if counts["failed"] else 0)


def _run_with_progress(spec, spec_path: Path, cells, store, results: Path, plugins: list[str]) -> dict[str, int]:
    from harness.runner import run_matrix
    from harness.tracking import MatrixRun, resolve_tracking_uri

    results.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(spec.tracking_uri, results)
    matrix = MatrixRun.start(uri, spec.name, results, {"cells": len(cells), "spec": spec.model_dump_json()})
    cells = [cell.model_copy(update={"plugins": tuple(plugins) + cell.plugins}) for cell in cells]
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    counts = {"ok": 0, "failed": 0}
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("cells", total=len(cells), failed=0)

        def on_start(cell) -> None:
            progress.update(
                task, description=f"{cell.model}/{cell.dataset} {cell.method} s={cell.sparsity:g} seed={cell.seed}"
            )

        def on_result(cell, result) -> None:
            counts["ok" if result.ok else "failed"] += 1
            progress.update(task, advance=1, failed=counts["failed"])
            if not result.ok:
                progress.console.print(
                    f"[red]failed[/red] {cell.cell_id} {cell.method}: {result.rows[0]['error'].splitlines()[0]}"
                )

        try:
            run_matrix(cells, store, matrix, on_result=on_result, on_start=on_start)
        except KeyboardInterrupt:
            matrix.finish({**counts, "interrupted": 1})
            errors.print(
                f"interrupted; finished cells are saved. Resume with: harness run {spec_path} --results {results}"
            )
            raise typer.Exit(130) from None
    matrix.finish(counts)
    return counts


def _print_cells(cells, done: set[str], failed: set[str]) -> None:
    table = Table("cell_id", "model", "dataset", "method", "params", "sparsity", "seed", "state")
    for c in cells:
        state = "done" if c.cell_id in done else "failed" if c.cell_id in failed else "pending"
        table.add_row(
            c.cell_id, c.model, c.dataset, c.method, json.dumps(c.method_params), f"{c.sparsity:g}", str(c.seed), state
        )
    console.print(table)


def _print_summary(benchmark: str, results: Path, counts: dict[str, int]) -> None:
    from harness.leaderboard import leaderboard, print_leaderboard
    from harness.results import connect

    frame = leaderboard(connect(results), benchmark) if (results / "cells").exists() else None
    if frame is not None and len(frame):
        print_leaderboard(frame, console)
    console.print(
        f"ran {counts['ok'] + counts['failed']} cells: {counts['ok']} ok, {counts['failed']} failed; "
        f"results in {results}/"
    )


class Registered(StrEnum):
    methods = "methods"
    models = "models"
    datasets = "datasets"


@app.command("list")
def list_(what: Registered, plugin: PluginOption = None) -> None:
    """List the registered methods, models or data sets, and where each came from."""
    from harness.methods import load_plugins

    try:
        load_plugins(plugin or [])
    except ImportError as exc:
        raise _fail_input(str(exc)) from None
    if what is Registered.methods:
        from harness.methods import METHODS

        table = Table("method", "family", "summary", "reference", "source")
        for name in METHODS.names():
            cls = METHODS.get(name)
            table.add_row(name, cls.family, cls.summary(), cls.reference, METHODS.source_of(name))
    elif what is Registered.models:
        from harness.models import MODELS

        table = Table("model", "summary")
        for name in MODELS.names():
            table.add_row(name, ((MODELS.get(name).__doc__ or "").strip().splitlines() or [""])[0])
    else:
        from harness.data import DATASETS

        table = Table("dataset", "input shape", "classes", "summary")
        for name in DATASETS.names():
            cls = DATASETS.get(name)
            table.add_row(
                name, str(cls.input_shape), str(cls.num_classes), ((cls.__doc__ or "").strip().splitlines() or [""])[0]
            )
    console.print(table)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="DuckDB SQL over the views cells, epochs, layers.")],
    results: ResultsOption = Path("results"),
    format: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """Run SQL over the results tables."""
    import duckdb

    from harness.results import connect

    if not results.exists():
        raise _fail_input(f"results folder {results} does not exist; run a benchmark first or pass --results")
    try:
        frame = connect(results).execute(sql).df()
    except duckdb.Error as exc:
        raise _fail_input(f"query failed: {exc}") from None
    if format is Format.csv:
        sys.stdout.write(frame.to_csv(index=False))
    elif format is Format.json:
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        table = Table(*map(str, frame.columns))
        for row in frame.itertuples(index=False):
            table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
        console.print(table)


def main() -> None:
    app()
