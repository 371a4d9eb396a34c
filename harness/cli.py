"""Command line: parse, call the layers below, map errors to exit codes (0 ok, 1 a cell failed, 2 bad input)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shlex
import signal
import sys
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import click
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from harness import interrupt
from harness.config import MAX_CELLS
from harness.output import SECTION, ProgressReport, print_table

HELP = (
    "Benchmark neural-network pruning and compression methods so they can be compared.\n\n"
    "One command runs a matrix of models × data sets × methods × sparsities × seeds on a local or remote Ray; "
    "every cell is a Lightning job tracked in MLflow and lands as rows in a Parquet table that `harness query` "
    "reads with SQL and `harness report` publishes as a leaderboard.\n\n"
    "Exit codes: 0 every cell ok, 1 a cell failed, 2 bad input (nothing started or written). Manual: docs/."
)


class _FlagsAsFlags:
    """A switch that takes no value is shown as ``--flag``, not ``--flag <bool>``."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params


class _Command(_FlagsAsFlags, TyperCommand):
    pass


class _Group(_FlagsAsFlags, TyperGroup):
    pass


app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP, cls=_Group)
# Names, parameters, paths and errors come from users: nothing printed is read as Rich markup
# (``glob[al]_magnitude`` prints as is, ``[/x]`` cannot raise); colour comes from Text styles only.
console = Console(markup=False)
errors = Console(stderr=True, markup=False)

ResultsOption = Annotated[
    str, typer.Option("--results", help="Results folder, or object-store prefix: s3://BUCKET/PREFIX, gs://….")
]
PluginOption = Annotated[
    list[str] | None, typer.Option("--plugin", help="Plugin module (importable name or .py path); repeatable.")
]
MaxCellsOption = Annotated[
    int, typer.Option("--max-cells", min=1, help="Refuse a benchmark whose matrix has more cells than this.")
]
AddressOption = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster to join: auto, ray://HOST:10001 (default: a local Ray for this run)."),
]


def _print_version(value: bool) -> None:
    if value:
        from harness import __version__

        console.print(f"harness {__version__}", highlight=False)
        raise typer.Exit(0)


def _fail_input(message: str) -> typer.Exit:
    errors.print(Text.assemble(("error:", "red"), f" {message}"), highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _resume_command(
    command: str, spec_path: Path, results: str | Path, plugins: list[str] | None, address: str | None, more: dict
) -> str:
    """The command line that continues an interrupted ``run`` or ``tune``: the same spec, results,
    plugins and cluster address the user gave, then the command's own options that are set in ``more``
    (``{"--flag": value}``: ``True`` is a switch, a list repeats the option, ``None`` or ``False`` leaves it out)."""
    words = ["harness", command, str(spec_path)]
    for flag, value in {"--results": results, "--plugin": plugins, "--address": address, **more}.items():
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [word for item in value for word in (flag, str(item))]
        elif value is not None and value is not False:
            words += [flag, str(value)]
    return shlex.join(words)


def _interrupted(kept: str, resume: str) -> typer.Exit:
    """The one ending of an interrupted ``run`` or ``tune``: what is kept, how to go on, and exit code
    130 (what a shell reports for SIGINT). Further Ctrl-C are ignored: nothing may cut the ending short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    errors.print(f"interrupted; finished {kept} are saved. Resume with: {resume}", soft_wrap=True, highlight=False)
    return typer.Exit(130)


_debug = False  # --debug: let unexpected errors raise with their traceback
Command = TypeVar("Command", bound=Callable)


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", envvar="HARNESS_DEBUG", help="Show the traceback of an unexpected error.")
    ] = False,
) -> None:
    global _debug
    _debug = debug


def guarded(command: Command) -> Command:
    """Exit 2 with the error named, no traceback, for anything a command did not expect (1 means a cell failed)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:
            if _debug:
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0][:400]  # DuckDB adds the whole SQL below
            raise _fail_input(f"{type(exc).__name__}: {first_line} (rerun with --debug for the traceback)") from None

    return wrapper  # type: ignore[return-value]


def _existing_results(location: str) -> str | Path:
    """A results root to read: an object-store prefix, or a local folder that exists."""
    from harness.storage import is_remote, local_path

    if not is_remote(location) and not local_path(location).exists():
        raise _fail_input(f"results folder {location} does not exist; run a benchmark first or pass --results")
    return _results_folder(location)


def _results_folder(location: str | Path, writing: bool = False) -> str | Path:
    """The results root to use: a local folder (refused if it is a file, or when writing a folder this
    user cannot create or write) or an object-store URI (refused if its filesystem or bucket is missing)."""
    from harness.storage import ObjectFiles, is_remote, local_path

    if is_remote(location):
        try:
            files = ObjectFiles(str(location))
            if writing:
                files.check_writable()
        except ValueError as exc:
            raise _fail_input(f"--results {exc}") from None
        return str(location)
    results = local_path(location)
    if results.exists() and not results.is_dir():
        raise _fail_input(f"--results {results} is a file; give a folder (it is created if missing)")
    if writing:
        folder = results
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise _fail_input(f"--results {results}: {folder} is not a folder this user can write")
    return results


class PlanFormat(StrEnum):
    summary = "summary"
    table = "table"
    csv = "csv"
    json = "json"


class Backend(StrEnum):
    ray = "ray"
    local = "local"


@app.command(cls=_Command)
@guarded
def run(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="Benchmark file.")],
    results: ResultsOption = "results",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what is done, failed and pending per axis; run nothing.")
    ] = False,
    format: Annotated[
        PlanFormat,
        typer.Option("--format", help="With --dry-run: counts per axis (summary), or every cell as table, csv, json."),
    ] = PlanFormat.summary,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run the failed cells again.")] = False,
    plugin: PluginOption = None,
    address: AddressOption = None,
    max_parallel: Annotated[
        int | None, typer.Option("--max-parallel", min=1, help="At most this many tasks at once (default: all fit).")
    ] = None,
    max_retries: Annotated[
        int, typer.Option("--max-retries", min=0, help="Retries of a task whose worker or node died.")
    ] = 3,
    working_dir: Annotated[
        Path | None,
        typer.Option("--working-dir", help="Folder shipped to every Ray worker (plugins, local files) with --address."),
    ] = None,
    max_cells: MaxCellsOption = MAX_CELLS,
    force: Annotated[
        bool, typer.Option("--force", help="Run the cells again even if they are in the table (new method code).")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only", metavar="FIELD=VALUE", help=f"Only the cells with this {'/'.join(ONLY_FIELDS)}; repeatable."
        ),
    ] = None,
    backend: Annotated[
        Backend,
        typer.Option("--backend", help="ray, or local: each task in this process, one at a time (debugging)."),
    ] = Backend.ray,
) -> None:
    """Run every cell of a benchmark that is not in the results table yet, then print the leaderboard."""
    spec, cells = _load_cells(spec_path, plugin, max_cells)
    results = _results_folder(results)
    cells = _only(cells, only or [])

    from harness.scheduler.dag import plan
    from harness.store import ResultsStore

    store = ResultsStore(results)
    resume = _resume_command(  # not --force: that would run the cells finished before the interrupt again
        "run",
        spec_path,
        results,
        plugin,
        address,
        {
            "--max-parallel": max_parallel,
            "--max-retries": max_retries if max_retries != 3 else None,
            "--max-cells": max_cells if max_cells != MAX_CELLS else None,
            "--working-dir": working_dir,
            "--backend": "local" if backend is Backend.local else None,
            "--retry-failed": retry_failed,
            "--only": only,
        },
    )
    interrupt.install()
    try:
        with contextlib.ExitStack() as held:
            if not dry_run:
                pending = plan(cells, store, retry_failed, force).todo
                if pending:  # before anything is written, the lock file included
                    _check_before_start(spec_path, spec, pending, results, address)
                _lock_results(store, held)  # one driver per results folder, for as long as this one runs
            todo = plan(cells, store, retry_failed, force)  # under the lock: cells another driver finished are done
            machine_readable = dry_run and format in (PlanFormat.csv, PlanFormat.json)  # stdout holds the list alone
            out = errors if machine_readable else console
            out.print(
                Text.assemble(
                    (spec.name, "bold"),
                    f": {len(cells)} cells — {len(todo.done)} done, "
                    f"{len(todo.failed_before)} failed before, {len(todo.todo)} to run",
                )
            )
            _print_other_code(todo.other_code, f"harness run {spec_path} --results {results}", force, out)
            if dry_run:
                if format is PlanFormat.summary:
                    _print_axes(f"{spec.name} in {store.location}/ (--format csv lists every cell)", cells, todo)
                else:
                    _print_cells(cells, todo, format)
                return
            counts = {"ok": 0, "failed": 0}
            if not todo.todo:
                from harness.tracking import mark_killed_runs

                mark_killed_runs(results)  # a driver killed after its last cell still leaves its MLflow run RUNNING
            if todo.todo:
                store.save_spec(spec.name, spec_path.read_text())  # the report links every result to its benchmark file
                runtime_env = (
                    {"working_dir": str(working_dir), "excludes": WORKING_DIR_EXCLUDES} if working_dir else None
                )
                scheduling = {"address": address, "runtime_env": runtime_env, "max_parallel": max_parallel}
                scheduling["backend"] = backend.value
                from harness.methods import frozen_registries

                with frozen_registries():  # what the run started with is what it ends with
                    counts = _run_with_progress(
                        spec, todo.todo, store, results, plugin or [], scheduling | {"max_retries": max_retries}
                    )
            _print_summary(spec.name, results, counts, {cell.cell_id for cell in cells}, spec_path)
            failed_still = counts["failed"] + len(todo.failed_before)
            if failed_still and not counts["failed"]:
                errors.print(f"{failed_still} cells failed in an earlier run; rerun them with --retry-failed")
            raise typer.Exit(1 if failed_still else 0)  # 0 only when every cell of the matrix succeeded
    except KeyboardInterrupt:
        raise _interrupted("cells", resume) from None


def _lock_results(store, held: contextlib.ExitStack) -> None:
    from harness.store import ResultsLocked

    try:
        held.enter_context(store.locked())
    except ResultsLocked as exc:
        raise _fail_input(str(exc)) from None


ONLY_FIELDS = ("method", "model", "dataset", "seed", "sparsity", "cell_id")


def _only(cells: list, filters: list[str]) -> list:
    """The cells matching every ``FIELD=VALUE`` (several values of one field: any of them)."""
    wanted: dict[str, set[str]] = {}
    for text in filters:
        field, sep, value = text.partition("=")
        if not sep or field not in ONLY_FIELDS or not value:
            raise _fail_input(f"--only {text!r}: expected FIELD=VALUE with FIELD one of {', '.join(ONLY_FIELDS)}")
        wanted.setdefault(field, set()).add(value)

    def value_of(cell, field: str) -> set[str]:
        value = getattr(cell, field)
        return {str(value), f"{value:g}"} if isinstance(value, float) else {str(value)}

    return [c for c in cells if all(value_of(c, f) & values for f, values in wanted.items())]


def _print_other_code(cells: list, command: str, forced: bool, out: Console | None = None) -> None:
    """Say which methods' rows in the table were produced by different source code than the code here."""
    if not cells:
        return
    for method, count in sorted(Counter(c.method for c in cells).items()):
        hint = "" if forced else f"; rerun them with: {command} --force --only method={method}"
        text = f"{count} cells of {method} in the table were produced by different code{hint}"
        (out or console).print(text, style="yellow", markup=False, highlight=False)


def _load_cells(spec_path: Path, plugins: list[str] | None, max_cells: int = MAX_CELLS):
    """The validated spec and its cells; bad input exits 2 with the one message that explains it."""
    from harness.registry import RegistryError
    from harness.spec import SpecError, expand, import_plugins, load_spec

    try:
        import_plugins(plugins or [])
        spec = load_spec(spec_path, max_cells)
        return spec, expand(spec, spec_path)
    except (SpecError, RegistryError) as exc:
        raise _fail_input(str(exc)) from None


def _check_before_start(spec_path: Path, spec, cells, results: str | Path, address: str | None) -> None:
    """What would fail only after Ray, mlflow.db or the spec copy exist: the folder, the resources, MLflow."""
    from harness.runner import SchedulingError, check_cluster_address, check_local_resources
    from harness.tracking import check_tracking_uri, resolve_tracking_uri

    _results_folder(results, writing=True)
    try:
        check_local_resources(cells, address)
    except SchedulingError as exc:
        raise _fail_input(f"{spec_path}: resources: {exc}") from None
    try:
        check_cluster_address(address)
    except SchedulingError as exc:
        raise _fail_input(str(exc)) from None
    try:
        uri = resolve_tracking_uri(spec.tracking_uri, results)
    except ValueError as exc:  # results on an object store, and no tracking store named
        raise _fail_input(f"--results {exc}") from None
    try:
        check_tracking_uri(uri)
    except ValueError as exc:
        where = f"{spec_path}: tracking_uri" if spec.tracking_uri else "$MLFLOW_TRACKING_URI"
        raise _fail_input(f"{where}: {exc}") from None


def _run_with_progress(spec, cells, store, results: str | Path, plugins: list[str], scheduling: dict) -> dict[str, int]:
    from harness.runner import SchedulingError, run_matrix
    from harness.tracking import MatrixRun, resolve_tracking_uri

    if isinstance(results, Path):
        results.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(spec.tracking_uri, results)
    cells = [cell.model_copy(update={"plugins": tuple(plugins) + cell.plugins}) for cell in cells]
    failed: list[str] = []
    counts = {"ok": 0, "failed": 0}
    matrix = None
    try:
        matrix = MatrixRun.start(uri, spec.name, results, {"cells": len(cells), "spec": spec.model_dump_json()})
        with ProgressReport(console, len(cells)) as report:

            def on_progress(p) -> None:
                counts.update(ok=p.ok, failed=p.failed)
                description = f"pretraining {p.pretraining}" if p.pretraining else "cells"
                report.update(p.finished, p.failed, p.running, description)

            def on_result(cell, result) -> None:
                if not result.ok:
                    failed.append(cell.cell_id)
                    error = (result.rows[-1]["error"] or "").splitlines()[0]  # a failed level is the last row
                    report.print(f"failed {cell.cell_id} {cell.method} s={cell.sparsity:g} seed={cell.seed}: {error}")

            progress = run_matrix(cells, store, matrix, on_result=on_result, on_progress=on_progress, **scheduling)
            on_progress(progress)  # the last writes land after the loop's last report
    except SchedulingError as exc:
        matrix.finish(counts, interrupted=True)
        raise _fail_input(str(exc)) from None
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the bookkeeping short
        if matrix:
            with contextlib.suppress(Exception):  # the next run marks the parent run KILLED if this fails
                matrix.finish(counts, interrupted=True)
        raise  # the command ends it (_interrupted)
    matrix.finish(counts | {"pretrained": progress.pretrained, "reused": progress.reused})
    console.print(f"dense models: {progress.pretrained} trained, {progress.reused} reused from {results}/checkpoints")
    _print_failed_logs(store, failed)
    return counts


def _failed_line(cell, detail: str) -> Text:
    where = f" {cell.cell_id} {cell.method} s={cell.sparsity:g} seed={cell.seed}"
    return Text.assemble(("failed", "red"), where + detail)


LOG_TAIL_LINES = 15
LOGS_SHOWN = 3


def _print_failed_logs(store, cell_ids: list[str]) -> None:
    """The end of the first failed cells' logs: usually enough to see what broke without opening a file."""
    for cell_id in cell_ids[:LOGS_SHOWN]:
        text = store.load_log(cell_id)
        if text is not None:
            tail = text.splitlines()[-LOG_TAIL_LINES:]
            where = store.log_location(cell_id)
            console.rule(f"log of failed cell {cell_id} (last {len(tail)} lines; all of it: {where})")
            console.print("\n".join(tail), highlight=False, markup=False)
    if len(cell_ids) > LOGS_SHOWN:
        console.print(
            f"... and {len(cell_ids) - LOGS_SHOWN} more failed cells; their logs are in {store.location}/logs/"
        )


class Protocol(StrEnum):
    defaults = "defaults"
    equal = "equal"
    qmc = "qmc"


class Sampler(StrEnum):
    tpe = "tpe"
    qmc = "qmc"


class Pruner(StrEnum):
    median = "median"
    halving = "halving"
    none = "none"


@app.command(cls=_Command)
@guarded
def tune(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="Benchmark file; its tune: section.")],
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials per study, the same for every study.")] = 8,
    results: ResultsOption = "results",
    protocol: Annotated[
        Protocol, typer.Option("--protocol", help="defaults: no tuning; equal: N trials each; qmc: quasi-random.")
    ] = Protocol.equal,
    sampler: Annotated[
        Sampler | None, typer.Option("--sampler", help="tpe (seeded, multivariate, constant liar) or qmc (Sobol).")
    ] = None,
    pruner: Annotated[
        Pruner,
        typer.Option("--pruner", help="On the per-epoch validation curve once a trial is back: saves no compute."),
    ] = Pruner.none,
    storage: Annotated[
        str | None, typer.Option("--storage", help="Optuna RDB URL (default: results/tuning/<name>.journal).")
    ] = None,
    plugin: PluginOption = None,
    address: AddressOption = None,
    max_parallel: Annotated[
        int | None, typer.Option("--max-parallel", min=1, help="At most this many trials at once.")
    ] = None,
    max_retries: Annotated[int, typer.Option("--max-retries", min=0, help="Retries of a trial whose worker died.")] = 3,
) -> None:
    """Tune every method with the same budget on VALIDATION data; write results/tuned/<name>.yaml to run."""
    spec, _ = _load_cells(spec_path, plugin)
    results = _results_folder(results, writing=True)
    if not isinstance(results, Path):  # what must be known before anything starts: MLflow, the Optuna storage
        from harness.tracking import resolve_tracking_uri

        try:
            resolve_tracking_uri(spec.tracking_uri, results)
        except ValueError as exc:
            raise _fail_input(f"--results {exc}") from None
    chosen = sampler.value if sampler else ("qmc" if protocol is Protocol.qmc else "tpe")
    if protocol is Protocol.qmc and chosen != "qmc":
        raise _fail_input(f"--protocol qmc searches quasi-randomly; --sampler {chosen} contradicts it (allowed: qmc)")

    from harness.runner import SchedulingError, check_cluster_address
    from harness.tuning.driver import Settings, StorageError, summary
    from harness.tuning.driver import tune as run_tune

    settings = Settings(trials, protocol.value, chosen, pruner.value, storage, address, max_parallel, max_retries)
    if plugin:
        spec = spec.model_copy(update={"plugins": tuple(plugin) + spec.plugins})

    def on_trial(outcome) -> None:
        study, value = outcome.study, "—" if outcome.value is None else f"{outcome.value:.4f}"
        line = f"{study.base.method} s={study.base.sparsity:g} {study.base.model}/{study.base.dataset}"
        error = f": {(outcome.error or '').splitlines()[0]}" if outcome.error else ""
        text = f"trial {outcome.number} {outcome.state} val_top1={value} {line}{error}"
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    options = {"--trials": trials, "--protocol": settings.protocol, "--sampler": chosen, "--pruner": settings.pruner}
    options |= {
        "--storage": storage,
        "--max-parallel": max_parallel,
        "--max-retries": max_retries if max_retries != 3 else None,
    }
    resume = _resume_command("tune", spec_path, results, plugin, address, options)
    interrupt.install()
    try:
        check_cluster_address(address)  # as harness run: an address nothing answers at fails in seconds
        result = run_tune(spec, spec_path.read_text(), spec_path, results, settings, on_trial)
    except (SchedulingError, StorageError) as exc:
        raise _fail_input(str(exc)) from None
    except KeyboardInterrupt:
        raise _interrupted("trials", resume) from None
    rows = summary(result.studies, trials)
    if rows:
        keys = ("method", "studies", "trials", "complete", "pruned", "failed", "epochs")
        columns = (*keys, "best val top-1 (mean)")
        table_rows = [
            (*(str(row[k]) for k in keys), "—" if row["best_val_top1"] is None else f"{row['best_val_top1']:.4f}")
            for row in rows
        ]
        title = f"{spec.name}: {settings.protocol}, {trials} trials per study"
        print_table(console, columns, table_rows, title, right=columns[1:])
    console.print(
        f"ran {result.ran} trials; tuned spec: {result.tuned_spec}\n"
        f"measure it on test data: harness run {result.tuned_spec} --results {results}",
        highlight=False,
        soft_wrap=True,
    )


@app.command(cls=_Command)
@guarded
def status(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="Benchmark file.")],
    results: ResultsOption = "results",
    plugin: PluginOption = None,
    max_cells: MaxCellsOption = MAX_CELLS,
) -> None:
    """Show done / failed / pending per axis of a benchmark; runs no cell, but imports the spec's plugins."""
    spec, cells = _load_cells(spec_path, plugin, max_cells)
    results = _results_folder(results)

    from harness.scheduler.dag import plan
    from harness.store import ResultsStore

    store = ResultsStore(results)
    todo = plan(cells, store)
    _print_other_code(todo.other_code, f"harness run {spec_path} --results {results}", False)
    _print_axes(f"{spec.name} in {store.location}/", cells, todo)
    for cell in todo.failed_before:
        log = f": log {store.log_location(cell.cell_id)}" if store.files.exists(store.log_path(cell.cell_id)) else ""
        console.print(_failed_line(cell, log), highlight=False, soft_wrap=True)
    if todo.failed_before:
        console.print(f"rerun only these with: harness run {spec_path} --results {results} --retry-failed")


WORKING_DIR_EXCLUDES = [".git", ".venv", "results", "mlruns", "mlartifacts", "*.db"]


@app.command(cls=_Command)
@guarded
def submit(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="Benchmark file, inside --working-dir.")],
    results: Annotated[
        str,
        typer.Option(
            "--results", help="Results folder ON THE CLUSTER'S HEAD NODE (absolute path), or s3://BUCKET/PREFIX."
        ),
    ],
    address: Annotated[
        str,
        typer.Option("--address", envvar="RAY_API_SERVER_ADDRESS", help="The cluster's dashboard: http://HEAD:8265."),
    ] = "http://127.0.0.1:8265",
    working_dir: Annotated[
        Path, typer.Option("--working-dir", help="Folder uploaded for the job: spec, plugins, local files.")
    ] = Path("."),
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run the failed cells again.")] = False,
    max_parallel: Annotated[int | None, typer.Option("--max-parallel", min=1)] = None,
    plugin: PluginOption = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job's output until it ends.")] = True,
    max_cells: MaxCellsOption = MAX_CELLS,
) -> None:
    """Run the driver on the cluster itself as a Ray job: `harness run SPEC --address auto` on the head node."""
    import shlex

    _load_cells(spec_path, plugin, max_cells)  # a spec that cannot load fails here, not minutes later on the cluster
    from harness.storage import is_remote

    if not is_remote(results) and not Path(results).is_absolute():
        raise _fail_input(
            f"--results {results} is relative: the job runs in a temporary copy of the working directory, "
            "so give an absolute path on the head node, e.g. --results /home/ray/results"
        )
    try:
        spec_in_job = spec_path.resolve().relative_to(working_dir.resolve())
    except ValueError:
        raise _fail_input(f"{spec_path} is not inside --working-dir {working_dir}: the job would not see it") from None
    command = ["harness", "run", str(spec_in_job), "--results", str(results), "--address", "auto"]
    command += ["--retry-failed"] * retry_failed + (["--max-parallel", str(max_parallel)] if max_parallel else [])
    command += ["--max-cells", str(max_cells)] if max_cells != MAX_CELLS else []
    for name in plugin or []:
        command += ["--plugin", name]

    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except ConnectionError:  # Ray's message names only the address
        raise _fail_input(
            f"no Ray dashboard answers at --address {address}; start the cluster (its head serves the dashboard "
            "on port 8265), forward the port (kubectl port-forward, ray dashboard), or fix --address"
        ) from None
    runtime_env = {"working_dir": str(working_dir), "excludes": WORKING_DIR_EXCLUDES}
    job_id = client.submit_job(entrypoint=shlex.join(command), runtime_env=runtime_env)
    console.print(f"submitted job {job_id}: {shlex.join(command)}", highlight=False)
    follow = f"ray job logs --follow {job_id} --address {address}"
    if not wait:
        console.print(f"follow it with: {follow}\nstop it with: ray job stop {job_id} --address {address}")
        return
    try:
        import asyncio

        asyncio.run(_print_job_logs(client, job_id))
    except KeyboardInterrupt:
        errors.print(f"stopped following; the job goes on. Follow it: {follow}", soft_wrap=True)
        raise typer.Exit(130) from None
    final = client.get_job_status(job_id)
    console.print(f"job {job_id}: {final}; results on the head node in {results}/")
    raise typer.Exit(0 if final == JobStatus.SUCCEEDED else 1)


async def _print_job_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def _states(todo) -> dict[str, str]:
    return {c.cell_id: "done" for c in todo.done} | {c.cell_id: "failed" for c in todo.failed_before}


def _print_axes(title: str, cells, todo) -> None:
    """Done / failed / pending per value of each axis: a few dozen lines however many cells there are."""
    state = _states(todo)
    states = [state.get(cell.cell_id, "pending") for cell in cells]
    labels: dict[tuple[str, int], str] = {}  # a method's params are one dict shared by its cells: one label each
    axes = {
        "model": (c.model for c in cells),
        "dataset": (c.dataset for c in cells),
        "method": (_method_label(c, labels) for c in cells),
        "sparsity": (f"{c.sparsity:g}" for c in cells),
        "seed": (str(c.seed) for c in cells),
    }
    rows: list = []
    for axis, values in axes.items():
        counts: dict[str, Counter] = {}
        for value, cell_state in zip(values, states, strict=True):
            counts.setdefault(value, Counter())[cell_state] += 1
        for value, count in counts.items():
            rows.append((axis, value, str(count["done"]), str(count["failed"]), str(count["pending"])))
        rows.append(SECTION)
    rows.append(("all", "", str(len(todo.done)), str(len(todo.failed_before)), str(len(todo.todo))))
    print_table(
        console, ("axis", "value", "done", "failed", "pending"), rows, title, right=("done", "failed", "pending")
    )


def _method_label(cell, labels: dict[tuple[str, int], str]) -> str:
    key = (cell.method, id(cell.method_params))  # the cells hold the dicts: no id is reused meanwhile
    if key not in labels:
        labels[key] = cell.method + (json.dumps(cell.method_params) if cell.method_params else "")
    return labels[key]


CELL_COLUMNS = ("cell_id", "model", "dataset", "method", "params", "sparsity", "seed", "state")


def _print_cells(cells, todo, format: PlanFormat) -> None:
    """Every cell, one line each: a whole table, CSV or JSON lines (for scripts)."""
    import csv

    state = _states(todo)
    rows = (
        (
            c.cell_id,
            c.model,
            c.dataset,
            c.method,
            json.dumps(c.method_params),
            f"{c.sparsity:g}",
            str(c.seed),
            state.get(c.cell_id, "pending"),
        )
        for c in cells
    )
    if format is PlanFormat.table:
        print_table(console, CELL_COLUMNS, rows)
    elif format is PlanFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CELL_COLUMNS)
        writer.writerows(rows)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(dict(zip(CELL_COLUMNS, row, strict=True))) + "\n")


def _print_summary(
    benchmark: str, results: str | Path, counts: dict[str, int], cell_ids: set[str], spec_path: Path
) -> None:
    from harness.leaderboard import cells_pooled, leaderboard, print_leaderboard
    from harness.results import connect
    from harness.store import ResultsStore

    if ResultsStore(results).partitions("cells"):
        con = connect(results)
        frame = leaderboard(con, benchmark)
        if len(frame):
            print_leaderboard(frame, console)
            _print_pooled(benchmark, results, cells_pooled(con, benchmark), cell_ids, spec_path)
    console.print(
        f"ran {counts['ok'] + counts['failed']} cells: {counts['ok']} ok, {counts['failed']} failed; "
        f"results in {results}/"
    )


def _print_pooled(benchmark: str, results: str | Path, pooled: set[str], cell_ids: set[str], spec_path: Path) -> None:
    """Say what the leaderboard averages over: a benchmark's name pools every file ever run under it."""
    from harness.store import ResultsStore

    text = spec_path.read_text()
    store = ResultsStore(results)
    copies = [
        f"{store.shown(path)}{' (this file)' if store.read_spec(path) == text else ''}"
        for path in store.specs(benchmark)
    ]
    others = len(pooled - cell_ids)
    console.print(
        f"leaderboard of {len(pooled)} ok cells of benchmark {benchmark!r} from {len(copies)} benchmark "
        f"file{'s' if len(copies) != 1 else ''}: {', '.join(copies) or spec_path}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if others:
        errors.print(
            f"warning: {others} of those cells are not in {spec_path}: they came from another benchmark file "
            f"named {benchmark!r}; give this one its own name to rank it alone",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


class Registered(StrEnum):
    methods = "methods"
    models = "models"
    datasets = "datasets"


@app.command("list", cls=_Command)
@guarded
def list_(
    what: Registered,
    plugin: PluginOption = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table (docs/reference/).")] = False,
) -> None:
    """List the registered methods, models or data sets, and where each came from."""
    from harness.docs import markdown_table, registry_table
    from harness.registry import RegistryError
    from harness.spec import SpecError, import_plugins

    try:
        import_plugins(plugin or [])
        columns, rows = registry_table(what.value)  # imports lazy entries and entry points: each is checked then
    except (SpecError, RegistryError) as exc:
        raise _fail_input(str(exc)) from None
    if markdown:
        sys.stdout.write(markdown_table(columns, rows))
    else:
        print_table(console, columns, rows)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command(cls=_Command)
@guarded
def query(
    sql: Annotated[str, typer.Argument(help="DuckDB SQL over the views cells, epochs, layers, trials.")],
    results: ResultsOption = "results",
    format: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """Run read-only SQL over the results views (cells, epochs, layers, trials); columns: docs/reference/columns.md."""
    import duckdb

    from harness.results import ReadOnlyError, query_rows
    from harness.results import query as query_frame

    results = _results_folder(results)
    try:  # a table is printed without pandas, whose import alone costs more than the query
        answer = query_rows(results, sql) if format is Format.table else query_frame(results, sql)
    except FileNotFoundError:
        raise _fail_input(f"results folder {results} does not exist; run a benchmark first or pass --results") from None
    except ReadOnlyError as exc:
        raise _fail_input(str(exc)) from None
    except duckdb.Error as exc:
        raise _fail_input(f"query failed: {exc}") from None
    if format is Format.table:
        _print_rows(*answer)
    else:
        _print_frame(answer, format)


def _print_frame(frame: object, format: Format) -> None:
    """A DataFrame as a table, CSV or JSON records (nothing truncated in a pipe)."""
    if format is Format.csv:
        sys.stdout.write(frame.to_csv(index=False))
    elif format is Format.json:
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        _print_rows(list(frame.columns), frame.itertuples(index=False))


def _print_rows(columns: list, rows) -> None:
    """Rows as a table: floats to 4 significant digits, every value whole."""
    shown = ((f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) for row in rows)
    print_table(console, list(map(str, columns)), [tuple(row) for row in shown])


@app.command(cls=_Command)
@guarded
def claims(
    results: ResultsOption = "results",
    format: Annotated[Format, typer.Option("--format")] = Format.table,
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="Reference verdicts shown beside yours. [default: the shipped table]"),
    ] = None,
) -> None:
    """Check the seed papers' claims on a results folder: holds, does not hold or not enough data, with evidence."""
    from harness.claims import REFERENCE, check_claims

    results = _existing_results(results)
    if reference is not None and not reference.is_file():
        raise _fail_input(f"--reference {reference} is not a file; pass a claims CSV such as {REFERENCE}")
    frame = check_claims(results, reference or REFERENCE)
    if format is not Format.table:
        _print_frame(frame, format)
    else:  # folded on a terminal, whole plain text in a pipe: never cut
        headers = ("claim", "paper", "verdict", "evidence", "reference")
        rows = [
            tuple(str(v) for v in (row.claim, row.paper, row.verdict, row.evidence, row.reference_verdict))
            for row in frame.itertuples(index=False)
        ]
        print_table(console, headers, rows)


@app.command(cls=_Command)
@guarded
def reference(
    results: ResultsOption = "results",
    format: Annotated[Format, typer.Option("--format")] = Format.table,
    numbers: Annotated[
        Path | None,
        typer.Option("--numbers", help="Reference numbers CSV shown beside yours. [default: the shipped numbers.csv]"),
    ] = None,
) -> None:
    """Your leaderboard beside the reference run's: top-1 mean ± std over seeds, and whether yours is inside
    its spread (within 2 std)."""
    import pandas as pd

    from harness.claims.numbers import NUMBERS, NumbersError, beside_reference, numbers_table, read_numbers
    from harness.leaderboard import method_label

    results = _existing_results(results)
    try:
        shipped = read_numbers(numbers or NUMBERS)
    except NumbersError as exc:
        raise _fail_input(str(exc)) from None
    frame = beside_reference(numbers_table(results), shipped)
    if format is not Format.table:
        _print_frame(frame, format)
        return
    headers = ("benchmark", "data set / model", "method", "sparsity", "top1 % (mean ± std)", "seeds",
               "reference top1 %", "ref seeds", "diff pt", "inside spread")  # fmt: skip
    rows = [
        (
            row.benchmark,
            f"{row.dataset} / {row.model}",
            method_label(row.method, row.method_params, row.control),
            f"{row.sparsity:g}",
            f"{100 * row.top1_mean:.2f} ± {100 * row.top1_std:.2f}",
            str(row.seeds),
            *(
                ("—", "", "", "")
                if pd.isna(row.reference_top1_mean)
                else (
                    f"{100 * row.reference_top1_mean:.2f} ± {100 * row.reference_top1_std:.2f}",
                    str(int(row.reference_seeds)),
                    f"{round(100 * row.top1_diff, 2) + 0.0:+.2f}",
                    "—" if pd.isna(row.inside_spread) else ("yes" if row.inside_spread else "no"),
                )
            ),
        )
        for row in frame.itertuples(index=False)
    ]
    print_table(console, headers, rows, right=headers[3:])
    matched = int(frame["reference_top1_mean"].notna().sum())
    shown = f"{matched} of {len(frame)} entries have a reference row in {numbers or NUMBERS}"
    console.print(shown, highlight=False, soft_wrap=True)


class Analysis(StrEnum):
    density = "density"
    lmc = "lmc"
    gradient_flow = "gradient-flow"
    masks = "masks"


@app.command(cls=_Command)
@guarded
def analyze(
    analysis: Annotated[Analysis, typer.Argument(help="density, lmc, gradient-flow or masks.")],
    results: ResultsOption = "results",
    format: Annotated[Format, typer.Option("--format")] = Format.table,
) -> None:
    """Analyses over a results folder: per-layer density profiles, LMC error barriers, gradient flow per epoch,
    mask overlap (Jaccard) between methods and across seeds."""
    from harness.analysis import ANALYSES, MissingColumns

    results = _existing_results(results)
    try:
        frame = ANALYSES[analysis.value](results)
    except MissingColumns as exc:
        raise _fail_input(str(exc)) from None
    _print_frame(frame, format)


class ReportFormat(StrEnum):
    html = "html"
    markdown = "markdown"
    latex = "latex"


@app.command(cls=_Command)
@guarded
def report(
    results: Annotated[
        list[str] | None,
        typer.Option(
            "--results",
            help="Results folder or s3://BUCKET/PREFIX; repeat to compare several side by side. [default: results]",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder the report is written to.")] = Path("site"),
    format: Annotated[
        list[ReportFormat] | None,
        typer.Option(
            "--format", help="html, markdown or latex (tables for papers); repeatable. [default: html, markdown]"
        ),
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Name of each --results folder in the report, in order.")
    ] = None,
    heatmap_at: Annotated[
        float, typer.Option("--heatmap-at", min=1.0, help="Compression at which per-layer sparsity is shown.")
    ] = 8.0,
    mlflow_url: Annotated[
        str | None,
        typer.Option(
            "--mlflow-url",
            help="MLflow UI the cells link to. [default: $MLFLOW_TRACKING_URI if http, else http://127.0.0.1:5000]",
        ),
    ] = None,
) -> None:
    """Publish the leaderboard: a static site (index + one page per data set × model), Markdown, LaTeX."""
    import os

    from harness.report import ReportError, build_report
    from harness.report.pages import Options

    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    default_url = tracking if tracking.startswith(("http://", "https://")) else Options.mlflow_url
    formats = tuple(f.value for f in format) if format else ("html", "markdown")
    roots = [_results_folder(folder) for folder in results or ["results"]]
    try:
        written = build_report(roots, out, formats, label, Options(heatmap_at, mlflow_url or default_url))
    except ReportError as exc:
        raise _fail_input(str(exc)) from None
    pages = [p for p in written if p.stem == "index" or p.suffix == ".tex"]
    files = f"{len(written)} file{'s' if len(written) != 1 else ''}"
    console.print(f"wrote {files} to {out}/: " + ", ".join(str(p) for p in pages), highlight=False)


@app.command(cls=_Command)
@guarded
def export(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="Benchmark file.")],
    cell: Annotated[
        str, typer.Option("--cell", help="Id of the cell, or a unique prefix (see run --dry-run --format csv).")
    ],
    results: ResultsOption = "results",
    out: Annotated[Path | None, typer.Option("--out", help="Folder written to. [default: RESULTS/exports]")] = None,
    plugin: PluginOption = None,
    max_cells: MaxCellsOption = MAX_CELLS,
) -> None:
    """Rerun one cell here and write its model as a state dict with masks (.pt) and as ONNX (.onnx)."""
    _, cells = _load_cells(spec_path, plugin, max_cells)
    matches = [c for c in cells if c.cell_id.startswith(cell)]
    if len(matches) != 1:
        found = "no cell" if not matches else f"{len(matches)} cells"
        raise _fail_input(f"--cell {cell}: {found} of {spec_path} has that id; list them: harness run {spec_path} "
                          "--dry-run --format csv")  # fmt: skip
    from harness.storage import is_remote, local_path

    if out is None and is_remote(results):
        raise _fail_input(f"--results {results} is an object store: give --out, a local folder for the files")
    from harness.cell import DenseCheckpoint, pretrain
    from harness.export import export_cell
    from harness.store import ResultsStore

    chosen = matches[0]
    saved = ResultsStore(_results_folder(results)).load_checkpoint(chosen.pretrain_key)
    dense = DenseCheckpoint.from_bytes(saved) if saved else pretrain(chosen)
    written = export_cell(chosen, dense, out or local_path(results) / "exports")
    console.print("wrote " + ", ".join(str(path) for path in written), highlight=False, soft_wrap=True)


def main() -> None:
    """The ``harness`` command. An interrupted run or tune has written its ending (exit 130) and shut
    Ray down; it then leaves without interpreter teardown, where Ray's and torch's native threads can
    crash (seen as SIGSEGV, exit -11, after the resume line)."""
    try:
        app()
    except SystemExit as end:
        if end.code != 130:
            raise
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


if __name__ == "__main__":
    main()
