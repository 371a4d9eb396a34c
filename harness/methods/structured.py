"""Structured and semi-structured pruning: whole channels by filter norm, and N:M groups.

Removing a channel removes work in two layers: its own filter, and the weights of the next layer
that read it. The mask zeroes the filter, its bias and, where a norm layer reads the channel
directly (BatchNorm after a conv), that norm's scale γ and shift β of the channel, so the channel
is exactly zero after the norm too; the metrics notice the dead input channels of the next layer
(:func:`harness.metrics.live_inputs`), so ``flops_nonzero`` and ``params_nonzero`` count both savings.

On a residual network a channel written by a layer whose output is added to a shortcut stays alive
through the addition unless every writer of that channel removed it, so masking it saves that
layer's multiply-adds on paper but removes nothing physically. Li et al. leave those layers whole
(``residual_layers: skip``, the default); ``per_layer`` prunes them like every other layer.
"""

from __future__ import annotations

import glob
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from harness.masks import NORM_LAYERS, Masks, channel_norms, masks_from_scores
from harness.methods import PruningMethod, register_method
from harness.methods.base import PruningContext
from harness.removal import residual_writers

if TYPE_CHECKING:
    from harness.methods.base import Job


class FilterNorm(PruningMethod):
    """Remove whole output channels (Conv) or output units (Linear) of smallest filter norm, in every layer.

    Each layer loses ``round(s · channels)`` channels: weights, bias, and the γ/β of a norm layer
    reading the layer directly; the classifier is never pruned (its output units are the classes).
    With ``residual_layers: skip`` (Li et al.'s protocol) the layers writing a residual stream — their
    outputs added to a shortcut, found through Torch-Pruning's dependency graph — are left whole and
    recorded as not prunable; ``per_layer`` prunes them too. Channels removed before stay removed.
    With ``remove: true`` the same masks are chosen, then the emptied channels leave the model
    (:meth:`Job.remove_channels`) and fine-tuning runs on the smaller one.
    """

    family = "structured"
    scope = "layer"
    version = "2"  # residual_layers: skip by default (version 1 pruned the residual stream's writers too)
    norm: ClassVar[int]

    class Params(PruningMethod.Params):
        prune_classifier: Literal[False] = False  # removing a classifier unit would remove a class
        remove: bool = False  # physically remove the emptied channels (Torch-Pruning) instead of masking them
        # skip: leave the layers whose outputs are added to a shortcut whole (Li et al. 2017); per_layer: prune them
        residual_layers: Literal["skip", "per_layer"] = "skip"

    def pruning_context(self, job: Job) -> PruningContext:
        """The common options' context, with the skipped residual writers excluded (the layers table says so)."""
        ctx = super().pruning_context(job)
        skipped = self.skipped_layers(ctx)
        if not skipped:
            return ctx
        p = self.params
        exclude = (*p.exclude, *sorted(glob.escape(layer) for layer in skipped))
        return job.context(p.prune_classifier, exclude=exclude, max_layer_sparsity=p.max_layer_sparsity)

    def skipped_layers(self, ctx: PruningContext) -> set[str]:
        """The layers of ``ctx.weights`` left whole: under ``skip``, those writing a residual stream."""
        if self.params.residual_layers == "per_layer":
            return set()
        if ctx.input_shape is None:
            raise ValueError("filter pruning with residual_layers: skip traces the model and needs the context's "
                             "input_shape; none was given")  # fmt: skip
        layers = {name.removesuffix(".weight") for name in ctx.weights}
        return residual_writers(ctx.model, _example(ctx)) & layers

    def apply(self, job: Job) -> None:
        job.prune(self.prune_masks(self.pruning_context(job), job.sparsity))
        if self.params.remove:
            job.remove_channels()
        job.finetune()

    def masks(self, ctx: PruningContext, sparsity: float) -> Masks:
        skipped = self.skipped_layers(ctx)
        weights = {name: w for name, w in ctx.weights.items() if name.removesuffix(".weight") not in skipped}
        norms = {name: w.flatten(1).norm(p=self.norm, dim=1) for name, w in weights.items()}
        alive = {name: ctx.masks[name].flatten(1).any(dim=1) for name in weights if name in ctx.masks}
        keep = masks_from_scores(norms, sparsity, "layer", existing=alive)
        params = dict(ctx.model.named_parameters())
        masks = {}
        for name, w in weights.items():
            masks[name] = keep[name].view(-1, *[1] * (w.dim() - 1)).expand_as(w).clone()
            if name in ctx.masks:
                masks[name] &= ctx.masks[name]
            bias = name.removesuffix("weight") + "bias"
            if bias in params:
                masks[bias] = keep[name].clone()
        for layer, norm in _norms_after(ctx).items():
            if f"{layer}.weight" not in weights:
                continue
            channels = keep[f"{layer}.weight"]
            for affine in ("weight", "bias"):
                shape = params[f"{norm}.{affine}"].shape  # [C], or [C, *positions] for a LayerNorm over them
                masks[f"{norm}.{affine}"] = channels.view(-1, *[1] * (len(shape) - 1)).expand(shape).clone()
        return masks


def _norms_after(ctx: PruningContext) -> dict[str, str]:
    """The norm layer reading each masked layer directly; needs an example input unless the model has none."""
    if not any(isinstance(m, NORM_LAYERS) for m in ctx.model.modules()):
        return {}
    if ctx.input_shape is None:
        raise ValueError("filter pruning of a model with norm layers needs the context's input_shape; none was given")
    found = channel_norms(ctx.model, _example(ctx))
    return {layer: norm for layer, norm in found.items() if f"{layer}.weight" in ctx.weights}


def _example(ctx: PruningContext) -> torch.Tensor:
    """A zero batch of two examples on the model's device, for tracing."""
    return torch.zeros((2, *ctx.input_shape), device=next(ctx.model.parameters()).device)


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
