"""ShrinkBench's baseline scores (Blalock et al. 2020): random, |w|, |w·g| and |w|·‖activation‖, global or per layer."""

from __future__ import annotations

import torch

from harness.methods import PruningMethod, register_method
from harness.methods.base import PruningContext

SHRINKBENCH = "Blalock et al. 2020, What is the state of neural network pruning? (ShrinkBench)"


@register_method("random")
class RandomPruning(PruningMethod):
    """Remove weights uniformly at random (one global draw): the baseline every method must beat."""

    reference = SHRINKBENCH

    def score(self, ctx: PruningContext) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(ctx.seed)
        return {name: torch.rand(w.shape, generator=generator).to(w.device) for name, w in ctx.weights.items()}


@register_method("global_magnitude")
class GlobalMagnitude(PruningMethod):
    """Remove the weights of smallest |w| across all prunable layers (one threshold)."""

    reference = SHRINKBENCH + "; Han et al. 2015"

    def score(self, ctx: PruningContext) -> dict[str, torch.Tensor]:
        return {name: w.abs() for name, w in ctx.weights.items()}


@register_method("layer_magnitude")
class LayerMagnitude(GlobalMagnitude):
    """Remove the same fraction of smallest-|w| weights from every prunable layer."""

    scope = "layer"


@register_method("global_gradient")
class GlobalGradient(PruningMethod):
    """Remove the weights of smallest |w·g| (g: loss gradient on one training batch), one threshold."""

    reference = SHRINKBENCH

    def score(self, ctx: PruningContext) -> dict[str, torch.Tensor]:
        grads = ctx.gradients
        return {name: (w * grads[name]).abs() for name, w in ctx.weights.items()}


@register_method("layer_gradient")
class LayerGradient(GlobalGradient):
    """Remove the same fraction of smallest-|w·g| weights from every prunable layer."""

    scope = "layer"


@register_method("global_activation")
class GlobalActivation(PruningMethod):
    """Remove the weights of smallest |w|·‖input activation‖ (over one training batch), one threshold."""

    reference = SHRINKBENCH + " (MagAct)"

    def score(self, ctx: PruningContext) -> dict[str, torch.Tensor]:
        activations = ctx.activations
        return {name: w.abs() * activations[name] for name, w in ctx.weights.items()}


@register_method("layer_activation")
class LayerActivation(GlobalActivation):
    """Remove the same fraction of smallest-|w|·‖input activation‖ weights from every prunable layer."""

    scope = "layer"
