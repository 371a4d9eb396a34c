"""What a spec says about tuning: the ``tune:`` search space, and the ``tuned:`` result it comes back as.

Plain pydantic types, no torch and no optuna, so ``spec.py`` can hold them and check them once when
a spec loads. A search-space key is ``finetune.<recipe field>`` or ``<method name>.<parameter>``;
without ``space`` the documented default is used (:func:`default_space`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_LR = {"low": 1e-4, "high": 1e-1, "log": True}  # the fine-tune lr every default space searches
TUNABLE_RECIPE_FIELDS = ("lr", "momentum", "weight_decay", "epochs", "batch_size", "optimizer", "schedule", "nesterov")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamRange(_Frozen):
    """One searched parameter: a numeric range (``low``, ``high``, ``log``, ``step``) or ``choices``.

    Integer bounds make an integer parameter (``{low: 1, high: 5}``); float bounds a float one.
    """

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ParamRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either non-empty 'choices' or 'low' and 'high', not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give 'low' and 'high' (a range) or 'choices'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"need finite low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log' cannot be combined")
        return self

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.step, float)


class TuneSection(_Frozen):
    """The spec's ``tune:`` section: what is searched and the budget's epoch cap."""

    space: dict[str, ParamRange] | None = None  # None: default_space()
    max_epochs: int | None = Field(None, ge=1)  # cap on a trial's fine-tune epochs; default: the recipe's
    seed: int | None = None  # the search seed (one study per seed); default: the spec's first seed


class TunedCell(_Frozen):
    """The best point of one study, and where it came from."""

    model: str
    dataset: str
    method: str
    method_params: dict[str, Any] = {}  # the spec's own parameters of this method entry (identifies it)
    sparsity: float
    finetune: dict[str, Any] = {}  # recipe fields the tuning chose
    params: dict[str, Any] = {}  # method parameters the tuning chose
    study: str
    trials: int
    best_val_top1: float | None = None


class Tuned(_Frozen):
    """The ``tuned:`` section of a spec ``harness tune`` wrote: provenance, then one entry per study."""

    source: str  # the benchmark file that was tuned
    protocol: Literal["defaults", "equal", "qmc"]
    sampler: str | None = None
    pruner: str | None = None
    trials: int  # per study, the same for every study
    max_epochs: int | None = None
    search_seed: int | None = None
    storage: str | None = None
    cells: tuple[TunedCell, ...] = ()


def default_space(methods: list[tuple[str, dict[str, Any], dict[str, dict[str, Any]]]]) -> dict[str, ParamRange]:
    """Fine-tune lr log-uniform in [1e-4, 1e-1], plus each method's declared ``tunable`` parameters
    that the spec does not set itself (a value the spec gives is kept). ``methods`` holds
    (name, the spec's params, the method's ``tunable``)."""
    space = {"finetune.lr": ParamRange(**DEFAULT_LR)}
    for name, given, tunable in methods:
        for param, bounds in tunable.items():
            if param not in given:
                space[f"{name}.{param}"] = ParamRange(**bounds)
    return space


def split_point(point: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A sampled point as (recipe overrides, {method name: parameter overrides})."""
    recipe: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]] = {}
    for key, value in point.items():
        owner, _, name = key.partition(".")
        if owner == "finetune":
            recipe[name] = value
        else:
            methods.setdefault(owner, {})[name] = value
    return recipe, methods


def check_space(
    space: dict[str, ParamRange], method_params: dict[str, set[str]], max_epochs: int
) -> tuple[str, str] | None:
    """The first (key, problem) of a search space, or None. ``method_params``: each spec method's parameters."""
    for key, bounds in space.items():
        owner, dot, name = key.partition(".")
        if not dot or not name:
            return key, "keys are finetune.<field> or <method>.<parameter>"
        if owner == "finetune":
            if name not in TUNABLE_RECIPE_FIELDS:
                return key, f"not a tunable recipe field; allowed: {', '.join(TUNABLE_RECIPE_FIELDS)}"
            if name == "epochs":
                top = max(bounds.choices) if bounds.choices else bounds.high
                if not isinstance(top, int) or top > max_epochs:
                    return key, f"epochs must be whole numbers up to the budget's cap max_epochs={max_epochs}"
        elif owner not in method_params:
            return key, f"method {owner!r} is not in the spec's methods ({', '.join(method_params)})"
        elif name not in method_params[owner]:
            return key, f"{owner} has no parameter {name!r}; its parameters: {', '.join(sorted(method_params[owner]))}"
    return None
