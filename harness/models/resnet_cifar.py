"""CIFAR ResNet-20/32/56/110 of He et al. 2016 ("Deep Residual Learning", Sec. 4.2).

Three stages of 16/32/64 channels with n = (depth - 2) / 6 basic blocks each, BatchNorm, global
average pooling and one linear layer. Shortcuts are **option A** as in the paper's CIFAR
experiments: identity, or stride-2 subsampling with zero-padded extra channels where a stage
widens – parameter-free, so ResNet-20 has 269,722 parameters for 10 classes (the "0.27M" of
Table 6). The residual block and stage builder here are shared with ``resnet_imagenet``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import register_model
from harness.models.lenet import require_image


class ResidualBlock(nn.Module):
    """``relu(residual(x) + shortcut(x))``; ``out_channels`` tells the next block its input width."""

    def __init__(self, residual: nn.Sequential, shortcut: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.residual = residual
        self.shortcut = shortcut
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


ShortcutFactory = Callable[[int, int, int], nn.Module]  # (in_channels, out_channels, stride)
BlockFactory = Callable[[int, int, int], ResidualBlock]  # (in_channels, width, stride)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra_channels))


def pad_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return PadShortcut(stride, out_channels - in_channels)


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """A bias-free conv ("same" padding for odd kernels) followed by BatchNorm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_channels)]


def basic_block(in_channels: int, width: int, stride: int, shortcut: ShortcutFactory) -> ResidualBlock:
    """Two 3x3 conv-BN layers (He et al. 2016, Fig. 2 left)."""
    residual = nn.Sequential(*conv_bn(in_channels, width, 3, stride), nn.ReLU(), *conv_bn(width, width, 3))
    return ResidualBlock(residual, shortcut(in_channels, width, stride), width)


def resnet(
    stem: Sequence[nn.Module],
    stem_channels: int,
    block: BlockFactory,
    widths: Sequence[int],
    depths: Sequence[int],
    num_classes: int,
) -> nn.Module:
    """Stem, then one stage per width (all but the first start with a stride-2 block), global
    average pool and the linear classifier ``fc``; convs get He init (He et al. 2015)."""
    parts: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(*stem))
    channels = stem_channels
    for index, (width, depth) in enumerate(zip(widths, depths, strict=True)):
        blocks = []
        for position in range(depth):
            blocks.append(block(channels, width, 2 if index > 0 and position == 0 else 1))
            channels = blocks[-1].out_channels
        parts[f"stage{index + 1}"] = nn.Sequential(*blocks)
    parts.update(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes))
    model = nn.Sequential(parts)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


def _cifar_resnet(depth: int, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    # two stride-2 stages: from 4x4 on, the last stage still sees a map that was halved
    channels = require_image(f"resnet{depth}", input_shape, min_side=4)[0]
    n = (depth - 2) // 6
    block = partial(basic_block, shortcut=pad_shortcut)
    stem = [*conv_bn(channels, 16, 3), nn.ReLU()]
    return resnet(stem, 16, block, (16, 32, 64), (n, n, n), num_classes)


@register_model("resnet20")
def resnet20(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """CIFAR ResNet-20 (He et al. 2016): 3 stages × 3 basic blocks of 16/32/64 channels, option-A shortcuts."""
    return _cifar_resnet(20, input_shape, num_classes)


@register_model("resnet32")
def resnet32(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """CIFAR ResNet-32 (He et al. 2016): 3 stages × 5 basic blocks of 16/32/64 channels, option-A shortcuts."""
    return _cifar_resnet(32, input_shape, num_classes)


@register_model("resnet56")
def resnet56(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """CIFAR ResNet-56 (He et al. 2016): 3 stages × 9 basic blocks of 16/32/64 channels, option-A shortcuts."""
    return _cifar_resnet(56, input_shape, num_classes)


@register_model("resnet110")
def resnet110(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """CIFAR ResNet-110 (He et al. 2016): 3 stages × 18 basic blocks of 16/32/64 channels, option-A shortcuts."""
    return _cifar_resnet(110, input_shape, num_classes)
