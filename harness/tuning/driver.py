"""``harness tune``: one Optuna study per (model, data set, method, sparsity, search seed), equal budgets.

The driver runs Optuna's ask/tell loop: it asks as many trials as the cluster holds, submits each
as an ordinary cell task (``RayBackend.remote_cell``: the same resources, retries and failure rows as
``harness run``) whose data view is :func:`harness.data.validation_only`, and tells each result
as it comes back. The objective is the trial's top-1 on the validation split; test data is never
loaded into a trial. Every study of a spec gets the same number of trials and the same cap on
fine-tune epochs, and failed and pruned trials count against it.

Pruning (``--pruner median`` or ``halving``; off by default) runs on the per-epoch validation curve
a trial brings back, once it is back: Ray tasks do not stream values mid-run here, so a pruned trial
saves no compute. It only marks the trial PRUNED (its value is the curve at the pruning step, and
it cannot be chosen), the same rule for every method.

Only the driver writes the Optuna storage (a journal file under a local results folder, or a given
RDB URL), so an interrupted ``harness tune`` resumes: finished trials stay, and a trial cut off mid-run
is marked failed, not counted, and its point is tried again.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import optuna
import pydantic
import ray
import yaml
from optuna.trial import TrialState

from harness import interrupt
from harness.data import validation_only
from harness.methods import METHODS
from harness.runner import ray_session
from harness.scheduler.backends import RayBackend, SchedulingError, cancel_running, capacity, error_text
from harness.schema import CellResult
from harness.spec import BenchmarkSpec, CellSpec, Recipe, content_hash, epoch_cap, expand, tuning_space
from harness.storage import child, is_remote, shown_uri
from harness.store import ResultsStore, atomic_write_bytes
from harness.tracking import ChildRun, MatrixRun, TrackingWriter, resolve_tracking_uri
from harness.tuning.space import ParamRange, Tuned, TunedCell, split_point

PROTOCOLS = ("defaults", "equal", "qmc")
SAMPLERS = ("tpe", "qmc")
PRUNERS = ("median", "halving", "none")
INTERRUPTED = "interrupted"  # user attribute of a trial cut off by Ctrl-C or a killed driver: not counted

optuna.logging.set_verbosity(optuna.logging.WARNING)


class StorageError(ValueError):
    """The Optuna storage the user named cannot be opened."""


@dataclass
class Study:
    """One search: the cell it tunes, its space, and its Optuna study once opened."""

    name: str
    base: CellSpec
    space: dict[str, ParamRange]
    cap: int
    handle: optuna.Study | None = None
    mlflow_run: str | None = None
    in_flight: int = 0
    used: int = 0  # counted trials, kept here so that choosing the next study reads no storage

    def counted(self) -> list[optuna.trial.FrozenTrial]:
        """The trials that used up budget: finished ones (complete, pruned or failed), not interrupted."""
        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return [t for t in self.handle.get_trials(deepcopy=False, states=done) if not t.user_attrs.get(INTERRUPTED)]


@dataclass
class Settings:
    """How the search runs; the same for every study of a spec."""

    trials: int
    protocol: str = "equal"
    sampler: str = "tpe"
    pruner: str = "none"  # pruning after the fact saves nothing and discards a pruned trial's final score
    storage: str | None = None  # an RDB URL; default: a journal file under a local results folder
    address: str | None = None
    max_parallel: int | None = None
    max_retries: int = 3


@dataclass
class TrialOutcome:
    """What the driver reports about a trial as it is told (for progress lines)."""

    study: Study
    number: int
    state: str
    value: float | None
    error: str | None


@dataclass
class TuneResult:
    studies: list[Study]
    tuned_spec: Path
    ran: int = 0  # trials run by this invocation
    outcomes: list[TrialOutcome] = field(default_factory=list)


def plan_studies(spec: BenchmarkSpec, settings: Settings) -> list[Study]:
    """One study per cell of the search seed; its name hashes everything that defines the search."""
    seed = spec.tune.seed if spec.tune and spec.tune.seed is not None else spec.seeds[0]
    space, cap = tuning_space(spec), epoch_cap(spec)
    bases = expand(spec.model_copy(update={"seeds": (seed,)}), tuned=False)
    search = {
        "space": {k: v.model_dump(exclude_defaults=True) for k, v in space.items()},
        "sampler": settings.sampler,
        "pruner": settings.pruner,
        "cap": cap,
    }
    studies = []
    for base in bases:
        owned = {k: v for k, v in space.items() if k.startswith("finetune.") or k.startswith(f"{base.method}.")}
        name = "study-" + content_hash(
            {"cell": base.cell_id, **search, "space": {k: search["space"][k] for k in owned}}
        )
        studies.append(Study(name, base, owned, cap))
    return studies


def suggest(trial: optuna.Trial, space: dict[str, ParamRange]) -> dict[str, Any]:
    """Draw the trial's point from the space (define-by-run, so any sampler applies)."""
    point = {}
    for key, bounds in space.items():
        if bounds.choices is not None:
            point[key] = trial.suggest_categorical(key, list(bounds.choices))
        elif bounds.is_int:
            point[key] = trial.suggest_int(
                key, int(bounds.low), int(bounds.high), step=int(bounds.step or 1), log=bounds.log
            )
        else:
            point[key] = trial.suggest_float(
                key, float(bounds.low), float(bounds.high), step=bounds.step, log=bounds.log
            )
    return point


def trial_cell(study: Study, point: dict[str, Any]) -> CellSpec:
    """The cell one trial runs: the base cell with the point's recipe fields and method parameters.

    Fine-tuning never exceeds the budget's epoch cap. Raises ValueError for a point the recipe or
    the method refuses (a failed trial).
    """
    base = study.base
    recipe, methods = split_point(point)
    finetune = {**base.finetune.model_dump(), "epochs": min(base.finetune.epochs, study.cap), **recipe}
    try:
        params = METHODS.get(base.method).Params.model_validate({**base.method_params, **methods.get(base.method, {})})
        return base.model_copy(  # a trial's masks are not kept: only its validation score is
            update={
                "finetune": Recipe(**finetune),
                "method_params": params.model_dump(exclude_defaults=True),
                "record_masks": False,
            }
        )
    except pydantic.ValidationError as exc:
        raise ValueError(f"the point {point} is not a valid recipe or parameter set: {exc}") from None


def _sampler(settings: Settings, study_name: str, trials: int) -> optuna.samplers.BaseSampler:
    seed = int(content_hash(study_name)[:8], 16)
    if settings.sampler == "qmc":
        with warnings.catch_warnings():  # "experimental since 3.0": nothing a benchmark user can act on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(
                qmc_type="sobol", scramble=True, seed=seed, warn_asynchronous_seeding=False
            )
    startup = min(10, max(2, trials // 2))  # TPE's default 10 random trials would leave no room in a small budget
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=startup)


def _pruner(settings: Settings, trials: int) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, trials // 2)))
    if settings.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_storage(settings: Settings, results: Path | str, benchmark: str) -> tuple[optuna.storages.BaseStorage, str]:
    """The user's RDB URL, else a journal file under ``results/tuning/`` (written only by this driver).

    The journal needs a local folder: Optuna appends each event to the one file under a file lock,
    and an object store has neither (an object is written whole, by one PUT, and nothing locks it).
    """
    if settings.storage:
        try:
            return optuna.storages.RDBStorage(settings.storage), settings.storage
        except Exception as exc:  # SQLAlchemy's errors for a bad URL, a missing driver, a refused connection
            raise StorageError(
                f"--storage {settings.storage}: cannot open it as an Optuna RDB storage: {exc}"
            ) from None
    if is_remote(results):
        raise StorageError(
            f"--results {shown_uri(str(results))}: the Optuna journal cannot live on an object store (it appends "
            "to one file under a file lock; an object is written whole and has no lock); pass --storage with an "
            "RDB URL: sqlite:///tuning.db (a file on this machine) or a database server, e.g. postgresql://HOST/DB"
        )
    path = Path(results) / "tuning" / f"{benchmark}.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend), str(path)


def _recover(study: Study) -> None:
    """Trials a previous driver left running were cut off: fail them uncounted and try their points again."""
    for trial in study.handle.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        _abandon(study, trial._trial_id, trial.number, trial.params)


def _abandon(study: Study, trial_id: int, number: int, params: dict[str, Any]) -> None:
    study.handle._storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
    study.handle.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    if params:
        study.handle.enqueue_trial(params)


def tune(
    spec: BenchmarkSpec,
    spec_text: str,
    spec_path: Path,
    results: Path | str,
    settings: Settings,
    on_trial: Callable[[TrialOutcome], None] = lambda outcome: None,
) -> TuneResult:
    """Run every study to ``settings.trials`` counted trials, then write the tuned spec.

    ``results`` is a local folder or an object-store URI (trials, checkpoints, logs, importances and a
    copy of the tuned spec go there; the Optuna storage must then be an RDB URL).
    """
    studies = plan_studies(spec, settings)
    if settings.protocol == "defaults":
        _make_folder(results)
        return TuneResult(studies, write_tuned_spec(spec, spec_text, spec_path, results, studies, settings, None))
    storage, where = open_storage(settings, results, spec.name)
    _make_folder(results)
    for study in studies:
        study.handle = optuna.create_study(
            study_name=study.name,
            storage=storage,
            sampler=_sampler(settings, study.name, settings.trials),
            pruner=_pruner(settings, settings.trials),
            direction="maximize",
            load_if_exists=True,
        )
        _recover(study)
        study.used = len(study.counted())
    uri = resolve_tracking_uri(spec.tracking_uri, results)
    matrix = MatrixRun.start(uri, spec.name, results, {"tune": json.dumps(_provenance(settings, where, spec))})
    tracking = TrackingWriter(matrix)
    driver = _Driver(spec, studies, results, settings, tracking, on_trial)
    interrupted = False
    try:
        with ray_session(settings.address) as local:
            driver.run(local)
    except BaseException:
        interrupted = True
        raise
    finally:
        tracking.submit("finish", {"trials": driver.ran}, interrupted)
        tracking.close()
    write_importances(results, spec.name, studies)
    tuned = write_tuned_spec(spec, spec_text, spec_path, results, studies, settings, where)
    return TuneResult(studies, tuned, driver.ran, driver.outcomes)


def importances_path(root: Path | PurePosixPath, benchmark: str) -> Path | PurePosixPath:
    """Where a benchmark's importances lie under a results root's folder or prefix (``ResultsStore.root``)."""
    return root / "tuning" / f"{benchmark}.importances.json"


def _make_folder(results: Path | str) -> None:
    """A local results folder is made here (MLflow's SQLite file goes in it); an object store needs none."""
    if not is_remote(results):
        Path(results).mkdir(parents=True, exist_ok=True)


def write_importances(results: Path | str, benchmark: str, studies: list[Study]) -> None:
    """Each study's parameter importances (Optuna's fANOVA, seeded) for the report, which reads no storage.

    A study needs two complete trials whose points differ; one searched parameter is trivially 1.
    """
    out = {}
    for study in studies:
        complete = [t for t in study.counted() if t.state is TrialState.COMPLETE]
        if len(complete) < 2 or len({json.dumps(t.params, sort_keys=True) for t in complete}) < 2:
            continue
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        try:
            out[study.name] = optuna.importance.get_param_importances(study.handle, evaluator=evaluator)
        except (RuntimeError, ValueError):  # e.g. every point differs only in a parameter that stayed constant
            continue
    store = ResultsStore(results)
    store.files.write_bytes(importances_path(store.root, benchmark), json.dumps(out, indent=1, sort_keys=True).encode())


class _Driver:
    """Ask, submit, wait, tell; keeps the cluster full while any study has budget left."""

    def __init__(
        self,
        spec: BenchmarkSpec,
        studies: list[Study],
        results: Path | str,
        settings: Settings,
        tracking: TrackingWriter,
        on_trial: Callable[[TrialOutcome], None],
    ) -> None:
        self.spec = spec
        self.studies = studies
        self.store = ResultsStore(results)
        self.checkpoints = ResultsStore(child(results, "tuning"))  # validation-only dense models, trials' logs
        self.settings = settings
        self.tracking = tracking
        self.on_trial = on_trial
        self.in_flight: dict[ray.ObjectRef, tuple[Study, optuna.Trial, CellSpec, dict, float]] = {}
        self.dense: dict[str, ray.ObjectRef] = {}
        self.unsaved: dict[ray.ObjectRef, str] = {}  # pretrainings whose checkpoint is not saved yet
        self.ran = 0
        self.outcomes: list[TrialOutcome] = []

    def run(self, local: bool) -> None:
        self.backend = RayBackend(local, self.settings.max_retries)
        cluster = self.backend.cluster
        resources = self.backend.shape(self.spec.resources)  # as harness run: no GPU here runs GPU specs on CPU
        fits = capacity(resources, cluster)
        if fits == 0 and local:  # nothing will ever join a local instance
            raise SchedulingError(
                f"trials ask for {resources.model_dump(exclude_defaults=True)} but this machine's Ray has "
                f"{ {k: v for k, v in cluster.items() if not k.startswith('node:')} }; lower the spec's resources"
            )
        slots = self.settings.max_parallel or max(fits, 1)
        self._open_study_runs()
        for study in self.studies:
            self._write_trials(study)
        try:
            while True:
                while len(self.in_flight) < slots and (study := self._next_study()):
                    self._ask(study)
                if not self.in_flight and not self.unsaved:
                    break
                refs = [*self.in_flight, *self.unsaved]
                done, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                interrupt.check()  # a Ctrl-C whose KeyboardInterrupt was dropped (harness.interrupt)
                if done:
                    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in done:
                    if ref in self.unsaved:
                        self._save_dense(ref)
                    else:
                        self._tell(ref, *self.in_flight.pop(ref))
        except BaseException:
            cancel_running(self.in_flight)
            for study, trial, *_ in self.in_flight.values():
                _abandon(study, trial._trial_id, trial.number, trial.params)
                self._write_trials(study)
            raise

    def _next_study(self) -> Study | None:
        """The study with the most budget left (spreads parallel trials across studies)."""
        left = [(self.settings.trials - s.used - s.in_flight, s) for s in self.studies]
        left = [(n, s) for n, s in left if n > 0]
        return max(left, key=lambda item: item[0])[1] if left else None

    def _ask(self, study: Study) -> None:
        trial = study.handle.ask()
        point = suggest(trial, study.space)
        try:
            cell = trial_cell(study, point)
        except ValueError as exc:
            self._record(study, trial, study.base, point, None, str(exc), 0.0)
            return
        ref = self.backend.remote_cell(cell, self._dense(cell), validation_only, f"trial {study.name}/{trial.number}")
        study.in_flight += 1
        self.in_flight[ref] = (study, trial, cell, point, time.monotonic())

    def _dense(self, cell: CellSpec) -> ray.ObjectRef:
        """The dense model a trial starts from: saved by an earlier tune, else trained once (on the same view)."""
        key = cell.pretrain_key
        if key not in self.dense:
            data = self.checkpoints.load_checkpoint(key)
            if data is not None:
                self.dense[key] = ray.put(data)
            else:
                self.dense[key] = self.backend.remote_pretrain(cell, validation_only)
                self.unsaved[self.dense[key]] = key
        return self.dense[key]

    def _save_dense(self, ref: ray.ObjectRef) -> None:
        key = self.unsaved.pop(ref)
        with contextlib.suppress(ray.exceptions.RayError):  # its trials fail with the pretraining's error
            self.checkpoints.save_checkpoint(key, ray.get(ref))

    def _tell(self, ref: ray.ObjectRef, study: Study, trial: optuna.Trial, cell: CellSpec, point: dict, t0: float):
        study.in_flight -= 1
        try:
            result: CellResult | None = ray.get(ref)
            error = None if result.ok else result.rows[-1].get("error") or "failed"  # a failed level is the last row
        except ray.exceptions.RayError as exc:
            result, error = None, error_text(exc)
        seconds = time.monotonic() - t0  # a task that never ran: from submission to its error
        if result is not None and result.rows[0].get("started_at") and result.rows[0].get("finished_at"):
            seconds = (result.rows[0]["finished_at"] - result.rows[0]["started_at"]).total_seconds()
        if result is not None:  # what the trial printed, as a benchmark cell's: tuning/logs/<study>-<trial>.log
            self.checkpoints.save_log(f"{study.name}-{trial.number}", result.log)
        self._record(study, trial, cell, point, result, error, seconds)

    def _record(
        self,
        study: Study,
        trial: optuna.Trial,
        cell: CellSpec,
        point: dict,
        result: CellResult | None,
        error: str | None,
        seconds: float,
    ) -> None:
        self.ran += 1
        study.used += 1
        epochs = list(result.epochs) if result else []
        trial.set_user_attr("epochs", len(epochs))
        trial.set_user_attr("seconds", seconds)
        trial.set_user_attr("cell_id", cell.cell_id)
        value = None
        if error is not None or result is None:
            trial.set_user_attr("error", (error or "")[-2000:])
            state = TrialState.FAIL
        else:
            value = float(result.rows[-1]["top1"])  # validation top-1: the trial's data view has no test split
            state = _replay(trial, [row.get("val_top1") for row in epochs])
        if state is TrialState.COMPLETE and math.isfinite(value):
            study.handle.tell(trial, value)
        elif state is TrialState.PRUNED:
            value = study.handle.tell(trial, state=TrialState.PRUNED).value  # the curve at the pruning step
        else:
            study.handle.tell(trial, state=TrialState.FAIL)
            state = TrialState.FAIL
        self._write_trials(study)
        self._log_trial(study, trial.number, cell, point, (state.name, value, error), epochs)
        outcome = TrialOutcome(study, trial.number, state.name, value, error)
        self.outcomes.append(outcome)
        self.on_trial(outcome)

    def _log_trial(self, study: Study, number: int, cell: CellSpec, point: dict, outcome: tuple, epochs: list) -> None:
        child = ChildRun.of_trial(study.name, study.mlflow_run, number, cell, point, outcome, epochs)
        self.tracking.submit("log_child", child)

    def _open_study_runs(self) -> None:
        """Each study's MLflow run, the parent of its trials' runs: made once, its id kept in the study."""
        made = {}
        for study in self.studies:
            study.mlflow_run = study.handle.user_attrs.get("mlflow_run_id")
            if study.mlflow_run is None and study.used < self.settings.trials:
                tags = {"harness.role": "study", "study": study.name}
                made[study.name] = self.tracking.submit(
                    "log_child", ChildRun(study.name, tags, _study_params(study), [], False)
                )
        for study in self.studies:
            if study.name in made and (run_id := made[study.name].result()):
                study.mlflow_run = run_id
                study.handle.set_user_attr("mlflow_run_id", run_id)

    def _write_trials(self, study: Study) -> None:
        rows = [_trial_row(self.spec.name, self.settings, study, t) for t in study.handle.get_trials(deepcopy=False)]
        if rows:
            self.store.write_trials(self.spec.name, study.name, rows)


def _replay(trial: optuna.Trial, curve: list[float | None]) -> TrialState:
    """Report the per-epoch validation curve; PRUNED at the first epoch the pruner stops it, else COMPLETE."""
    for step, value in enumerate(curve):
        if value is None or not math.isfinite(value):
            continue
        trial.report(float(value), step)
        if trial.should_prune():
            return TrialState.PRUNED
    return TrialState.COMPLETE


def _study_params(study: Study) -> dict[str, Any]:
    b = study.base
    return {
        "model": b.model,
        "dataset": b.dataset,
        "method": b.method,
        "sparsity": b.sparsity,
        "seed": b.seed,
        "space": json.dumps({k: v.model_dump(exclude_defaults=True) for k, v in study.space.items()}),
        "max_epochs": study.cap,
    }


def _trial_row(benchmark: str, settings: Settings, study: Study, t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    b = study.base
    return {
        "benchmark": benchmark,
        "study": study.name,
        "method": b.method,
        "model": b.model,
        "dataset": b.dataset,
        "method_params": json.dumps(b.method_params, sort_keys=True),
        "sparsity": b.sparsity,
        "search_seed": b.seed,
        "protocol": settings.protocol,
        "sampler": settings.sampler,
        "trial": t.number,
        "state": t.state.name,
        "counted": t.state.is_finished() and not t.user_attrs.get(INTERRUPTED),
        "value": t.value,
        "params": json.dumps(t.params, sort_keys=True),
        "epochs": t.user_attrs.get("epochs"),
        "seconds": t.user_attrs.get("seconds"),
        "cell_id": t.user_attrs.get("cell_id"),
        "error": INTERRUPTED if t.user_attrs.get(INTERRUPTED) else t.user_attrs.get("error"),
    }


def _provenance(settings: Settings, storage: str | None, spec: BenchmarkSpec) -> dict[str, Any]:
    return {
        "protocol": settings.protocol,
        "sampler": None if settings.protocol == "defaults" else settings.sampler,
        "pruner": None if settings.protocol == "defaults" else settings.pruner,
        "trials": 0 if settings.protocol == "defaults" else settings.trials,
        "max_epochs": epoch_cap(spec),
        "storage": storage,
    }


def best_point(study: Study, trials: int) -> tuple[optuna.trial.FrozenTrial | None, int]:
    """The best complete trial among the study's first ``trials`` counted ones (None if none completed),
    and how many counted: a study that ran more under an earlier, larger --trials is judged on the same
    budget as the others."""
    counted = sorted(study.counted(), key=lambda t: t.number)[:trials]
    complete = [t for t in counted if t.state is TrialState.COMPLETE]
    return (max(complete, key=lambda t: t.value) if complete else None), len(counted)


def write_tuned_spec(
    spec: BenchmarkSpec,
    spec_text: str,
    spec_path: Path,
    results: Path | str,
    studies: list[Study],
    settings: Settings,
    storage: str | None,
) -> Path:
    """``results/tuned/<name>.yaml``: the spec with each study's best point and the search's provenance.

    ``harness run`` reads a local file: with results on an object store the spec is written to
    ``tuned/<name>.yaml`` in the working folder, and a copy beside the results for the record.

    Its benchmark name is ``<name>-tuned``, so its results never mix with the untuned ones; the
    ``tune:`` section is dropped (the spec is a result, not a search to run again).
    """
    raw = yaml.safe_load(spec_text)
    raw.pop("tune", None)
    raw["name"] = f"{spec.name}-tuned"
    cells = []
    for study in studies if settings.protocol != "defaults" else []:
        best, counted = best_point(study, settings.trials)
        finetune, params = {}, {}
        if best is not None:
            chosen = trial_cell(study, best.params)
            base = study.base.finetune.model_dump()
            finetune = {k: v for k, v in chosen.finetune.model_dump().items() if v != base[k]}
            params = {k: v for k, v in chosen.method_params.items() if study.base.method_params.get(k) != v}
        cells.append(
            TunedCell(
                model=study.base.model,
                dataset=study.base.dataset,
                method=study.base.method,
                method_params=study.base.method_params,
                sparsity=study.base.sparsity,
                finetune=finetune,
                params=params,
                study=study.name,
                trials=counted,
                best_val_top1=best.value if best else None,
            )
        )
    provenance = _provenance(settings, storage, spec)
    seed = studies[0].base.seed if studies else None
    tuned = Tuned(source=str(spec_path), search_seed=seed, cells=tuple(cells), **provenance)
    raw["tuned"] = tuned.model_dump(mode="json")
    path = (Path("tuned") if is_remote(results) else Path(results) / "tuned") / f"{spec.name}.yaml"
    header = f"# Written by `harness tune {spec_path}`: run it with `harness run {path}`.\n"
    text = (header + yaml.safe_dump(raw, sort_keys=False)).encode()
    atomic_write_bytes(path, text)
    if is_remote(results):
        store = ResultsStore(results)
        store.files.write_bytes(store.root / "tuned" / f"{spec.name}.yaml", text)
    return path


def summary(studies: list[Study], trials: int) -> list[dict[str, Any]]:
    """Per method: studies, its studies' budgets by state, epochs spent, and the mean of their best scores."""
    per: dict[str, dict[str, Any]] = {}
    states = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
    for study in studies:
        if study.handle is None:
            continue
        empty = {"method": study.base.method, "studies": 0, "trials": 0, "epochs": 0, "best": []}
        row = per.setdefault(study.base.method, empty | dict.fromkeys(states.values(), 0))
        budget = sorted(study.counted(), key=lambda t: t.number)[:trials]
        row["studies"] += 1
        row["trials"] += len(budget)
        for t in budget:
            row[states[t.state.name]] += 1
            row["epochs"] += int(t.user_attrs.get("epochs") or 0)
        best, _ = best_point(study, trials)
        if best is not None:
            row["best"].append(best.value)
    for row in per.values():
        best = row.pop("best")
        row["best_val_top1"] = sum(best) / len(best) if best else None
    return list(per.values())
