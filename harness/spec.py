"""Loading a benchmark: YAML → validated, frozen :class:`BenchmarkSpec` → one :class:`CellSpec` per cell.

Validation happens here and only here; everything downstream trusts a spec that loaded. This is
the layer above the registries: the plain types live in :mod:`harness.config` (torch-free, at the
bottom of the package), and every mistake becomes a :class:`SpecError` whose text comes from the
one formatter, :mod:`harness.validation`: the file, the field and what is allowed.

The YAML reader bounds its work before building anything: nesting depth, nodes after alias
expansion (an alias bomb is refused in milliseconds), duplicate keys. The matrix's size is counted
before a single cell is made.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pydantic
import torch
import yaml
from pydantic import BaseModel

from harness.config import (
    MAX_CELLS,
    BenchmarkSpec,
    CellSpec,
    MethodSpec,
    Recipe,
    Resources,
    content_hash,
    non_default,
    shorten,
)
from harness.data import DATASETS
from harness.methods import METHODS, load_plugins
from harness.methods.base import DEFAULT_VERSION
from harness.models import MODELS, IncompatibleInput, create_model, from_torchvision
from harness.registry import RegistryError
from harness.tuning.space import ParamRange, check_space, default_space
from harness.validation import SpecError, clip, describe

__all__ = [
    "BenchmarkSpec",
    "CellSpec",
    "MethodSpec",
    "Recipe",
    "Resources",
    "SpecError",
    "compression_to_sparsity",
    "content_hash",
    "count_cells",
    "epoch_cap",
    "expand",
    "import_plugins",
    "load_spec",
    "non_default",
    "read_yaml",
    "tuning_space",
]

YAML_MAX_DEPTH = 64  # nesting levels of mappings and lists
YAML_MAX_NODES = 1_000_000  # values in the document once aliases are expanded

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the same grammar, faster


# -- reading ------------------------------------------------------------------------------------


def read_yaml(path: Path) -> Any:
    """The document in ``path``, refused (SpecError) if it is not a readable, bounded YAML text."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such benchmark file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder; give a benchmark file (.yaml)") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (a benchmark file is UTF-8 YAML)") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    _check_bounded(path, text)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {shorten(str(exc), 400)[1:-1]}") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise SpecError(f"{path}: a value cannot be read: {shorten(str(exc))}") from None


def _check_bounded(path: Path, text: str) -> None:
    """Walk the event stream once (no recursion, nothing built): depth, expanded size and duplicate keys."""
    try:
        _check_events(path, yaml.parse(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {shorten(str(exc), 400)[1:-1]}") from None


def _check_events(path: Path, events: Iterator[yaml.Event]) -> None:
    sizes: dict[str, int] = {}  # anchor -> expanded size of the node it names
    stack: list[dict[str, Any]] = []  # the open collections

    def fail(event: yaml.Event, message: str) -> SpecError:
        return SpecError(f"{path}: line {event.start_mark.line + 1}: {message}")

    def node_done(event: yaml.Event, size: int, anchor: str | None, key: str | None) -> None:
        if anchor is not None:
            sizes[anchor] = size
        if not stack:
            return
        parent = stack[-1]
        parent["size"] += size
        if parent["size"] > YAML_MAX_NODES:
            raise fail(event, f"the document expands to more than {YAML_MAX_NODES:,} values (aliases included)")
        if parent["mapping"] and parent["items"] % 2 == 0 and key is not None and key != "<<":
            if key in parent["keys"]:
                raise fail(event, f"key {shorten(key)} appears twice in the same mapping")
            parent["keys"].add(key)
        parent["items"] += 1

    for event in events:
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= YAML_MAX_DEPTH:
                raise fail(event, f"nested deeper than {YAML_MAX_DEPTH} levels")
            mapping = isinstance(event, yaml.MappingStartEvent)
            stack.append({"size": 1, "anchor": event.anchor, "mapping": mapping, "items": 0, "keys": set()})
        elif isinstance(event, yaml.CollectionEndEvent):
            frame = stack.pop()
            node_done(event, frame["size"], frame["anchor"], None)
        elif isinstance(event, yaml.ScalarEvent):
            node_done(event, 1, event.anchor, event.value)
        elif isinstance(event, yaml.AliasEvent):
            node_done(event, sizes.get(event.anchor, 1), None, None)


def _check_finite(path: Path, value: Any, field: str = "") -> None:
    """No inf or nan anywhere: pydantic refuses them in typed fields, this covers free-form params too."""
    seen: set[int] = set()
    pending: list[tuple[str, Any]] = [(field, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise SpecError(f"{path}: {where or '(top level)'}: {item} is not a finite number; allowed: finite numbers")
        if isinstance(item, dict | list) and id(item) not in seen:  # an alias is one object: visit it once
            seen.add(id(item))
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                pending.append((f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."), child))


# -- loading ------------------------------------------------------------------------------------


def load_spec(path: str | os.PathLike, max_cells: int = MAX_CELLS) -> BenchmarkSpec:
    """Read and fully validate a benchmark file (plugins named in it are imported first)."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    _check_finite(path, raw)
    try:
        spec = BenchmarkSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise SpecError(_in_file(path, describe(exc, BenchmarkSpec))) from None
    import_plugins(spec.plugins, f"{path}: plugins")
    _check_registries(path, spec)
    cells = count_cells(spec)
    if cells > max_cells:
        raise SpecError(
            f"{path}: the matrix has {cells:,} cells, above the limit of {max_cells:,}; allowed: at most "
            f"{max_cells:,} (split the benchmark, or raise the limit with --max-cells)"
        )
    return spec


def import_plugins(plugins: Iterable[str], where: str = "") -> None:
    """Import each plugin; one that is missing, broken or raising is a SpecError naming it (after ``where``)."""
    prefix = f"{where}: " if where else ""
    for plugin in plugins:
        try:
            load_plugins([plugin])
        except (ImportError, RegistryError) as exc:  # their messages name the plugin already
            raise SpecError(prefix + clip(str(exc))) from None
        except Exception as exc:  # a plugin is user code: any error in it is bad input, named
            raise SpecError(prefix + clip(f"plugin {plugin} failed to import: {type(exc).__name__}: {exc}")) from None


def _in_file(path: Path, lines: list[str]) -> str:
    return "\n".join(f"{path}: {line}" for line in lines)


def _check_registries(path: Path, spec: BenchmarkSpec) -> None:
    def fail(field: str, message: str) -> SpecError:
        return SpecError(f"{path}: {clip(f'{field}: {message}')}")

    axes = {"models": spec.models or (), "datasets": spec.datasets or ()}
    for i, pair in enumerate(spec.pairs or ()):
        axes[f"pairs[{i}].model"], axes[f"pairs[{i}].dataset"] = (pair.model,), (pair.dataset,)
    for field, names in axes.items():
        registry = DATASETS if field.endswith(("datasets", "dataset")) else MODELS
        for i, name in enumerate(names):
            if name not in registry:
                where = field if field.startswith("pairs") else f"{field}[{i}]"
                raise fail(where, registry.unknown_message(name))
    models = spec.model_names
    for field in ("recipes", "pretrained"):
        for name in getattr(spec, field):
            if name not in models:
                raise fail(f"{field}.{name}", f"not a model of this benchmark; allowed: {', '.join(models)}")
    recipes = {}
    for model in models:
        recipes[model] = _model_recipes(path, spec, model)
    seen: dict[str, int] = {}
    for i, method in enumerate(spec.methods):
        if method.name not in METHODS:
            raise fail(f"methods[{i}].name", METHODS.unknown_message(method.name))
        cls = METHODS.get(method.name)
        try:
            params = cls.Params.model_validate(method.params)
        except pydantic.ValidationError as exc:
            raise SpecError(_in_file(path, describe(exc, cls.Params, prefix=f"methods[{i}]."))) from None
        for model, (pretrain, finetune) in recipes.items():
            for_model = f" (with the recipes of {model})" if model in spec.recipes else ""
            try:
                cls.check_recipes(params, pretrain, finetune)
            except pydantic.ValidationError as exc:  # the place of a nested method's need, e.g. a pipeline stage
                raise SpecError(_in_file(path, describe(exc, cls.Params, prefix=f"methods[{i}]."))) from None
            except ValueError as exc:
                raise fail(f"methods[{i}]", f"{exc}{for_model}") from None
        key = f"{method.name} {json.dumps(params.model_dump(mode='json', exclude_defaults=True), sort_keys=True)}"
        if key in seen:
            raise fail(
                f"methods[{i}]",
                f"repeats methods[{seen[key]}] ({method.name} with the same parameters); each entry must be "
                "distinct, or the same cells would run twice",
            )
        seen[key] = i
    checked: dict[tuple[str, tuple[int, ...], int], torch.nn.Module] = {}  # data sets alike in shape share a check
    for model, dataset in spec.model_dataset_pairs:
        info = DATASETS.get(dataset)
        key = (model, tuple(info.input_shape), info.num_classes)
        if key not in checked:
            try:
                checked[key] = _compatible_model(model, *key[1:])
            except IncompatibleInput as exc:
                field = "pairs" if spec.pairs else "models"
                raise fail(field, f"{model!r} cannot take dataset {dataset!r}: {exc}") from None
        if model in spec.pretrained:
            _check_pretrained(path, model, dataset, spec.pretrained[model], recipes[model][0], checked[key])
    if spec.compressions:  # reachable or not depends on whether the method may prune the classifier
        for method in spec.methods:
            params = METHODS.get(method.name).Params.model_validate(method.params)
            for model, dataset in spec.model_dataset_pairs:
                try:
                    _targets(spec, model, dataset, params)
                except ValueError as exc:
                    raise fail("compressions", str(exc)) from None
    _check_tuning(path, spec)


def tuning_space(spec: BenchmarkSpec) -> dict[str, ParamRange]:
    """The spec's ``tune.space``, else the default: fine-tune lr plus what each method declares ``tunable``."""
    if spec.tune and spec.tune.space is not None:
        return spec.tune.space
    return default_space([(m.name, m.params, METHODS.get(m.name).tunable) for m in spec.methods])


def epoch_cap(spec: BenchmarkSpec) -> int:
    """The most fine-tune epochs one trial may train: ``tune.max_epochs``, else the recipe's."""
    return (spec.tune.max_epochs if spec.tune else None) or spec.finetune_recipe.epochs


def _check_tuning(path: Path, spec: BenchmarkSpec) -> None:
    params = {m.name: set(METHODS.get(m.name).Params.model_fields) for m in spec.methods}
    problem = check_space(tuning_space(spec), params, epoch_cap(spec))
    if problem:
        raise SpecError(f"{path}: tune.space.{problem[0]}: {problem[1]}")
    if spec.tuned is None:
        return
    cells = {_tuned_key(c.model, c.dataset, c.method, c.method_params, c.sparsity) for c in expand(spec, tuned=False)}
    for i, entry in enumerate(spec.tuned.cells):
        field = f"tuned.cells[{i}]"
        if _tuned_key(entry.model, entry.dataset, entry.method, entry.method_params, entry.sparsity) not in cells:
            raise SpecError(f"{path}: {field}: matches no cell of the spec (model, dataset, method, params, sparsity)")
        try:
            Recipe(**{**spec.finetune_recipe.model_dump(), **entry.finetune})
        except pydantic.ValidationError as exc:
            raise SpecError(_in_file(path, describe(exc, Recipe, prefix=f"{field}.finetune."))) from None
        params = METHODS.get(entry.method).Params
        try:
            params.model_validate({**entry.method_params, **entry.params})
        except pydantic.ValidationError as exc:
            raise SpecError(_in_file(path, describe(exc, params, prefix=f"{field}.params."))) from None


def _tuned_key(model: str, dataset: str, method: str, params: dict[str, Any], sparsity: float) -> str:
    return json.dumps([model, dataset, method, params, sparsity], sort_keys=True)


def _model_recipes(path: Path, spec: BenchmarkSpec, model: str) -> tuple[Recipe, Recipe]:
    """(pretrain, finetune) of ``model``; a bad field is named where it was given."""
    own = f"recipes.{model}." if model in spec.recipes else ""
    try:
        pretrain = spec.pretrain_for(model)
    except pydantic.ValidationError as exc:
        raise SpecError(_in_file(path, describe(exc, Recipe, prefix=f"{own}pretrain."))) from None
    try:
        return pretrain, spec.finetune_for(model)
    except pydantic.ValidationError as exc:
        raise SpecError(_in_file(path, describe(exc, Recipe, prefix=f"{own}finetune."))) from None


def pretrained_path(spec_path: Path, given: str) -> Path:
    """A ``pretrained`` file: absolute, or relative to the benchmark file's folder."""
    return (spec_path.parent / Path(given).expanduser()).resolve()


def _check_pretrained(
    path: Path, model: str, dataset: str, given: str, pretrain: Recipe, net: torch.nn.Module
) -> None:
    """The file is a state dict of exactly the tensors and shapes of ``net``, this model built for this data set
    (read with weights_only)."""
    where = f"pretrained.{model}"
    if pretrain.save_epochs:
        raise SpecError(f"{path}: {where}: pretrained weights have no pretraining epochs to keep; drop save_epochs")
    state = from_torchvision(model, _read_state_dict(path, where, pretrained_path(path, given)))
    expected = {name: tuple(t.shape) for name, t in net.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = sorted(name for name in expected.keys() & found.keys() if expected[name] != found[name])
    problems = [
        f"{label} {', '.join(names[:5])}{' …' if len(names) > 5 else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("other shapes for", wrong))
        if names
    ]
    if problems:
        raise SpecError(
            clip(
                f"{path}: {where}: {given} does not fit {model} on {dataset}: {'; '.join(problems)}; allowed: "
                "a state dict of this model as the harness builds it (torch.save(model.state_dict()))"
            )
        )


def _read_state_dict(path: Path, where: str, file: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)  # mmap: nothing read yet
    except FileNotFoundError:
        raise SpecError(f"{path}: {where}: no such file {file}") from None
    except Exception as exc:  # not a torch file, or one holding more than tensors: refused by weights_only
        raise SpecError(clip(f"{path}: {where}: {file} is not a state dict torch can load safely: {exc}")) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpecError(f"{path}: {where}: {file} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def file_sha256(file: Path) -> str:
    """The content hash that puts a pretrained file into its cells' identity (16 hex digits, like ids)."""
    digest = hashlib.sha256()
    with file.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _meta_model(model: str, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """Build the model on the meta device: shapes without memory or time."""
    with torch.device("meta"):
        return create_model(model, input_shape, num_classes)


def _compatible_model(model: str, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """The model on the meta device, once a forward pass of this input gave one score per class."""
    net = _meta_model(model, input_shape, num_classes)
    try:
        out = net(torch.zeros((2, *input_shape), device="meta"))  # as in training: train mode, autograd on
    except (RuntimeError, ValueError) as exc:
        raise IncompatibleInput(f"forward pass on input {input_shape} fails: {exc}") from None
    if tuple(out.shape) != (2, num_classes):
        raise IncompatibleInput(f"output shape {tuple(out.shape)[1:]} is not ({num_classes},) classes")
    return net


@cache
def _parameter_counts(model: str, dataset: str, include_classifier: bool) -> tuple[int, int]:
    """(all parameters, prunable weights) of ``model`` built for ``dataset``."""
    from harness.masks import prunable_weights

    info = DATASETS.get(dataset)
    net = _meta_model(model, tuple(info.input_shape), info.num_classes)
    total = sum(p.numel() for p in net.parameters())
    return total, sum(p.numel() for p in prunable_weights(net, include_classifier).values())


def compression_to_sparsity(model: str, dataset: str, compression: float, include_classifier: bool = False) -> float:
    """ShrinkBench's rule: keep = (total / compression − nonprunable) / prunable, 0 < keep ≤ 1."""
    total, prunable = _parameter_counts(model, dataset, include_classifier)
    keep = (total / compression - (total - prunable)) / prunable
    if not 0 < keep <= 1:
        raise ValueError(
            f"compression {compression} is out of reach for {model} on {dataset}: the weights that are not "
            f"pruned already take {total / (total - prunable):.1f}x; allowed: 1 to below that"
        )
    return 1.0 - keep


# -- the matrix ---------------------------------------------------------------------------------


def count_cells(spec: BenchmarkSpec) -> int:
    """How many cells :func:`expand` makes, counted without making them."""
    targets = len(spec.sparsities or spec.compressions or ())
    per_pair = sum(1 if METHODS.get(m.name).sets_own_sparsity else targets for m in spec.methods)
    return per_pair * len(spec.model_dataset_pairs) * len(spec.seeds)


def expand(spec: BenchmarkSpec, spec_path: str | os.PathLike | None = None, tuned: bool = True) -> list[CellSpec]:
    """The matrix, in a breadth-first order: all cells of the first seed, then the next.

    ``spec_path`` is the benchmark file, against whose folder ``pretrained`` paths are resolved (and
    hashed into identity); without it they are taken relative to the working directory. A cell the
    spec's ``tuned`` section names gets the recipe fields and parameters chosen for it (``tuned=False``:
    the matrix as it was before tuning).
    """
    chosen = {
        _tuned_key(c.model, c.dataset, c.method, c.method_params, c.sparsity): c
        for c in (spec.tuned.cells if spec.tuned and tuned else ())
    }
    methods = []
    for method in spec.methods:
        cls = METHODS.get(method.name)
        params = cls.Params.model_validate(method.params)
        version = None if cls.version == DEFAULT_VERSION else cls.version
        methods.append((method.name, cls.sets_own_sparsity, params, params.model_dump(exclude_defaults=True), version))
    recipes = {model: (spec.pretrain_for(model), spec.finetune_for(model)) for model in spec.model_names}
    weights = {}
    for model, given in spec.pretrained.items():
        file = pretrained_path(Path(spec_path or "x"), given)
        weights[model] = (str(file), file_sha256(file))
    pairs = spec.model_dataset_pairs
    targets = {  # the same for every seed
        (model, dataset, i): [(0.0, None)] if sets_own_sparsity else _targets(spec, model, dataset, params)
        for model, dataset in pairs
        for i, (_, sets_own_sparsity, params, _, _) in enumerate(methods)
    }
    cells = []
    for seed in spec.seeds:
        for model, dataset in pairs:
            pretrain, finetune = recipes[model]
            pretrained, pretrained_sha256 = weights.get(model, (None, None))
            for i, (name, _, params, dumped, version) in enumerate(methods):
                for sparsity, compression in targets[model, dataset, i]:
                    entry = chosen.get(_tuned_key(model, dataset, name, dumped, sparsity)) if chosen else None
                    cell_finetune, cell_params = finetune, dumped
                    if entry:  # harness tune's choice for this cell, validated when the spec loaded
                        cell_finetune = Recipe(**{**finetune.model_dump(), **entry.finetune})
                        cell_params = type(params).model_validate({**dumped, **entry.params}).model_dump(
                            exclude_defaults=True
                        )
                    cells.append(  # built from validated parts: no need to validate 100,000 cells again
                        CellSpec.model_construct(
                            benchmark=spec.name,
                            model=model,
                            dataset=dataset,
                            method=name,
                            method_params=cell_params,
                            method_version=version,
                            sparsity=sparsity,
                            compression=compression,
                            seed=seed,
                            pretrain=pretrain,
                            finetune=cell_finetune,
                            pretrained_sha256=pretrained_sha256,
                            pretrained=pretrained,
                            data_root=spec.data_root,
                            resources=spec.resources,
                            plugins=spec.plugins,
                            record_masks=spec.record_masks,
                        )
                    )
    return cells


def _targets(spec: BenchmarkSpec, model: str, dataset: str, params: BaseModel) -> list[tuple[float, float | None]]:
    if spec.sparsities is not None:
        return [(s, None) for s in spec.sparsities]
    include = bool(getattr(params, "prune_classifier", False))
    return [(round(compression_to_sparsity(model, dataset, c, include), 12), c) for c in spec.compressions]
