"""ImageNet ResNet-18 and ResNet-50 of He et al. 2016 ("Deep Residual Learning", Table 1).

7x7 stride-2 stem and 3x3 max pool, four stages of 64/128/256/512 widths, adaptive average
pooling and ``fc``. Shortcuts are option B (1x1 conv + BatchNorm projections where the shape
changes), and the bottleneck strides in its 3x3 conv ("ResNet v1.5", as torchvision does), so
for 1000 classes the parameter counts match torchvision's: 11,689,512 and 25,557,032.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from harness.models import register_model
from harness.models.lenet import require_image
from harness.models.resnet_cifar import BlockFactory, ResidualBlock, basic_block, conv_bn, resnet

BOTTLENECK_EXPANSION = 4


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Option B: identity where the shape is kept, else a strided 1x1 conv + BatchNorm."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride))


def bottleneck_block(in_channels: int, width: int, stride: int) -> ResidualBlock:
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4x width (He et al. 2016, Fig. 5 right)."""
    out_channels = width * BOTTLENECK_EXPANSION
    residual = nn.Sequential(
        *conv_bn(in_channels, width, 1),
        nn.ReLU(),
        *conv_bn(width, width, 3, stride),
        nn.ReLU(),
        *conv_bn(width, out_channels, 1),
    )
    return ResidualBlock(residual, projection_shortcut(in_channels, out_channels, stride), out_channels)


def _imagenet_resnet(
    model: str, block: BlockFactory, depths: tuple[int, ...], input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    # five halvings (stem conv, max pool, three strided stages): 32x32 reaches the last stage at 1x1
    channels = require_image(model, input_shape, min_side=32)[0]
    stem = [*conv_bn(channels, 64, 7, stride=2), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
    return resnet(stem, 64, block, (64, 128, 256, 512), depths, num_classes)


@register_model("resnet18")
def resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ImageNet ResNet-18 (He et al. 2016): 4 stages × 2 basic blocks, projection shortcuts; images ≥ 32x32."""
    block = partial(basic_block, shortcut=projection_shortcut)
    return _imagenet_resnet("resnet18", block, (2, 2, 2, 2), input_shape, num_classes)


@register_model("resnet50")
def resnet50(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ImageNet ResNet-50 (He et al. 2016, v1.5): 3-4-6-3 bottleneck blocks, projection shortcuts; images ≥ 32x32."""
    return _imagenet_resnet("resnet50", bottleneck_block, (3, 4, 6, 3), input_shape, num_classes)
