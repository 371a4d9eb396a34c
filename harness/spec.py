"""The benchmark spec: YAML → validated, frozen models → one :class:`CellSpec` per matrix cell.

Validation happens here and only here; everything downstream trusts a spec that loaded. Every
mistake becomes a :class:`SpecError` naming the file, the field and what is allowed.

Identity follows OpenLTH: a cell's id is the hash of the canonical JSON of its fields that differ
from their defaults, so adding a field with a default never changes existing ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import typing
from pathlib import Path
from typing import Any, Literal

import pydantic
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.data import DATASETS
from harness.methods import METHODS
from harness.models import MODELS, IncompatibleInput, create_model


class SpecError(ValueError):
    """Invalid benchmark input; ``str()`` is the one message shown to the user."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Recipe(_Frozen):
    """How to train: optimiser, learning-rate schedule, epochs, batch size."""

    epochs: int = Field(10, ge=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    milestones: tuple[int, ...] = ()  # epochs at which "step" multiplies the lr by gamma
    gamma: float = Field(0.1, gt=0)
    # pretrain only: keep the weights after these epochs / optimiser steps in the dense checkpoint (rewinding)
    save_epochs: tuple[int, ...] = ()
    save_iterations: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _save_epochs_in_range(self) -> Recipe:
        outside = [k for k in self.save_epochs if not 1 <= k <= self.epochs]
        if outside:
            raise ValueError(
                f"save_epochs {outside} outside 1..epochs ({self.epochs}): epoch k keeps the weights after k "
                "epochs of pretraining (θ0 is always kept)"
            )
        if any(k < 1 for k in self.save_iterations):
            raise ValueError(
                f"save_iterations {list(self.save_iterations)}: iteration k keeps the weights after k optimiser "
                "steps of pretraining, so k >= 1 (θ0 is always kept)"
            )
        return self


class MethodSpec(_Frozen):
    """A method by registry name, with its parameters (written beside ``name`` in YAML)."""

    name: str
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _gather_params(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "name" in value:
            params = dict(value.get("params") or {})
            params.update({k: v for k, v in value.items() if k not in ("name", "params")})
            return {"name": value["name"], "params": params}
        return value


class Resources(_Frozen):
    """What one cell asks the scheduler for."""

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)  # fractions pack cells onto one GPU: 0.25 runs four at once
    custom: dict[str, float] = {}  # custom Ray resources a node declares, e.g. {bigmem: 1}
    labels: dict[str, str] = {}  # node labels a cell requires (Ray's label_selector), e.g. {gpu-type: a100}


class BenchmarkSpec(_Frozen):
    """One benchmark file: the axes of the matrix and the shared recipes."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    models: tuple[str, ...] = Field(min_length=1)
    datasets: tuple[str, ...] = Field(min_length=1)
    methods: tuple[MethodSpec, ...] = Field(min_length=1)
    sparsities: tuple[float, ...] | None = Field(None, min_length=1)
    compressions: tuple[float, ...] | None = Field(None, min_length=1)
    seeds: tuple[int, ...] = Field(min_length=1)
    pretrain: Recipe = Recipe()
    finetune: dict[str, Any] = {}  # fields not given are inherited from pretrain
    resources: Resources = Resources()
    data_root: str | None = None
    tracking_uri: str | None = None
    plugins: tuple[str, ...] = ()

    @field_validator("sparsities")
    @classmethod
    def _sparsity_range(cls, values: tuple[float, ...] | None) -> tuple[float, ...] | None:
        for v in values or ():
            if not 0.0 <= v < 1.0:
                raise ValueError(f"sparsity {v} is outside [0, 1): it is the fraction of prunable weights removed")
        return values

    @field_validator("compressions")
    @classmethod
    def _compression_range(cls, values: tuple[float, ...] | None) -> tuple[float, ...] | None:
        for v in values or ():
            if not v >= 1.0:
                raise ValueError(f"compression {v} is below 1: it is all parameters / nonzero parameters")
        return values

    @model_validator(mode="after")
    def _one_target_axis(self) -> BenchmarkSpec:
        if (self.sparsities is None) == (self.compressions is None):
            raise ValueError("give exactly one of 'sparsities' or 'compressions'")
        return self

    @property
    def finetune_recipe(self) -> Recipe:
        return Recipe(**{**self.pretrain.model_dump(exclude={"save_epochs", "save_iterations"}), **self.finetune})


class CellSpec(_Frozen):
    """Everything that determines one cell's result; the scheduler hands it to ``run_cell``."""

    benchmark: str
    model: str
    dataset: str
    method: str
    method_params: dict[str, Any] = {}
    sparsity: float
    compression: float | None = None  # the target it came from, when the spec gave compressions
    seed: int
    pretrain: Recipe = Recipe()
    finetune: Recipe = Recipe()
    # Where things are, not what they are: excluded from identity.
    data_root: str | None = None
    resources: Resources = Resources()
    plugins: tuple[str, ...] = ()

    _NOT_IDENTITY = frozenset({"benchmark", "data_root", "resources", "plugins", "compression"})

    @property
    def cell_id(self) -> str:
        return content_hash(_non_default(self, exclude=self._NOT_IDENTITY))

    @property
    def pretrain_key(self) -> str:
        """Cells with the same key share one dense pretraining."""
        return content_hash(
            {"model": self.model, "dataset": self.dataset, "seed": self.seed, "pretrain": _non_default(self.pretrain)}
        )


def content_hash(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _non_default(model: BaseModel, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    out = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if name in exclude or (not field.is_required() and value == field.get_default(call_default_factory=True)):
            continue
        out[name] = _non_default(value) if isinstance(value, BaseModel) else value
    return out


# -- loading ------------------------------------------------------------------------------------


def load_spec(path: str | os.PathLike) -> BenchmarkSpec:
    """Read and fully validate a benchmark file (plugins named in it are imported first)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such benchmark file") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    try:
        spec = BenchmarkSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise SpecError(_describe(path, exc, BenchmarkSpec)) from None
    from harness.methods import load_plugins

    try:
        load_plugins(spec.plugins)
    except ImportError as exc:
        raise SpecError(f"{path}: plugins: {exc}") from None
    _check_registries(path, spec)
    return spec


def _describe(path: Path, exc: pydantic.ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    lines = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"] if p not in ("function-before", "function-after")]
        field = prefix + _dotted(loc)
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, loc[:-1])
            lines.append(f"{path}: {field}: unknown key; allowed keys: {', '.join(allowed)}")
        else:
            msg = error["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {field or '(top level)'}: {msg}")
    return "\n".join(lines)


def _dotted(loc: list[str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def _allowed_keys(root: type[BaseModel], loc: list[str]) -> list[str]:
    """The keys the model at ``loc`` (a path of field names and list indices) accepts."""
    model = root
    for part in loc:
        if not part.isdigit():
            model = _model_in(model.model_fields[part].annotation) or model
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_model_in, typing.get_args(annotation))), None)


def _check_registries(path: Path, spec: BenchmarkSpec) -> None:
    def fail(field: str, message: str) -> SpecError:
        return SpecError(f"{path}: {field}: {message}")

    for i, name in enumerate(spec.models):
        if name not in MODELS:
            raise fail(f"models[{i}]", MODELS.unknown_message(name))
    for i, name in enumerate(spec.datasets):
        if name not in DATASETS:
            raise fail(f"datasets[{i}]", DATASETS.unknown_message(name))
    try:
        finetune = spec.finetune_recipe
    except pydantic.ValidationError as exc:
        raise SpecError(_describe(path, exc, Recipe, prefix="finetune.")) from None
    for i, method in enumerate(spec.methods):
        if method.name not in METHODS:
            raise fail(f"methods[{i}].name", METHODS.unknown_message(method.name))
        cls = METHODS.get(method.name)
        try:
            params = cls.Params.model_validate(method.params)
        except pydantic.ValidationError as exc:
            raise SpecError(_describe(path, exc, cls.Params, prefix=f"methods[{i}].")) from None
        try:
            cls.check_recipes(params, spec.pretrain, finetune)
        except ValueError as exc:
            raise fail(f"methods[{i}]", str(exc)) from None
    for model in spec.models:
        for dataset in spec.datasets:
            try:
                _check_compatible(model, dataset)
            except IncompatibleInput as exc:
                raise fail("models", f"{model!r} cannot take dataset {dataset!r}: {exc}") from None
    if spec.compressions:  # reachable or not depends on whether the method may prune the classifier
        for method in spec.methods:
            params = METHODS.get(method.name).Params.model_validate(method.params)
            for model in spec.models:
                for dataset in spec.datasets:
                    try:
                        _targets(spec, model, dataset, params)
                    except ValueError as exc:
                        raise fail("compressions", str(exc)) from None


def _meta_model(model: str, dataset: str) -> torch.nn.Module:
    """Build the model on the meta device: shapes without memory or time."""
    info = DATASETS.get(dataset)
    with torch.device("meta"):
        return create_model(model, info.input_shape, info.num_classes)


def _check_compatible(model: str, dataset: str) -> None:
    info = DATASETS.get(dataset)
    net = _meta_model(model, dataset)
    try:
        out = net(torch.zeros((2, *info.input_shape), device="meta"))
    except (RuntimeError, ValueError) as exc:
        raise IncompatibleInput(f"forward pass on input {info.input_shape} fails: {exc}") from None
    if tuple(out.shape) != (2, info.num_classes):
        raise IncompatibleInput(f"output shape {tuple(out.shape)[1:]} is not ({info.num_classes},) classes")


def compression_to_sparsity(model: str, dataset: str, compression: float, include_classifier: bool = False) -> float:
    """ShrinkBench's rule: keep = (total / compression − nonprunable) / prunable, 0 < keep ≤ 1."""
    from harness.masks import prunable_weights

    net = _meta_model(model, dataset)
    total = sum(p.numel() for p in net.parameters())
    prunable = sum(p.numel() for p in prunable_weights(net, include_classifier).values())
    keep = (total / compression - (total - prunable)) / prunable
    if not 0 < keep <= 1:
        raise ValueError(
            f"compression {compression} is out of reach for {model} on {dataset}: the weights that are not "
            f"pruned already take {total / (total - prunable):.1f}x; allowed: 1 to below that"
        )
    return 1.0 - keep


def expand(spec: BenchmarkSpec) -> list[CellSpec]:
    """The matrix, in a breadth-first order: all cells of the first seed, then the next."""
    finetune = spec.finetune_recipe
    cells = []
    for seed in spec.seeds:
        for dataset in spec.datasets:
            for model in spec.models:
                for method in spec.methods:
                    cls = METHODS.get(method.name)
                    params = cls.Params.model_validate(method.params)
                    targets = [(0.0, None)] if cls.sets_own_sparsity else _targets(spec, model, dataset, params)
                    for sparsity, compression in targets:
                        cells.append(
                            CellSpec(
                                benchmark=spec.name,
                                model=model,
                                dataset=dataset,
                                method=method.name,
                                method_params=params.model_dump(exclude_defaults=True),
                                sparsity=sparsity,
                                compression=compression,
                                seed=seed,
                                pretrain=spec.pretrain,
                                finetune=finetune,
                                data_root=spec.data_root,
                                resources=spec.resources,
                                plugins=spec.plugins,
                            )
                        )
    return cells


def _targets(spec: BenchmarkSpec, model: str, dataset: str, params: BaseModel) -> list[tuple[float, float | None]]:
    if spec.sparsities is not None:
        return [(s, None) for s in spec.sparsities]
    include = bool(getattr(params, "prune_classifier", False))
    return [(round(compression_to_sparsity(model, dataset, c, include), 12), c) for c in spec.compressions]
