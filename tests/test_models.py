"""The model zoo: every registered model builds, runs and follows the harness's conventions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.models import MODELS, IncompatibleInput, create_model

# a small compatible input per model, so a forward pass on 2 CPU cores stays cheap
SMALL_INPUTS: dict[str, tuple[int, ...]] = {
    "lenet_300_100": (1, 8, 8),
    "lenet5": (1, 8, 8),
    "conv2": (3, 8, 8),
    "conv4": (3, 8, 8),
    "conv6": (3, 8, 8),
    "resnet20": (3, 8, 8),
    "resnet32": (3, 8, 8),
    "resnet56": (3, 8, 8),
    "resnet110": (3, 8, 8),
    "vgg11": (3, 8, 8),
    "vgg16": (3, 8, 8),
    "mnist1d_mlp": (1, 40),
    "mnist1d_cnn": (1, 40),
    "resnet18": (3, 32, 32),
    "resnet50": (3, 32, 32),
}
NUM_CLASSES = 7  # unlike any architecture's default, so a hard-coded 10 would show


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def test_registry_lists_every_model() -> None:
    assert MODELS.names() == sorted(SMALL_INPUTS)


@pytest.mark.parametrize("name", sorted(SMALL_INPUTS))
def test_forward_and_classifier(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, SMALL_INPUTS[name], NUM_CLASSES).eval()
    classifier = last_linear(model)
    seen: list[torch.Tensor] = []
    classifier.register_forward_hook(lambda _module, _args, output: seen.append(output))
    with torch.no_grad():
        logits = model(torch.randn(2, *SMALL_INPUTS[name]))
    assert logits.shape == (2, NUM_CLASSES)
    assert classifier.out_features == NUM_CLASSES
    assert torch.equal(seen[-1], logits), "the last nn.Linear must produce the logits"


@pytest.mark.parametrize("name", sorted(SMALL_INPUTS))
def test_builds_on_meta_device(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, SMALL_INPUTS[name], NUM_CLASSES)
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", sorted(SMALL_INPUTS))
def test_same_seed_same_parameters(name: str) -> None:
    def build() -> dict[str, torch.Tensor]:
        torch.manual_seed(1234)
        return create_model(name, SMALL_INPUTS[name], NUM_CLASSES).state_dict()

    first, second = build(), build()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def _lenet_300_100(inputs: int) -> int:
    return inputs * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def _resnet20_option_a() -> int:
    # bias-free 3x3 convs (in * out * 9), BatchNorm weight + bias (2 * out), 6 convs per stage
    stem = 3 * 16 * 9 + 2 * 16
    stage1 = 6 * (16 * 16 * 9 + 2 * 16)
    stage2 = 16 * 32 * 9 + 5 * 32 * 32 * 9 + 6 * 2 * 32
    stage3 = 32 * 64 * 9 + 5 * 64 * 64 * 9 + 6 * 2 * 64
    return stem + stage1 + stage2 + stage3 + 64 * 10 + 10  # zero-pad shortcuts have no parameters


@pytest.mark.parametrize(
    ("name", "input_shape", "num_classes", "expected"),
    [
        ("lenet_300_100", (1, 28, 28), 10, 266_610),
        ("lenet_300_100", (1, 8, 8), 10, 50_610),
        ("resnet20", (3, 32, 32), 10, 269_722),  # He et al. 2016 Table 6: "0.27M"
        ("mnist1d_cnn", (1, 40), 10, 5_210),  # Greydanus & Kobak 2020: the "~5K" CNN
        ("resnet18", (3, 224, 224), 1000, 11_689_512),  # torchvision's figure
        ("resnet50", (3, 224, 224), 1000, 25_557_032),  # torchvision's figure
        ("vgg16", (3, 32, 32), 10, 14_728_266),  # the common CIFAR VGG-16 with BatchNorm
    ],
)
def test_parameter_counts(name: str, input_shape: tuple[int, ...], num_classes: int, expected: int) -> None:
    with torch.device("meta"):
        model = create_model(name, input_shape, num_classes)
    assert parameter_count(model) == expected


def test_pinned_counts_match_hand_arithmetic() -> None:
    assert _lenet_300_100(28 * 28) == 266_610
    assert _lenet_300_100(8 * 8) == 50_610
    assert _resnet20_option_a() == 269_722


def test_lenet5_keeps_classic_geometry_on_mnist() -> None:
    model = create_model("lenet5", (1, 28, 28), 10)
    assert [m.in_features for m in model.modules() if isinstance(m, nn.Linear)] == [16 * 5 * 5, 120, 84]


def test_vgg_skips_pools_on_small_inputs() -> None:
    model = create_model("vgg11", (3, 8, 8), 10)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 8


@pytest.mark.parametrize(
    ("name", "input_shape"),
    [
        ("lenet5", (1, 11, 13)),
        ("conv4", (3, 5, 9)),
        ("resnet20", (2, 9, 7)),
        ("vgg11", (1, 5, 12)),
        ("resnet50", (4, 33, 47)),
    ],
)
def test_odd_and_non_square_images(name: str, input_shape: tuple[int, ...]) -> None:
    model = create_model(name, input_shape, NUM_CLASSES).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *input_shape)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize(
    ("name", "input_shape"),
    [
        ("lenet5", (1, 40)),  # a 2-D conv net given a 1-D signal
        ("lenet5", (1, 2, 2)),
        ("conv6", (3, 4, 4)),  # three pools would reach 0x0
        ("resnet20", (1, 40)),
        ("resnet18", (1, 8, 8)),  # below the 32x32 the ImageNet stem and stages need
        ("vgg16", (1, 40)),
        ("mnist1d_cnn", (1, 28, 28)),  # an image, not a signal
        ("mnist1d_cnn", (1, 2)),
    ],
)
def test_incompatible_input(name: str, input_shape: tuple[int, ...]) -> None:
    with pytest.raises(IncompatibleInput) as raised:
        create_model(name, input_shape, 10)
    assert name in str(raised.value) and str(input_shape) in str(raised.value)
