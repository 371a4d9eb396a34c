"""Runs a matrix of cells: each dense pretraining once, then every cell that needs it.

The loop here joins the scheduler's three parts (``harness.scheduler``): the DAG says what is
ready (a cell waits for the dense model of its ``pretrain_key``), a backend runs it (Ray, or this
process), the sink writes what comes back. Checkpoint bytes and result rows travel through Ray's
object store, so workers need no shared filesystem; this process, the driver, is the only writer
of the results folder and of MLflow, so concurrent cells can never corrupt either. Every result,
and every finished level of a cell, is written the moment it arrives, and cells already in the
table are skipped: a rerun after Ctrl-C, a crash or SIGKILL resumes where the last one stopped,
reusing the dense checkpoints it saved and continuing iterative cells after their last level.

A worker or node that dies has its task retried elsewhere (``max_retries``); an exception inside a
cell is not retried but becomes a ``failed`` row (see ``execute_cell``).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import time
import urllib.parse
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import ray
import torch
from ray._private import ray_constants

from harness import interrupt, reaper
from harness.cell import failed_result
from harness.config import CellSpec, Resources
from harness.scheduler.backends import (
    Backend,
    Event,
    LocalBackend,
    RayBackend,
    SchedulingError,
    capacity,
    distinct,
    unfit,
)
from harness.scheduler.dag import MatrixDag
from harness.scheduler.sink import ResultSink
from harness.schema import CellResult
from harness.store import ResultsStore
from harness.tracking import MatrixRun, TrackingWriter

__all__ = [
    "Progress",
    "SchedulingError",
    "capacity",
    "check_local_resources",
    "ray_session",
    "run_matrix",
]

REFRESH_SECONDS = 1.0  # how often progress is reported while nothing finishes
TRACKING_SECONDS = 10.0  # how often the parent MLflow run gets the matrix's counts


# -- Ray ------------------------------------------------------------------------------------------


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


def check_local_resources(cells: Iterable[CellSpec], address: str | None) -> None:
    """Before a local Ray instance starts: refuse cells asking for more than this machine has (nothing
    joins a local instance, so they could never run). Joining a cluster, the scheduler checks on arrival."""
    if address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cluster = {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}
    for resources in distinct(cell.resources for cell in cells):
        shape = resources if cluster["GPU"] else resources.model_copy(update={"gpus": 0.0})  # GPU specs run on CPU
        if capacity(shape, cluster) == 0:
            raise SchedulingError(
                f"{unfit(resources, cluster)}; lower the spec's resources or join a cluster (--address)"
            )


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
    backend: Literal["ray", "local"] = "ray",
    address: str | None = None,
    runtime_env: dict | None = None,
    max_parallel: int | None = None,
    max_retries: int = 3,
    on_result: Callable[[CellSpec, CellResult], None] = lambda cell, result: None,
    on_progress: Callable[[Progress], None] = lambda progress: None,
) -> Progress:
    """Run ``cells`` on Ray (see :func:`ray_session` for which Ray), or all in this process with
    ``backend="local"``, and write each result, and each finished level, as it arrives.

    ``max_parallel`` bounds the tasks in flight (default: as many as the cluster takes). On
    ``KeyboardInterrupt`` the tasks in flight are cancelled, the results already back are written,
    and the interrupt propagates. ``on_result`` is called from the thread that writes results; what it
    raises is a warning, and the matrix goes on.
    """
    tracking = TrackingWriter(matrix) if matrix else None  # it starts up while Ray does
    try:
        if backend == "local":
            scheduler = _Scheduler(cells, store, LocalBackend(), tracking, max_parallel, on_result, on_progress)
            scheduler.run()
        else:
            with ray_session(address, runtime_env) as local:
                ray_backend = RayBackend(local, max_retries)
                _check_feasible(ray_backend, cells)
                scheduler = _Scheduler(cells, store, ray_backend, tracking, max_parallel, on_result, on_progress)
                scheduler.run()
        store.close()
        return scheduler.progress
    finally:
        if tracking:
            tracking.close()


def _check_feasible(backend: RayBackend, cells: list[CellSpec]) -> None:
    for resources in distinct(cell.resources for cell in cells):
        if capacity(backend.shape(resources), backend.cluster) == 0:
            message = unfit(resources, backend.cluster)
            if backend.local:  # nothing will ever join a local instance
                raise SchedulingError(f"{message}; lower the spec's resources or join a cluster with --address")
            warnings.warn(f"{message}: they wait until the autoscaler adds a node that fits", stacklevel=3)


class _Scheduler:
    """The driver's loop: submit what the DAG has ready, hand what comes back to the sink, repeat."""

    def __init__(
        self,
        cells: list[CellSpec],
        store: ResultsStore,
        backend: Backend,
        tracking: TrackingWriter | None,
        max_parallel: int | None,
        on_result: Callable[[CellSpec, CellResult], None],
        on_progress: Callable[[Progress], None],
    ) -> None:
        self.store = store
        self.backend = backend
        self.tracking = tracking
        self.limit = max_parallel or math.inf
        self.on_progress = on_progress
        self.progress = Progress(total=len(cells))
        self.sink = ResultSink(store, tracking, on_result)
        keys = {cell.pretrain_key for cell in cells}
        saved = {key: data for key in keys if (data := store.load_checkpoint(key)) is not None}
        self.dag = MatrixDag(cells, saved)
        self.dense = {key: backend.put(data) for key, data in saved.items()}  # dropped after its last cell
        self.progress.reused = len(saved)
        self.running: Counter[str] = Counter()  # cells in flight per resource shape
        self.shapes: dict[str, Resources] = {}
        self.last_tracked = time.monotonic()

    def run(self) -> None:
        """Until every cell is written. On any exception (Ctrl-C too) the tasks in flight are
        cancelled, and what already came back is still written before it propagates."""
        try:
            while self.dag.pending() or self.backend.in_flight():
                self._submit()
                self.backend.wait(REFRESH_SECONDS, self._handle)
                interrupt.check()  # a Ctrl-C whose KeyboardInterrupt was dropped (harness.interrupt)
                self.sink.check()
                self._report()
        except BaseException:
            self.backend.cancel()
            raise
        finally:
            self.sink.close()
            self.progress.ok, self.progress.failed = self.sink.ok, self.sink.failed

    def _submit(self) -> None:
        """Pretraining first (everything waits for it), then ready cells in matrix order."""
        while self.dag.pretrain and self._slots():
            self.backend.submit_pretrain(self.dag.pretrain.popleft())
            self.progress.pretraining += 1
        while self.dag.ready and self._slots():
            cell = self.dag.ready.popleft()
            resume = self.store.load_level(cell.cell_id)
            self.backend.submit_cell(cell, self.dense[cell.pretrain_key], resume=resume)
            shape = cell.resources.model_dump_json()
            self.shapes.setdefault(shape, cell.resources)
            self.running[shape] += 1

    def _slots(self) -> bool:
        return self.backend.in_flight() < self.limit

    def _handle(self, event: Event) -> None:
        cell = event.task.cell
        if event.task.kind == "pretrain":
            self.progress.pretraining -= 1
            if event.kind == "failed":  # every cell that needs this model fails; the others go on
                for waiting in self.dag.dense_failed(cell.pretrain_key):
                    self.sink.result(waiting, failed_result(waiting, event.error, phase="pretraining"))
                return
            self.sink.dense(cell, event.value)
            self.progress.pretrained += 1
            self.dense[cell.pretrain_key] = self.backend.put(event.value)
            self.dag.dense_ready(cell.pretrain_key)
            return
        if event.kind == "level":
            self.sink.level(cell, event.value, event.checkpoint)
            return
        self.running[cell.resources.model_dump_json()] -= 1
        if self.dag.cell_done(cell):
            del self.dense[cell.pretrain_key]  # no cell needs it any more: let Ray free it
        result = event.value if event.kind == "done" else failed_result(cell, event.error, phase="task")
        self.sink.result(cell, result)

    def _report(self) -> None:
        cluster = self.backend.cluster
        self.progress.running = sum(min(n, capacity(self.shapes[shape], cluster)) for shape, n in self.running.items())
        self.progress.ok, self.progress.failed = self.sink.ok, self.sink.failed
        self.on_progress(self.progress)
        if time.monotonic() - self.last_tracked > TRACKING_SECONDS:  # the cluster may have grown or shrunk
            self.last_tracked = time.monotonic()
            if isinstance(self.backend, RayBackend):
                self.backend.refresh()
            if self.tracking:
                self.tracking.submit("log_progress", self._counts(), self.progress.finished)

    def _counts(self) -> dict[str, int]:
        p = self.progress
        return {"ok": p.ok, "failed": p.failed, "running": p.running, "pretrained": p.pretrained}
