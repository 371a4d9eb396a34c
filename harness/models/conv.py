"""Conv-2 / Conv-4 / Conv-6 of Frankle & Carbin 2019 ("The Lottery Ticket Hypothesis", Fig. 2).

VGG-like stages of two 3x3 convs (padding 1) and a 2x2 max pool, then fc 256 → 256 → classes.
No BatchNorm: the paper's networks have none.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from harness.models import register_model
from harness.models.lenet import mlp, require_image


def _conv_net(model: str, stage_widths: Sequence[int], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    # every stage halves the map (floor), so a side must be at least 2**stages to stay >= 1
    channels, height, width = require_image(model, input_shape, min_side=2 ** len(stage_widths))
    layers: list[nn.Module] = []
    for stage_width in stage_widths:
        for _ in range(2):
            layers += [nn.Conv2d(channels, stage_width, 3, padding=1), nn.ReLU()]
            channels = stage_width
        layers.append(nn.MaxPool2d(2))
    flat = channels * (height >> len(stage_widths)) * (width >> len(stage_widths))
    head = mlp(flat, (256, 256), num_classes)
    return nn.Sequential(OrderedDict(features=nn.Sequential(*layers), classifier=head))


@register_model("conv2")
def conv2(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv-2: 64, 64, pool."""
    return _conv_net("conv2", (64,), input_shape, num_classes)


@register_model("conv4")
def conv4(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv-4: 64, 64, pool, 128, 128, pool."""
    return _conv_net("conv4", (64, 128), input_shape, num_classes)


@register_model("conv6")
def conv6(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv-6: 64, 64, pool, 128, 128, pool, 256, 256, pool."""
    return _conv_net("conv6", (64, 128, 256), input_shape, num_classes)
