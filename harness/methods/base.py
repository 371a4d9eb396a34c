"""Plugin base classes. A method's parameters are a pydantic model, validated with the spec."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from harness.masks import Masks, masks_from_scores

if TYPE_CHECKING:
    from harness.cell import CellJob
    from harness.spec import Recipe


class Method:
    """Base of every method: typed parameters, a family and a reference for listings.

    ``apply(job)`` does the method's work on a cell through the job's verbs (prune, fine-tune,
    record a level); it never sees the scheduler, the results store or MLflow.
    """

    family: ClassVar[str] = "other"
    reference: ClassVar[str] = ""
    # True for methods whose sparsity follows from their own definition (N:M, learned masks): the
    # spec's sparsity axis does not apply, so they get one cell per (model, dataset, seed).
    sets_own_sparsity: ClassVar[bool] = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, params: dict[str, Any] | BaseModel | None = None) -> None:
        if isinstance(params, BaseModel):
            params = params.model_dump()
        self.params = self.Params.model_validate(params or {})

    def apply(self, job: CellJob) -> None:
        raise NotImplementedError

    @classmethod
    def check_recipes(cls, params: BaseModel, pretrain: Recipe, finetune: Recipe) -> None:
        """Raise ValueError when the spec's recipes cannot serve these params (checked when the spec loads)."""

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


class PruningMethod(Method):
    """Score-based pruning: subclasses define ``score``; the lowest scores are removed.

    ``scope = "global"`` uses one threshold across all prunable weights, ``"layer"`` removes the
    same fraction from every layer. The default ``apply`` is ShrinkBench's protocol: prune the
    pretrained model once to the cell's sparsity, then fine-tune with the mask fixed.
    """

    family: ClassVar[str] = "score"
    scope: ClassVar[Literal["global", "layer"]] = "global"

    class Params(Method.Params):
        prune_classifier: bool = False

    def score(self, ctx: PruningContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def masks(self, ctx: PruningContext, sparsity: float) -> Masks:
        return masks_from_scores(self.score(ctx), sparsity, self.scope, existing=ctx.masks)

    def apply(self, job: CellJob) -> None:
        ctx = job.context(include_classifier=self.params.prune_classifier)
        job.prune(self.masks(ctx, job.cell.sparsity))
        job.finetune()


class CompressionMethod(Method):
    """Base of quantisers and encoders: they change how the kept weights are represented and stored.

    ``compress(job)`` does the work on the model as it is and records its level. Run on its own in a
    cell that asks for a sparsity above 0 while nothing is pruned yet, the method first prunes with
    :attr:`prune_first` (one-shot, fine-tuned, its own level): exactly the pipeline
    ``[global_magnitude, <this method>]``.
    """

    prune_first: ClassVar[str] = "global_magnitude"

    def apply(self, job: CellJob) -> None:
        if job.cell.sparsity > 0 and not job.masks:
            from harness.methods import create_method

            run_stage(job, create_method(self.prune_first), self.prune_first)
        self.compress(job)

    def compress(self, job: CellJob) -> None:
        raise NotImplementedError


def run_stage(job: CellJob, method: Method, stage: str) -> None:
    """Apply ``method`` to ``job`` with the levels it records labelled ``stage`` (the ``stage`` column)."""
    previous, job.stage = job.stage, stage
    try:
        method.apply(job)
    finally:
        job.stage = previous


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
    ) -> None:
        self.model = model
        self.masks = masks
        self.seed = seed
        self.input_shape = input_shape  # of one example, without the batch dimension (data-free scores)
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
