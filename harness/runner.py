"""Runs a matrix of cells on Ray: each dense pretraining once, then every cell that needs it.

The matrix is a DAG. A cell depends on the dense model of its ``pretrain_key``; a missing one is
trained by a single pretraining task, and the cells that need it are released as soon as it is
back (breadth-first, in matrix order). Checkpoint bytes and result rows travel through Ray's
object store, so workers need no shared filesystem; this process, the driver, is the only writer
of the results folder and of MLflow, so concurrent cells can never corrupt either. Every result is
written the moment it arrives and cells already in the table are skipped: a rerun after Ctrl-C, a
crash or SIGKILL resumes where the last one stopped, reusing the dense checkpoints it saved.

A worker or node that dies has its task retried elsewhere (``max_retries``); an exception inside a
cell is not retried but becomes a ``failed`` row (see ``execute_cell``).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
import time
import urllib.parse
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import ray
import torch
from ray._private import ray_constants

from harness import reaper
from harness.cell import DenseCheckpoint, SplitView, all_splits, execute_cell, failed_result, pretrain
from harness.config import CellSpec, Resources
from harness.methods import method_provenance
from harness.schema import CellResult
from harness.store import ResultsStore
from harness.tracking import ChildRun, MatrixRun, TrackingWriter

REFRESH_SECONDS = 1.0  # how often progress is reported while nothing finishes
TRACKING_SECONDS = 10.0  # how often the parent MLflow run gets the matrix's counts


@dataclass
class Plan:
    """Which cells run and which are already in the table; ``other_code``: cells in the table whose rows
    were produced by a different version of their method's source (rerun them with ``--force``)."""

    todo: list[CellSpec]
    done: list[CellSpec]
    failed_before: list[CellSpec]
    other_code: list[CellSpec] = field(default_factory=list)


def plan(cells: list[CellSpec], store: ResultsStore, retry_failed: bool = False, force: bool = False) -> Plan:
    """Sort ``cells`` into to run / done / failed before; ``force`` runs every one of them again."""
    benchmarks = {cell.benchmark for cell in cells}
    statuses = {benchmark: store.statuses(benchmark) for benchmark in benchmarks}
    recorded = {benchmark: store.source_hashes(benchmark) for benchmark in benchmarks}
    current: dict[str, str | None] = {}
    todo, done, failed, other_code = [], [], [], []
    for cell in cells:
        status = statuses[cell.benchmark].get(cell.cell_id)
        if status is not None:
            key = json.dumps([cell.method, cell.method_params], sort_keys=True)
            if key not in current:
                current[key] = method_provenance(cell.method, cell.method_params)["method_source_hash"]
            was = recorded[cell.benchmark].get(cell.cell_id)
            if was is not None and current[key] is not None and was != current[key]:
                other_code.append(cell)
        if force or status is None or (status == "failed" and retry_failed):
            todo.append(cell)
        else:
            (done if status == "ok" else failed).append(cell)
    return Plan(todo, done, failed, other_code)


# -- Ray ------------------------------------------------------------------------------------------


class SchedulingError(RuntimeError):
    """The cells cannot run where they were sent; the message says what they ask for and what is there."""


@contextmanager
def ray_session(address: str | None = None, runtime_env: dict | None = None) -> Iterator[bool]:
    """Ray for one matrix; yields whether it is a local instance started here.

    Reuses the connection this process already has (tests, notebooks); joins the cluster at
    ``address`` (``auto``, ``ray://HOST:10001``; ``$RAY_ADDRESS`` when not given) with the user's
    own Ray settings; or else starts a local instance with :func:`_local_ray`.
    """
    if ray.is_initialized():
        yield False
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address is not None:
        ray.init(address=address, log_to_driver=False, logging_level="warning", runtime_env=runtime_env)
        try:
            yield False
        finally:
            ray.shutdown()
        return
    with _local_ray(runtime_env):
        yield True


LOCAL_RAY_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED", reaper.MARKER)


@contextmanager
def _local_ray(runtime_env: dict | None) -> Iterator[None]:
    """A Ray instance on this machine's CPUs and GPUs that no one else can use, ended with this process.

    Whatever the caller's environment says, Ray's token authentication is on, with a fresh random
    token that only this process and its children hold (in their environment, never in a file),
    so another process cannot join. Every server listens on 127.0.0.1 only: Ray's single-machine
    mode (its default on macOS) makes the node's address loopback, which the GCS, raylet, workers,
    agents and metrics bind to (``_node_ip_address`` alone is turned back into the machine's IP).
    No dashboard, no usage report. The reaper (see :mod:`harness.reaper`) ends every process of the
    instance when this one ends, also by SIGKILL.
    """
    session = secrets.token_hex(8)
    keeper = reaper.start(session)
    saved = {name: os.environ.get(name) for name in LOCAL_RAY_ENV}
    os.environ.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": saved["RAY_USAGE_STATS_ENABLED"] or "0",
            reaper.MARKER: session,
        }
    )
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by Ray when it picks the node's address
    try:
        _reload_ray_auth()
        ray.init(
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
            logging_level="warning",
            runtime_env=runtime_env,
        )
        yield
    finally:
        ray.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_ray_auth()
        keeper.stdin.close()  # the reaper ends whatever Ray left behind
        keeper.wait(timeout=reaper.SWEEP_SECONDS + 5)


def _reload_ray_auth() -> None:
    """Make Ray read the authentication mode and token from the environment again (it caches both)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


CONNECT_SECONDS = 10.0  # to reach a cluster's address; Ray itself retries for minutes, printing warnings
RAY_PORTS = {"ray": 10001, "": 6379}  # Ray Client's port and the GCS's, when an address names none


def check_cluster_address(address: str | None) -> None:
    """Raise SchedulingError, within ``CONNECT_SECONDS``, if nothing listens at the cluster's address
    (``--address`` or ``$RAY_ADDRESS``; ``auto`` finds a local cluster or fails at once by itself)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address == "auto" or ray.is_initialized():
        return
    scheme, _, rest = address.rpartition("://")
    try:
        parts = urllib.parse.urlsplit(f"//{rest}")
        host, port = parts.hostname, parts.port or RAY_PORTS.get(scheme, RAY_PORTS[""])
    except ValueError as exc:
        raise SchedulingError(f"--address {address} is not HOST:PORT or ray://HOST:PORT ({exc})") from None
    if not host:
        raise SchedulingError(f"--address {address} names no host; give HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or type(exc).__name__
        raise SchedulingError(
            f"cannot reach the Ray cluster at {address} ({reason} on {host}:{port} within {CONNECT_SECONDS:.0f} s); "
            "start it (ray up, ray start --head) or fix --address / $RAY_ADDRESS"
        ) from None



def _pretrain_task(cell: CellSpec, view: SplitView = all_splits) -> bytes:
    return pretrain(cell, view).to_bytes()


def _cell_task(cell: CellSpec, dense: bytes, view: SplitView = all_splits) -> CellResult:
    result = execute_cell(cell, dense, view)
    context = ray.get_runtime_context()
    placement = {"ray_node_id": context.get_node_id(), "gpu_ids": ",".join(context.get_accelerator_ids()["GPU"])}
    for row in result.rows:
        row.update(placement)
    return result


# The task API the matrix and `harness tune` share: the same resources, retries and failure rows.
remote_pretrain = ray.remote(_pretrain_task)
remote_cell = ray.remote(_cell_task)


def task_options(resources: Resources, max_retries: int, name: str) -> dict:
    """Ray options of one task: the cell's resources; a failing cell is a row, only a dead worker is retried."""
    return {
        "num_cpus": resources.cpus,
        "num_gpus": resources.gpus,
        "resources": dict(resources.custom),
        "label_selector": dict(resources.labels) or None,
        "max_retries": max_retries,
        "retry_exceptions": False,
        "name": name,
    }


def capacity(resources: Resources, cluster: dict[str, float]) -> int:
    """How many tasks asking for ``resources`` fit on the cluster at once (0: none fits now)."""
    wants = {"CPU": resources.cpus, "GPU": resources.gpus, **resources.custom}
    fits = [cluster.get(name, 0.0) / amount for name, amount in wants.items() if amount > 0]
    return math.floor(min(fits, default=math.inf) + 1e-9) if fits else 2**31


def check_local_resources(cells: Iterable[CellSpec], address: str | None) -> None:
    """Before a local Ray instance starts: refuse cells asking for more than this machine has (nothing
    joins a local instance, so they could never run). Joining a cluster, the scheduler checks on arrival."""
    if address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cluster = {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}
    for resources in _distinct(cell.resources for cell in cells):
        shape = resources if cluster["GPU"] else resources.model_copy(update={"gpus": 0.0})  # GPU specs run on CPU
        if capacity(shape, cluster) == 0:
            raise SchedulingError(
                f"{_unfit(resources, cluster)}; lower the spec's resources or join a cluster (--address)"
            )


def _unfit(resources: Resources, cluster: dict[str, float]) -> str:
    shown = {k: v for k, v in cluster.items() if not k.startswith("node:")}
    return f"cells ask for {resources.model_dump(exclude_defaults=True)} but the Ray cluster has {shown}"


def _distinct(shapes: Iterable[Resources]) -> list[Resources]:
    """Each resource request once (they hold dicts, so they are not hashable)."""
    return list({shape.model_dump_json(): shape for shape in shapes}.values())


def _run_id(future: Future) -> str | None:
    """The MLflow run id of a logged result; None (with a warning) if the tracking process broke."""
    try:
        return future.result()
    except Exception as exc:
        warnings.warn(f"MLflow logging failed; the results table is complete: {error_text(exc)}", stacklevel=1)
        return None


def error_text(exc: BaseException) -> str:
    """A task's error as the user needs it: what the task raised on the first line (the one the CLI
    shows), then Ray's message, which holds the worker's traceback, without its terminal colours."""
    cause = getattr(exc, "cause", None)  # a RayTaskError's: the exception raised inside the task
    first = f"{type(cause).__name__}: {cause}\n" if isinstance(cause, BaseException) else ""
    return first + re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {exc}")


# -- the scheduler ------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where the matrix stands; handed to ``on_progress`` at least every second while it runs."""

    total: int
    ok: int = 0
    failed: int = 0
    running: int = 0  # cells submitted to Ray and not back, at most what the cluster holds at once
    pretraining: int = 0  # dense pretraining tasks in flight
    pretrained: int = 0  # dense models trained by this run
    reused: int = 0  # dense models found in the store

    @property
    def finished(self) -> int:
        return self.ok + self.failed


def run_matrix(
    cells: list[CellSpec],
    store: ResultsStore,
    matrix: MatrixRun | None = None,
    *,
    address: str | None = None,
    runtime_env: dict | None = None,
    max_parallel: int | None = None,
    max_retries: int = 3,
    on_result: Callable[[CellSpec, CellResult], None] = lambda cell, result: None,
    on_progress: Callable[[Progress], None] = lambda progress: None,
) -> Progress:
    """Run ``cells`` on Ray (see :func:`ray_session` for which Ray) and write each result as it arrives.

    ``max_parallel`` bounds the tasks in flight (default: as many as the cluster takes). On
    ``KeyboardInterrupt`` the tasks in flight are cancelled, the results already back are written,
    and the interrupt propagates. ``on_result`` is called from the thread that writes results; what it
    raises is a warning, and the matrix goes on.
    """
    tracking = TrackingWriter(matrix) if matrix else None  # it starts up while Ray does
    try:
        with ray_session(address, runtime_env) as local:
            scheduler = _Scheduler(cells, store, tracking, local, max_parallel, max_retries, on_result, on_progress)
            scheduler.run()
        store.close()
        return scheduler.progress
    finally:
        if tracking:
            tracking.close()


class _Scheduler:
    """The driver: submit what is ready, wait for what finishes, hand it to the writers, repeat.

    Writing is a two-stage pipeline with one writer per sink, so the loop never waits on a disk:
    the tracking process logs a result's MLflow run, then the results thread writes its rows (with
    that run's id) to the store.
    """

    def __init__(
        self,
        cells: list[CellSpec],
        store: ResultsStore,
        tracking: TrackingWriter | None,
        local: bool,
        max_parallel: int | None,
        max_retries: int,
        on_result: Callable[[CellSpec, CellResult], None],
        on_progress: Callable[[Progress], None],
    ) -> None:
        self.store = store
        self.tracking = tracking
        self.limit = max_parallel or math.inf
        self.max_retries = max_retries
        self.on_result = on_result
        self.on_progress = on_progress
        self.progress = Progress(total=len(cells))
        self.cluster = ray.cluster_resources()
        self.gpus_here = self.cluster.get("GPU", 0) > 0 or not local  # a laptop without GPU runs GPU specs on CPU
        self._check_feasible(_distinct(cell.resources for cell in cells), local)
        self.results = ThreadPoolExecutor(1, thread_name_prefix="harness-results")
        self.writes: deque[Future] = deque()

        self.blocked: dict[str, list[CellSpec]] = {}  # pretrain_key -> cells waiting for that dense model
        for cell in cells:
            self.blocked.setdefault(cell.pretrain_key, []).append(cell)
        self.remaining = Counter(cell.pretrain_key for cell in cells)  # cells of a key not back yet
        self.dense: dict[str, ray.ObjectRef] = {}  # driver-owned copies: they outlive any worker node
        self.to_pretrain: deque[CellSpec] = deque()
        self.ready: deque[CellSpec] = deque()
        self.pretraining: dict[ray.ObjectRef, CellSpec] = {}
        self.in_flight: dict[ray.ObjectRef, tuple[CellSpec, str]] = {}  # the cell and its resources' key
        self.in_flight_by_shape: Counter[str] = Counter()
        self.shapes: dict[str, Resources] = {}
        for key, waiting in list(self.blocked.items()):
            data = store.load_checkpoint(key)
            if data is None:
                self.to_pretrain.append(waiting[0])
            else:
                self.progress.reused += 1
                self._release(key, data)
        self.last_tracked = time.monotonic()

    def _shape(self, resources: Resources) -> Resources:
        return resources if self.gpus_here else resources.model_copy(update={"gpus": 0.0})

    def _check_feasible(self, shapes: list[Resources], local: bool) -> None:
        for resources in shapes:
            if capacity(self._shape(resources), self.cluster) == 0:
                message = _unfit(resources, self.cluster)
                if local:  # nothing will ever join a local instance
                    raise SchedulingError(f"{message}; lower the spec's resources or join a cluster with --address")
                warnings.warn(f"{message}: they wait until the autoscaler adds a node that fits", stacklevel=2)

    def run(self) -> None:
        """Until every cell is written. On any exception (Ctrl-C too) the tasks in flight are
        cancelled, and what already came back is still written before it propagates."""
        try:
            while self.to_pretrain or self.ready or self.in_flight or self.pretraining:
                self._submit()
                refs = [*self.pretraining, *self.in_flight]
                done, _ = ray.wait(refs, num_returns=1, timeout=REFRESH_SECONDS)
                if done:  # take everything that is ready in one go
                    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in done:
                    if ref in self.pretraining:
                        self._pretrained(ref, self.pretraining.pop(ref))
                    else:
                        self._finished(ref, *self.in_flight.pop(ref))
                self._report()
        except BaseException:
            for ref in [*self.pretraining, *self.in_flight]:
                ray.cancel(ref, force=True)
            raise
        finally:
            self.results.shutdown(wait=True)
            self._check_writes(wait=True)

    def _submit(self) -> None:
        """Pretraining first (everything waits for it), then ready cells in matrix order."""
        while self.to_pretrain and self._slots():
            cell = self.to_pretrain.popleft()
            name = f"pretrain {cell.model}/{cell.dataset} seed {cell.seed}"
            options = task_options(self._shape(cell.resources), self.max_retries, name)
            self.pretraining[remote_pretrain.options(**options).remote(cell)] = cell
        while self.ready and self._slots():
            cell = self.ready.popleft()
            shape = cell.resources.model_dump_json()
            if shape not in self.shapes:
                self.shapes[shape] = self._shape(cell.resources)
            options = task_options(self.shapes[shape], self.max_retries, f"cell {cell.cell_id}")
            self.in_flight[remote_cell.options(**options).remote(cell, self.dense[cell.pretrain_key])] = cell, shape
            self.in_flight_by_shape[shape] += 1

    def _slots(self) -> bool:
        return len(self.pretraining) + len(self.in_flight) < self.limit

    def _pretrained(self, ref: ray.ObjectRef, cell: CellSpec) -> None:
        key = cell.pretrain_key
        try:
            data = ray.get(ref)
        except ray.exceptions.RayError as exc:  # every cell that needs this model fails; the others go on
            for waiting in self.blocked.pop(key):
                self._write(waiting, failed_result(waiting, error_text(exc), phase="pretraining"))
            return
        self.store.save_checkpoint(key, data)
        self.progress.pretrained += 1
        if self.tracking:
            dense = DenseCheckpoint.from_bytes(data)
            self.tracking.submit("log_child", ChildRun.of_pretraining(cell, dense.metrics, dense.epochs))
        self._release(key, data)

    def _release(self, key: str, data: bytes) -> None:
        self.dense[key] = ray.put(data)
        self.ready.extend(self.blocked.pop(key))

    def _finished(self, ref: ray.ObjectRef, cell: CellSpec, shape: str) -> None:
        self.in_flight_by_shape[shape] -= 1
        self.remaining[cell.pretrain_key] -= 1
        if self.remaining[cell.pretrain_key] == 0:
            del self.dense[cell.pretrain_key]  # no cell needs it any more: let Ray free it
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:  # its worker died more often than max_retries allows
            result = failed_result(cell, error_text(exc), phase="task")
        self._write(cell, result)

    def _write(self, cell: CellSpec, result: CellResult) -> None:
        """Hand a result to the writers: its MLflow run first, then its rows, whose presence means done."""
        run_id = None
        if self.tracking:
            run_id = self.tracking.submit("log_child", ChildRun.of_cell(cell, result.rows, result.epochs))
        self.writes.append(self.results.submit(self._store, cell, result, run_id))
        self._check_writes()

    def _store(self, cell: CellSpec, result: CellResult, run_id: Future | None) -> None:
        """On the results thread: the only writer of the results folder."""
        mlflow_run_id = _run_id(run_id) if run_id else None
        for row in result.rows:
            row["mlflow_run_id"] = mlflow_run_id
        self.store.write(result)
        self.store.save_log(cell.cell_id, result.log)
        if result.ok:
            self.progress.ok += 1
        else:
            self.progress.failed += 1
        try:
            self.on_result(cell, result)
        except Exception as exc:  # showing one result must not stop the matrix: its rows are written already
            warnings.warn(f"cell {cell.cell_id} is saved, but showing it failed: {error_text(exc)}", stacklevel=1)

    def _check_writes(self, wait: bool = False) -> None:
        """Raise a write's error in the driver's loop (a full disk must stop the matrix)."""
        while self.writes and (wait or self.writes[0].done()):
            self.writes.popleft().result()

    def _report(self) -> None:
        self.progress.running = sum(
            min(n, capacity(self.shapes[shape], self.cluster)) for shape, n in self.in_flight_by_shape.items()
        )
        self.progress.pretraining = len(self.pretraining)
        self.on_progress(self.progress)
        if time.monotonic() - self.last_tracked > TRACKING_SECONDS:  # the cluster may have grown or shrunk
            self.last_tracked = time.monotonic()
            self.cluster = ray.cluster_resources()
            if self.tracking:
                self.tracking.submit("log_progress", self._counts(), self.progress.finished)

    def _counts(self) -> dict[str, int]:
        p = self.progress
        return {"ok": p.ok, "failed": p.failed, "running": p.running, "pretrained": p.pretrained}
