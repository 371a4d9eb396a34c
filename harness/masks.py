"""Masks: which weights a method keeps. One mechanism shared by every method.

A mask set is ``{parameter name: bool tensor}`` over the *prunable* weights: the weights of
Conv and Linear layers, the classifier (the model's last ``nn.Linear``) excluded unless asked.
Structured methods also mask the bias of a channel they remove, so the channel's output is zero.
Masks are enforced by zeroing the weights, zeroing their gradients (so momentum and weight decay
never move a pruned weight) and zeroing them again after each optimiser step.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Masks = dict[str, torch.Tensor]
PRUNABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def classifier_name(model: nn.Module) -> str:
    """Module name of the classifier: by convention the model's last ``nn.Linear``."""
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return linear[-1]


def prunable_weights(model: nn.Module, include_classifier: bool = False) -> dict[str, nn.Parameter]:
    """``{"layer.weight": parameter}`` for every Conv/Linear weight, in model order."""
    skip = None if include_classifier else classifier_name(model)
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_LAYERS) and name != skip
    }


def masks_from_scores(
    scores: dict[str, torch.Tensor],
    sparsity: float,
    scope: Literal["global", "layer"],
    existing: Masks | None = None,
    max_layer_sparsity: float | None = None,
) -> Masks:
    """Keep the highest scores, removing ``round(sparsity · n)`` weights.

    ``global`` ranks all weights together; ``layer`` removes the same fraction from each layer.
    Weights already pruned in ``existing`` rank below every other weight, so masks only shrink.
    Ties are broken by position, so the removed count is exact. With ``max_layer_sparsity`` a
    layer pruned beyond it gets its best-scored weights back (:func:`cap_layer_sparsity`).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    ranked = {name: _rank_key(s, (existing or {}).get(name)) for name, s in scores.items()}
    if scope == "layer":
        masks = {name: _keep_top(s, round(sparsity * s.numel())) for name, s in ranked.items()}
    else:
        flat = torch.cat([s.flatten() for s in ranked.values()])
        keep = _keep_top(flat, round(sparsity * flat.numel()))
        masks, start = {}, 0
        for name, s in ranked.items():
            masks[name] = keep[start : start + s.numel()].view_as(s)
            start += s.numel()
    return masks if max_layer_sparsity is None else cap_layer_sparsity(masks, scores, max_layer_sparsity, existing)


def cap_layer_sparsity(
    masks: Masks, scores: dict[str, torch.Tensor], cap: float, existing: Masks | None = None
) -> Masks:
    """No layer of ``scores`` keeps fewer than ``n − floor(cap · n)`` weights: a layer pruned beyond the
    cap gets back its pruned weights of highest score (never one ``existing`` already removed). The
    overall sparsity then falls below the target; the row's ``sparsity_achieved`` shows by how much."""
    capped = dict(masks)
    for name, score in scores.items():
        if name not in masks:
            continue
        mask = masks[name].bool()
        excess = int((~mask).sum()) - math.floor(cap * mask.numel() + 1e-9)
        if excess <= 0:
            continue
        revivable = _rank_key(score, (existing or {}).get(name)).flatten()
        revivable = torch.where(mask.flatten().to(revivable.device), -torch.inf, revivable)
        order = torch.argsort(revivable, descending=True, stable=True)[:excess]
        order = order[revivable[order] > -torch.inf]
        flat = mask.flatten().clone()
        flat[order.to(flat.device)] = True
        capped[name] = flat.view_as(mask)
    return capped


def _rank_key(score: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    score = score.detach().to(torch.float64)
    return score if mask is None else torch.where(mask.to(score.device), score, -torch.inf)


def _keep_top(score: torch.Tensor, n_remove: int) -> torch.Tensor:
    keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
    if n_remove > 0:
        order = torch.argsort(score.flatten(), stable=True)
        keep[order[:n_remove]] = False
    return keep.view_as(score)


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device, params[name].dtype))


def mask_gradients(model: nn.Module, masks: Masks) -> None:
    """Zero the gradients of pruned weights (call after backward, before the optimiser step)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(mask.to(grad.device, grad.dtype))
