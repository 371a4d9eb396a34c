"""Model zoo: factories registered by name; ``create_model`` builds any of them for a data set.

A factory takes ``(input_shape, num_classes)`` (input_shape without the batch dimension) and
returns an ``nn.Module`` whose last ``nn.Linear`` is the classifier. A model that cannot take an
input raises :class:`IncompatibleInput` saying why.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from harness.registry import Registry


class IncompatibleInput(ValueError):
    """The model cannot take this data set's input shape or class count."""


ModelFactory = Callable[[tuple[int, ...], int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")
register_model = MODELS.register

_BUILTIN = {
    "harness.models.lenet": ["lenet_300_100", "lenet5"],
    "harness.models.conv": ["conv2", "conv4", "conv6"],
    "harness.models.resnet_cifar": ["resnet20", "resnet32", "resnet56", "resnet110"],
    "harness.models.vgg": ["vgg11", "vgg16"],
    "harness.models.mnist1d": ["mnist1d_mlp", "mnist1d_cnn"],
    "harness.models.resnet_imagenet": ["resnet18", "resnet50"],
}
for _module, _names in _BUILTIN.items():
    for _name in _names:
        MODELS.add_lazy(_name, f"{_module}:{_name}")


def create_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MODELS.get(name)(tuple(input_shape), num_classes)
