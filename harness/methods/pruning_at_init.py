"""Pruning at initialisation: score the network at θ0, prune it once, train the sparse network from θ0.

Training uses the cell's PRETRAIN recipe, the full schedule the dense model got, as SNIP, GraSP and
SynFlow do: the network starts untrained, so a fine-tuning budget would handicap it. The trained
dense weights are never looked at; the dense model matters only as the baseline of the row.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from pydantic import Field
from torch import nn

from harness.masks import Masks, masks_from_scores
from harness.methods import PruningMethod, register_method
from harness.methods.base import PruningContext, buffers_kept
from harness.methods.score import GlobalGradient

if TYPE_CHECKING:
    from harness.methods.base import Job


class PruningAtInit(PruningMethod):
    """Prune the network at θ0 by its score, then train it from θ0 with the pretrain recipe."""

    family = "pruning-at-init"

    def apply(self, job: Job) -> None:
        job.load_weights(job.weights("init"))  # every score below sees θ0, never the trained weights
        job.prune(self.prune_masks(self.pruning_context(job), job.sparsity))
        job.finetune(recipe=job.pretrain_recipe)


@register_method("snip")
class Snip(PruningAtInit, GlobalGradient):
    """Prune at initialisation by connection sensitivity |g ⊙ θ0| on one training batch (SNIP)."""

    reference = "Lee et al. 2019, SNIP: Single-shot Network Pruning based on Connection Sensitivity"


@register_method("grasp")
class GraSP(PruningAtInit):
    """Prune at initialisation preserving gradient flow: remove the weights of largest −θ ⊙ Hg (GraSP).

    Wang et al. score S(−θ) = −θ ⊙ Hg, the first-order change of the gradient norm ‖g‖² (up to a
    factor 2) when a weight is removed, and remove the weights of largest S: their removal reduces
    gradient flow least (or raises it). Keeping the largest θ ⊙ Hg, as :meth:`score` does, is the same.
    H and g are the Hessian and gradient of the loss over the prunable weights on one training
    batch, with logits divided by ``temperature`` as in the paper's code.
    """

    reference = "Wang et al. 2020, Picking Winning Tickets Before Training by Preserving Gradient Flow"

    class Params(PruningAtInit.Params):
        temperature: float = Field(200.0, gt=0)

    def score(self, ctx: PruningContext) -> dict[str, torch.Tensor]:
        params = dict(ctx.model.named_parameters())
        weights = [params[name] for name in ctx.weights]
        inputs, targets = ctx.batch
        with buffers_kept(ctx.model):
            loss = nn.functional.cross_entropy(ctx.model(inputs) / self.params.temperature, targets)
        gradients = torch.autograd.grad(loss, weights, create_graph=True)
        # ∂/∂θ (g · stop_gradient(g)) = H g: a Hessian-vector product without forming H
        hessian_gradient = torch.autograd.grad(sum((g * g.detach()).sum() for g in gradients), weights)
        return {name: w.detach() * hg for (name, w), hg in zip(ctx.weights.items(), hessian_gradient, strict=True)}


@register_method("synflow")
class SynFlow(PruningAtInit):
    """Prune at initialisation without data: iterate ``rounds`` times on synaptic flow |θ ⊙ ∂R/∂θ| (SynFlow).

    R is the summed output of the network with every parameter and buffer replaced by its absolute
    value, fed a single all-ones input; BatchNorm runs in eval mode (its running statistics) and
    everything in float64, on a copy of the model. Each round prunes to the density
    (1 − s)^(k / rounds), an exponential schedule reaching the target at the last round. Never
    touches the data: neither the context's batch nor its gradients.
    """

    reference = "Tanaka et al. 2020, Pruning neural networks without any data by iteratively conserving synaptic flow"

    class Params(PruningAtInit.Params):
        rounds: int = Field(100, ge=1)

    def masks(self, ctx: PruningContext, sparsity: float) -> Masks:
        if ctx.input_shape is None:
            raise ValueError("synflow feeds an all-ones example and needs the context's input_shape; none was given")
        probe = copy.deepcopy(ctx.model).to(torch.float64).eval()
        with torch.no_grad():
            for tensor in probe.state_dict().values():
                if tensor.is_floating_point():
                    tensor.abs_()
        weights = {name: dict(probe.named_parameters())[name] for name in ctx.weights}
        ones = torch.ones((1, *ctx.input_shape), dtype=torch.float64, device=next(probe.parameters()).device)
        masks = ctx.masks
        for k in range(1, self.params.rounds + 1):
            flow = torch.autograd.grad(probe(ones).sum(), list(weights.values()))
            scores = {name: (w * g).detach().abs() for (name, w), g in zip(weights.items(), flow, strict=True)}
            masks = masks_from_scores(scores, 1 - (1 - sparsity) ** (k / self.params.rounds), self.scope, masks)
            with torch.no_grad():
                for name, w in weights.items():
                    w.mul_(masks[name])
        return masks
