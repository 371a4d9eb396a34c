"""The plain, frozen types of a benchmark: recipes, resources, methods by name, the spec, its cells.

This module sits at the bottom of the package: it imports pydantic and nothing of the harness, so
the store, the query path and the tracking process can name these types without torch. The checks
that need no registry live here too (ranges, finite numbers, names, duplicates); those that need
the registries or torch are :mod:`harness.spec`'s.

Identity follows OpenLTH: a cell's id is the hash of the canonical JSON of its fields that differ
from their defaults, so adding a field with a default never changes existing ids.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache, cached_property
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from harness.tuning.space import Tuned, TuneSection

MAX_CELLS = 1_000_000  # default cap on a matrix's cells (harness run --max-cells)
SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed range is 0..2^32-1
NAME_MAX = 100  # characters of a benchmark name: it names a folder and a partition
NAME_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{NAME_MAX - 1}}}")


def _seed_in_range(value: Any) -> Any:
    """Before int parsing, so that 1e20 gets the range in its message rather than a parsing error."""
    if isinstance(value, int | float) and not isinstance(value, bool) and not 0 <= value <= SEED_MAX:
        raise ValueError(f"{shorten(value)} is outside the seed range; allowed: integers 0 to {SEED_MAX}")
    return value


Seed = Annotated[int, BeforeValidator(_seed_in_range), Field(ge=0, le=SEED_MAX)]


class _Frozen(BaseModel):
    # a docstring under a field is its description: docs/reference/spec.md is generated from them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True)

    @cached_property
    def identity(self) -> dict[str, Any]:
        """The fields that differ from their defaults, computed once (a recipe is shared by many cells)."""
        return non_default(self)

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy; with ``update``, without the values cached from the old fields (ids, ``identity``)."""
        copy = super().model_copy(update=update, deep=deep)
        for name in [key for key in copy.__dict__ if key not in type(copy).model_fields] if update else ():
            del copy.__dict__[name]
        return copy


class Recipe(_Frozen):
    """How to train: optimiser, learning-rate schedule, epochs, batch size."""

    epochs: int = Field(10, ge=0)
    """Passes over the training split."""
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    """The torch optimiser."""
    lr: float = Field(0.1, gt=0)
    """Initial learning rate."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum (Adam/AdamW: beta1)."""
    nesterov: bool = False
    """Nesterov momentum (SGD only)."""
    weight_decay: float = Field(0.0, ge=0)
    """L2 penalty (AdamW: decoupled weight decay)."""
    batch_size: int = Field(128, ge=1)
    """Training examples per step."""
    schedule: Literal["constant", "cosine", "step"] = "constant"
    """Learning-rate schedule over the epochs."""
    milestones: tuple[int, ...] = ()
    """Epochs at which "step" multiplies the lr by gamma."""
    gamma: float = Field(0.1, gt=0)
    """The "step" schedule's factor."""
    save_epochs: tuple[int, ...] = ()
    """Pretrain only: keep the weights after these epochs in the dense checkpoint (weight rewinding)."""
    save_iterations: tuple[int, ...] = ()
    """Pretrain only: keep the weights after these optimiser steps (rewinding to iteration k, ``iter:k``)."""

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
    """A registered method name."""
    params: dict[str, Any] = {}
    """The method's parameters."""

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
    """CPUs one cell reserves."""
    gpus: float = Field(0.0, ge=0)
    """GPUs one cell reserves; fractions pack cells onto one GPU: 0.25 runs four at once."""
    custom: dict[str, float] = {}
    """Custom Ray resources a node declares, e.g. {bigmem: 1}."""
    labels: dict[str, str] = {}
    """Node labels a cell requires (Ray's label_selector), e.g. {gpu-type: a100}."""


class Pair(_Frozen):
    """One model on one data set."""

    model: str
    """A registered model name."""
    dataset: str
    """A registered data-set name."""


class ModelRecipes(_Frozen):
    """Recipe fields one model trains with instead of the benchmark's."""

    pretrain: dict[str, Any] = {}
    """Fields of `pretrain` this model changes, e.g. {epochs: 160, lr: 0.1}."""
    finetune: dict[str, Any] = {}
    """Fields of `finetune` this model changes; the rest come from its own pretrain recipe and `finetune`."""


class BenchmarkSpec(_Frozen):
    """One benchmark file: the axes of the matrix and the shared recipes."""

    name: str = Field(json_schema_extra={"pattern": NAME_PATTERN.pattern})  # the validator below says why
    """The benchmark: the MLflow experiment and the `benchmark` column."""
    models: tuple[str, ...] | None = Field(None, min_length=1)
    """Registered model names (`harness list models`); with `datasets`, every model runs on every data set."""
    datasets: tuple[str, ...] | None = Field(None, min_length=1)
    """Registered data-set names (`harness list datasets`)."""
    pairs: tuple[Pair, ...] | None = Field(None, min_length=1)
    """Instead of `models` × `datasets`: the pairs to run, each {model: NAME, dataset: NAME}."""
    methods: tuple[MethodSpec, ...] = Field(min_length=1)
    """Each a method name, or {name: NAME, param: value, ...}; params are checked against the method."""
    sparsities: tuple[float, ...] | None = Field(None, min_length=1)
    """Fractions of the prunable weights removed, each in [0, 1); give this or `compressions`."""
    compressions: tuple[float, ...] | None = Field(None, min_length=1)
    """ShrinkBench compression ratios ≥ 1, turned into a sparsity per model (instead of `sparsities`)."""
    seeds: tuple[Seed, ...] = Field(min_length=1)
    """One dense model and one cell per seed."""
    pretrain: Recipe = Recipe()
    """How the shared dense model is trained."""
    finetune: dict[str, Any] = {}
    """Recipe fields for fine-tuning after pruning; any not given are inherited from `pretrain`."""
    recipes: dict[str, ModelRecipes] = {}
    """Per model: recipe fields it trains with instead, e.g. {resnet20: {pretrain: {epochs: 160}}}."""
    pretrained: dict[str, str] = {}
    """Per model: a local state-dict file loaded instead of dense training, e.g. {resnet50: weights/r50.pth}."""
    resources: Resources = Resources()
    """What each cell asks the Ray scheduler for."""
    data_root: str | None = None
    """Folder with the data sets' files (null: $HARNESS_DATA, else ./data)."""
    tracking_uri: str | None = None
    """MLflow tracking URI (null: $MLFLOW_TRACKING_URI, else sqlite:///RESULTS/mlflow.db)."""
    plugins: tuple[str, ...] = ()
    """Plugin modules (importable names or .py paths) loaded before the names are checked: their code runs as
    you, also for `status` and `--dry-run`."""
    record_masks: bool = True
    """Keep every level's masks in `masks/<benchmark>/<cell_id>.npz` for `harness analyze masks` (1 bit per
    masked weight per level, deflated: about 28 KB a level for ResNet-20 at 90 % sparsity); false keeps none."""
    tune: TuneSection | None = None
    """What `harness tune` searches: the space, the epoch cap, the sampler (harness/tuning/space.py)."""
    tuned: Tuned | None = None
    """Written by `harness tune`: the best point of each study, with its provenance."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(
                f"{shorten(name)} is not a benchmark name; allowed: 1 to {NAME_MAX} letters, digits, '_', '-' "
                "and '.', starting with a letter or digit (it names a folder of the results)"
            )
        return name

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

    @field_validator("models", "datasets", "pairs", "sparsities", "compressions", "seeds")
    @classmethod
    def _distinct(cls, values: tuple | None) -> tuple | None:
        first_index: dict[Any, int] = {}
        for i, value in enumerate(values or ()):
            if value in first_index:
                raise ValueError(
                    f"[{i}] repeats [{first_index[value]}] ({shorten(value)}); each entry must be distinct, "
                    "or the same cells would run twice"
                )
            first_index[value] = i
        return values

    @model_validator(mode="after")
    def _one_target_axis(self) -> BenchmarkSpec:
        if (self.sparsities is None) == (self.compressions is None):
            raise ValueError("give exactly one of 'sparsities' or 'compressions'")
        if self.pairs is None and (self.models is None or self.datasets is None):
            raise ValueError("give 'models' and 'datasets' (every model on every data set), or 'pairs'")
        if self.pairs is not None and (self.models is not None or self.datasets is not None):
            raise ValueError("give either 'models' and 'datasets' (every model on every data set) or 'pairs', not both")
        return self

    @property
    def model_dataset_pairs(self) -> list[tuple[str, str]]:
        """(model, dataset) of the matrix: the pairs given, else every data set × every model."""
        if self.pairs is not None:
            return [(pair.model, pair.dataset) for pair in self.pairs]
        return [(model, dataset) for dataset in self.datasets or () for model in self.models or ()]

    @property
    def model_names(self) -> list[str]:
        """Each model of the matrix once, in the order given."""
        return list(dict.fromkeys(model for model, _ in self.model_dataset_pairs))

    @property
    def finetune_recipe(self) -> Recipe:
        return self.finetune_for(None)

    def pretrain_for(self, model: str | None) -> Recipe:
        """The dense recipe of ``model``: the benchmark's, with its fields from ``recipes`` (raises ValidationError)."""
        override = self.recipes.get(model) if model else None
        return (
            Recipe(**{**self.pretrain.model_dump(), **override.pretrain})
            if override and override.pretrain
            else self.pretrain
        )

    def finetune_for(self, model: str | None) -> Recipe:
        """Fine-tuning of ``model``: its pretrain recipe, then ``finetune``, then its own ``recipes`` fields."""
        override = self.recipes.get(model).finetune if model and model in self.recipes else {}
        base = self.pretrain_for(model).model_dump(exclude={"save_epochs", "save_iterations"})
        return Recipe(**{**base, **self.finetune, **override})


class CellSpec(_Frozen):
    """Everything that determines one cell's result; the scheduler hands it to ``run_cell``."""

    benchmark: str
    model: str
    dataset: str
    method: str
    method_params: dict[str, Any] = {}
    method_version: str | None = None  # the method class's ``version`` when it is not the default
    sparsity: float
    compression: float | None = None  # the target it came from, when the spec gave compressions
    seed: Seed
    pretrain: Recipe = Recipe()
    finetune: Recipe = Recipe()
    pretrained_sha256: str | None = None  # the content of the weights loaded instead of dense training
    # Where things are, not what they are: excluded from identity.
    pretrained: str | None = None  # that file's path
    data_root: str | None = None
    resources: Resources = Resources()
    plugins: tuple[str, ...] = ()
    record_masks: bool = True  # the spec's switch: the worker packs each level's masks for masks/

    # ClassVar: an underscore name would otherwise be a private attribute, deep-copied into every cell
    _NOT_IDENTITY: ClassVar[frozenset[str]] = frozenset(
        {"benchmark", "data_root", "resources", "plugins", "compression", "pretrained", "record_masks"}
    )

    @cached_property  # computed once per cell: planning 100,000 cells asks for each id ~4 times
    def cell_id(self) -> str:
        return content_hash(non_default(self, exclude=self._NOT_IDENTITY))

    @cached_property
    def pretrain_key(self) -> str:
        """Cells with the same key share one dense pretraining."""
        key = {"model": self.model, "dataset": self.dataset, "seed": self.seed, "pretrain": self.pretrain.identity}
        return content_hash(key | ({"pretrained": self.pretrained_sha256} if self.pretrained_sha256 else {}))


def content_hash(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def non_default(model: BaseModel, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields of ``model`` that differ from their defaults (nested models likewise)."""
    out = {}
    defaults = _defaults(type(model))
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name in exclude or (name in defaults and value == defaults[name]):
            continue
        if isinstance(value, BaseModel):
            value = value.identity if isinstance(value, _Frozen) else non_default(value)
        out[name] = value
    return out


@cache
def _defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """Each optional field's default, made once per class (``get_default`` deep-copies it on every call)."""
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in cls.model_fields.items()
        if not field.is_required()
    }


SHOWN_CHARACTERS = 80  # of a user's value inside a message: a message never grows with the input


def shorten(value: Any, limit: int = SHOWN_CHARACTERS) -> str:
    """``repr(value)`` cut to ``limit`` characters; containers are not expanded beyond what is shown."""
    if isinstance(value, dict | list | tuple | set):
        return f"a {type(value).__name__} of {len(value)} entries"
    try:
        text = repr(value)
    except ValueError:  # an integer beyond Python's digit limit for str()
        return f"an integer of about {value.bit_length() * 3 // 10} digits"
    return text if len(text) <= limit else f"{text[: limit - 12]}… ({len(text)} characters)"
