"""ShrinkBench's activation importance (MagAct): batch mean first, then the magnitude averaged over a
channel's positions, per input channel; hand-counted on tiny layers, and its scale-free consequences."""

from __future__ import annotations

import torch
from torch import nn

from harness.data import load_splits
from harness.masks import prunable_weights
from harness.methods import create_method
from harness.methods.base import PruningContext
from harness.models import create_model


def context(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> PruningContext:
    return PruningContext(model, prunable_weights(model), {}, lambda: batch, lambda: {}, 0)


def test_linear_importance_is_the_magnitude_of_the_batch_mean() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 9.0], [-2.0, 8.0]]))
    # feature 0: mean (3 + 5)/2 = 4; feature 1: mean (−1 + 1)/2 = 0 (an L2 norm would say √2)
    batch = (torch.tensor([[3.0, -1.0], [5.0, 1.0]]), torch.tensor([0, 1]))
    scores = create_method("global_activation").score(context(model, batch))
    assert scores["0.weight"].tolist() == [[4.0, 0.0], [8.0, 0.0]]


def conv_model() -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]).view(2, 2, 1, 1))
    return model


# channel 0: batch mean [[2, 2], [2, 2]] → mean |·| = 2; channel 1: batch mean [[1, −1], [−3, 7]] → (1+1+3+7)/4 = 3
CONV_INPUT = torch.tensor(
    [
        [[[1.0, 2.0], [3.0, 4.0]], [[2.0, 0.0], [-3.0, 2.0]]],
        [[[3.0, 2.0], [1.0, 0.0]], [[0.0, -2.0], [-3.0, 12.0]]],
    ]
)


def test_conv_importance_is_the_mean_magnitude_over_positions_of_the_batch_mean() -> None:
    scores = create_method("global_activation").score(context(conv_model(), (CONV_INPUT, torch.tensor([0, 1]))))
    assert scores["0.weight"].flatten(1).tolist() == [[2.0, 3.0], [1.0, 6.0]]


def test_importance_depends_on_neither_the_batch_size_nor_the_map_size() -> None:
    reference = create_method("global_activation").score(context(conv_model(), (CONV_INPUT, torch.tensor([0, 1]))))
    doubled = torch.cat([CONV_INPUT, CONV_INPUT])
    larger_map = CONV_INPUT.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # same values, 4x the positions
    model = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.Flatten(), nn.Linear(32, 3))
    model[0].load_state_dict(conv_model()[0].state_dict())
    for batch, net in ((doubled, conv_model()), (larger_map, model)):
        scores = create_method("global_activation").score(context(net, (batch, torch.zeros(len(batch)))))
        assert torch.equal(scores["0.weight"], reference["0.weight"])


def test_a_global_threshold_prunes_the_conv_layers_of_lenet5_too() -> None:
    torch.manual_seed(0)
    model = create_model("lenet5", (1, 8, 8), 10)
    train = load_splits("digits", None, 0).train
    x, y = zip(*(train[i] for i in range(128)), strict=True)
    masks = create_method("global_activation").masks(context(model, (torch.stack(x), torch.stack(y))), 0.5)
    pruned = {name: float((~mask).float().mean()) for name, mask in masks.items()}
    # an L2 norm over batch × positions inflates the conv scores by √positions: it pruned 0.0 % and 2.4 % here
    assert pruned["features.0.weight"] > 0.01 and pruned["features.3.weight"] > 0.05, pruned
