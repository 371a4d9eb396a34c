"""The plugin API: the :class:`Job` protocol a method works through, and the method base classes.

This module is the whole contract between a method and the harness. A method's ``apply(job)``
sees the cell only through :class:`Job` — read-only context (the model, its weights θ0 /
θ_trained / pretraining snapshots, data batches, recipes, seed, target sparsity) and a handful of
verbs (prune, fine-tune or train, finish a level, load weights, set the stored form). Scores see
a :class:`PruningContext`. Everything a hook returns is checked (:func:`check_tensors`): a wrong
shape, dtype or a NaN becomes a ``failed`` row naming the method, the parameter and the problem.
A method's parameters are a pydantic model, validated with the spec.
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from harness.masks import Masks, cap_layer_sparsity, masks_from_scores

if TYPE_CHECKING:
    from harness.config import Recipe
    from harness.encoding import Encoded, QuantizedWeight

WeightsAt = Literal["init", "trained"] | int | str  # a str "iter:k": after k optimiser steps of pretraining


class PluginError(ValueError):
    """A method's hook returned something the harness cannot use; the message names method, parameter, problem."""


class Job(Protocol):
    """What a method may touch while it runs one cell. Nothing else of the harness is API.

    Read-only context: :attr:`model` (the live model: a method may change its weights in place or
    through :meth:`load_weights`, never replace it), :attr:`masks`, :attr:`sparsity`, :attr:`seed`,
    :attr:`pretrain_recipe`, :attr:`finetune_recipe`, :attr:`input_shape`, :attr:`quantized`, and
    :meth:`weights`, :meth:`fresh_init`, :meth:`train_batches`, :meth:`val_batch`, :meth:`evaluate`,
    :meth:`split_size`, :meth:`context`. Verbs: :meth:`prune`, :meth:`remove_channels`, :meth:`finetune`,
    :meth:`train`, :meth:`finish_level`, :meth:`load_weights`, :meth:`set_storage`, :meth:`stage`,
    :meth:`arm`. Every finished level is one result row. Resuming (methods with ``resumable = True``):
    :meth:`remember`, :meth:`resumed`.
    """

    @property
    def model(self) -> nn.Module:
        """The model being compressed, on the cell's device; starts as the dense trained model θ_trained."""

    @property
    def masks(self) -> Masks:
        """The current masks ``{parameter name: bool tensor}`` (empty before the first :meth:`prune`)."""

    @property
    def sparsity(self) -> float:
        """The cell's target sparsity (fraction of the prunable weights removed)."""

    @property
    def seed(self) -> int:
        """The cell's seed: any random choice a method makes must be drawn from it."""

    @property
    def pretrain_recipe(self) -> Recipe:
        """The spec's PRETRAIN recipe (methods that train from θ0 use it)."""

    @property
    def finetune_recipe(self) -> Recipe:
        """The spec's FINETUNE recipe (the default of :meth:`finetune`)."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""

    @property
    def quantized(self) -> dict[str, QuantizedWeight]:
        """Codes a quantiser set with :meth:`set_storage` since the weights last changed (else empty)."""

    def weights(self, at: WeightsAt) -> dict[str, torch.Tensor]:
        """A state dict of the dense model: ``"init"`` (θ0), ``"trained"`` (θ_trained), after epoch ``k`` of
        pretraining (0 is θ0; other epochs must be in the pretrain recipe's ``save_epochs``) or, for
        ``"iter:k"``, after k optimiser steps (in its ``save_iterations``)."""

    def fresh_init(self, draw: int = 0) -> dict[str, torch.Tensor]:
        """The ``draw``-th new draw of the model's initialisation, from a seed no cell's θ0 uses (re-init controls)."""

    def train_batches(self, count: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``count`` batches (inputs, targets) of training examples of the FINETUNE batch size, in an order
        fixed by the seed, on the model's device; the first is :attr:`PruningContext.batch`."""

    def val_batch(self, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``size`` validation examples (held out from training), on the CPU."""

    def evaluate(self, split: Literal["val", "test"] = "test") -> dict[str, float]:
        """``top1``, ``top5``, ``loss`` of the model as it is now on ``split``."""

    def split_size(self, split: Literal["train", "val", "test"]) -> int:
        """Number of examples in ``split``."""

    def context(
        self, include_classifier: bool = False, exclude: Sequence[str] = (), max_layer_sparsity: float | None = None
    ) -> PruningContext:
        """What a score may look at for the model as it is now, over the prunable weights (the classifier only
        with ``include_classifier``; none matching an ``exclude`` glob). The options are recorded in the layers
        table (``prunable``, ``max_layer_sparsity``) of the levels that follow."""

    def prune(self, masks: Masks) -> None:
        """Replace the masks by ``masks`` (checked: model parameters, exact shapes, boolean), zero the pruned
        weights and record the accuracy before training (``top1_pruned``)."""

    def remove_channels(self) -> int:
        """Physically remove the channels the masks emptied, where that leaves every output unchanged
        (Torch-Pruning's dependency graph, :mod:`harness.removal`), and go on with the smaller model: the masks
        are sliced to its shapes and the rows' counts stay relative to the model before. Returns the count."""

    def finetune(self, recipe: Recipe | None = None, callbacks: Sequence[Any] = (), finish: bool = True) -> None:
        """Train with the masks fixed (a :class:`~harness.training.MaskingCallback` may change them) with
        ``recipe`` (default: FINETUNE); its epochs are this level's. ``finish`` ends the level."""

    def train(
        self,
        recipe: Recipe,
        masks: Masks,
        callbacks: Sequence[Any] = (),
        phase: str = "aside",
        new_data_order: bool = False,
    ) -> None:
        """Train the model with ``masks`` fixed, off the record: the job's masks and level are unchanged; the
        epochs are kept with phase ``<phase>-<level>`` (e.g. a lottery ticket trained to find the next mask).
        By default the data come in this level's fine-tuning order; ``new_data_order`` draws an order of the
        phase's own that no other training of any cell uses (a copy for linear mode connectivity)."""

    def finish_level(self, sparsity: float | None = None, **extra: Any) -> None:
        """Evaluate the model as it is now and record it as one row; ``sparsity`` replaces the cell's target
        in the row (iterative levels, learned sparsity), ``extra`` adds columns."""

    def load_weights(self, state: dict[str, torch.Tensor], partial: bool = False) -> None:
        """Load ``state`` into the model (every entry, or with ``partial`` only those given: unknown names
        are always an error). The masks stay: re-apply them with :meth:`prune` if the weights must be sparse."""

    def set_storage(self, quantized: dict[str, QuantizedWeight] | None = None, encoded: Encoded | None = None) -> None:
        """Set how the model is stored: a quantiser's codes, an encoder's payload (sets ``size_bytes``)."""

    def stage(self, name: str) -> AbstractContextManager[None]:
        """Levels recorded inside are labelled ``name`` in the ``stage`` column (pipeline stages)."""

    def arm(self, name: str) -> AbstractContextManager[None]:
        """A control trained beside the level in progress, from the same cell (a lottery ticket's reinit):
        levels finished inside are rows of that level with ``control`` = ``name``, its epochs have phase
        ``<name>-<level>``; on exit the model's weights, the masks and the level's measurements are the main
        line's again. Finish the main line's level after its arms (its checkpoint then holds them too)."""

    def remember(self, key: str, value: Any) -> None:
        """Keep ``value`` (tensors, dicts of tensors, numbers, strings) with every later level's checkpoint,
        so a resumed run of the cell can carry on (e.g. the round a schedule is in, its ticket)."""

    def resumed(self) -> dict[str, Any] | None:
        """What was remembered up to the last finished level of an interrupted or failed run of this cell,
        or None on a fresh start and once this run finished a level. When not None, the model's weights and
        masks are as they were at the end of that level, and that level's row is already recorded."""


DEFAULT_VERSION = "1"


class Method:
    """Base of every method: typed parameters, a family and a reference for listings.

    Subclass it (or :class:`PruningMethod`, :class:`CompressionMethod`) and register it with
    ``@register_method("name")``; a class without its required hook is refused at registration.
    ``version`` names the method's behaviour: raise it when a change should invalidate results
    (it enters the cell id once it is not ``"1"``); the source of the method's module is hashed
    into every row's provenance either way, so `harness status` shows rows made by other code.
    """

    family: ClassVar[str] = "other"
    reference: ClassVar[str] = ""
    version: ClassVar[str] = DEFAULT_VERSION
    name: ClassVar[str] = ""  # the registered name, set by the registry
    # True for methods whose sparsity follows from their own definition (N:M, learned masks): the
    # spec's sparsity axis does not apply, so they get one cell per (model, dataset, seed).
    sets_own_sparsity: ClassVar[bool] = False
    # Parameters `harness tune` searches by default, as {param: {low, high, log} or {choices}} (tuning/space.py).
    tunable: ClassVar[dict[str, dict[str, Any]]] = {}
    # True for methods that continue after the last finished level of an interrupted run (job.resumed());
    # a rerun of any other method starts again from level 0.
    resumable: ClassVar[bool] = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, params: dict[str, Any] | BaseModel | None = None) -> None:
        if isinstance(params, BaseModel):
            params = params.model_dump()
        self.params = self.Params.model_validate(params or {})

    def apply(self, job: Job) -> None:
        """Required hook, called once per cell on a job holding the dense trained model: do the method's
        work through ``job``'s verbs and record at least one level (``job.finetune()`` or
        ``job.finish_level()``). Returns nothing; raising makes the cell a ``failed`` row."""
        raise NotImplementedError

    @classmethod
    def missing_hooks(cls) -> list[str]:
        """The required hooks ``cls`` does not define (checked when it is registered)."""
        return [] if _defines(cls, Method, "apply") else ["apply(self, job)"]

    @classmethod
    def check_recipes(cls, params: BaseModel, pretrain: Recipe, finetune: Recipe) -> None:
        """Optional hook, called when the spec loads: raise ValueError when the spec's recipes cannot
        serve these params (e.g. a rewind epoch the pretrain recipe does not keep). Returns nothing."""

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring: what `harness list methods` and the reference show."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def source_files(self) -> set[Path]:
        """The files whose code decides what this method does: the modules of its classes (plugins included).
        A method that runs other methods (pipeline stages, an iterative schedule's score) adds theirs."""
        files = set()
        for cls in type(self).__mro__:
            try:
                files.add(Path(inspect.getsourcefile(cls)).resolve())
            except (TypeError, OSError):  # builtins (object), classes without a file
                continue
        return {path for path in files if path.is_file()}

    def source_hash(self) -> str:
        """sha256 (16 hex digits) of :meth:`source_files`: a row's ``method_source_hash``."""
        digest = hashlib.sha256()
        for path in sorted(self.source_files()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:16]

    @property
    def label(self) -> str:
        """How errors name this method: its registered name, else its class name."""
        return vars(type(self)).get("name") or type(self).__name__


class PruningOptions(Method.Params):
    """The common options of every method that chooses masks (pruning methods, gradual and dynamic
    sparsity, lottery tickets, supermasks): ``prune_classifier``, ``exclude`` (glob patterns of layer
    or parameter names never pruned) and ``max_layer_sparsity`` (no layer loses more than this fraction)."""

    prune_classifier: bool = False
    exclude: tuple[str, ...] = ()  # glob patterns: "features.0", "*.downsample.*", "fc1.weight"
    max_layer_sparsity: float | None = Field(None, ge=0, le=1)


def options_context(job: Job, options: PruningOptions) -> PruningContext:
    """``job.context`` with the common options applied: the classifier, exclusions and the layer cap."""
    return job.context(options.prune_classifier, exclude=options.exclude, max_layer_sparsity=options.max_layer_sparsity)


class PruningMethod(Method):
    """Score-based pruning: subclasses define ``score`` (or ``masks``); the lowest scores are removed.

    ``scope = "global"`` uses one threshold across all prunable weights, ``"layer"`` removes the
    same fraction from every layer. The default ``apply`` is ShrinkBench's protocol: prune the
    pretrained model once to the cell's sparsity, then fine-tune with the mask fixed. Every pruning
    method takes the common options of :class:`PruningOptions`.
    """

    family: ClassVar[str] = "score"
    scope: ClassVar[Literal["global", "layer"]] = "global"

    class Params(PruningOptions):
        pass

    def score(self, ctx: PruningContext) -> dict[str, torch.Tensor]:
        """Hook called by the default :meth:`masks` each time the method prunes: return a finite real tensor
        of the weight's shape for every name in ``ctx.weights`` (and no other); higher scores are kept."""
        raise NotImplementedError

    def masks(self, ctx: PruningContext, sparsity: float) -> Masks:
        """Hook called each time the method prunes: return ``{parameter name: bool mask}`` removing
        ``sparsity`` of ``ctx.weights`` (masks may also cover a removed channel's bias). The default ranks
        :meth:`score` (checked) by ``scope``, keeping what ``ctx.masks`` already removed removed."""
        scores = self.score(ctx)
        weights = ctx.weights
        check_tensors(f"method {self.label!r}: score()", "score", scores, {n: w.shape for n, w in weights.items()})
        return masks_from_scores(scores, sparsity, self.scope, ctx.masks, ctx.max_layer_sparsity)

    @classmethod
    def missing_hooks(cls) -> list[str]:
        hooks = ("score", "masks", "apply")
        return [] if any(_defines(cls, PruningMethod, h) for h in hooks) else ["score(self, ctx) or masks(...)"]

    def pruning_context(self, job: Job) -> PruningContext:
        """``job.context`` with the common options applied: the classifier, exclusions and the layer cap."""
        return options_context(job, self.params)

    def prune_masks(self, ctx: PruningContext, sparsity: float) -> Masks:
        """:meth:`masks`, checked, with ``max_layer_sparsity`` enforced (by |w| where ``masks`` did not)."""
        masks = self.masks(ctx, sparsity)
        shapes = {name: p.shape for name, p in ctx.model.named_parameters()}
        check_tensors(f"method {self.label!r}: masks()", "mask", masks, shapes, complete=False)
        masks = {name: mask.bool() for name, mask in masks.items()}
        if ctx.max_layer_sparsity is None:
            return masks
        magnitudes = {name: w.abs() for name, w in ctx.weights.items()}
        return cap_layer_sparsity(masks, magnitudes, ctx.max_layer_sparsity, ctx.masks)

    def apply(self, job: Job) -> None:
        job.prune(self.prune_masks(self.pruning_context(job), job.sparsity))
        job.finetune()


class CompressionMethod(Method):
    """Base of quantisers and encoders: they change how the kept weights are represented and stored.

    Run on its own in a cell that asks for a sparsity above 0 while nothing is pruned yet, the method
    first prunes with :attr:`prune_first` (one-shot, fine-tuned, its own level): exactly the pipeline
    ``[global_magnitude, <this method>]``.
    """

    prune_first: ClassVar[str] = "global_magnitude"

    def apply(self, job: Job) -> None:
        if job.sparsity > 0 and not job.masks:
            from harness.methods import create_method

            with job.stage(self.prune_first):
                create_method(self.prune_first).apply(job)
        self.compress(job)

    def compress(self, job: Job) -> None:
        """Required hook, called once on the model as it is (pruned or not): change or re-encode the weights,
        ``job.set_storage(...)`` how they are stored, record the level with ``job.finish_level()``; returns nothing."""
        raise NotImplementedError

    @classmethod
    def missing_hooks(cls) -> list[str]:
        return [] if _defines(cls, CompressionMethod, "compress") else ["compress(self, job)"]


def _defines(cls: type, base: type, hook: str) -> bool:
    """Whether ``cls`` (or a class between it and ``base``) overrides ``base.hook``."""
    return getattr(cls, hook, None) is not getattr(base, hook)


def excluded(name: str, patterns: Iterable[str]) -> bool:
    """Whether parameter ``name`` (or its layer, ``name`` without ``.weight``) matches a glob in ``patterns``."""
    layer = name.rsplit(".", 1)[0]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(layer, p) for p in patterns)


def check_tensors(
    who: str,
    what: Literal["score", "mask"],
    tensors: object,
    shapes: dict[str, torch.Size],
    complete: bool = True,
) -> None:
    """Refuse a hook's output that is not ``{name: tensor}`` with each tensor shaped like its parameter,
    scores real and finite, masks boolean or 0/1; with ``complete``, one entry for every name in ``shapes``.
    Raises :class:`PluginError` naming ``who``, the parameter and what was wrong."""
    if not isinstance(tensors, dict):
        raise PluginError(f"{who} must return a dict {{parameter name: tensor}}, got {type(tensors).__name__}")
    known = "prunable weight" if complete else "parameter"
    for name in tensors:
        if name not in shapes:
            listed = ", ".join(list(shapes)[:8]) + (", ..." if len(shapes) > 8 else "")
            raise PluginError(f"{who} returned a {what} for {name!r}, which is not a {known} here ({listed})")
    if complete and (missing := [name for name in shapes if name not in tensors]):
        raise PluginError(f"{who} returned no {what} for parameter {missing[0]!r} ({len(missing)} missing)")
    for name, tensor in tensors.items():
        where = f"{who}, parameter {name!r}"
        if not torch.is_tensor(tensor):
            raise PluginError(f"{where}: the {what} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.shape != shapes[name]:
            raise PluginError(
                f"{where}: the {what} has shape {list(tensor.shape)} but the parameter has shape {list(shapes[name])}"
            )
        if what == "score":
            if tensor.is_complex():
                raise PluginError(f"{where}: scores must be real, got dtype {tensor.dtype}")
            bad = int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0
            if bad:
                raise PluginError(f"{where}: {bad} of {tensor.numel()} scores are NaN or infinite")
        elif tensor.dtype != torch.bool and not bool(((tensor == 0) | (tensor == 1)).all()):
            raise PluginError(f"{where}: a mask of dtype {tensor.dtype} holds values other than 0 and 1")


class PruningContext:
    """What a score may look at. Costly items are computed only when a score asks for them."""

    def __init__(
        self,
        model: nn.Module,
        weights: dict[str, nn.Parameter],
        masks: Masks,
        calibration_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
        initial_state: Callable[[], dict[str, torch.Tensor]],
        seed: int,
        input_shape: tuple[int, ...] | None = None,
        max_layer_sparsity: float | None = None,
    ) -> None:
        self.model = model
        self.masks = masks
        self.seed = seed
        self.input_shape = input_shape  # of one example, without the batch dimension (data-free scores)
        self.max_layer_sparsity = max_layer_sparsity  # no layer may lose more than this fraction (None: no cap)
        self._weights = weights
        self._calibration_batch = calibration_batch
        self._initial_state = initial_state

    def subset(self, names: Iterable[str]) -> PruningContext:
        """The same context over only the weights ``names`` (e.g. to prune the classifier at its own rate)."""
        return PruningContext(
            self.model,
            {name: self._weights[name] for name in names},
            self.masks,
            self._calibration_batch,
            self._initial_state,
            self.seed,
            self.input_shape,
            self.max_layer_sparsity,
        )

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """``{parameter name: prunable weight}``, detached: a score must not modify them."""
        return {name: w.detach() for name, w in self._weights.items()}

    @cached_property
    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of training examples (inputs, targets), fixed by the cell's seed."""
        return self._calibration_batch()

    @cached_property
    def gradients(self) -> dict[str, torch.Tensor]:
        """Gradient of the cross-entropy loss on :attr:`batch` for each prunable weight."""
        inputs, targets = self.batch
        self.model.zero_grad()
        with buffers_kept(self.model):
            loss = nn.functional.cross_entropy(self.model(inputs), targets)
            grads = torch.autograd.grad(loss, list(self._weights.values()))
        return dict(zip(self._weights, (g.detach() for g in grads), strict=True))

    @cached_property
    def initial_weights(self) -> dict[str, torch.Tensor]:
        """The prunable weights at initialisation (before dense pretraining)."""
        state = self._initial_state()
        return {name: state[name].to(w.device) for name, w in self._weights.items()}

    @cached_property
    def activations(self) -> dict[str, torch.Tensor]:
        """ShrinkBench's input-activation importance of each layer, per input feature (Linear) or channel (Conv).

        The layer's input over :attr:`batch` is averaged over the batch first (signed), then its
        absolute value averaged over the positions of the channel (Conv) or taken as is (Linear):
        ``a_c = mean_positions |mean_batch x_c|``. A mean, not a norm, so neither the batch size nor
        a conv's map size changes the scale, and one global threshold compares layers fairly.
        Shaped to broadcast against the weight: ``[1, in]`` for Linear, ``[1, in, 1, ...]`` for Conv.
        """
        modules = dict(self.model.named_modules())
        norms: dict[str, torch.Tensor] = {}
        handles = []
        for name, weight in self._weights.items():
            module = modules[name.removesuffix(".weight")]

            def record(mod: nn.Module, inputs: tuple[torch.Tensor, ...], _: Any, name: str = name, w=weight) -> None:
                x = inputs[0].detach().mean(dim=0).abs()  # the batch mean, then its magnitude
                if isinstance(mod, nn.Linear):
                    norm = x.reshape(-1, x.shape[-1]).mean(dim=0).view(1, -1)
                else:
                    per_channel = x.reshape(x.shape[0], -1).mean(dim=1)
                    norm = per_channel.view(1, -1, *([1] * (w.dim() - 2)))
                    if mod.groups > 1:  # weight has Cin/groups input channels: take each group's own
                        norm = norm.view(mod.groups, -1, *norm.shape[2:]).repeat_interleave(
                            mod.out_channels // mod.groups, dim=0
                        )
                norms[name] = norm

            handles.append(module.register_forward_hook(record))
        try:
            with torch.no_grad(), buffers_kept(self.model):
                self.model(self.batch[0])
        finally:
            for handle in handles:
                handle.remove()
        return norms


@contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Restore the model's buffers afterwards: a training-mode forward pass updates BatchNorm's running
    statistics, and looking at the model to score it must not change the model being pruned."""
    saved = [buffer.detach().clone() for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved, strict=True):
                buffer.copy_(value)
