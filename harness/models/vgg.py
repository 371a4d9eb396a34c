"""VGG-11 and VGG-16 (Simonyan & Zisserman 2015) in the common CIFAR form: 3x3 conv + BatchNorm
+ ReLU stacks from the paper's configurations A and D, and a single Linear(512, classes).

Small inputs: a 2x2 max pool is **skipped** when the map is already below 2 pixels on a side, so
the net keeps every conv layer and works on any image (8x8 digits keep 3 of the 5 pools); an
adaptive average pool before the classifier covers whatever map size remains.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from harness.models import register_model
from harness.models.lenet import require_image

POOL = "M"
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "vgg16": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL],
}


def _vgg(model: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, height, width = require_image(model, input_shape)
    layers: list[nn.Module] = []
    for item in CONFIGS[model]:
        if item == POOL:
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
            channels = item
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*layers),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(channels, num_classes),
        )
    )


@register_model("vgg11")
def vgg11(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """VGG-11 (configuration A) with BatchNorm and one Linear(512, classes) head, CIFAR style; any image size."""
    return _vgg("vgg11", input_shape, num_classes)


@register_model("vgg16")
def vgg16(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """VGG-16 (configuration D) with BatchNorm and one Linear(512, classes) head, CIFAR style; any image size."""
    return _vgg("vgg16", input_shape, num_classes)
