"""Where tasks run: :class:`RayBackend` (a local instance or a cluster) or :class:`LocalBackend` (this
process, one task at a time: for debugging and fast tests). Both take the same two kinds of task,
a dense pretraining and a cell, and report what they produce as :class:`Event` objects, a cell's
finished levels included, the moment they are back.

The Ray session itself (``harness.runner.ray_session``) is opened by the caller; a backend only
submits, waits and cancels. Workers import the cell's heavy modules once, when they start
(``harness.cell`` is imported with this module), and keep the dense model, data and dense latency
of their last ``pretrain_key`` (see ``harness.cell``).
"""

from __future__ import annotations

import math
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import ray

from harness.cell import SplitView, all_splits, execute_cell, pretrain
from harness.config import CellSpec, Resources
from harness.methods import METHODS
from harness.schema import CellResult


class SchedulingError(RuntimeError):
    """The cells cannot run where they were sent; the message says what they ask for and what is there."""


@dataclass
class Task:
    cell: CellSpec
    kind: Literal["pretrain", "cell"]
    streamed: bool = False  # its levels come back one by one (a resumable method's cell on Ray)


@dataclass
class Event:
    """What came back: ``level`` (a cell's rows so far and its checkpoint), ``done`` (the task's value:
    checkpoint bytes or the cell's CellResult) or ``failed`` (the task could not run: ``error``)."""

    task: Task
    kind: Literal["level", "done", "failed"]
    value: Any = None
    checkpoint: bytes | None = None
    error: str | None = None


Handle = Callable[[Event], None]


class Backend(Protocol):
    """What the scheduler needs of a place to run tasks."""

    cluster: dict[str, float]

    def put(self, data: bytes) -> Any:
        """A handle on ``data`` (a dense checkpoint) that cell tasks take as their ``dense``."""

    def submit_pretrain(self, cell: CellSpec, view: SplitView = all_splits) -> Task: ...

    def submit_cell(
        self, cell: CellSpec, dense: Any, view: SplitView = all_splits, resume: bytes | None = None, name: str = ""
    ) -> Task: ...

    def wait(self, timeout: float, handle: Handle) -> None:
        """Hand what comes back within ``timeout`` seconds to ``handle``, each event as it arrives."""

    def in_flight(self) -> int: ...

    def cancel(self) -> None:
        """Stop every task in flight."""


def capacity(resources: Resources, cluster: dict[str, float]) -> int:
    """How many tasks asking for ``resources`` fit on the cluster at once (0: none fits now)."""
    wants = {"CPU": resources.cpus, "GPU": resources.gpus, **resources.custom}
    fits = [cluster.get(name, 0.0) / amount for name, amount in wants.items() if amount > 0]
    return math.floor(min(fits, default=math.inf) + 1e-9) if fits else 2**31


def unfit(resources: Resources, cluster: dict[str, float]) -> str:
    shown = {k: v for k, v in cluster.items() if not k.startswith("node:")}
    return f"cells ask for {resources.model_dump(exclude_defaults=True)} but the Ray cluster has {shown}"


def distinct(shapes: Iterable[Resources]) -> list[Resources]:
    """Each resource request once (they hold dicts, so they are not hashable)."""
    return list({shape.model_dump_json(): shape for shape in shapes}.values())


def error_text(exc: BaseException) -> str:
    """A task's error as the user needs it: what the task raised on the first line (the one the CLI
    shows), then Ray's message, which holds the worker's traceback, without its terminal colours."""
    cause = getattr(exc, "cause", None)  # a RayTaskError's: the exception raised inside the task
    first = f"{type(cause).__name__}: {cause}\n" if isinstance(cause, BaseException) else ""
    return first + re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {exc}")


CANCEL_SECONDS = 5.0  # how long a cancelled task has to stop on its own before its worker is killed


def cancel_running(refs: Iterable[Any], seconds: float = CANCEL_SECONDS) -> list[Any]:
    """Stop the tasks of ``refs`` (ObjectRefs or streaming generators) that are still running; returns
    those that had to be forced.

    First a plain ``ray.cancel``: the task gets a KeyboardInterrupt and its worker lives on. Only the
    tasks that have not stopped within ``seconds`` are cancelled with ``force`` (their worker is
    killed): forcing a worker whose reply was on its way made the driver's Ray abort with a C++ stack
    trace ("Tried to complete task that was not pending"), and a finished task is never forced.
    """
    refs = list(refs)
    if not refs:
        return []
    _, running = ray.wait(refs, num_returns=len(refs), timeout=0)
    for ref in running:
        ray.cancel(ref)
    if not running:
        return []
    _, stubborn = ray.wait(running, num_returns=len(running), timeout=seconds)
    for ref in stubborn:
        ray.cancel(ref, force=True)
    return stubborn


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


# -- tasks, as workers run them ----------------------------------------------------------------


def _pretrain_task(cell: CellSpec, view: SplitView = all_splits) -> bytes:
    return pretrain(cell, view).to_bytes()


def cell_stream(
    cell: CellSpec, dense: Any, view: SplitView = all_splits, resume: bytes | None = None
) -> Iterator[tuple[str, CellResult, bytes | None]]:
    """The cell's finished levels ``("level", rows so far, checkpoint)``, then ``("done", result, None)``.

    The cell runs in a thread of its own so that its levels can be yielded while it goes on.
    """
    items: queue.SimpleQueue = queue.SimpleQueue()

    def run() -> None:
        try:
            items.put(("done", execute_cell(cell, dense, view, resume, lambda r, c: items.put(("level", r, c))), None))
        except BaseException as exc:  # execute_cell turns errors into rows; this is e.g. SystemExit
            items.put(("raised", exc, None))

    threading.Thread(target=run, name=f"cell {cell.cell_id}", daemon=True).start()
    while True:
        kind, value, checkpoint = items.get()
        if kind == "raised":
            raise value
        yield kind, value, checkpoint
        if kind == "done":
            return


def _placed(result: CellResult) -> CellResult:
    """Where the cell ran, on each row."""
    context = ray.get_runtime_context()
    placement = {"ray_node_id": context.get_node_id(), "gpu_ids": ",".join(context.get_accelerator_ids()["GPU"])}
    for row in result.rows:
        row.update(placement)
    return result


def _cell_task(cell: CellSpec, dense: bytes, view: SplitView = all_splits, resume: bytes | None = None):
    for kind, result, checkpoint in cell_stream(cell, dense, view, resume):
        yield kind, _placed(result), checkpoint


def _whole_cell_task(cell: CellSpec, dense: bytes, view: SplitView = all_splits) -> CellResult:
    return _placed(execute_cell(cell, dense, view))


_remote_pretrain = ray.remote(_pretrain_task)
_remote_cell = ray.remote(num_returns="streaming")(_cell_task)
_remote_whole_cell = ray.remote(_whole_cell_task)


# -- backends ------------------------------------------------------------------------------------


class RayBackend:
    """Tasks on the Ray instance this process is connected to; cells stream their levels back."""

    def __init__(self, local: bool, max_retries: int = 3) -> None:
        self.local = local
        self.max_retries = max_retries
        self.cluster = ray.cluster_resources()
        self.gpus_here = self.cluster.get("GPU", 0) > 0 or not local  # a laptop without GPU runs GPU specs on CPU
        self.tasks: dict[Any, Task] = {}  # ObjectRef or ObjectRefGenerator -> its task
        self._options: dict[str, dict] = {}

    def shape(self, resources: Resources) -> Resources:
        return resources if self.gpus_here else resources.model_copy(update={"gpus": 0.0})

    def options(self, cell: CellSpec, name: str) -> dict:
        key = cell.resources.model_dump_json()
        if key not in self._options:
            self._options[key] = task_options(self.shape(cell.resources), self.max_retries, "")
        return {**self._options[key], "name": name}

    def refresh(self) -> None:
        """The cluster may have grown or shrunk."""
        self.cluster = ray.cluster_resources()

    def put(self, data: bytes) -> Any:
        return ray.put(data)  # driver-owned: it outlives any worker node

    def remote_pretrain(self, cell: CellSpec, view: SplitView = all_splits) -> ray.ObjectRef:
        """The dense pretraining of ``cell`` as a plain task: its ref holds the checkpoint bytes."""
        name = f"pretrain {cell.model}/{cell.dataset} seed {cell.seed}"
        return _remote_pretrain.options(**self.options(cell, name)).remote(cell, view)

    def remote_cell(self, cell: CellSpec, dense: Any, view: SplitView = all_splits, name: str = "") -> ray.ObjectRef:
        """``cell`` as a plain task, its levels not streamed: its ref holds the CellResult (tuning trials)."""
        options = self.options(cell, name or f"cell {cell.cell_id}")
        return _remote_whole_cell.options(**options).remote(cell, dense, view)

    def submit_pretrain(self, cell: CellSpec, view: SplitView = all_splits) -> Task:
        task = Task(cell, "pretrain")
        self.tasks[self.remote_pretrain(cell, view)] = task
        return task

    def submit_cell(
        self, cell: CellSpec, dense: Any, view: SplitView = all_splits, resume: bytes | None = None, name: str = ""
    ) -> Task:
        task = Task(cell, "cell")
        if not METHODS.get(cell.method).resumable:  # nothing to stream: a plain task costs Ray less
            self.tasks[self.remote_cell(cell, dense, view, name)] = task
            return task
        options = self.options(cell, name or f"cell {cell.cell_id}")
        task.streamed = True
        self.tasks[_remote_cell.options(**options).remote(cell, dense, view, resume)] = task
        return task

    def in_flight(self) -> int:
        return len(self.tasks)

    def wait(self, timeout: float, handle: Handle) -> None:
        refs = list(self.tasks)
        if not refs:
            return
        done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if done:  # take everything that is ready in one go
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in done:
            task = self.tasks[ref]
            if task.streamed:
                self._next(ref, task, handle)
                continue
            del self.tasks[ref]
            try:
                handle(Event(task, "done", ray.get(ref)))
            except ray.exceptions.RayError as exc:  # a cell's worker died more often than max_retries allows
                handle(Event(task, "failed", error=error_text(exc)))

    def _next(self, stream: Any, task: Task, handle: Handle) -> None:
        """One item of a cell's stream: a level, or the result (then the stream is done)."""
        try:
            kind, result, checkpoint = ray.get(next(stream))
        except StopIteration:
            del self.tasks[stream]
            handle(Event(task, "failed", error="the cell's task ended without a result"))
            return
        except ray.exceptions.RayError as exc:  # its worker died more often than max_retries allows
            del self.tasks[stream]
            handle(Event(task, "failed", error=error_text(exc)))
            return
        if kind == "done":
            del self.tasks[stream]
        handle(Event(task, kind, result, checkpoint))

    def cancel(self) -> None:
        """Stop the tasks still running (:func:`cancel_running`)."""
        cancel_running(self.tasks)
        self.tasks.clear()


class LocalBackend:
    """Every task in this process, one at a time in submission order: no Ray, tracebacks where you are."""

    def __init__(self) -> None:
        self.cluster = {"CPU": 1.0}
        self.queue: list[tuple[Task, Callable[[Handle], None]]] = []

    def put(self, data: bytes) -> Any:
        return data

    def submit_pretrain(self, cell: CellSpec, view: SplitView = all_splits) -> Task:
        task = Task(cell, "pretrain")

        def run(handle: Handle) -> None:
            try:
                data = pretrain(cell, view).to_bytes()
            except Exception as exc:  # its cells fail with this error; the others go on
                handle(Event(task, "failed", error=f"{type(exc).__name__}: {exc}"))
                return
            handle(Event(task, "done", data))

        self.queue.append((task, run))
        return task

    def submit_cell(
        self, cell: CellSpec, dense: Any, view: SplitView = all_splits, resume: bytes | None = None, name: str = ""
    ) -> Task:
        task = Task(cell, "cell")

        def run(handle: Handle) -> None:
            level = lambda rows, checkpoint: handle(Event(task, "level", rows, checkpoint))  # noqa: E731
            handle(Event(task, "done", execute_cell(cell, dense, view, resume, level)))

        self.queue.append((task, run))
        return task

    def in_flight(self) -> int:
        return len(self.queue)

    def wait(self, timeout: float, handle: Handle) -> None:
        if self.queue:
            _, run = self.queue.pop(0)
            run(handle)

    def cancel(self) -> None:
        self.queue.clear()
