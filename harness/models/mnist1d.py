"""The MLP and CNN baselines of MNIST-1D (Greydanus & Kobak 2020, "Scaling Down Deep Learning").

Both follow the paper's reference code (``mnist1d/models.py``): the MLP is 100 → 100 hidden ReLU
units (any input shape, flattened); the CNN is three stride-2 Conv1d layers of 25 channels with
kernels 5, 3, 3 and padding 1, then one linear layer – 5,210 parameters on (1, 40) with 10
classes, the paper's "~5K" CNN.
"""

from __future__ import annotations

import math

from torch import nn

from harness.models import IncompatibleInput, register_model
from harness.models.lenet import mlp

CNN_CHANNELS = 25
CNN_KERNELS = (5, 3, 3)


@register_model("mnist1d_mlp")
def mnist1d_mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """MNIST-1D's MLP baseline: 100 → 100 hidden ReLU units; flattens any input shape."""
    return mlp(math.prod(input_shape), (100, 100), num_classes)


@register_model("mnist1d_cnn")
def mnist1d_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """MNIST-1D's CNN baseline: three stride-2 Conv1d layers of 25 channels, then the classifier."""
    # the first kernel (5) with padding 1 on both ends needs at least 3 samples
    if len(input_shape) != 2 or min(input_shape) < 1 or input_shape[1] < CNN_KERNELS[0] - 2:
        raise IncompatibleInput(
            f"mnist1d_cnn needs a (C, L) signal with L >= {CNN_KERNELS[0] - 2}; got input shape {input_shape}"
        )
    channels, length = input_shape
    layers: list[nn.Module] = []
    for kernel in CNN_KERNELS:
        layers += [nn.Conv1d(channels, CNN_CHANNELS, kernel, stride=2, padding=1), nn.ReLU()]
        channels, length = CNN_CHANNELS, (length + 2 - kernel) // 2 + 1
    return nn.Sequential(*layers, *mlp(channels * length, (), num_classes))
