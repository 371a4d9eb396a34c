"""Metric definitions (ShrinkBench's, with its defects fixed). The README cites this module.

- ``compression_ratio`` = all parameters / nonzero parameters, over every parameter tensor
  (weights, biases, BatchNorm, classifier); mask buffers are not parameters.
- ``sparsity_achieved`` = fraction of the prunable weights that are zero.
- ``flops_dense`` = multiply-adds of Conv and Linear layers for one example, from the *real* output
  shapes seen in a forward pass: Conv ``Cin/groups · Cout · prod(kernel) · prod(output spatial)``,
  Linear ``in · out · (positions it is applied at)``. Bias, BatchNorm, pooling and activations are
  ignored. ``flops_nonzero`` scales each layer by its weight density;
  ``theoretical_speedup = flops_dense / flops_nonzero``.
- ``top1``/``top5`` are example-weighted over the whole split (never averaged over batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from harness.masks import PRUNABLE_LAYERS


@dataclass(frozen=True)
class LayerStats:
    """One Conv/Linear layer: its size and multiply-adds, dense and after pruning."""

    layer: str
    kind: str
    params: int
    nonzero: int
    flops_dense: int
    flops_nonzero: float


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(all parameters, nonzero parameters) over every parameter tensor of the model."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
    return total, nonzero


def compression_ratio(total: int, nonzero: int) -> float:
    return total / nonzero if nonzero else math.inf


def sparsity_of(weights: dict[str, torch.Tensor]) -> float:
    """Fraction of the given weights that are exactly zero."""
    total = sum(w.numel() for w in weights.values())
    zeros = sum(w.numel() - int(torch.count_nonzero(w.detach())) for w in weights.values())
    return zeros / total if total else 0.0


def layer_stats(model: nn.Module, example_input: torch.Tensor) -> list[LayerStats]:
    """Per-layer parameters and multiply-adds for ONE example, measured with forward hooks."""
    output_positions: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if isinstance(module, nn.Linear):  # applied at every position but the feature dim
                output_positions[name] = math.prod(output.shape[1:-1])
            else:  # conv: every output spatial position
                output_positions[name] = math.prod(output.shape[2:])

        return record

    layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_LAYERS)}
    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    stats = []
    for name, module in layers.items():
        if name not in output_positions:  # layer not used in the forward pass
            continue
        weight = module.weight.detach()
        if isinstance(module, nn.Linear):
            per_position = module.in_features * module.out_features
        else:
            per_position = (module.in_channels // module.groups) * module.out_channels
            per_position *= math.prod(module.kernel_size)
        dense = per_position * output_positions[name]
        nonzero = int(torch.count_nonzero(weight))
        stats.append(
            LayerStats(
                layer=name,
                kind=type(module).__name__,
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                nonzero=sum(int(torch.count_nonzero(p.detach())) for p in module.parameters(recurse=False)),
                flops_dense=dense,
                flops_nonzero=dense * nonzero / weight.numel(),
            )
        )
    return stats


def model_metrics(
    model: nn.Module, prunable: dict[str, torch.Tensor], example_input: torch.Tensor
) -> tuple[dict[str, float], list[LayerStats]]:
    """The size and speed columns of a result row, and the per-layer table behind them."""
    total, nonzero = parameter_counts(model)
    layers = layer_stats(model, example_input)
    flops_dense = sum(s.flops_dense for s in layers)
    flops_nonzero = sum(s.flops_nonzero for s in layers)
    row = {
        "params_total": total,
        "params_nonzero": nonzero,
        "compression_ratio": compression_ratio(total, nonzero),
        "sparsity_achieved": sparsity_of(prunable),
        "flops_dense": flops_dense,
        "flops_nonzero": flops_nonzero,
        "theoretical_speedup": flops_dense / flops_nonzero if flops_nonzero else math.inf,
    }
    return row, layers


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of examples whose target is among the top-k logits, for each k (k capped at classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top.eq(targets.unsqueeze(1))
    return [int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]
