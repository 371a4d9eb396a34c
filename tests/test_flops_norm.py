"""The FLOP counter through LayerNorm, GroupNorm and InstanceNorm.

Two independent references: torch's own FLOP counter (``FlopCounterMode``, 2 FLOPs per
multiply-add) for the dense count, and the real network run on random inputs for which input
channels of a layer are ever nonzero (what the zero-pattern probe must agree with).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.masks import apply_masks, prunable_weights
from harness.methods import create_method
from harness.methods.base import PruningContext
from harness.metrics import model_metrics


def linear_layernorm() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def conv_groupnorm() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def conv_instancenorm(affine: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(2, 4, 3),
        nn.InstanceNorm1d(4, affine=affine),
        nn.ReLU(),
        nn.Conv1d(4, 4, 3),
        nn.Flatten(),
        nn.Linear(4 * 6, 3),
    )


def conv_layernorm_over_channels_and_positions() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.LayerNorm([4, 8]), nn.GELU(), nn.Conv1d(4, 4, 3), nn.Flatten(), nn.Linear(24, 3)
    )


MODELS = {
    "linear-layernorm": (linear_layernorm, (8,)),
    "conv-groupnorm": (conv_groupnorm, (1, 6, 6)),
    "conv-instancenorm": (lambda: conv_instancenorm(False), (2, 10)),
    "conv-instancenorm-affine": (lambda: conv_instancenorm(True), (2, 10)),
    "conv-layernorm": (conv_layernorm_over_channels_and_positions, (2, 10)),
}


def torch_macs(model: nn.Module, example: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2


def ever_nonzero_inputs(model: nn.Module, layer: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Per input channel (feature) of ``layer``: nonzero for any of 64 random inputs, run for real.

    Sign effects (a ReLU cutting a channel that is negative on these inputs) can make this smaller
    than "nonzero for some input", which the probe reports; the tests look where signs do not matter.
    """
    seen = []
    handle = layer.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].detach()))
    with torch.no_grad():
        model.eval()(torch.randn(64, *input_shape, generator=torch.Generator().manual_seed(0)))
    handle.remove()
    x = seen[0] != 0
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1]).any(dim=0)
    return x.transpose(0, 1).reshape(x.shape[1], -1).any(dim=1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_dense_model_with_norm_layers_has_speedup_one_and_torchs_macs(name: str) -> None:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build()
    example = torch.zeros(1, *shape)
    row, layers = model_metrics(model, prunable_weights(model), example)
    assert row["theoretical_speedup"] == 1.0
    assert row["flops_nonzero"] == row["flops_dense"] == torch_macs(model, example)
    assert all(s.dead_inputs == 0 for s in layers)


def test_filter_pruning_through_layernorm_removes_the_next_layers_inputs() -> None:
    torch.manual_seed(0)
    model = linear_layernorm()
    ctx = PruningContext(model, prunable_weights(model), {}, lambda: None, lambda: {}, 0, (8,))
    masks = create_method("filter_l1").masks(ctx, 0.5)
    removed = (~masks["0.bias"]).nonzero().flatten().tolist()
    assert len(removed) == 3
    # the LayerNorm's γ and β of the removed features are masked with the features
    assert masks["1.weight"].tolist() == masks["1.bias"].tolist() == masks["0.bias"].tolist()
    apply_masks(model, masks)
    live = ever_nonzero_inputs(model, model[3], (8,))
    assert (~live).nonzero().flatten().tolist() == removed

    row, layers = model_metrics(model, prunable_weights(model), torch.zeros(1, 8))
    # dense:  8·6 + 6·5 + 5·3 = 93
    # pruned: 3 units · 8 inputs = 24; 3 live inputs · 3 kept units = 9; 3 live inputs · 3 classes = 9
    assert row["flops_dense"] == 93
    assert row["flops_nonzero"] == 24 + 9 + 9
    assert [s.dead_inputs for s in layers] == [0, 3, 2]


def test_zeroing_units_before_a_layernorm_leaves_the_next_layer_whole() -> None:
    """LayerNorm mixes the features: a zero input becomes −μ/σ·γ + β, nonzero, so nothing is saved after it."""
    torch.manual_seed(0)
    model = linear_layernorm()
    with torch.no_grad():
        model[0].weight[:3] = 0.0
        model[0].bias[:3] = 0.0
    assert bool(ever_nonzero_inputs(model, model[3], (8,)).all())
    row, layers = model_metrics(model, prunable_weights(model), torch.zeros(1, 8))
    assert layers[1].dead_inputs == 0
    assert row["flops_nonzero"] == 24 + 30 + 15


@pytest.mark.parametrize(
    ("zeroed", "dead"),
    [
        ([0, 1], [0, 1]),  # a whole group is zero: it normalises to 0, and β = 0 keeps it there
        ([0, 2], []),  # one channel per group: normalising against a live neighbour makes it nonzero
    ],
)
def test_groupnorm_kills_a_channel_only_when_its_whole_group_is_dead(zeroed: list[int], dead: list[int]) -> None:
    torch.manual_seed(0)
    model = conv_groupnorm()
    with torch.no_grad():
        model[0].weight[zeroed] = 0.0
        model[0].bias[zeroed] = 0.0
    live = ever_nonzero_inputs(model, model[2], (1, 6, 6))  # the norm's output, before ReLU cuts its negatives
    assert (~live).nonzero().flatten().tolist() == dead
    _, layers = model_metrics(model, prunable_weights(model), torch.zeros(1, 1, 6, 6))
    assert layers[1].dead_inputs == len(dead)
    assert layers[1].flops_nonzero == 4 * 4 * 9 * 36 * (4 - len(dead)) / 4


def test_a_shift_keeps_a_dead_group_alive() -> None:
    torch.manual_seed(0)
    model = conv_groupnorm()
    with torch.no_grad():
        model[0].weight[:2] = 0.0
        model[0].bias[:2] = 0.0
        model[1].bias[1] = 0.5  # channel 1 outputs the constant 0.5; channel 0 stays dead
    live = ever_nonzero_inputs(model, model[2], (1, 6, 6))
    assert live.tolist() == [False, True, True, True]
    _, layers = model_metrics(model, prunable_weights(model), torch.zeros(1, 1, 6, 6))
    assert layers[1].dead_inputs == 1


@pytest.mark.parametrize("affine", [False, True])
def test_instancenorm_keeps_a_dead_channel_dead(affine: bool) -> None:
    torch.manual_seed(0)
    model = conv_instancenorm(affine)
    with torch.no_grad():
        model[0].weight[1] = 0.0
        model[0].bias[1] = 0.0
    live = ever_nonzero_inputs(model, model[3], (2, 10))
    assert live.tolist() == [True, False, True, True]
    _, layers = model_metrics(model, prunable_weights(model), torch.zeros(1, 2, 10))
    assert layers[1].dead_inputs == 1
    assert layers[1].flops_nonzero == 4 * 4 * 3 * 6 * 3 / 4


def test_filter_pruning_through_groupnorm_masks_its_affine_and_removes_the_channels() -> None:
    torch.manual_seed(0)
    model = conv_groupnorm()
    ctx = PruningContext(model, prunable_weights(model), {}, lambda: None, lambda: {}, 0, (1, 6, 6))
    masks = create_method("filter_l2").masks(ctx, 0.5)
    kept = masks["0.bias"]
    assert masks["1.weight"].tolist() == masks["1.bias"].tolist() == kept.tolist()
    apply_masks(model, masks)
    live = ever_nonzero_inputs(model, model[3], (1, 6, 6))
    assert live.tolist() == kept.tolist()
    _, layers = model_metrics(model, prunable_weights(model), torch.zeros(1, 1, 6, 6))
    # conv2: 2 live inputs · 2 kept filters · 9 · 36 positions
    assert layers[1].flops_nonzero == 2 * 2 * 9 * 36
