"""Structured and semi-structured pruning: whole channels by filter norm, and N:M groups.

Removing a channel removes work in two layers: its own filter, and the weights of the next layer
that read it. The mask zeroes the filter and its bias (so the channel is exactly zero); the
metrics notice the dead input channels of the next layer (:func:`harness.metrics.live_inputs`),
so ``flops_nonzero`` and ``params_nonzero`` count both savings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from harness.masks import Masks, masks_from_scores
from harness.methods import PruningMethod, register_method
from harness.methods.base import PruningContext

if TYPE_CHECKING:
    from harness.methods.base import Job


class FilterNorm(PruningMethod):
    """Remove whole output channels (Conv) or output units (Linear) of smallest filter norm, in every layer.

    Each layer loses ``round(s · channels)`` channels, weights and bias; the classifier is never
    pruned (its output units are the classes). Channels removed before stay removed.
    """

    family = "structured"
    scope = "layer"
    norm: ClassVar[int]

    class Params(PruningMethod.Params):
        prune_classifier: Literal[False] = False  # removing a classifier unit would remove a class

    def masks(self, ctx: PruningContext, sparsity: float) -> Masks:
        norms = {name: w.flatten(1).norm(p=self.norm, dim=1) for name, w in ctx.weights.items()}
        alive = {name: ctx.masks[name].flatten(1).any(dim=1) for name in ctx.weights if name in ctx.masks}
        keep = masks_from_scores(norms, sparsity, "layer", existing=alive)
        params = dict(ctx.model.named_parameters())
        masks = {}
        for name, w in ctx.weights.items():
            masks[name] = keep[name].view(-1, *[1] * (w.dim() - 1)).expand_as(w).clone()
            if name in ctx.masks:
                masks[name] &= ctx.masks[name]
            bias = name.removesuffix("weight") + "bias"
            if bias in params:
                masks[bias] = keep[name].clone()
        return masks


@register_method("filter_l1")
class FilterL1(FilterNorm):
    """Remove whole output channels / units of smallest L1 filter norm, the same fraction per layer."""

    reference = "Li et al. 2017, Pruning Filters for Efficient ConvNets"
    norm = 1


@register_method("filter_l2")
class FilterL2(FilterNorm):
    """Remove whole output channels / units of smallest L2 filter norm, the same fraction per layer."""

    reference = "He et al. 2018, Soft Filter Pruning for Accelerating Deep CNNs (L2 criterion); Li et al. 2017"
    norm = 2


@register_method("nm_sparsity")
class NMSparsity(PruningMethod):
    """Keep the N largest |w| of every M consecutive input weights (2:4 by default); ignores the cell's sparsity.

    Groups run along the input dimension (input channels of a Conv at each kernel position, input
    features of a Linear), as sparse tensor cores read them. A layer whose input dimension is not a
    multiple of M stays dense, as NVIDIA's ASP leaves it. The cell's sparsity target is replaced by
    what N:M gives: 1 − N/M of the weights of the layers it applies to, which is the ``sparsity``
    recorded in the row; with every layer eligible, exactly 1 − N/M.
    """

    sets_own_sparsity = True

    family = "semi-structured"
    reference = (
        "Mishra et al. 2021, Accelerating Sparse Deep Neural Networks (NVIDIA 2:4); "
        "Zhou et al. 2021, Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch"
    )

    class Params(PruningMethod.Params):
        n: int = Field(2, ge=1)
        m: int = Field(4, ge=2)

        @model_validator(mode="after")
        def _n_below_m(self) -> NMSparsity.Params:
            if self.n >= self.m:
                raise ValueError(f"n:m = {self.n}:{self.m} keeps every weight; n must be below m")
            return self

    def eligible(self, weights: dict[str, torch.Tensor]) -> list[str]:
        """The layers N:M applies to: input dimension a multiple of M."""
        return [name for name, w in weights.items() if w.shape[1] % self.params.m == 0]

    def masks(self, ctx: PruningContext, sparsity: float) -> Masks:
        n, m = self.params.n, self.params.m
        masks = {}
        for name in self.eligible(ctx.weights):
            score = ctx.weights[name].abs()
            if name in ctx.masks:  # pruned weights rank below every kept one
                score = torch.where(ctx.masks[name], score, -1.0)
            groups = score.movedim(1, -1)  # [out, *kernel, in]: consecutive entries along the input dimension
            order = torch.argsort(groups.reshape(-1, m), dim=1, descending=True, stable=True)
            keep = torch.zeros(order.shape, dtype=torch.bool, device=score.device).scatter_(1, order[:, :n], True)
            masks[name] = keep.view(groups.shape).movedim(-1, 1)
            if name in ctx.masks:
                masks[name] &= ctx.masks[name]
        return masks

    def apply(self, job: Job) -> None:
        ctx = self.pruning_context(job)
        job.prune(self.prune_masks(ctx, job.sparsity))
        job.finetune(finish=False)
        eligible = sum(ctx.weights[name].numel() for name in self.eligible(ctx.weights))
        total = sum(w.numel() for w in ctx.weights.values())
        job.finish_level(sparsity=(1 - self.params.n / self.params.m) * eligible / total)
