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

from harness.masks import Masks, cap_layer_sparsity, masks_from_scores
from harness.methods import Method, register_method
from harness.methods.base import PruningOptions, options_context
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
    "small_init_small_final",
    "large_final_same_sign",
    "magnitude_increase",
    "movement",
    "random",
]
KeptTreatment = Literal["rewind", "reinit", "reshuffle", "signed_constant", "signed_reinit", "signed_reshuffle"]


def _percentile_rank(score: torch.Tensor) -> torch.Tensor:
    """Each entry's place in its layer, highest score first, as a fraction: 0 for the best, (n−1)/n for the worst."""
    order = torch.argsort(score.flatten(), descending=True, stable=True)
    rank = torch.empty(score.numel(), dtype=torch.float64, device=score.device)
    rank[order] = torch.arange(score.numel(), dtype=torch.float64, device=score.device)
    return (rank / score.numel()).view_as(score)


def _both_in_top(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """A score whose top-k is the intersection of the top-q of ``first`` and of ``second`` in the
    layer, for the percentile q that keeps k: an entry is in both top-q sets exactly when the
    worse of its two percentile ranks is below q."""
    return -torch.maximum(_percentile_rank(first), _percentile_rank(second))


def _same_sign_first(wi: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
    """|wf| where the sign did not change, else −1/(1 + |wf|) < 0: every weight that kept its sign ranks
    above every weight that flipped (in any layer), each group ordered by |wf|."""
    magnitude = wf.abs().to(torch.float64)
    return torch.where(wi.sign() == wf.sign(), magnitude, -1.0 / (1.0 + magnitude))


# Higher score = kept, per layer. wi: the weight at initialisation, wf: after dense training.
_CRITERIA: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "large_final": lambda wi, wf: wf.abs(),  # = IMP (Frankle & Carbin)
    "small_final": lambda wi, wf: -wf.abs(),
    "large_init": lambda wi, wf: wi.abs(),
    "small_init": lambda wi, wf: -wi.abs(),
    "large_init_large_final": lambda wi, wf: _both_in_top(wi.abs(), wf.abs()),
    "small_init_small_final": lambda wi, wf: _both_in_top(-wi.abs(), -wf.abs()),
    "large_final_same_sign": _same_sign_first,  # the supermask criterion (Zhou et al. §5)
    "magnitude_increase": lambda wi, wf: wf.abs() - wi.abs(),
    "movement": lambda wi, wf: (wf - wi).abs(),
}


def criterion_scores(
    criterion: Criterion, initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """Zhou et al.'s mask criteria as scores: the weights with the highest scores are kept.

    Criteria on two magnitudes (``large_init_large_final``, ``small_init_small_final``) intersect
    the same per-layer percentile of each, as the paper does; the score ranks by the percentile
    the intersection needs, so a global scope compares layers by percentile, not raw magnitude.
    """
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
    the standard deviation of the layer's whole initialisation; signed_reinit and signed_reshuffle:
    the magnitudes of reinit and reshuffle with the signs of θ0 (Zhou et al.: the signs are what matter).
    """
    if kept == "rewind":
        return {name: w.clone() for name, w in initial.items()}
    if kept in ("reinit", "signed_reinit"):
        fresh = {name: value.to(initial[name]) for name, value in fresh_init().items() if name in initial}
        values = fresh if kept == "reinit" else {name: v.abs() * initial[name].sign() for name, v in fresh.items()}
        return {name: torch.where(masks[name], values[name], w) for name, w in initial.items()}
    if kept == "signed_constant":
        return {name: torch.where(masks[name], w.sign() * w.std(), w) for name, w in initial.items()}
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in initial.items():
        survivors = w[masks[name]]
        permutation = torch.randperm(survivors.numel(), generator=generator).to(w.device)
        shuffled = survivors[permutation]
        out[name] = w.clone()
        out[name][masks[name]] = shuffled if kept == "reshuffle" else shuffled.abs() * survivors.sign()
    return out


def rescale_kept(start: dict[str, torch.Tensor], masks: Masks) -> dict[str, torch.Tensor]:
    """Kept weights × (layer's weights / kept weights): each layer's summed input keeps its scale
    once the pruned weights are gone (Zhou et al.'s weight rescaling). Pruned entries are unchanged."""
    out = {}
    for name, w in start.items():
        kept = int(masks[name].sum())
        factor = masks[name].numel() / kept if kept else 1.0
        out[name] = torch.where(masks[name], w * factor, w)
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
    Parameters that are not masked (biases, the classifier unless ``prune_classifier``, layers
    matching ``exclude``) rewind to θ0; with ``max_layer_sparsity`` no layer's mask removes more
    than that fraction (its best-scored weights come back).
    The ticket trains with the PRETRAIN recipe. Extra columns: ``supermask_top1`` /
    ``supermask_top5`` / ``supermask_loss``, the test accuracy of the untrained ticket (treated kept
    weights, pruned weights zero) — Zhou et al.'s supermask. ``rescale`` multiplies the kept weights
    of each layer by its weights / kept weights before both (:func:`rescale_kept`).
    """

    family = "lottery"
    reference = ZHOU + "; Frankle & Carbin 2019, The Lottery Ticket Hypothesis"

    class Params(PruningOptions):
        criterion: Criterion = "large_final"
        kept: KeptTreatment = "rewind"
        pruned: Literal["zero", "frozen"] = "zero"
        scope: Literal["global", "layer"] = "layer"  # Zhou et al. prune each layer by its own rate
        rescale: bool = False
        gradient_flow: bool = False  # log Evci et al.'s gradient flow into the epoch rows

    def apply(self, job: Job) -> None:
        p, seed = self.params, job.seed
        ctx = options_context(job, p)
        initial, final = ctx.initial_weights, ctx.weights
        scores = criterion_scores(p.criterion, initial, final, seed)
        masks = masks_from_scores(scores, job.sparsity, p.scope, max_layer_sparsity=p.max_layer_sparsity)
        start = treat_kept(p.kept, initial, masks, seed, fresh_init=job.fresh_init)
        if p.rescale:
            start = rescale_kept(start, masks)

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
    s train, for the PRETRAIN recipe's epochs, batch size and schedule but with their own optimiser,
    as in the paper: SGD with momentum ``momentum`` at learning rate ``lr``, no weight decay, whatever
    optimiser the recipe names (scores see gradients |w| times smaller than weights do, so they need
    a rate of order 100; an Adam recipe's rate would leave the mask at chance). The recorded network is
    the frozen weights times one final mask: one draw seeded by the cell (``eval_mask: sample``, as
    in training) or m = [σ(s) > 1/2] (``mode``). The sparsity is learned, not the cell's target: the row's
    ``sparsity`` is the final mask's, over the masked weights (the classifier is masked too by
    default, as in the paper); ``supermask_expected_density`` is the mean σ(s). Layers matching
    ``exclude`` get no mask (they keep their frozen weights); with ``max_layer_sparsity`` a final
    mask that removes more of a layer gets back the layer's weights of highest σ(s).
    """

    sets_own_sparsity = True

    family = "supermask"
    reference = ZHOU

    class Params(PruningOptions):
        weights: Literal["init", "signed_constant"] = "init"
        initial_keep: float = Field(0.5, gt=0, lt=1)  # σ(s) at the start, the same for every weight
        lr: float = Field(100.0, gt=0)  # SGD on the scores; Zhou et al. use rates of this order (unverified)
        momentum: float = Field(0.9, ge=0, lt=1)
        eval_mask: Literal["sample", "mode"] = "sample"
        prune_classifier: bool = True

    def apply(self, job: Job) -> None:
        p = self.params
        initial = options_context(job, p).initial_weights
        everywhere = {name: torch.ones_like(w, dtype=torch.bool) for name, w in initial.items()}
        kept = "rewind" if p.weights == "init" else "signed_constant"
        _load_initial(job, treat_kept(kept, initial, everywhere, job.seed, fresh_init=job.fresh_init))

        layers = _attach_masks(job.model, initial, p.initial_keep, p.eval_mask)
        scores_optimizer = {"optimizer": "sgd", "lr": p.lr, "momentum": p.momentum, "nesterov": False}
        recipe = job.pretrain_recipe.model_copy(update={**scores_optimizer, "weight_decay": 0.0})
        try:
            job.finetune(recipe=recipe, finish=False)
        finally:
            scores = _detach_masks(job.model, layers)
        generator = torch.Generator().manual_seed(job.seed)
        with torch.no_grad():
            masks = {name: layer.mask(generator).bool() for name, layer in scores.items()}
            expected_density = float(torch.cat([torch.sigmoid(s.scores).flatten() for s in scores.values()]).mean())
            if p.max_layer_sparsity is not None:
                probabilities = {name: torch.sigmoid(layer.scores) for name, layer in scores.items()}
                masks = cap_layer_sparsity(masks, probabilities, p.max_layer_sparsity)
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
