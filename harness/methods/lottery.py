"""Deconstructing lottery tickets (Zhou et al. 2019): which weights a ticket keeps, what values the
kept weights start from, what happens to the pruned ones — and masks learned on frozen random weights.

Both methods start from the dense model's initialisation θ0 and train with the cell's PRETRAIN
recipe (a ticket is trained from scratch, not fine-tuned); θf is the dense model after pretraining.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from harness.masks import Masks, masks_from_scores
from harness.methods import Method, register_method
from harness.methods.dynamic import GradientFlow
from harness.metrics import sparsity_of
from harness.training import FreezeWeights

if TYPE_CHECKING:
    from harness.methods.base import Job

ZHOU = "Zhou et al. 2019, Deconstructing Lottery Tickets: Zeros, Signs, and the Supermask"

Criterion = Literal[
    "large_final",
    "small_final",
    "large_init",
    "small_init",
    "large_init_large_final",
    "magnitude_increase",
    "movement",
    "random",
]
KeptTreatment = Literal["rewind", "reinit", "reshuffle", "signed_constant"]

# Higher score = kept. wi: the weight at initialisation, wf: after dense training.
_CRITERIA: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "large_final": lambda wi, wf: wf.abs(),  # = IMP (Frankle & Carbin)
    "small_final": lambda wi, wf: -wf.abs(),
    "large_init": lambda wi, wf: wi.abs(),
    "small_init": lambda wi, wf: -wi.abs(),
    "large_init_large_final": lambda wi, wf: torch.minimum(wi.abs(), wf.abs()),  # both above one threshold
    "magnitude_increase": lambda wi, wf: wf.abs() - wi.abs(),
    "movement": lambda wi, wf: (wf - wi).abs(),
}


def criterion_scores(
    criterion: Criterion, initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """Zhou et al.'s mask criteria as scores: the weights with the highest scores are kept."""
    if criterion == "random":
        generator = torch.Generator().manual_seed(seed)
        return {name: torch.rand(w.shape, generator=generator).to(w.device) for name, w in final.items()}
    formula = _CRITERIA[criterion]
    return {name: formula(initial[name], wf) for name, wf in final.items()}


def treat_kept(
    kept: KeptTreatment,
    initial: dict[str, torch.Tensor],
    masks: Masks,
    seed: int,
    fresh_init: Callable[[], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Starting values of the masked layers: kept weights by ``kept``, pruned weights at θ0.

    rewind: θ0; reinit: a fresh draw of the model's initialisation (same distribution);
    reshuffle: the kept θ0 values permuted within each layer; signed_constant: sign(θ0)·σ, with σ
    the standard deviation of the layer's whole initialisation.
    """
    if kept == "rewind":
        return {name: w.clone() for name, w in initial.items()}
    if kept == "reinit":
        fresh = fresh_init()
        return {name: torch.where(masks[name], fresh[name].to(w), w) for name, w in initial.items()}
    if kept == "signed_constant":
        return {name: torch.where(masks[name], w.sign() * w.std(), w) for name, w in initial.items()}
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in initial.items():
        survivors = w[masks[name]]
        permutation = torch.randperm(survivors.numel(), generator=generator).to(w.device)
        out[name] = w.clone()
        out[name][masks[name]] = survivors[permutation]
    return out


def _load_initial(job: Job, weights: dict[str, torch.Tensor]) -> None:
    """Every parameter back to θ0, then the prunable ``weights`` set to the given values."""
    job.load_weights(job.weights("init"))
    job.load_weights(weights, partial=True)


@register_method("lottery_anatomy")
class LotteryAnatomy(Method):
    """One-shot lottery ticket with Zhou et al.'s choice of mask criterion, kept and pruned treatment.

    The mask comes from θ0 and θf by ``criterion`` at the cell's sparsity; kept weights start from
    ``kept``; pruned weights are zero (``pruned: zero``) or frozen at their θ0 values and never
    trained (``frozen``: the row's weights are then not sparse, its ``sparsity`` is the mask's).
    Parameters that are not masked (biases, the classifier unless ``prune_classifier``) rewind to θ0.
    The ticket trains with the PRETRAIN recipe. Extra columns: ``supermask_top1`` /
    ``supermask_top5`` / ``supermask_loss``, the test accuracy of the untrained ticket (treated kept
    weights, pruned weights zero) — Zhou et al.'s supermask.
    """

    family = "lottery"
    reference = ZHOU + "; Frankle & Carbin 2019, The Lottery Ticket Hypothesis"

    class Params(Method.Params):
        criterion: Criterion = "large_final"
        kept: KeptTreatment = "rewind"
        pruned: Literal["zero", "frozen"] = "zero"
        scope: Literal["global", "layer"] = "layer"  # Zhou et al. prune each layer by its own rate
        prune_classifier: bool = False
        gradient_flow: bool = False  # log Evci et al.'s gradient flow into the epoch rows

    def apply(self, job: Job) -> None:
        p, seed = self.params, job.seed
        ctx = job.context(include_classifier=p.prune_classifier)
        initial, final = ctx.initial_weights, ctx.weights
        masks = masks_from_scores(criterion_scores(p.criterion, initial, final, seed), job.sparsity, p.scope)
        start = treat_kept(p.kept, initial, masks, seed, fresh_init=job.fresh_init)

        _load_initial(job, {name: torch.where(masks[name], w, 0.0) for name, w in start.items()})
        supermask = job.evaluate("test")
        if p.pruned == "zero":
            job.prune(masks)
            callbacks = []
        else:
            _load_initial(job, start)
            callbacks = [FreezeWeights({name: (~mask, initial[name]) for name, mask in masks.items()})]
        if p.gradient_flow:
            callbacks.append(GradientFlow(job.val_batch(), masks))
        job.finetune(recipe=job.pretrain_recipe, callbacks=callbacks, finish=False)
        job.finish_level(**{f"supermask_{k}": v for k, v in supermask.items()})


class BernoulliMask(nn.Module):
    """Parametrization ``w ↦ w · m``: m ~ Bernoulli(σ(s)) drawn at every forward in training, with
    the straight-through gradient ∂m/∂s = σ'(s); in eval mode m is ``eval_mask``'s choice."""

    def __init__(self, scores: torch.Tensor, eval_mask: Literal["sample", "mode"]) -> None:
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.eval_mask = eval_mask

    def mask(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One mask; ``generator`` (a CPU generator) makes a sampled mask reproducible."""
        probability = torch.sigmoid(self.scores)
        if self.training or self.eval_mask == "sample":
            p = probability.detach()
            drawn = torch.bernoulli(p) if generator is None else torch.bernoulli(p.cpu(), generator=generator).to(p)
            return drawn + probability - p
        return (probability > 0.5).to(probability)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask()


@register_method("learned_supermask")
class LearnedSupermask(Method):
    """Learn a mask over frozen random weights: m ~ Bernoulli(σ(s)), straight-through gradient to s.

    Zhou et al. §5. Every parameter stays at θ0 (or signed constants, ``weights``); only the scores
    s train, with the PRETRAIN recipe at learning rate ``lr`` (scores see gradients |w| times
    smaller than weights do, so with SGD they need a rate of order 100). The recorded network is
    the frozen weights times one final mask: one draw seeded by the cell (``eval_mask: sample``, as
    in training) or m = [σ(s) > 1/2] (``mode``). The sparsity is learned, not the cell's target: the row's
    ``sparsity`` is the final mask's, over the masked weights (the classifier is masked too by
    default, as in the paper); ``supermask_expected_density`` is the mean σ(s).
    """

    sets_own_sparsity = True

    family = "supermask"
    reference = ZHOU

    class Params(Method.Params):
        weights: Literal["init", "signed_constant"] = "init"
        initial_keep: float = Field(0.5, gt=0, lt=1)  # σ(s) at the start, the same for every weight
        lr: float = Field(100.0, gt=0)  # SGD on the scores; Zhou et al. use rates of this order (unverified)
        eval_mask: Literal["sample", "mode"] = "sample"
        prune_classifier: bool = True

    def apply(self, job: Job) -> None:
        p = self.params
        initial = job.context(include_classifier=p.prune_classifier).initial_weights
        everywhere = {name: torch.ones_like(w, dtype=torch.bool) for name, w in initial.items()}
        kept = "rewind" if p.weights == "init" else "signed_constant"
        _load_initial(job, treat_kept(kept, initial, everywhere, job.seed, fresh_init=job.fresh_init))

        layers = _attach_masks(job.model, initial, p.initial_keep, p.eval_mask)
        recipe = job.pretrain_recipe.model_copy(update={"lr": p.lr})
        try:
            job.finetune(recipe=recipe, finish=False)
        finally:
            scores = _detach_masks(job.model, layers)
        generator = torch.Generator().manual_seed(job.seed)
        with torch.no_grad():
            masks = {name: layer.mask(generator).bool() for name, layer in scores.items()}
            expected_density = float(torch.cat([torch.sigmoid(s.scores).flatten() for s in scores.values()]).mean())
        job.prune(masks)
        job.finish_level(sparsity=sparsity_of(masks), supermask_expected_density=expected_density)


def _attach_masks(
    model: nn.Module, weights: dict[str, torch.Tensor], initial_keep: float, eval_mask: Literal["sample", "mode"]
) -> dict[str, nn.Module]:
    """Freeze every parameter and put a :class:`BernoulliMask` on each named weight."""
    for param in model.parameters():
        param.requires_grad_(False)
    modules = dict(model.named_modules())
    logit = torch.logit(torch.tensor(initial_keep)).item()
    layers = {}
    for name, w in weights.items():
        layers[name] = modules[name.removesuffix(".weight")]
        mask = BernoulliMask(torch.full_like(w, logit), eval_mask)
        parametrize.register_parametrization(layers[name], "weight", mask)
    return layers


def _detach_masks(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, BernoulliMask]:
    """Remove the masks (the weights return to their unmasked values), unfreeze; returns the masks."""
    masks = {}
    for name, layer in layers.items():
        masks[name] = layer.parametrizations.weight[0].eval()
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    for param in model.parameters():
        param.requires_grad_(True)
    return masks
