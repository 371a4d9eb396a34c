"""LeNet-300-100 and LeNet-5, plus the two helpers the rest of the zoo builds on.

``require_image`` turns an unusable input shape into :class:`IncompatibleInput`; ``mlp`` is the
flatten → hidden ReLU layers → linear classifier stack that every fully connected model and
every conv net's head in this package uses, so the classifier is always the last ``nn.Linear``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from harness.models import IncompatibleInput, register_model


def require_image(model: str, input_shape: tuple[int, ...], min_side: int = 1) -> tuple[int, int, int]:
    """``input_shape`` as ``(C, H, W)``, or :class:`IncompatibleInput` if it is not an image at
    least ``min_side`` pixels high and wide (the smallest map the model's downsampling survives)."""
    if len(input_shape) != 3 or min(input_shape) < 1 or min(input_shape[1:]) < min_side:
        size = f" at least {min_side}x{min_side}" if min_side > 1 else ""
        raise IncompatibleInput(f"{model} needs a (C, H, W) image{size}; got input shape {input_shape}")
    channels, height, width = input_shape
    return channels, height, width


def mlp(in_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """Flatten, a Linear + ReLU per hidden width, then the Linear classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


@register_model("lenet_300_100")
def lenet_300_100(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The 300-100 MLP of LeCun et al. 1998 (Han et al. 2015's pruning baseline); flattens any input.

    Also the fully connected network of Frankle & Carbin 2019."""
    return mlp(math.prod(input_shape), (300, 100), num_classes)


@register_model("lenet5")
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling; images from 4x4 up.

    conv 6@5x5 → pool → conv 16@5x5 → pool → fc 120 → 84 → classes.

    conv1 is padded by 2 so a 28x28 MNIST digit sees the original 32x32 geometry (16x5x5 = 400
    features into fc1). conv2 is padded by 2 along a side only where the pooled map is too
    narrow (< 6) to survive an unpadded 5x5 conv and a pool, so 8x8 digits work too; the
    smallest input is 4x4.
    """
    channels, height, width = require_image("lenet5", input_shape, min_side=4)
    pooled = (height // 2, width // 2)
    padding = tuple(0 if side >= 6 else 2 for side in pooled)
    out_h, out_w = ((side + 2 * pad - 4) // 2 for side, pad in zip(pooled, padding, strict=True))
    features = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    head = mlp(16 * out_h * out_w, (120, 84), num_classes)
    return nn.Sequential(OrderedDict(features=features, classifier=head))
