"""MLflow tracking: one parent run per ``harness run``, one child run per cell. Nothing else imports mlflow.

Only the driver logs: workers hand their epoch curves and rows back with the result, and the
driver's :class:`TrackingWriter` writes the cells' runs, a batch of them at a time
(:meth:`MatrixRun.log_children`). So workers need no route to the tracking store (a SQLite file
beside the results, or an ``mlflow server`` over HTTP), and however many cells run at once, the
store sees a single writer and loses nothing.

A batch of runs into a SQL store (SQLite, PostgreSQL, MySQL) is one transaction of plain INSERTs
into MLflow's tables, through MLflow's own table models: the same rows ``create_run``, ``log_batch``
and ``set_terminated`` write, at ~1/30 of their CPU (0.5 ms a run instead of 15 ms). Those models
are not MLflow's public API, so any error there falls back to the public calls, run by run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import math
import os
import pickle
import queue
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # not imported at run time: the writer process stays light (mlflow only)
    from harness.config import CellSpec

# A benchmark run must not phone home (nor write an installation id into the user's home); users may opt in.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
HTTP_WRITERS = 8  # runs logged at once to a tracking server (each call waits on the network)


def resolve_tracking_uri(configured: str | None, results_dir: str | Path) -> str:
    """The spec's URI, else ``$MLFLOW_TRACKING_URI``, else a SQLite file under the results folder.

    Results on an object store have no folder for SQLite, so there one of the first two is required:
    a tracking server everyone can reach, or a store the user chose knowingly.
    """
    from harness.storage import is_remote

    if configured or os.environ.get("MLFLOW_TRACKING_URI"):
        return configured or os.environ["MLFLOW_TRACKING_URI"]
    if is_remote(results_dir):
        raise ValueError(
            f"{results_dir} is on an object store, which cannot hold MLflow's SQLite store: set $MLFLOW_TRACKING_URI "
            "or the spec's tracking_uri (a server, http://HOST:5000, or a file you keep, e.g. sqlite:///mlflow.db)"
        )
    results_dir = Path(results_dir)
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def _artifact_location(results_dir: str | Path) -> str:
    """``mlartifacts`` beside the results, under the prefix when they are on an object store."""
    from harness.storage import is_remote

    if is_remote(results_dir):
        return f"{str(results_dir).rstrip('/')}/mlartifacts"
    return (Path(results_dir) / "mlartifacts").resolve().as_uri()


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Raise ValueError if ``uri`` cannot take this run's logs: a server that does not answer, a store
    whose folder cannot be written. Checked before anything starts; other schemes are MLflow's to judge."""
    scheme, separator, rest = uri.partition("://")
    if not separator:
        scheme, rest = "file", uri
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            return  # it answered
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ValueError(f"tracking server {uri} does not answer ({reason}); start it or fix the URI") from None
    elif scheme in ("sqlite", "file"):
        target = Path(rest.removeprefix("/") if scheme == "sqlite" else urllib.parse.urlparse(uri).path or rest)
        if str(target) == ":memory:":
            return
        folder = target.parent if scheme == "sqlite" else target
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"tracking store {uri}: {folder} is not a folder this user can write")


def _client(uri: str):  # imported lazily: mlflow costs ~1 s to import
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@dataclass(frozen=True)
class MatrixRun:
    """The parent run of one invocation; its children are the cells and the dense pretrainings."""

    uri: str
    experiment_id: str
    run_id: str
    results: str | None = None  # the results root (folder or URI) holding the note that this run is open

    @classmethod
    def start(cls, uri: str, benchmark: str, artifact_root: str | Path, params: dict[str, Any]) -> MatrixRun:
        client = _client(uri)
        experiment = client.get_experiment_by_name(benchmark)  # creates a new SQLite store's tables
        _write_ahead_log(uri)
        if experiment is None:
            artifact_location = None if uri.startswith("http") else _artifact_location(artifact_root)
            experiment_id = client.create_experiment(benchmark, artifact_location=artifact_location)
        else:
            experiment_id = experiment.experiment_id
        mark_killed_runs(artifact_root)
        run = client.create_run(experiment_id, run_name=f"{benchmark}-matrix", tags={"harness.role": "matrix"})
        client.log_batch(run.info.run_id, params=_params(params))
        matrix = cls(uri, experiment_id, run.info.run_id, str(artifact_root))
        matrix._note_running()
        return matrix

    def _note_running(self) -> None:
        """Note this run in the results root until it finishes: if the driver dies, the next run ends it.
        On an object store the note is rewritten with every progress log: its age says whether its driver,
        on whichever host, still lives."""
        note = {
            "uri": self.uri,
            "run_id": self.run_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "beat": time.time(),
        }
        files = _notes_root(self.results)
        files.write_bytes(_note_path(files, self.run_id), json.dumps(note).encode())

    def log_progress(self, counts: dict[str, int], step: int) -> None:
        """The matrix's counts (cells ok, failed, running, ...) as curves over cells finished."""
        metrics = _metrics({f"cells_{k}": v for k, v in counts.items()}, step)
        _client(self.uri).log_batch(self.run_id, metrics=_entities(metrics))
        if self.results is not None and _notes_root(self.results).remote:
            self._note_running()  # the heartbeat that keeps other drivers from taking this run for dead

    def finish(self, counts: dict[str, int], interrupted: bool = False) -> None:
        self.log_progress(counts, step=counts.get("ok", 0) + counts.get("failed", 0))
        status = "KILLED" if interrupted else "FAILED" if counts.get("failed") else "FINISHED"
        _client(self.uri).set_terminated(self.run_id, status)
        if self.results is not None:
            files = _notes_root(self.results)
            path = _note_path(files, self.run_id)
            if _read_note(files, path).get("run_id") == self.run_id:
                files.delete(path)

    def log_child(self, child: ChildRun) -> str:
        """Create, fill and end one child run (a cell's or a pretraining's); returns its id."""
        client = _client(self.uri)
        tags = {"mlflow.parentRunId": child.parent or self.run_id, **child.tags}
        run_id = client.create_run(self.experiment_id, run_name=child.name, tags=tags).info.run_id
        for start in range(0, max(len(child.metrics), 1), MAX_METRICS_PER_BATCH):
            batch = _entities(child.metrics[start : start + MAX_METRICS_PER_BATCH])
            client.log_batch(run_id, metrics=batch, params=_params(child.params) if start == 0 else [])
        client.set_terminated(run_id, "FAILED" if child.failed else "FINISHED")
        return run_id

    def log_children(self, children: list[ChildRun]) -> list[str | None]:
        """Many finished child runs at once (a batch of cells); their ids, in order (None: that one failed)."""
        store = _sql_store(self.uri)
        if store is not None:
            try:
                return _insert_runs(store, self.experiment_id, self.run_id, children)
            except Exception as exc:  # MLflow's tables changed under us: the public calls still work
                warnings.warn(f"MLflow bulk insert failed, logging run by run: {exc}", stacklevel=1)
        workers = HTTP_WRITERS if self.uri.startswith(("http://", "https://")) else 1
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(functools.partial(_mirror, self, "log_child"), children))


RUNNING_FILE = "matrix-run.json"  # in a local results folder while its driver's parent run is open
RUNNING_FOLDER = "matrix-runs"  # on an object store: one note per driver, <run id>.json, never shared
STALE_SECONDS = 300.0  # an object-store note not rewritten for this long belongs to a driver that is gone


def mark_killed_runs(results: str | os.PathLike) -> list[str]:
    """End the parent runs drivers left RUNNING when they died (SIGKILL, a lost node): KILLED. Their ids.

    A driver notes its run in the results root and removes the note when it finishes. A note whose
    driver is alive on this host is left alone (another run in progress). A local folder has one
    driver at a time (its lock), so a note from another host is stale; an object store is shared by
    drivers on many hosts, so there a note from elsewhere is stale only once it has not been
    rewritten (every progress log, ~10 s) for :data:`STALE_SECONDS`.
    """
    files = _notes_root(str(results))
    if files.remote:
        paths = [entry.path for entry in files.list(files.root / RUNNING_FOLDER) if entry.name.endswith(".json")]
    else:
        paths = [files.root / RUNNING_FILE]
    killed = []
    for path in paths:
        note = _read_note(files, path)
        if not note or _driver_alive(note, files.remote):
            continue
        try:
            client = _client(note["uri"])
            if client.get_run(note["run_id"]).info.status == "RUNNING":
                client.set_terminated(note["run_id"], "KILLED")
        except Exception as exc:  # MLflow mirrors the table: a store gone away only warns
            warnings.warn(f"could not mark the killed run {note.get('run_id')} in MLflow: {exc}", stacklevel=2)
        files.delete(path)
        killed.append(note["run_id"])
    return killed


def _driver_alive(note: dict[str, Any], shared: bool) -> bool:
    if note.get("host") == socket.gethostname():
        return _alive(int(note.get("pid", 0)))
    return shared and time.time() - float(note.get("beat", 0)) < STALE_SECONDS


@functools.cache  # the writer process rewrites an object-store note every ~10 s: one filesystem for all
def _notes_root(results: str):
    from harness.storage import open_root  # pyarrow: only the processes that write notes pay for it

    return open_root(results)


def _note_path(files, run_id: str):
    return files.root / RUNNING_FOLDER / f"{run_id}.json" if files.remote else files.root / RUNNING_FILE


def _read_note(files, path) -> dict[str, Any]:
    try:
        note = json.loads(files.read_bytes(path) or b"")
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) and {"uri", "run_id"} <= note.keys() else {}


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass(frozen=True)
class ChildRun:
    """One child run as plain data, so that it crosses to the writer process cheaply."""

    name: str
    tags: dict[str, str]
    params: dict[str, Any]
    metrics: list[tuple[str, float, int]]  # (key, value, step)
    failed: bool
    parent: str | None = None  # the run it nests under (a tuning study's); default: the matrix's

    @classmethod
    def of_cell(cls, cell: CellSpec, rows: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> ChildRun:
        """Parameters, each level's numbers (step = level), each epoch's curves, and the error if any."""
        error = next((row["error"] for row in rows if row.get("error")), None)
        levels = [m for row in rows for m in _metrics(_named_by_arm(row), step=int(row.get("level") or 0))]
        return cls(
            name=f"{cell.model}-{cell.dataset}-{cell.method}-s{cell.sparsity:g}-seed{cell.seed}",
            tags={**_cell_tags(cell), "harness.role": "cell"} | ({"error": error[-5000:]} if error else {}),
            params=_cell_params(cell),
            metrics=levels + _epoch_metrics(epochs),
            failed=any(row["status"] != "ok" for row in rows),
        )

    @classmethod
    def of_trial(
        cls,
        study: str,
        parent: str | None,
        number: int,
        cell: CellSpec,
        point: dict[str, Any],
        outcome: tuple[str, float | None, str | None],
        epochs: list[dict[str, Any]],
    ) -> ChildRun:
        """One tuning trial under its study's run: the sampled point, its VALIDATION top-1 and curves."""
        state, value, error = outcome
        return cls(
            name=f"{study}-trial{number}",
            tags={**_cell_tags(cell), "harness.role": "trial", "study": study, "state": state}
            | ({"error": error[-5000:]} if error else {}),
            params={**_cell_params(cell), **{f"searched.{k}": v for k, v in point.items()}},
            metrics=_metrics({"val_top1": value}) + _epoch_metrics(epochs),
            failed=state == "FAIL",
            parent=parent,
        )

    @classmethod
    def of_pretraining(cls, cell: CellSpec, metrics: dict[str, float], epochs: list[dict[str, Any]]) -> ChildRun:
        """A dense pretraining: its recipe, curves and test accuracy."""
        return cls(
            name=f"{cell.model}-{cell.dataset}-dense-seed{cell.seed}",
            tags={"harness.role": "pretrain", "pretrain_key": cell.pretrain_key, "model": cell.model},
            params={"model": cell.model, "dataset": cell.dataset, "seed": cell.seed, **_recipe("pretrain", cell)},
            metrics=_metrics(metrics) + _epoch_metrics(epochs),
            failed=False,
        )


class TrackingWriter:
    """A matrix's MLflow writes, in order, in a process of their own.

    MLflow spends ~13 ms of CPU per run (SQLAlchemy); in its own process that overlaps with the
    driver collecting and storing results instead of adding to the driver's time per cell. The
    process has its own session, so Ctrl-C reaches only the driver, and the writes already queued
    still finish; it exits when the driver closes its input (or dies).
    """

    def __init__(self, matrix: MatrixRun) -> None:
        command = [sys.executable, "-c", "from harness.tracking import _serve; _serve()"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self.pending: queue.SimpleQueue[Future] = queue.SimpleQueue()  # answers come back in request order
        self.lock = threading.Lock()
        self.ended = False
        self.last: Future | None = None
        self.reader = threading.Thread(target=self._read_answers, name="harness-tracking", daemon=True)
        self.reader.start()
        self._send(matrix)

    def submit(self, method: str, *args: Any) -> Future:
        """``matrix.<method>(*args)`` in the writer process; the future holds the run id (None if it failed)."""
        future: Future = Future()
        with self.lock:
            if self.ended:
                future.set_exception(RuntimeError(WRITER_ENDED))
                return future
            self.pending.put(future)
        with contextlib.suppress(OSError):  # the process died: the reader fails the future
            self._send((method, args))
        self.last = future
        return future

    def close(self) -> None:
        """Wait for the last answer, then let the process exit on its own (MLflow's exit takes ~0.7 s)."""
        if self.last:
            concurrent.futures.wait([self.last])
        with contextlib.suppress(OSError):
            self.process.stdin.close()

    def _send(self, message: Any) -> None:
        pickle.dump(message, self.process.stdin)
        self.process.stdin.flush()

    def _read_answers(self) -> None:
        while True:
            try:
                answer = pickle.load(self.process.stdout)
            except EOFError:
                break
            self.pending.get().set_result(answer)
        self.process.wait()
        with self.lock:
            self.ended = True
            while not self.pending.empty():
                self.pending.get().set_exception(RuntimeError(WRITER_ENDED))


WRITER_ENDED = "the MLflow writer process ended early; its error is above"


def _serve() -> None:
    """The writer process: read (method, args), call it on the matrix's run, answer with its result."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever MLflow prints goes to stderr; stdout carries only the answers
    requests = sys.stdin.buffer
    matrix = pickle.load(requests)
    while True:
        try:
            method, args = pickle.load(requests)
        except EOFError:
            return
        pickle.dump(_mirror(matrix, method, *args), answers)
        answers.flush()


def _mirror(matrix: MatrixRun, method: str, *args: Any) -> str | None:
    """MLflow mirrors the results table, which is complete either way: a failed write only warns."""
    try:
        return getattr(matrix, method)(*args)
    except Exception as exc:
        warnings.warn(f"MLflow logging ({method}) failed; the results table is complete: {exc}", stacklevel=1)
        return None


def _sql_store(uri: str) -> Any:
    """MLflow's SQL store behind ``uri`` (SQLite, PostgreSQL, MySQL), or None (a server, a file store)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = _client(uri)._tracking_client.store
    return store if isinstance(store, SqlAlchemyStore) else None


def _insert_runs(store: Any, experiment_id: str, parent: str, children: list[ChildRun]) -> list[str]:
    """``children`` as finished runs under ``parent``, in one transaction: a run row each, its tags (run
    name and parent as MLflow sets them), params, metric history and latest metrics."""
    import uuid

    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.utils.uri import append_to_uri_path
    from sqlalchemy import insert

    artifacts = store.get_experiment(experiment_id).artifact_location
    now = int(time.time() * 1000)
    run_ids = [uuid.uuid4().hex for _ in children]
    rows: dict[Any, list[dict[str, Any]]] = {SqlRun: [], SqlTag: [], SqlParam: [], SqlMetric: [], SqlLatestMetric: []}
    for run_id, child in zip(run_ids, children, strict=True):
        rows[SqlRun].append(
            {
                "run_uuid": run_id,
                "name": child.name,
                "experiment_id": int(experiment_id),
                "user_id": "unknown",  # what MlflowClient.create_run records without an mlflow.user tag
                "status": "FAILED" if child.failed else "FINISHED",
                "start_time": now,
                "end_time": now,
                "deleted_time": None,
                "source_type": "UNKNOWN",
                "source_name": "",
                "entry_point_name": "",
                "source_version": "",
                "lifecycle_stage": "active",
                "artifact_uri": append_to_uri_path(artifacts, run_id, "artifacts"),
            }
        )
        tags = {"mlflow.runName": child.name, "mlflow.parentRunId": child.parent or parent, **child.tags}
        rows[SqlTag] += [{"run_uuid": run_id, "key": k, "value": v} for k, v in tags.items()]
        rows[SqlParam] += [{"run_uuid": run_id, "key": p.key, "value": p.value} for p in _params(child.params)]
        latest: dict[str, dict[str, Any]] = {}
        for key, value, step in dict.fromkeys(child.metrics):  # an exact repeat is one row, as log_batch keeps it
            metric = {"run_uuid": run_id, "key": key, "value": value, "timestamp": now, "step": step, "is_nan": False}
            rows[SqlMetric].append(metric)
            if key not in latest or (step, value) > (latest[key]["step"], latest[key]["value"]):  # MLflow's order
                latest[key] = metric
        rows[SqlLatestMetric] += latest.values()
    with store.ManagedSessionMaker(read_only=False) as session:
        for model, values in rows.items():
            if values:
                session.execute(insert(model.__table__), values)
    return run_ids


def _write_ahead_log(uri: str) -> None:
    """Switch a SQLite store to write-ahead logging (it stays so): one fsync per commit instead of
    several, 3x faster logging, and readers (``mlflow ui``) never block the writer. A store on a
    network filesystem should be an ``mlflow server`` instead (WAL needs one host)."""
    if uri.startswith("sqlite:///"):
        database = contextlib.closing(sqlite3.connect(uri.removeprefix("sqlite:///")))
        with database as db, contextlib.suppress(sqlite3.OperationalError):  # busy elsewhere: WAL is only faster
            db.execute("PRAGMA journal_mode=WAL")


def _cell_tags(cell: CellSpec) -> dict[str, str]:
    return {
        "cell_id": cell.cell_id,
        "benchmark": cell.benchmark,
        "model": cell.model,
        "dataset": cell.dataset,
        "method": cell.method,
        "sparsity": str(cell.sparsity),
        "seed": str(cell.seed),
    }


def _cell_params(cell: CellSpec) -> dict[str, Any]:
    return {
        "model": cell.model,
        "dataset": cell.dataset,
        "method": cell.method,
        "method_params": json.dumps(cell.method_params, sort_keys=True),
        "sparsity": cell.sparsity,
        "seed": cell.seed,
        **_recipe("pretrain", cell),
        **_recipe("finetune", cell),
    }


def _recipe(name: str, cell: CellSpec) -> dict[str, Any]:
    return {f"{name}.{k}": v for k, v in getattr(cell, name).model_dump().items()}


def _named_by_arm(row: dict[str, Any]) -> dict[str, Any]:
    """A control arm's numbers as ``<arm>.<metric>`` (``reinit.top1``): the ticket's row of the level keeps the
    plain names (step = level for both)."""
    arm = row.get("control") or "none"
    return row if arm == "none" else {f"{arm}.{k}": v for k, v in row.items()}


def _epoch_metrics(epochs: Iterable[dict[str, Any]]) -> list:
    """Epoch rows as curves named ``<phase>.<metric>`` (``finetune-0.val_top1``), step = epoch."""
    out = []
    for row in epochs:
        values = {f"{row['phase']}.{k}": v for k, v in row.items() if k not in ("phase", "epoch")}
        out += _metrics(values, step=int(row["epoch"]))
    return out


def _params(params: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in params.items()]


def _metrics(values: dict[str, Any], step: int = 0) -> list[tuple[str, float, int]]:
    """The finite numbers among ``values`` as (key, value, step)."""
    return [
        (k, float(v), step)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]


def _entities(metrics: list[tuple[str, float, int]]) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, value, now, step) for key, value, step in metrics]
