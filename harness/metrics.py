"""Metric definitions (ShrinkBench's, with its defects fixed). docs/metrics.md cites this module.

"Pruned" below means removed by pruning: an exactly-zero entry, except in a weight a quantiser
stored as codes, where only the entries its mask removed count (rounding to zero is not pruning);
see :func:`kept_pattern`.

- ``params_nonzero`` = parameters not pruned, over every parameter tensor (weights, biases,
  BatchNorm, classifier), less the weights that read a dead input (below); mask buffers are not
  parameters. ``compression_ratio`` = ``params_total / params_nonzero``: parameter compression.
- ``storage_compression`` = ``size_bytes_dense / size_bytes``: how much smaller the model is as
  stored (codes, indices, codebooks and headers counted); set with the size columns in :mod:`harness.encoding`.
- ``sparsity_achieved`` = fraction of the prunable weights pruned. ``zero_fraction`` = fraction of
  the prunable weights that are exactly zero for any reason (pruned, or rounded to zero by a quantiser).
- ``layer_collapse``: some prunable layer has at least 99 % of its weights pruned or reading dead
  inputs (its ``weight_sparsity`` in the layers view).
- ``flops_dense`` = multiply-adds of Conv and Linear layers for one example, from the *real* output
  shapes seen in a forward pass: Conv ``Cin/groups · Cout · prod(kernel) · prod(output spatial)``,
  Linear ``in · out · (positions it is applied at)``. Bias, norm layers, pooling and activations are
  ignored. ``flops_nonzero`` scales each layer by the fraction of its weights not pruned and not
  reading a dead input; ``theoretical_speedup = flops_dense / flops_nonzero``.
- Structured savings: a weight that reads an input channel (Conv) or feature (Linear) that is zero
  for every input — its producing channel was removed, bias included, and no norm layer after it
  brings it back — is dropped with that channel, so it counts as removed in ``flops_nonzero`` and
  ``params_nonzero`` (see :func:`live_inputs`).
- ``top1``/``top5`` are example-weighted over the whole split (never averaged over batches).
- ``size_bytes`` / ``size_bytes_dense`` / ``bits_per_weight``: the model as really encoded, against
  4 bytes per parameter; formulas per storage format in :mod:`harness.encoding`.
- ``latency_ms`` / ``latency_dense_ms``: measured batch inference time, protocol in :mod:`harness.latency`.
- Channels physically removed (``remove: true``, :mod:`harness.removal`): the counts above stay relative
  to the architecture before removal (:class:`Architecture`: ``params_total``, ``flops_dense``, the
  prunable weights), and what is left is counted from the smaller model's real shapes and its zeros;
  ``params_physical`` / ``flops_physical`` are the parameters and multiply-adds of the model's
  shapes as they are (zeros included): equal to ``params_total`` / ``flops_dense`` until channels go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.masks import PRUNABLE_LAYERS, Masks

COLLAPSE_SPARSITY = 0.99  # a layer this sparse is (nearly) gone: the row's layer_collapse flag


@dataclass(frozen=True)
class LayerStats:
    """One Conv/Linear layer: its size and multiply-adds, dense and after pruning."""

    layer: str
    kind: str
    params: int
    nonzero: int  # parameters still needed: nonzero, and not reading a dead input
    flops_dense: int
    flops_nonzero: float
    dead_inputs: int  # input channels (Conv) or features (Linear) that are zero for every input
    dead_weights: int  # nonzero weights that read a dead input: removed with it
    weight_sparsity: float  # fraction of the weights pruned or reading a dead input


@dataclass(frozen=True)
class Architecture:
    """Sizes of a model before channels were removed: what a smaller model's counts are relative to."""

    params_total: int
    weight_sizes: dict[str, int]  # entries of every Conv/Linear weight, "layer.weight" -> n
    layer_params: dict[str, int]  # weight and bias of every Conv/Linear layer
    layer_flops: dict[str, int]  # multiply-adds of every Conv/Linear layer for one example
    # weight entries not pruned that went with a removed channel they read: not pruning, so not in sparsity_achieved
    kept_removed: dict[str, int] = field(default_factory=dict)


def architecture(model: nn.Module, example_input: torch.Tensor) -> Architecture:
    """The sizes of ``model``'s shapes as they are now (call before removing channels)."""
    layers = layer_stats(model, example_input)
    modules = dict(model.named_modules())
    return Architecture(
        params_total=sum(p.numel() for p in model.parameters()),
        weight_sizes={f"{s.layer}.weight": modules[s.layer].weight.numel() for s in layers},
        layer_params={s.layer: s.params for s in layers},
        layer_flops={s.layer: s.flops_dense for s in layers},
    )


def kept_pattern(model: nn.Module, quantized_kept: Masks | None = None) -> dict[str, torch.Tensor]:
    """``{parameter name: bool, True where the entry is not pruned}``: nonzero, except for the weights
    named in ``quantized_kept`` (stored as a quantiser's codes), which are kept exactly where it says
    (their pruning mask, or everywhere): a weight rounded to zero is still a weight."""
    kept = quantized_kept or {}
    params = model.named_parameters()
    return {name: kept[name].to(p.device).bool() if name in kept else p.detach() != 0 for name, p in params}


def parameter_counts(model: nn.Module, pattern: dict[str, torch.Tensor] | None = None) -> tuple[int, int]:
    """(all parameters, parameters not pruned) over every parameter tensor; by default not pruned = nonzero."""
    pattern = kept_pattern(model) if pattern is None else pattern
    total = sum(p.numel() for p in model.parameters())
    return total, sum(int(kept.sum()) for kept in pattern.values())


def compression_ratio(total: int, nonzero: int) -> float:
    return total / nonzero if nonzero else math.inf


def sparsity_of(weights: dict[str, torch.Tensor]) -> float:
    """Fraction of the given weights that are exactly zero."""
    total = sum(w.numel() for w in weights.values())
    zeros = sum(w.numel() - int(torch.count_nonzero(w.detach())) for w in weights.values())
    return zeros / total if total else 0.0


def live_inputs(
    model: nn.Module, example_input: torch.Tensor, pattern: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Which inputs of each Conv/Linear layer can ever be nonzero, and at how many positions it is applied.

    A forward pass on the zero pattern, independent of data: every parameter is replaced by 1 where
    it is nonzero and 0 where it is zero, the input is all ones, and each Conv/Linear output is
    reduced to the same 0/1 pattern. Every activation is then >= 0 and a sum of nonnegative terms,
    so it is 0 exactly when it is 0 for every input. BatchNorm (eval mode: an affine map per
    channel) becomes x·[scale ≠ 0] + [shift ≠ 0]. A norm that normalises over a group of entries
    (LayerNorm over its shape, GroupNorm over a group of channels, InstanceNorm over a channel's
    positions) makes an entry nonzero wherever any entry of its group is: the output is
    [γ ≠ 0]·[group has a nonzero entry] + [β ≠ 0] (see :func:`_group_pattern`).
    Assumes activations send positives to positives (ReLU, GELU, tanh, sigmoid, pooling); where
    they do not, inputs are reported live, never dead.
    Returns ``{layer: bool per input channel or feature}`` and ``{layer: output positions}``
    (spatial positions for Conv, positions besides the feature dimension for Linear). ``pattern``
    (see :func:`kept_pattern`) says which entries are there; by default the nonzero ones.
    """
    live: dict[str, torch.Tensor] = {}
    positions: dict[str, int] = {}

    def on_layer(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            nonzero = inputs[0] != 0
            if isinstance(module, nn.Linear):
                live[name] = nonzero.reshape(-1, nonzero.shape[-1]).any(dim=0)
                positions[name] = math.prod(output.shape[1:-1])
            else:
                live[name] = nonzero.transpose(0, 1).reshape(nonzero.shape[1], -1).any(dim=1)
                positions[name] = math.prod(output.shape[2:])
            return (output != 0).to(output.dtype)

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYERS):
            handles.append(module.register_forward_hook(on_layer(name)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) or (
            isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats
        ):  # eval mode: a fixed affine map per channel
            handles.append(module.register_forward_hook(_affine_pattern(module)))
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
            handles.append(module.register_forward_hook(_group_pattern))
    pattern = kept_pattern(model) if pattern is None else pattern
    params = dict(model.named_parameters())
    ones = {name: kept.to(params[name].dtype) for name, kept in pattern.items()}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            torch.func.functional_call(model, ones, (torch.ones_like(example_input[:1]),))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return live, positions


def _affine_pattern(bn: nn.modules.batchnorm._BatchNorm):
    """A forward hook replacing ``bn``'s output by x·[scale ≠ 0] + [shift ≠ 0], its eval-mode map's pattern."""
    with torch.no_grad():
        var = bn.running_var.cpu() if bn.running_var is not None else torch.ones(bn.num_features)
        mean = bn.running_mean.cpu() if bn.running_mean is not None else torch.zeros(bn.num_features)
        scale = (bn.weight.cpu() if bn.affine else 1.0) / torch.sqrt(var + bn.eps)
        shift = (bn.bias.cpu() if bn.affine else 0.0) - mean * scale
        scale, shift = (scale != 0).float(), (shift != 0).float()

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *([1] * (inputs[0].dim() - 2)))
        return inputs[0] * scale.to(inputs[0]).view(shape) + shift.to(inputs[0]).view(shape)

    return hook


def _group_pattern(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    """A forward hook replacing a normalising layer's output by its zero pattern: [γ ≠ 0]·[any of the
    entry's normalisation group nonzero] + [β ≠ 0]. Inside a group with one nonzero entry every entry
    is (x − μ)/σ, nonzero for some input; a group that is zero for every input normalises to 0."""
    x = inputs[0] != 0
    if isinstance(module, nn.LayerNorm):
        dims = tuple(range(x.dim() - len(module.normalized_shape), x.dim()))
        live = x.any(dim=dims, keepdim=True).expand_as(x)
        shape = module.normalized_shape
    else:
        groups = module.num_groups if isinstance(module, nn.GroupNorm) else module.num_features
        per_group = x.reshape(x.shape[0], groups, -1).any(dim=2, keepdim=True)
        live = per_group.expand(x.shape[0], groups, x[0].numel() // groups).reshape(x.shape)
        shape = (x.shape[1], *[1] * (x.dim() - 2))
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    scale = torch.ones(shape, dtype=torch.bool, device=x.device) if weight is None else (weight != 0).view(shape)
    shift = torch.zeros(shape, dtype=torch.bool, device=x.device) if bias is None else (bias != 0).view(shape)
    return ((live & scale) | shift).to(output.dtype)


def _reads_live_input(module: nn.Module, live: torch.Tensor) -> torch.Tensor:
    """Bool, shaped like ``module.weight``: does each weight read an input that can be nonzero?"""
    weight = module.weight
    if isinstance(module, nn.Linear):
        return live.view(1, -1).expand_as(weight)
    per_output = live.view(module.groups, -1).repeat_interleave(module.out_channels // module.groups, dim=0)
    return per_output.view(*per_output.shape, *([1] * (weight.dim() - 2))).expand_as(weight)


def layer_stats(
    model: nn.Module,
    example_input: torch.Tensor,
    pattern: dict[str, torch.Tensor] | None = None,
    original: Architecture | None = None,
) -> list[LayerStats]:
    """Per-layer parameters and multiply-adds for ONE example, from the probe's real output shapes; with
    ``original``, ``params``, ``flops_dense`` and ``weight_sparsity`` are relative to those sizes."""
    pattern = kept_pattern(model) if pattern is None else pattern
    live, positions = live_inputs(model, example_input, pattern)
    stats = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_LAYERS) or name not in positions:  # unused in the forward pass
            continue
        weight = module.weight.detach()
        own = [f"{name}.{param}" for param, _ in module.named_parameters(recurse=False)]
        if isinstance(module, nn.Linear):
            per_position = module.in_features * module.out_features
        else:
            per_position = (module.in_channels // module.groups) * module.out_channels
            per_position *= math.prod(module.kernel_size)
        dense = per_position * positions[name]
        nonzero_weights = pattern[f"{name}.weight"]
        needed = int((nonzero_weights & _reads_live_input(module, live[name].to(weight.device))).sum())
        nonzero = sum(int(pattern[param].sum()) for param in own)
        params = sum(p.numel() for p in module.parameters(recurse=False))
        size = weight.numel() if original is None else original.weight_sizes[f"{name}.weight"]
        stats.append(
            LayerStats(
                layer=name,
                kind=type(module).__name__,
                params=params if original is None else original.layer_params[name],
                nonzero=nonzero - int(nonzero_weights.sum()) + needed,
                flops_dense=dense if original is None else original.layer_flops[name],
                flops_nonzero=dense * needed / weight.numel(),
                dead_inputs=int((~live[name]).sum()),
                dead_weights=int(nonzero_weights.sum()) - needed,
                weight_sparsity=1 - needed / size,
            )
        )
    return stats


def model_metrics(
    model: nn.Module,
    prunable: dict[str, torch.Tensor],
    example_input: torch.Tensor,
    quantized_kept: Masks | None = None,
    original: Architecture | None = None,
) -> tuple[dict[str, float], list[LayerStats]]:
    """The size and speed columns of a result row, and the per-layer table behind them.

    ``quantized_kept``: for each weight stored as a quantiser's codes, where it is kept by pruning
    (see :func:`kept_pattern`); its zeros from rounding then count in ``zero_fraction`` only.
    ``original``: the sizes before channels were removed, which the counts are relative to.
    """
    pattern = kept_pattern(model, quantized_kept)
    physical, nonzero = parameter_counts(model, pattern)
    layers = layer_stats(model, example_input, pattern, original)
    nonzero -= sum(s.dead_weights for s in layers)
    flops_dense = sum(s.flops_dense for s in layers)
    own_shapes = layers if original is None else layer_stats(model, example_input, pattern)
    flops_physical = sum(s.flops_dense for s in own_shapes)
    flops_nonzero = sum(s.flops_nonzero for s in layers)
    total = physical if original is None else original.params_total
    sizes = {name: w.numel() if original is None else original.weight_sizes[name] for name, w in prunable.items()}
    prunable_layers = {name.removesuffix(".weight") for name in prunable}
    gone = sum(original.kept_removed.get(name, 0) for name in prunable) if original else 0
    kept = sum(int(pattern[name].sum()) for name in prunable) + gone
    nonzero_weights = sum(int(torch.count_nonzero(w.detach())) for w in prunable.values()) + gone
    weights = sum(sizes.values())
    row = {
        "params_total": total,
        "params_nonzero": nonzero,
        "params_physical": physical,
        "compression_ratio": compression_ratio(total, nonzero),
        "sparsity_achieved": (weights - kept) / weights if weights else 0.0,
        "zero_fraction": (weights - nonzero_weights) / weights if weights else 0.0,
        "layer_collapse": any(s.weight_sparsity >= COLLAPSE_SPARSITY for s in layers if s.layer in prunable_layers),
        "flops_dense": flops_dense,
        "flops_nonzero": flops_nonzero,
        "flops_physical": flops_physical,
        "theoretical_speedup": flops_dense / flops_nonzero if flops_nonzero else math.inf,
    }
    return row, layers


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of examples whose target is among the top-k logits, for each k (k capped at classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top.eq(targets.unsqueeze(1))
    return [int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]
