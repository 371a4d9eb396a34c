"""Metric definitions on small models whose sizes and multiply-adds are counted by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from harness.masks import prunable_weights
from harness.metrics import compression_ratio, layer_stats, model_metrics, parameter_counts, sparsity_of, topk_correct
from harness.training import evaluate


class OddConvNet(nn.Module):
    """Input (2, 9, 9). Output sizes by PyTorch's rule floor((H + 2p − d(k − 1) − 1) / s) + 1:

    conv1 3x3, stride 2, padding 1:             (9 + 2 − 2 − 1) / 2 + 1 = 5  →  4 x 5 x 5
    conv2 3x3, dilation 2, padding 2, groups 2: (5 + 4 − 4 − 1) / 1 + 1 = 5  →  6 x 5 x 5
    fc: 150 → 3
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 6, kernel_size=3, padding=2, dilation=2, groups=2)
        self.fc = nn.Linear(6 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def zero_first(weight: torch.Tensor, n: int) -> None:
    with torch.no_grad():
        weight.view(-1)[:n] = 0


def test_multiply_adds_of_padded_strided_grouped_dilated_convs() -> None:
    """Multiply-adds per example = Cin/groups · Cout · kernel area · output positions:

    conv1: 2 · 4 · 9 · 25 = 1800
    conv2: (4/2) · 6 · 9 · 25 = 2700 (each output channel sees only its group's 2 input channels;
           dilation widens the kernel's reach, not its 9 taps)
    fc:    150 · 3 = 450
    dense total 4950
    """
    model = OddConvNet()
    x = torch.randn(5, 2, 9, 9)  # a batch: the counts are for ONE example all the same
    stats = {s.layer: s for s in layer_stats(model, x)}
    assert {name: s.flops_dense for name, s in stats.items()} == {"conv1": 1800, "conv2": 2700, "fc": 450}
    # parameters: conv1 4·2·9 + 4 = 76, conv2 6·2·9 + 6 = 114, fc 150·3 + 3 = 453
    assert {name: s.params for name, s in stats.items()} == {"conv1": 76, "conv2": 114, "fc": 453}

    # prune half of conv1's 72 weights and a quarter of conv2's 108
    zero_first(model.conv1.weight, 36)
    zero_first(model.conv2.weight, 27)
    row, _ = model_metrics(model, prunable_weights(model), x)
    # nonzero multiply-adds: 1800 · 36/72 + 2700 · 81/108 + 450 = 900 + 2025 + 450 = 3375
    assert row["flops_dense"] == 4950
    assert row["flops_nonzero"] == 3375
    assert row["theoretical_speedup"] == pytest.approx(4950 / 3375)  # 22/15
    # prunable = conv1 and conv2 weights (fc is the classifier): 63 of 180 are zero
    assert row["sparsity_achieved"] == pytest.approx(63 / 180)
    assert row["params_total"] == 76 + 114 + 453 and row["params_nonzero"] == 643 - 63


def test_a_linear_counts_every_position_it_is_applied_at() -> None:
    """Conv1d on length 40, k 5, stride 2: (40 − 4 − 1) / 2 + 1 = 18 positions → 1 · 3 · 5 · 18 = 270.
    A Linear(3, 2) over those 18 positions: 18 · 3 · 2 = 108. Classifier 36 → 10: 360. Total 738."""

    class PerPosition(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 3, 5, stride=2)
            self.mix = nn.Linear(3, 2)
            self.head = nn.Linear(36, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.mix(self.conv(x).transpose(1, 2)).flatten(1))

    stats = layer_stats(PerPosition(), torch.randn(4, 1, 40))
    assert [(s.layer, s.flops_dense) for s in stats] == [("conv", 270), ("mix", 108), ("head", 360)]


def test_compression_counts_every_parameter_biases_and_batchnorm_included() -> None:
    """conv 1→2, 3x3, no bias: 18; BatchNorm(2): weight 2 + bias 2 (running stats are buffers, not
    parameters); classifier 2·4·4 = 32 → 3: 96 + 3. All parameters 18 + 4 + 99 = 121.
    Prune 9 conv weights and 48 classifier weights: 121 − 57 = 64 nonzero, compression 121/64."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)  # BatchNorm's bias starts at 0, which would count as a zero
    zero_first(model[0].weight, 9)
    zero_first(model[4].weight, 48)

    assert parameter_counts(model) == (121, 64)
    row, _ = model_metrics(model, prunable_weights(model), torch.randn(2, 1, 6, 6))
    assert row["compression_ratio"] == 121 / 64
    assert row["sparsity_achieved"] == 0.5  # over the prunable weights: the conv's 18
    # conv 1 · 2 · 9 · (4 · 4) = 288 → 144 nonzero; classifier 96 → 48: speedup 384 / 192
    assert (row["flops_dense"], row["flops_nonzero"], row["theoretical_speedup"]) == (384, 192, 2.0)


def test_edge_cases_of_the_ratios() -> None:
    assert compression_ratio(10, 0) == math.inf
    assert sparsity_of({"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0, 0.0, 2.0])}) == 3 / 5
    assert sparsity_of({}) == 0.0


def test_topk_is_capped_at_the_number_of_classes() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    assert topk_correct(logits, torch.tensor([2, 1])) == [0, 2]


def test_evaluate_weights_every_example_equally_not_every_batch() -> None:
    """Fixed logits [5, 4, 3, 2, 1, 0] for every input; targets 0, 1, 5.
    top1: only the first is right → 1/3 (a mean over batches of 2 would give (1/2 + 0) / 2 = 1/4).
    top5: classes 0..4 → 2/3. loss: logsumexp(logits) − logit[target], averaged over the 3 examples."""
    model = nn.Sequential(nn.Linear(1, 6))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([5.0, 4, 3, 2, 1, 0]))
    data = TensorDataset(torch.zeros(3, 1), torch.tensor([0, 1, 5]))

    result = evaluate(model, data, batch_size=2)
    lse = math.log(sum(math.exp(v) for v in range(6)))
    assert result["top1"] == pytest.approx(1 / 3)
    assert result["top5"] == pytest.approx(2 / 3)
    assert result["loss"] == pytest.approx(((lse - 5) + (lse - 4) + (lse - 0)) / 3)
