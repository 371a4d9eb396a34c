"""Checks any pruning-method author can run in a test: the promises every method makes to the harness.

    from harness.testing import check_pruning_method

    def test_my_method():
        check_pruning_method("my_method", {"some_param": 3})

:func:`check_pruning_method` runs the method on a tiny real cell (a LeNet on scikit-learn's digits,
one epoch of pretraining and fine-tuning) exactly as the harness does, and asserts for every level
it records: the achieved sparsity of the layers offered to it is the level's target (within one
weight, or one channel, per layer); masks only shrink from level to level; pruned weights are still
zero after training; the classifier stays dense unless ``prune_classifier``. It returns the
recorded levels so a test can assert the method's own defining property on them.
:func:`run_method` is the same run without the assertions.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import torch
from torch import nn

from harness.cell import CellJob, DenseCheckpoint, pretrain, seed_everything
from harness.config import CellSpec, Recipe
from harness.data import load_splits
from harness.encoding import Encoded
from harness.encoding.decoding import decode_model
from harness.encoding.storage import LAYOUTS
from harness.masks import Masks, classifier_name, prunable_weights
from harness.methods import METHODS, Method
from harness.models import MODELS

TINY_PRETRAIN = Recipe(epochs=1, lr=0.05, batch_size=256)
TINY_FINETUNE = Recipe(epochs=1, lr=0.01, batch_size=256)


@dataclass
class Level:
    """One recorded level: its row, its masks, the weights right after pruning and after training."""

    row: dict[str, Any]
    masks: Masks
    pruned_state: dict[str, torch.Tensor] | None  # None when the level never called prune()
    final_state: dict[str, torch.Tensor]
    encoded: Encoded  # the stored form the row's size_bytes counts


class RecordingJob(CellJob):
    """A :class:`CellJob` that also keeps, for every level, its masks and its weights before and after training."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.levels: list[Level] = []
        self._pruned_state: dict[str, torch.Tensor] | None = None

    def prune(self, masks: Masks) -> None:
        super().prune(masks)
        self._pruned_state = _copy_state(self.model)

    def remove_channels(self) -> int:
        removed = super().remove_channels()
        self._pruned_state = _copy_state(self.model)  # the pruned weights, at the smaller shapes
        return removed

    @contextlib.contextmanager
    def arm(self, name: str) -> Iterator[None]:
        pending = self._pruned_state  # the main line's level goes on after the arm
        with super().arm(name):
            yield
        self._pruned_state = pending

    def finish_level(self, sparsity: float | None = None, **extra: Any) -> None:
        super().finish_level(sparsity, **extra)
        masks = {name: mask.clone() for name, mask in self.masks.items()}
        encoded = self.storage.encode(self.model)
        self.levels.append(Level(self.rows[-1], masks, self._pruned_state, _copy_state(self.model), encoded))
        self._pruned_state = None


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy({name: value.detach().cpu() for name, value in model.state_dict().items()})


def tiny_cell(
    method: str,
    params: dict[str, Any] | None = None,
    *,
    sparsity: float = 0.75,
    model: str = "lenet_300_100",
    dataset: str = "digits",
    seed: int = 0,
    pretrain_recipe: Recipe = TINY_PRETRAIN,
    finetune_recipe: Recipe = TINY_FINETUNE,
) -> CellSpec:
    """A cell small enough for a unit test (a second on a laptop CPU for a one-shot method)."""
    return CellSpec(
        benchmark="check",
        model=model,
        dataset=dataset,
        method=method,
        method_params=params or {},
        sparsity=sparsity,
        seed=seed,
        pretrain=pretrain_recipe,
        finetune=finetune_recipe,
    )


@cache
def _pretrained(model: str, dataset: str, seed: int, recipe: Recipe) -> DenseCheckpoint:
    return pretrain(tiny_cell("none", model=model, dataset=dataset, seed=seed, pretrain_recipe=recipe))


def run_method(
    method: str | type[Method],
    params: dict[str, Any] | None = None,
    *,
    dense: DenseCheckpoint | None = None,
    **cell_fields: Any,
) -> RecordingJob:
    """Run ``method`` on a :func:`tiny_cell` as ``run_cell`` does and return the job with its levels.

    ``dense`` replaces the pretrained model (pretrained once per model, data set, seed and recipe
    otherwise); ``cell_fields`` go to :func:`tiny_cell`.
    """
    name = method if isinstance(method, str) else _registered_name(method)
    cls = METHODS.get(method) if isinstance(method, str) else method
    instance = cls(params)
    cell = tiny_cell(name, instance.params.model_dump(exclude_defaults=True), **cell_fields)
    if dense is None:  # a copy: a method that changed the checkpoint must not change the next test's
        dense = copy.deepcopy(_pretrained(cell.model, cell.dataset, cell.seed, cell.pretrain))
    seed_everything(cell.seed)
    job = RecordingJob(cell, load_splits(cell.dataset, cell.data_root, cell.seed), dense)
    instance.apply(job)
    return job


def _registered_name(cls: type[Method]) -> str:
    return next((name for name in METHODS.names() if METHODS.get(name) is cls), cls.__name__)


def check_pruning_method(
    method: str | type[Method],
    params: dict[str, Any] | None = None,
    *,
    granularity: Literal["weight", "channel"] = "weight",
    expected_sparsity: float | None = None,
    **run_options: Any,
) -> list[Level]:
    """Run ``method`` on a tiny real cell and assert the invariants every pruning method promises.

    ``granularity``: the unit the method removes, which sets the sparsity tolerance per layer (one
    weight, or one output channel for structured methods). ``expected_sparsity``: the last level's
    target when the method replaces the cell's (N:M); by default the cell's sparsity. Other keyword
    arguments go to :func:`run_method`. Raises ``AssertionError`` naming the level, layer and numbers;
    returns the main line's levels (control arms, checked for zeros where masked, are in ``job.levels``).
    """
    job = run_method(method, params, **run_options)
    label = method if isinstance(method, str) else method.__name__
    main = [level for level in job.levels if level.row["control"] == "none"]  # control arms are no curve of masks
    _expect(main, f"{label} recorded no level: call job.finetune() or job.finish_level()")
    expected = job.cell.sparsity if expected_sparsity is None else expected_sparsity
    last = main[-1].row["sparsity"]
    _expect(
        abs(last - expected) < 1e-12,
        f"{label}: the last level's sparsity is {last}, expected {expected}",
    )

    include_classifier = bool(job.cell.method_params.get("prune_classifier"))
    prunable = prunable_weights(job.model, include_classifier)
    classifier = classifier_name(job.model) + ".weight"
    previous: Masks = {}
    for index, level in enumerate(main):
        where = f"{label}, level {index}"
        if not include_classifier:
            kept = level.masks.get(classifier)
            _expect(kept is None or bool(kept.all()), f"{where}: the classifier {classifier} is masked")
            zeros = int((level.final_state[classifier] == 0).sum())
            _expect(zeros == 0, f"{where}: {zeros} classifier weights are zero but prune_classifier is off")
        _check_sparsity(where, level, _context_weights(job, prunable, index), classifier, granularity)
        _check_zero_where_masked(where, level)
        for name, mask in previous.items():
            now = level.masks.get(name, torch.ones_like(mask))
            revived = int((now & ~mask).sum())
            _expect(revived == 0, f"{where}: {revived} weights of {name} pruned at the level before are kept again")
        previous = level.masks
    for level in job.levels:
        if level.row["control"] != "none":
            _check_zero_where_masked(f"{label}, level {level.row['level']} ({level.row['control']})", level)
    return main


def _context_weights(job: RecordingJob, prunable: dict[str, torch.Tensor], level: int) -> dict[str, torch.Tensor]:
    """The weights of ``prunable`` the method's pruning context offered it at ``level`` (the layers table's
    ``prunable``: not ``exclude``d, nor left whole by the method's own rule); all of them without a context."""
    offered = {row["layer"] for row in job.layers if row["level"] == level and row.get("prunable")}
    if not any("prunable" in row for row in job.layers if row["level"] == level):
        return prunable
    return {name: w for name, w in prunable.items() if name.removesuffix(".weight") in offered}


def _check_sparsity(
    where: str, level: Level, prunable: dict[str, torch.Tensor], classifier: str, granularity: str
) -> None:
    """Pruned weights of the layers offered to the method = round(target · their weights), within one unit
    per layer (the classifier on its own target when the row reports ``classifier_sparsity``)."""
    groups = {name: level.row["sparsity"] for name in prunable}
    if "classifier_sparsity" in level.row:
        groups[classifier] = level.row["classifier_sparsity"]
    for target in set(groups.values()):
        names = [name for name, t in groups.items() if t == target]
        total = sum(prunable[name].numel() for name in names)
        pruned = sum(int((~level.masks[name]).sum()) for name in names if name in level.masks)
        unit = {name: 1 if granularity == "weight" else prunable[name][0].numel() for name in names}
        tolerance = sum(unit.values())
        _expect(
            abs(pruned - round(target * total)) <= tolerance,
            f"{where}: {pruned} of {total} weights pruned in {names}, expected {round(target * total)} "
            f"(sparsity {target}) within {tolerance}",
        )


def _check_zero_where_masked(where: str, level: Level) -> None:
    for name, mask in level.masks.items():
        for moment, state in (("after pruning", level.pruned_state), ("after training", level.final_state)):
            if state is None:
                continue
            alive = int((state[name][~mask.cpu()] != 0).sum())
            _expect(alive == 0, f"{where}: {alive} pruned entries of {name} are nonzero {moment}")


def _check_decodes(where: str, level: Level, job: RecordingJob) -> None:
    """``size_bytes`` is the length of the stored byte strings, and decoding them gives back the weights the
    row evaluated (to float32 rounding) and the same top-1 on a validation batch. Skipped for a plugin's
    own layout, which the harness cannot read."""
    payloads = level.encoded.payloads
    stored = sum(len(part) for parts in payloads.values() for part in parts.values())
    _expect(
        level.row["size_bytes"] == stored, f"{where}: size_bytes {level.row['size_bytes']} != {stored} bytes stored"
    )
    if any(parts["layout"][0] not in LAYOUTS.values() for parts in payloads.values() if "layout" in parts):
        return
    model = copy.deepcopy(job.model)  # the architecture the row evaluated (smaller after `remove: true`)
    shapes = {name: p.shape for name, p in model.named_parameters()}
    _expect(set(payloads) == set(shapes), f"{where}: stored {sorted(payloads)}, the model has {sorted(shapes)}")
    decoded = decode_model(level.encoded, shapes)
    for name, value in decoded.items():
        error = float((value - level.final_state[name].float()).abs().max()) if value.numel() else 0.0
        _expect(error <= 1e-6, f"{where}: {name} decodes {error:.3g} away from the weights the row evaluated")
    x, y = job.val_batch()
    correct = []
    for state in (level.final_state, {**level.final_state, **decoded}):
        model.load_state_dict(state)
        with torch.no_grad():
            correct.append(int((model.eval()(x).argmax(dim=1) == y).sum()))
    _expect(
        correct[0] == correct[1], f"{where}: the decoded model gets {correct[1]} of {len(y)} right, not {correct[0]}"
    )


def _expect(condition: Any, message: str) -> None:
    if not condition:
        raise AssertionError(message)


# -- the conformance matrix: one method on every model family ---------------------------------------


def _vgg_bn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A BatchNorm VGG in miniature: conv-BN-ReLU ×3, a pool between, global average pool, Linear."""
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )  # fmt: skip


def _grouped(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Depthwise and grouped convolutions: conv, depthwise 3x3 (groups = channels), 4-group conv."""
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.Conv2d(8, 16, 1, groups=4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, num_classes),
    )  # fmt: skip


def _layernorm(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """An MLP with LayerNorm after each hidden layer (a transformer block's normalisation)."""
    features = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(features, 64), nn.LayerNorm(64), nn.ReLU(),
        nn.Linear(64, 32), nn.LayerNorm(32), nn.GELU(),
        nn.Linear(32, num_classes),
    )  # fmt: skip


def _groupnorm(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Convs with GroupNorm (4 groups), global average pool, Linear."""
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )  # fmt: skip


# model family -> registered model; the four small ones are registered by check_conformance
CONFORMANCE_MODELS: dict[str, str] = {
    "mlp": "lenet_300_100",
    "lenet5": "lenet5",
    "batchnorm-resnet": "resnet20",
    "batchnorm-vgg": "conformance_vgg_bn",
    "grouped-conv": "conformance_grouped",
    "layernorm": "conformance_layernorm",
    "groupnorm": "conformance_groupnorm",
}
_CONFORMANCE_FACTORIES = {
    "conformance_vgg_bn": _vgg_bn,
    "conformance_grouped": _grouped,
    "conformance_layernorm": _layernorm,
    "conformance_groupnorm": _groupnorm,
}
CONFORMANCE_PRETRAIN = Recipe(epochs=1, lr=0.05, batch_size=256, save_epochs=(1,))  # weight rewinding needs epoch 1


def _register_conformance_models() -> None:
    for name, factory in _CONFORMANCE_FACTORIES.items():
        if name not in MODELS:
            MODELS.register(name)(factory)


def check_conformance(
    method: str | type[Method],
    params: dict[str, Any] | None = None,
    *,
    model: str = "lenet_300_100",
    false_positives: bool = False,
    **run_options: Any,
) -> list[Level]:
    """Run ``method`` on one model of the conformance matrix and assert what every method promises there.

    ``model``: a registered model or a family of :data:`CONFORMANCE_MODELS`. For every level: the
    theoretical speedup is at least 1 and each ratio column is its definition recomputed; pruning
    sparsity is within [0, zero_fraction] and masked entries are zero after training (unless
    ``false_positives``: an encoder such as a Bloomier filter that lets pruned entries read back
    nonzero); masks only shrink from level to level; ``size_bytes`` is the length of the stored
    bytes, and decoding them reproduces the evaluated weights and their top-1 on a validation
    batch (:mod:`harness.encoding.decoding`; a plugin's own layout is not read); for a method that
    takes the cell's sparsity, the last level's ``sparsity_achieved`` is that target of the layers
    its pruning context offered it (the layers table's ``prunable``; the others count as kept)
    within one output channel per layer. Returns the levels.
    """
    _register_conformance_models()
    run_options.setdefault("pretrain_recipe", CONFORMANCE_PRETRAIN)
    job = run_method(method, params, model=CONFORMANCE_MODELS.get(model, model), **run_options)
    cls = METHODS.get(method) if isinstance(method, str) else method
    label = f"{method if isinstance(method, str) else method.__name__} on {model}"
    _expect(job.levels, f"{label} recorded no level")
    previous: Masks = {}
    for index, level in enumerate(job.levels):
        row, where = level.row, f"{label}, level {index}"
        _expect(row["theoretical_speedup"] >= 1 - 1e-9, f"{where}: speedup {row['theoretical_speedup']} < 1")
        _expect(
            math.isclose(row["theoretical_speedup"], row["flops_dense"] / row["flops_nonzero"]),
            f"{where}: theoretical_speedup is not flops_dense / flops_nonzero",
        )
        _expect(
            math.isclose(row["compression_ratio"], row["params_total"] / row["params_nonzero"]),
            f"{where}: compression_ratio is not params_total / params_nonzero",
        )
        _expect(
            math.isclose(row["storage_compression"], row["size_bytes_dense"] / row["size_bytes"]),
            f"{where}: storage_compression is not size_bytes_dense / size_bytes",
        )
        if not false_positives:
            _expect(
                0 <= row["sparsity_achieved"] <= row["zero_fraction"] + 1e-12,
                f"{where}: sparsity_achieved {row['sparsity_achieved']} outside [0, zero_fraction "
                f"{row['zero_fraction']}]",
            )
            _check_zero_where_masked(where, level)
        _check_decodes(where, level, job)
        if row["control"] != "none":
            continue  # a control arm's mask is no step of the main line's
        for name, mask in previous.items():
            now = level.masks.get(name, torch.ones_like(mask))
            revived = int((now & ~mask).sum())
            _expect(revived == 0, f"{where}: {revived} entries of {name} pruned at the level before are kept again")
        previous = level.masks or previous
    last = job.levels[-1].row
    if not cls.sets_own_sparsity and last["sparsity"] == job.cell.sparsity:
        prunable = prunable_weights(job.model, bool(job.cell.method_params.get("prune_classifier")))
        offered = _context_weights(job, prunable, len(job.levels) - 1)
        sizes = job._architecture.weight_sizes if job._architecture else {n: w.numel() for n, w in prunable.items()}
        channel = max(w[0].numel() for w in prunable.values()) * len(prunable)
        total = sum(sizes[name] for name in prunable)
        tolerance = channel / total
        # the target is of the weights offered to the method; layers it had to leave whole count as kept
        expected = job.cell.sparsity * sum(sizes[name] for name in offered) / total
        achieved = last["sparsity_achieved"]
        if false_positives:  # pruned positions that read back as weights are still pruned: count the masks
            masks = job.levels[-1].masks
            achieved = sum(int((~masks[name]).sum()) for name in prunable if name in masks) / total
        _expect(
            abs(achieved - expected) <= tolerance,
            f"{label}: sparsity_achieved {achieved} is not {expected} (the target {job.cell.sparsity} of the "
            f"{len(offered)} of {len(prunable)} layers offered to it) within one channel per layer ({tolerance:.4f})",
        )
    return job.levels
