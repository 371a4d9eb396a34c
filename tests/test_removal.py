"""``remove: true``: the channels filter pruning masks leave the model, through Torch-Pruning's dependency graph.

References are independent of the harness's counting: the masked model's own outputs, torch's
FlopCounterMode on the smaller model, and channel counts worked out by hand from the widths.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.masks import apply_masks, prunable_weights
from harness.methods import create_method
from harness.methods.base import PruningContext
from harness.metrics import architecture, live_inputs, model_metrics
from harness.models import create_model
from harness.removal import remove_pruned_channels, residual_writers
from harness.testing import _CONFORMANCE_FACTORIES

SHAPES = {"lenet_300_100": (1, 8, 8), "lenet5": (1, 28, 28), "resnet20": (3, 8, 8), "vgg_bn": (1, 8, 8)}
CHAINS = ("lenet_300_100", "lenet5", "vgg_bn")  # no residual add: every masked channel can go
COUNTS = ("params_total", "params_nonzero", "flops_dense", "flops_nonzero", "sparsity_achieved", "zero_fraction")


def _model(name: str) -> nn.Module:
    """A model with the statistics of a trained one: no BatchNorm scale, shift or running mean at its init value."""
    torch.manual_seed(0)
    shape = SHAPES[name]
    if name == "vgg_bn":
        model = _CONFORMANCE_FACTORIES["conformance_vgg_bn"](shape, 10)
    else:
        model = create_model(name, shape, 10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _filter_pruned(model: nn.Module, shape: tuple[int, ...], params: dict | None = None, sparsity: float = 0.5):
    """``model`` masked by filter_l1 in place; returns the masks."""
    method = create_method("filter_l1", params or {})
    weights = {name: w for name, w in prunable_weights(model).items() if not _excluded(method, name)}
    ctx = PruningContext(model, weights, {}, lambda: None, lambda: None, 0, shape)
    masks = method.prune_masks(ctx, sparsity)
    apply_masks(model, masks)
    return masks


def _excluded(method, name: str) -> bool:
    from harness.methods.base import excluded

    return excluded(name, method.params.exclude)


def _removed(name: str, params: dict | None = None):
    """(masked model, removed model, masks, removal, input batch) of filter_l1 at 0.5."""
    shape = SHAPES[name]
    model = _model(name)
    masks = _filter_pruned(model, shape, params)
    masked = copy.deepcopy(model)
    x = torch.randn(8, *shape)
    removal = remove_pruned_channels(model, masks, x)
    return masked, model, masks, removal, x


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one example by torch's own FLOP counter (2 FLOPs per multiply-add)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1])
    return counter.get_total_flops() // 2


def _counts(masked: nn.Module, removed: nn.Module, removal, x: torch.Tensor) -> tuple[dict, dict]:
    """The metric columns of the masked model and of the removed one (relative to the masked architecture)."""
    reference, _ = model_metrics(masked, prunable_weights(masked), x[:1])
    original = dataclasses.replace(architecture(masked, x[:1]), kept_removed=removal.kept_removed)
    counted, _ = model_metrics(removed, prunable_weights(removed), x[:1], original=original)
    return reference, counted


@pytest.mark.parametrize("name", [*CHAINS, "resnet20"])
def test_the_removed_model_computes_what_the_masked_one_did(name: str) -> None:
    masked, removed, _, removal, x = _removed(name)
    assert removal.channels > 0
    with torch.no_grad():
        assert torch.allclose(removed(x), masked(x), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in removed.parameters()) < sum(p.numel() for p in masked.parameters())


@pytest.mark.parametrize("name", [*CHAINS, "resnet20"])
def test_counts_of_the_removed_model_equal_the_masked_models(name: str) -> None:
    masked, removed, _, removal, x = _removed(name)
    reference, counted = _counts(masked, removed, removal, x)
    for column in COUNTS:
        assert counted[column] == pytest.approx(reference[column], rel=1e-12), column
    assert counted["theoretical_speedup"] == pytest.approx(reference["theoretical_speedup"])
    assert counted["flops_physical"] == _macs(removed, x)  # the smaller shapes, by torch's counter
    assert reference["flops_physical"] == reference["flops_dense"] == _macs(masked, x)
    if name in CHAINS:  # every pruned channel is gone: the shapes alone give the masked count
        assert counted["flops_physical"] == reference["flops_nonzero"]
        assert counted["params_physical"] == reference["params_nonzero"]
        assert not any((~mask).any() for mask in removal.masks.values())


@pytest.mark.parametrize("name", CHAINS)
def test_the_channels_removed_are_the_ones_the_masks_chose(name: str) -> None:
    masked, removed, masks, _, x = _removed(name)
    live, _ = live_inputs(masked, x[:1])
    after = dict(removed.named_parameters())
    for param, weight in prunable_weights(masked, include_classifier=True).items():
        layer = param.removesuffix(".weight")
        rows = masks[param].flatten(1).any(dim=1) if param in masks else torch.ones(weight.shape[0], dtype=torch.bool)
        expected = weight.detach()[rows][:, live[layer]]
        assert torch.equal(after[param].detach(), expected), param


RESNET20_WRITERS = {"stem.0", *(f"stage{stage}.{block}.residual.3" for stage in (1, 2, 3) for block in range(3))}
RESNET20_DENSE = 2_535_040  # multiply-adds of one 3x8x8 example
# by hand, on 8x8 inputs: with the writers whole, a block's first conv (Cin → W, 3x3, P output positions) loses half
# its outputs, its second (W → W) half its inputs: Cin·W·9·P/2 + W·W·9·P/2 saved per block
RESNET20_SAVED = (
    3 * (16 * 16 * 9 * 64 // 2 + 16 * 16 * 9 * 64 // 2)
    + (16 * 32 * 9 * 16 // 2 + 32 * 32 * 9 * 16 // 2) + 2 * (32 * 32 * 9 * 16)  # stride 2: 4x4 outputs
    + (32 * 64 * 9 * 4 // 2 + 64 * 64 * 9 * 4 // 2) + 2 * (64 * 64 * 9 * 4)
)  # fmt: skip


def test_the_residual_streams_writers_are_found_through_the_dependency_graph() -> None:
    x = torch.zeros(2, 3, 8, 8)
    assert residual_writers(create_model("resnet20", (3, 8, 8), 10), x) == RESNET20_WRITERS
    # projection shortcuts (ResNet-18): the shortcut's 1x1 conv writes the stream too
    resnet18 = residual_writers(create_model("resnet18", (3, 32, 32), 10), torch.zeros(2, 3, 32, 32))
    blocks = {f"stage{stage}.{block}.residual.3" for stage in (1, 2, 3, 4) for block in (0, 1)}
    assert resnet18 == {"stem.0", *blocks, "stage2.0.shortcut.0", "stage3.0.shortcut.0", "stage4.0.shortcut.0"}
    assert residual_writers(_model("vgg_bn"), torch.zeros(2, 1, 8, 8)) == set()  # no addition


def test_resnet20_skip_masks_only_the_blocks_first_convs_and_removal_delivers_the_masked_speedup() -> None:
    masked, removed, masks, removal, x = _removed("resnet20")  # residual_layers: skip, the default
    inner = {f"stage{stage}.{block}.residual.0" for stage in (1, 2, 3) for block in range(3)}
    assert {name.removesuffix(".weight") for name, mask in masks.items() if mask.dim() == 4} == inner
    # 9 blocks, each first conv keeps round(0.5 · width) of 16/32/64 channels: 3·8 + 3·16 + 3·32 removed
    assert removal.channels == 168
    assert not any((~mask).any() for mask in removal.masks.values())  # every masked channel left the model
    reference, counted = _counts(masked, removed, removal, x)
    assert reference["flops_dense"] == RESNET20_DENSE
    assert counted["flops_physical"] == reference["flops_nonzero"] == _macs(removed, x)
    assert reference["flops_dense"] - counted["flops_physical"] == RESNET20_SAVED == 1_253_376
    masked_speedup = reference["theoretical_speedup"]
    physical_speedup = reference["flops_dense"] / counted["flops_physical"]
    assert masked_speedup == pytest.approx(physical_speedup, rel=0.02)
    assert physical_speedup == pytest.approx(2_535_040 / 1_281_664)  # 1.978: below 1 / (1 − 0.5) by the stem


def test_resnet20_skip_equals_per_layer_with_the_writers_excluded() -> None:
    _, _, skipped, _, _ = _removed("resnet20")
    _, _, excluded, _, _ = _removed("resnet20", {"residual_layers": "per_layer", "exclude": ["stem.0", "*.residual.3"]})
    assert skipped.keys() == excluded.keys()
    assert all(torch.equal(skipped[name], excluded[name]) for name in skipped)


def test_resnet20_per_layer_masks_the_residual_stream_that_removal_must_keep() -> None:
    masked, removed, masks, removal, x = _removed("resnet20", {"residual_layers": "per_layer"})
    assert {name.removesuffix(".weight") for name in masks} >= RESNET20_WRITERS
    # the writers of a residual channel chose their channels apart: none is removed by all of them, so the
    # same 168 inner channels go as under skip, and the stream's masked channels stay in the model as zeros
    assert removal.channels == 168
    for name, module in removed.named_modules():
        if name.endswith("residual.0"):
            assert module.out_channels == masked.get_submodule(name).out_channels // 2
    assert removed.get_submodule("stem.0").out_channels == 16  # written to by every block of stage 1 as well
    leftover = sum(int((~mask).sum()) for mask in removal.masks.values())
    assert leftover > 0  # the residual stream's channels that only some layers pruned stay masked
    reference, counted = _counts(masked, removed, removal, x)
    assert counted["flops_nonzero"] < counted["flops_physical"] < reference["flops_dense"]
    assert reference["flops_dense"] - counted["flops_physical"] == RESNET20_SAVED
    # the masked count promises more than the removed shapes give
    assert reference["theoretical_speedup"] > 1.5 * reference["flops_dense"] / counted["flops_physical"]


@pytest.mark.parametrize("family", ["conformance_layernorm", "conformance_groupnorm", "conformance_grouped"])
def test_channels_a_norm_pools_over_or_a_grouped_conv_holds_stay_masked(family: str) -> None:
    """LayerNorm and GroupNorm normalise over several channels, and a grouped conv needs equal groups: removing
    one channel would change what the others compute, so every group of these models keeps its channels."""
    torch.manual_seed(0)
    model = _CONFORMANCE_FACTORIES[family]((1, 8, 8), 10).eval()
    masks = _filter_pruned(model, (1, 8, 8))
    masked = copy.deepcopy(model)
    x = torch.randn(8, 1, 8, 8)
    removal = remove_pruned_channels(model, masks, x)
    assert removal.channels == 0
    assert {n: p.shape for n, p in model.named_parameters()} == {n: p.shape for n, p in masked.named_parameters()}
    assert all(torch.equal(removal.masks[name], masks[name]) for name in masks)
    with torch.no_grad():
        assert torch.equal(model(x), masked(x))
