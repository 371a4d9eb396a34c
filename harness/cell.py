"""The unit of work. ``pretrain`` makes the shared dense model; ``run_cell`` does one cell.

Both are pure functions of their inputs: they return data (checkpoint bytes, result rows) and
write nothing to the results folder, so a scheduler can run them anywhere. ``run_cell`` is the one
place that orders pretrained → prune → fine-tune → evaluate; the method decides how many
prune / fine-tune levels it passes through, and every level becomes a row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import subprocess
import traceback
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

import harness
from harness import maskfile
from harness.config import CellSpec, Recipe
from harness.data import DataSplits, load_splits
from harness.encoding import Storage, size_columns
from harness.latency import LatencyMeter, latency_batch
from harness.masks import Masks, apply_masks, prunable_weights
from harness.methods import create_method, load_plugins, method_provenance
from harness.methods.base import PluginError, PruningContext, WeightsAt, check_tensors, excluded
from harness.metrics import Architecture, architecture, model_metrics
from harness.models import create_model, from_torchvision
from harness.removal import History, remove_pruned_channels
from harness.schema import CellResult
from harness.training import MaskingCallback, Stopwatch, device_for_cell, evaluate, train

if TYPE_CHECKING:
    from harness.encoding import Encoded, QuantizedWeight


@dataclass
class DenseCheckpoint:
    """The shared dense model of one (model, dataset, seed, pretrain recipe): θ0, θ_trained, accuracy."""

    pretrain_key: str
    init_state: dict[str, torch.Tensor]
    trained_state: dict[str, torch.Tensor]
    metrics: dict[str, float]  # dense_top1, dense_top5, dense_loss, pretrain_seconds
    epochs: list[dict[str, Any]] = field(default_factory=list)
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # pretrain recipe's save_epochs
    iteration_snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # its save_iterations
    identity: str = ""  # which checkpoint of its key this is, for a worker's caches (not saved)

    def weights_at(self, epoch: int) -> dict[str, torch.Tensor]:
        """The dense model's state after ``epoch`` epochs of pretraining (0: θ0), for weight rewinding."""
        if epoch == 0:
            return self.init_state
        if epoch not in self.snapshots:
            raise KeyError(
                f"the dense checkpoint {self.pretrain_key} kept no weights at epoch {epoch} (kept: "
                f"{sorted(self.snapshots) or 'none'}); add it to the spec's pretrain recipe: save_epochs: [{epoch}]"
            )
        return self.snapshots[epoch]

    def weights_at_iteration(self, iteration: int) -> dict[str, torch.Tensor]:
        """The dense model's state after ``iteration`` optimiser steps of pretraining (Frankle et al.'s rewinding)."""
        if iteration not in self.iteration_snapshots:
            raise KeyError(
                f"the dense checkpoint {self.pretrain_key} kept no weights at iteration {iteration} (kept: "
                f"{sorted(self.iteration_snapshots) or 'none'}); add it to the spec's pretrain recipe: "
                f"save_iterations: [{iteration}]"
            )
        return self.iteration_snapshots[iteration]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({k: v for k, v in self.__dict__.items() if k != "identity"}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> DenseCheckpoint:
        return cls(**torch.load(io.BytesIO(data), weights_only=True, map_location="cpu"))


@dataclass
class LevelCheckpoint:
    """A cell's state at the end of its last finished level, so a rerun continues after it.

    ``state`` is what the method remembered (``job.remember``); ``rows`` / ``epochs`` / ``layers`` are the
    levels recorded so far, so a resumed cell still returns its whole curve. Codes a quantiser set are
    not kept: a checkpoint taken with stored codes (``storage_set``) is not resumed from.
    """

    level: int
    masks: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    rows: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    storage_set: bool = False
    stages_entered: int = 0  # job.stage() calls before the level ended: whose state ``state`` is
    recorded_masks: bytes | None = None  # every finished level's masks (harness.maskfile), if recorded

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.__dict__, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LevelCheckpoint:
        return cls(**torch.load(io.BytesIO(data), weights_only=True, map_location="cpu"))


OnLevel = Callable[[CellResult, bytes], None]  # a finished level: the cell's rows so far and its checkpoint


def stream_seed(stream: str, seed: int, draw: int) -> int:
    """A seed for the ``draw``-th use of random stream ``stream`` in the cell of ``seed``, at or above 2**63.

    Cells' seeds (θ0, data splits) are below 2**32 and a level's training seed is seed + 1000 · level, so a
    hash of (stream, seed, draw) with the top bit set is a stream none of them uses (re-init draws, the data
    order of a level's LMC copy), and two streams differ by name.
    """
    digest = hashlib.sha256(f"{stream}/{seed}/{draw}".encode()).digest()
    return (1 << 63) | int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    L.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class WeightSnapshots(Callback):
    """Keeps the model's state after each of the given epochs (``states``, epochs from 1) and after each of
    the given optimiser steps (``iteration_states``, steps from 1)."""

    def __init__(self, epochs: tuple[int, ...], iterations: tuple[int, ...] = ()) -> None:
        self.epochs = set(epochs)
        self.iterations = set(iterations)
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.iteration_states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 in self.epochs:
            self.states[trainer.current_epoch + 1] = _state(module.model)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step in self.iterations:  # global_step counts the steps taken, this one included
            self.iteration_states[trainer.global_step] = _state(module.model)


SplitView = Callable[[DataSplits], DataSplits]  # what a cell may see of its data set's splits


def all_splits(data: DataSplits) -> DataSplits:
    """A benchmark cell sees every split: it trains, validates and reports test accuracy."""
    return data


def pretrain(cell: CellSpec, view: SplitView = all_splits) -> DenseCheckpoint:
    """Train the dense model once (or load the spec's ``pretrained`` weights); every cell with the same
    ``pretrain_key`` reuses it. θ0 is the seed's initialisation either way."""
    load_plugins(cell.plugins)  # a plugin may register the model or data set
    seed_everything(cell.seed)
    data = view(load_splits(cell.dataset, cell.data_root, cell.seed))
    model = create_model(cell.model, data.input_shape, data.num_classes).to(device_for_cell())
    init_state = _state(model)
    snapshots = WeightSnapshots(cell.pretrain.save_epochs, cell.pretrain.save_iterations)
    with Stopwatch() as clock:
        if cell.pretrained:  # the spec's weights instead of training; checked against the model at spec load
            state = torch.load(cell.pretrained, map_location="cpu", weights_only=True)
            model.load_state_dict(from_torchvision(cell.model, state))
            epochs = []
        else:
            epochs = train(
                model, data.train, data.val, cell.pretrain, seed=cell.seed, phase="pretrain", callbacks=[snapshots]
            )
    dense = evaluate(model, data.test)
    metrics = {f"dense_{k}": v for k, v in dense.items()} | {"pretrain_seconds": clock.seconds}
    return DenseCheckpoint(
        cell.pretrain_key, init_state, _state(model), metrics, epochs, snapshots.states, snapshots.iteration_states
    )


class CellJob:
    """The harness's side of :class:`~harness.methods.base.Job`: one cell's model, masks, levels and rows.

    A method sees only the protocol's members; ``cell``, ``data``, ``dense``, ``storage`` and the
    recorded ``rows`` / ``epochs`` / ``layers`` are the harness's (and tests') view of the same job.
    """

    def __init__(
        self,
        cell: CellSpec,
        data: DataSplits,
        dense: DenseCheckpoint,
        resume: LevelCheckpoint | None = None,
        on_level: Callable[[LevelCheckpoint], None] | None = None,
    ) -> None:
        self.cell = cell
        self.data = data
        self.dense = dense
        self._model = create_model(cell.model, data.input_shape, data.num_classes)
        self._model.load_state_dict(dense.trained_state if resume is None else resume.weights)
        self._model.to(device_for_cell())
        self._masks: Masks = {}
        self.rows: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self.layers: list[dict[str, Any]] = []
        self._remembered: dict[str, Any] = {}  # what the method keeps for a resumed run (job.remember)
        self._resumed: dict[str, Any] | None = None
        self._resumed_stage = 0
        self._stages_entered = 0
        self._on_level = on_level
        self._arm: str | None = None  # the control arm being trained (job.arm), None on the main line
        self._arm_start = 0  # len(epochs) when the arm began
        self._main_epochs = 0  # epochs the main line trained (arms' epochs not counted)
        self._recorded_masks: dict[int, maskfile.LevelMasks] = {}  # packed at each level's end (record_masks)
        if resume is not None:
            self._masks = {name: mask.bool() for name, mask in resume.masks.items()}
            apply_masks(self._model, self._masks)
            self.rows, self.epochs, self.layers = list(resume.rows), list(resume.epochs), list(resume.layers)
            self._remembered = dict(resume.state)
            self._resumed = dict(resume.state)
            self._resumed_stage = resume.stages_entered
            main = [row for row in self.rows if row.get("control", "none") == "none"]
            self._main_epochs = int(main[-1].get("train_epochs") or 0) if main else 0
            self._recorded_masks = maskfile.decode(resume.recorded_masks) if resume.recorded_masks else {}
        self._level: dict[str, Any] = {}
        self._example = data.test[0][0].unsqueeze(0)
        self.storage = Storage()  # how the model is stored (quantised codes, encoding): sets size_bytes
        self._stage = cell.method  # a pipeline names the stage that records each level
        self._layer_options: dict[str, Any] = {}  # what the last pruning context allowed: the layers table's columns
        batch = latency_batch(data.test, device_for_cell())
        self._latency = LatencyMeter(self._dense_model, batch, _DENSE_LATENCY.get(self._latency_key()))
        self._architecture: Architecture | None = None  # the shapes before remove_channels(): what counts are of
        self.removed_history: History = []  # Torch-Pruning's record of the channels removed (harness.export)

    def _latency_key(self) -> tuple[str, str, int]:
        return self.dense.identity or self.cell.pretrain_key, str(device_for_cell()), torch.get_num_threads()

    def _dense_model(self) -> nn.Module:
        model = create_model(self.cell.model, self.data.input_shape, self.data.num_classes)
        model.load_state_dict(self.dense.trained_state)
        return model.to(device_for_cell())

    def dense_latency_ms(self) -> tuple[float, float] | None:
        """The dense model's latency (batch, one example) once measured, for the worker's cache (one measurement
        per dense model)."""
        return self._latency.dense_ms

    # -- read-only context -----------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def masks(self) -> Masks:
        return self._masks

    @property
    def sparsity(self) -> float:
        return self.cell.sparsity

    @property
    def seed(self) -> int:
        return self.cell.seed

    @property
    def pretrain_recipe(self) -> Recipe:
        return self.cell.pretrain

    @property
    def finetune_recipe(self) -> Recipe:
        return self.cell.finetune

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data.input_shape)

    @property
    def quantized(self) -> dict[str, QuantizedWeight]:
        return self.storage.quantized

    def weights(self, at: WeightsAt) -> dict[str, torch.Tensor]:
        if at == "init":
            return self.dense.init_state
        if at == "trained":
            return self.dense.trained_state
        if isinstance(at, str) and at.startswith("iter:"):
            return self.dense.weights_at_iteration(int(at.removeprefix("iter:")))
        return self.dense.weights_at(at)

    def fresh_init(self, draw: int = 0) -> dict[str, torch.Tensor]:
        """The model's state drawn again from its initialiser (re-init controls), the ``draw``-th time.

        Seeded by :func:`stream_seed`: never the seed of any cell's θ0 (seed+1 would be the next seed's
        θ0), and a new draw for each level that asks for one.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed("fresh-init", self.cell.seed, draw))
            model = create_model(self.cell.model, self.data.input_shape, self.data.num_classes)
        return model.state_dict()

    def train_batches(self, count: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.cell.seed)
        order = torch.randperm(len(self.data.train), generator=generator)
        size = self.cell.finetune.batch_size
        device = device_for_cell()
        batches = []
        for start in range(0, min(count * size, len(order)), size):
            x, y = zip(*(self.data.train[int(i)] for i in order[start : start + size]), strict=True)
            batches.append((torch.stack(x).to(device), torch.stack(y).to(device)))
        return batches

    def val_batch(self, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = zip(*(self.data.val[i] for i in range(min(size, len(self.data.val)))), strict=True)
        return torch.stack(x), torch.stack(y)

    def evaluate(self, split: Literal["val", "test"] = "test") -> dict[str, float]:
        return evaluate(self._model, self.data.val if split == "val" else self.data.test)

    def split_size(self, split: Literal["train", "val", "test"]) -> int:
        return len(getattr(self.data, split))

    def context(
        self, include_classifier: bool = False, exclude: Sequence[str] = (), max_layer_sparsity: float | None = None
    ) -> PruningContext:
        weights = {
            name: w
            for name, w in prunable_weights(self._model, include_classifier).items()
            if not excluded(name, exclude)
        }
        self._layer_options = {"prunable": set(weights), "max_layer_sparsity": max_layer_sparsity}
        return PruningContext(
            model=self._model,
            weights=weights,
            masks=self._masks,
            calibration_batch=lambda: self.train_batches(1)[0],
            initial_state=lambda: self.dense.init_state,
            seed=self.cell.seed,
            input_shape=self.data.input_shape,
            max_layer_sparsity=max_layer_sparsity,
        )

    # -- verbs -----------------------------------------------------------------------------------
    def prune(self, masks: Masks) -> None:
        shapes = {name: p.shape for name, p in self._model.named_parameters()}
        check_tensors(f"method {self._stage!r}: job.prune()", "mask", masks, shapes, complete=False)
        with Stopwatch() as clock:
            self._masks = {name: mask.detach().bool() for name, mask in masks.items()}
            apply_masks(self._model, self._masks)
            self.storage = Storage()  # the weights changed: earlier codes and encodings no longer hold
        pruned = evaluate(self._model, self.data.test)
        self._level["prune_seconds"] = self._level.get("prune_seconds", 0.0) + clock.seconds
        self._level.update(top1_pruned=pruned["top1"], top5_pruned=pruned["top5"])

    def remove_channels(self) -> int:
        if self._arm is not None:  # the arm's end restores the main line's weights, which need its shapes
            raise PluginError(f"method {self._stage!r}: job.remove_channels() inside job.arm({self._arm!r})")
        example = self.train_batches(1)[0][0][:16]
        if self._architecture is None:
            self._architecture = architecture(self._model, self._example.to(device_for_cell()))
        with Stopwatch() as clock:
            removal = remove_pruned_channels(self._model, self._masks, example)
            self._masks = removal.masks
            self.storage = Storage()
        self.removed_history += removal.history
        gone = {name: self._architecture.kept_removed.get(name, 0) + n for name, n in removal.kept_removed.items()}
        self._architecture = dataclasses.replace(self._architecture, kept_removed=gone)
        self._level["prune_seconds"] = self._level.get("prune_seconds", 0.0) + clock.seconds
        return removal.channels

    def finetune(self, recipe: Recipe | None = None, callbacks: Sequence[Any] = (), finish: bool = True) -> None:
        self.storage = Storage()  # training changes the weights; a quantiser that trains sets its codes again
        with Stopwatch() as clock:
            self._train(recipe or self.cell.finetune, self._masks, callbacks, "finetune")
        for callback in callbacks:  # a callback that changed the masks while training hands them back
            if isinstance(callback, MaskingCallback):
                self._masks = callback.masks
        self._level["finetune_seconds"] = self._level.get("finetune_seconds", 0.0) + clock.seconds
        if finish:
            self.finish_level()

    def train(
        self,
        recipe: Recipe,
        masks: Masks,
        callbacks: Sequence[Any] = (),
        phase: str = "aside",
        new_data_order: bool = False,
    ) -> None:
        self.storage = Storage()
        self._train(recipe, masks, callbacks, phase, new_data_order)

    def _train(
        self, recipe: Recipe, masks: Masks, callbacks: Sequence[Any], phase: str, new_data_order: bool = False
    ) -> None:
        level = self.level_index()
        # an arm sees the data in its level's order, as the ticket does; an LMC copy a stream of its own
        seed = stream_seed(phase, self.cell.seed, level) if new_data_order else self.cell.seed + 1000 * level
        epochs = train(
            self._model,
            self.data.train,
            self.data.val,
            recipe,
            seed=seed,
            phase=f"{self._arm or phase}-{level}",
            masks=masks,
            callbacks=list(callbacks),
        )
        self.epochs += epochs
        if self._arm is None:
            self._main_epochs += len(epochs)

    def level_index(self) -> int:
        """The level in progress: the main line's rows so far (an arm's rows share its level)."""
        return sum(1 for row in self.rows if row.get("control", "none") == "none")

    def load_weights(self, state: dict[str, torch.Tensor], partial: bool = False) -> None:
        known = self._model.state_dict()
        unknown = [name for name in state if name not in known]
        if unknown:
            raise PluginError(f"method {self._stage!r}: job.load_weights() got {unknown[0]!r}, not in the model")
        if partial:
            with torch.no_grad():
                for name, value in state.items():
                    known[name].copy_(value)
        else:
            self._model.load_state_dict(state)
        self.storage = Storage()

    def set_storage(self, quantized: dict[str, QuantizedWeight] | None = None, encoded: Encoded | None = None) -> None:
        if quantized is not None:
            self.storage.quantized = quantized
        if encoded is not None:
            self.storage.encoded = encoded

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        previous, self._stage = self._stage, name
        self._stages_entered += 1
        try:
            yield
        finally:
            self._stage = previous

    @contextlib.contextmanager
    def arm(self, name: str) -> Iterator[None]:
        if self._arm is not None or name in ("", "none"):
            raise PluginError(f"method {self._stage!r}: job.arm({name!r}) inside job.arm({self._arm!r}) or unnamed")
        saved = (_state(self._model), self._masks, self.storage, self._level, self._layer_options)
        self._arm, self._arm_start, self._level = name, len(self.epochs), {}
        try:
            yield
        finally:
            self._arm = None
            state, self._masks, self.storage, self._level, self._layer_options = saved
            self._model.load_state_dict(state)

    def resumed(self) -> dict[str, Any] | None:
        # the method that owns the cell, or the stage the checkpoint was taken in; later stages start afresh
        if self._stages_entered in (0, self._resumed_stage):
            return self._resumed
        return None

    def remember(self, key: str, value: Any) -> None:
        self._remembered[key] = value

    def finish_level(self, sparsity: float | None = None, **extra: Any) -> None:
        level = self.level_index()
        control = self._arm or "none"
        # the epochs of this row's line: the main line's; an arm adds its own to the main line's levels before
        main_rows = [r for r in self.rows if r.get("control", "none") == "none"]
        main_before = int(main_rows[-1].get("train_epochs") or 0) if main_rows else 0
        trained = self._main_epochs if self._arm is None else main_before + len(self.epochs) - self._arm_start
        with Stopwatch() as clock:
            final = evaluate(self._model, self.data.test)
            # the classifier counts toward sparsity_achieved when the method may prune it, as in the spec's targets
            prunable = prunable_weights(self._model, bool(self.cell.method_params.get("prune_classifier")))
            # a quantiser's zeros are rounding, not pruning: its weights are kept wherever no mask removed them
            quantized_kept = {
                name: self._masks.get(name, torch.ones(codes.codes.shape, dtype=torch.bool))
                for name, codes in self.storage.quantized.items()
            }
            example = self._example.to(device_for_cell())
            sizes, layers = model_metrics(self._model, prunable, example, quantized_kept, self._architecture)
        encoded = self.storage.encode(self._model)
        self.rows.append(
            {
                "level": level,
                "stage": self._stage,
                "control": control,
                "sparsity": self.cell.sparsity if sparsity is None else sparsity,
                **final,
                **sizes,
                **size_columns(encoded, sizes["params_total"]),
                **self._latency.columns(self._model),
                "channels_removed": sum(len(idxs) for _, _, idxs in self.removed_history),
                "train_epochs": trained,  # equal-budget comparisons
                **self._level,
                "eval_seconds": clock.seconds,
                **extra,
            }
        )
        self.layers += [
            {
                "level": level,
                "control": control,
                **layer.__dict__,
                "size_bytes": encoded.module_bytes(layer.layer),
                **self._options(layer.layer),
            }
            for layer in layers
        ]
        if self.cell.record_masks and self._masks and self._arm is None:  # the ticket's masks, not its controls'
            self._recorded_masks[level] = {
                name: maskfile.PackedMask.of(mask.detach().cpu().numpy()) for name, mask in self._masks.items()
            }
        self._level = {}
        self._resumed = None  # a resumed run has moved on: later stages start afresh
        if self._on_level is not None and self._arm is None:  # an arm's level ends with the main line's
            self._on_level(self.checkpoint())

    def checkpoint(self) -> LevelCheckpoint:
        """The job as it is at the end of its last finished level."""
        return LevelCheckpoint(
            level=self.level_index() - 1,
            masks={name: mask.cpu() for name, mask in self._masks.items()},
            weights=_state(self._model),
            state=dict(self._remembered),
            rows=list(self.rows),
            epochs=list(self.epochs),
            layers=list(self.layers),
            storage_set=bool(self.storage.quantized or self.storage.encoded),
            stages_entered=self._stages_entered,
            recorded_masks=self.masks_file(),
        )

    def masks_file(self) -> bytes | None:
        """The masks of every level finished so far, as the bytes of ``masks/<benchmark>/<cell_id>.npz``."""
        return maskfile.encode(self._recorded_masks) if self._recorded_masks else None

    def _options(self, layer: str) -> dict[str, Any]:
        """The layers-table columns of the common pruning options, once a pruning context set them."""
        if not self._layer_options:
            return {}
        return {
            "prunable": f"{layer}.weight" in self._layer_options["prunable"],
            "max_layer_sparsity": self._layer_options["max_layer_sparsity"],
        }


# What a worker keeps between its cells, per dense model: cells of one pretrain_key tend to follow each
# other (the scheduler releases them together), so one entry each is enough.
_DENSE: dict[str, DenseCheckpoint] = {}
_DATA: dict[tuple[str, str, int], DataSplits] = {}
_DENSE_LATENCY: dict[tuple[str, str, int], tuple[float, float]] = {}  # (batch, one example)


def _cached(cache: dict, key: Any, make: Callable[[], Any]) -> Any:
    if key not in cache:
        cache.clear()
        cache[key] = make()
    return cache[key]


def dense_checkpoint(dense: bytes | DenseCheckpoint, pretrain_key: str) -> DenseCheckpoint:
    """The dense model from its bytes, deserialised once per worker and checkpoint: a worker outlives a
    matrix on a cluster, and another results folder may hold another training of the same key."""
    if isinstance(dense, DenseCheckpoint):
        return dense
    identity = f"{pretrain_key}-{len(dense)}-{zlib.crc32(dense):08x}"
    checkpoint = _cached(_DENSE, identity, lambda: DenseCheckpoint.from_bytes(dense))
    checkpoint.identity = identity
    return checkpoint


def cell_data(cell: CellSpec, view: SplitView) -> DataSplits:
    """The cell's splits, loaded once per worker and (dataset, root, seed); ``view`` picks what it sees."""
    key = (cell.dataset, str(cell.data_root), cell.seed)
    return view(_cached(_DATA, key, lambda: load_splits(cell.dataset, cell.data_root, cell.seed)))


def run_cell(
    cell: CellSpec,
    dense: DenseCheckpoint,
    view: SplitView = all_splits,
    resume: LevelCheckpoint | None = None,
    on_level: Callable[[LevelCheckpoint], None] | None = None,
    jobs: list[CellJob] | None = None,
) -> CellResult:
    """Prune the dense model with the cell's method, fine-tune, evaluate: one row per level.

    ``resume`` continues after an earlier run's last finished level when the method can (``resumable``);
    ``on_level`` sees each level of such a method as it finishes (the others record one level, or start
    again anyway); ``jobs`` receives the job (its rows outlive a failure).
    """
    load_plugins(cell.plugins)
    seed_everything(cell.seed)
    data = cell_data(cell, view)
    method = create_method(cell.method, cell.method_params)
    if resume is not None and (resume.storage_set or not method.resumable):
        resume = None  # start again from level 0: the method cannot pick up where it stopped
    job = CellJob(cell, data, dense, resume, on_level if method.resumable else None)  # only a resumable one needs them
    if jobs is not None:
        jobs.append(job)
    method.apply(job)
    if job.dense_latency_ms() is not None:
        _cached(_DENSE_LATENCY, job._latency_key(), job.dense_latency_ms)
    if not job.rows:
        raise RuntimeError(f"method {cell.method!r} finished without recording a level (call job.finetune())")
    return CellResult(cell.cell_id, job.rows, job.epochs, job.layers, masks=job.masks_file())


def execute_cell(
    cell: CellSpec,
    dense: bytes | DenseCheckpoint,
    view: SplitView = all_splits,
    resume: bytes | None = None,
    on_level: OnLevel | None = None,
) -> CellResult:
    """``run_cell`` plus identity columns, provenance and the cell's log. Never raises: a failure is a row.

    ``on_level(rows so far, checkpoint)`` is called as each level finishes, its rows ``partial``; a
    failure in level k keeps the levels before it (``ok``) and records k as ``failed``.
    """
    started = _now()
    dense_metrics: dict[str, float] = {}
    jobs: list[CellJob] = []

    def finished_level(checkpoint: LevelCheckpoint) -> None:
        if on_level is not None:
            rows = CellResult(
                cell.cell_id, checkpoint.rows, checkpoint.epochs, checkpoint.layers, masks=checkpoint.recorded_masks
            )
            on_level(_complete(cell, rows, started, None, dense_metrics, "partial"), checkpoint.to_bytes())

    with captured_log() as log:
        try:
            checkpoint = dense_checkpoint(dense, cell.pretrain_key)
            dense_metrics = checkpoint.metrics
            resumed = LevelCheckpoint.from_bytes(resume) if resume else None
            result, error = run_cell(cell, checkpoint, view, resumed, finished_level, jobs), None
        except Exception as exc:  # a failing cell must never take the matrix down
            error = describe_error(exc)
            result = _empty_result(cell, jobs[0] if jobs else None)
            print(error, file=log)
    result.log = log.getvalue()[-LOG_LIMIT:]
    return _complete(cell, result, started, error, dense_metrics)


def failed_result(cell: CellSpec, error: BaseException | str, phase: str) -> CellResult:
    """The row of a cell that could not run (its pretraining failed, its worker died, ...)."""
    text = error if isinstance(error, str) else describe_error(error)
    return _complete(cell, _empty_result(cell), _now(), f"{phase} failed: {text}", {})


LOG_LIMIT = 200_000  # characters of a cell's log that are kept: the end, where an error shows


@contextlib.contextmanager
def captured_log() -> Iterator[io.StringIO]:
    """What the cell prints, warns or logs, kept with its result: a worker's console is seen by no one."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield buffer
    finally:
        root.removeHandler(handler)


def describe_error(exc: BaseException, frames: int = 6) -> str:
    """The error and the last frames of its traceback: enough to see where a cell broke."""
    summary = "".join(traceback.format_tb(exc.__traceback__)[-frames:])
    return f"{type(exc).__name__}: {exc}\n{summary}"


def _empty_result(cell: CellSpec, job: CellJob | None = None) -> CellResult:
    """The levels a failed job finished, then the failed one."""
    if job is None:
        return CellResult(cell.cell_id, [{"level": 0, "sparsity": cell.sparsity}])
    failed = {"level": job.level_index(), "sparsity": cell.sparsity, "stage": job._stage, "control": job._arm or "none"}
    return CellResult(cell.cell_id, [*job.rows, failed], job.epochs, job.layers, masks=job.masks_file())


def _complete(
    cell: CellSpec,
    result: CellResult,
    started: datetime,
    error: str | None,
    dense_metrics: dict[str, float],
    status: str = "ok",
) -> CellResult:
    """Identity, status, timing and provenance on every row; with an ``error`` the last row is the failed level."""
    common = {
        **identity_columns(cell),
        "status": status,
        "error": None,
        "started_at": started,
        "finished_at": _now(),
        **dense_metrics,
        **provenance(),
        **method_provenance(cell.method, cell.method_params),
    }
    result.rows = [{**common, **row} for row in result.rows]
    if error is not None:
        result.rows[-1].update(status="failed", error=error)
    for extra in (result.epochs, result.layers):
        for row in extra:
            row.update(cell_id=cell.cell_id, benchmark=cell.benchmark)
    return result


def identity_columns(cell: CellSpec) -> dict[str, Any]:
    return {
        "benchmark": cell.benchmark,
        "cell_id": cell.cell_id,
        "pretrain_key": cell.pretrain_key,
        "model": cell.model,
        "dataset": cell.dataset,
        "method": cell.method,
        "method_params": json.dumps(cell.method_params, sort_keys=True),
        "sparsity": cell.sparsity,
        "compression": cell.compression,
        "seed": cell.seed,
    }


@cache
def provenance() -> dict[str, str | None]:
    """Versions and the git commit of the harness that produced a row (``$HARNESS_GIT_COMMIT`` outside a checkout)."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(harness.__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    commit = commit or os.environ.get("HARNESS_GIT_COMMIT") or None  # an image built without .git (Dockerfile)
    return {"harness_version": harness.__version__, "torch_version": torch.__version__, "git_commit": commit}


def _now() -> datetime:
    return datetime.now(UTC)
