"""Methods on BatchNorm networks (ResNet-20, VGG): GraSP's Hessian-gradient product and filter pruning.

References are independent of the code under test: GraSP's H·g by central finite differences of
the gradient in float64; filter pruning's speedup counted by hand from ResNet-20's layer shapes.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from harness.masks import apply_masks, prunable_weights
from harness.methods import create_method
from harness.methods.base import PruningContext
from harness.metrics import model_metrics
from harness.models import create_model
from harness.testing import check_pruning_method, run_method


def context(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> PruningContext:
    return PruningContext(model, prunable_weights(model), {}, lambda: batch, lambda: {}, 0, (3, 8, 8))


def digit_like_batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)


# -- GraSP -------------------------------------------------------------------------------------------


def finite_difference_hessian_gradient(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], temperature: float, eps: float = 1e-4
) -> dict[str, torch.Tensor]:
    """H·g of the tempered loss over the prunable weights: (g(θ + εg) − g(θ − εg)) / 2ε, float64."""
    probe = copy.deepcopy(model).double().train()
    weights = prunable_weights(probe)
    inputs, targets = batch[0].double(), batch[1]

    def gradient() -> list[torch.Tensor]:
        loss = nn.functional.cross_entropy(probe(inputs) / temperature, targets)
        return [g.detach() for g in torch.autograd.grad(loss, list(weights.values()))]

    g = gradient()
    shifted = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for w, direction in zip(weights.values(), g, strict=True):
                w.add_(sign * eps * direction)
        shifted.append(gradient())
        with torch.no_grad():
            for w, direction in zip(weights.values(), g, strict=True):
                w.sub_(sign * eps * direction)
    return {
        name: (plus - minus) / (2 * eps) for name, plus, minus in zip(weights, shifted[0], shifted[1], strict=True)
    }


def test_grasp_scores_resnet20_as_theta_times_hessian_gradient_and_keeps_its_statistics() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", (3, 8, 8), 10).train()
    batch = digit_like_batch()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    scores = create_method("grasp").score(context(model, batch))

    reference = finite_difference_hessian_gradient(model, batch, temperature=200.0)
    weights = prunable_weights(model)
    assert set(scores) == set(weights)
    for name, w in weights.items():
        expected = (w.detach().double() * reference[name]).float()
        scale = expected.abs().max()
        assert scale > 0, name
        assert torch.allclose(scores[name], expected, atol=1e-3 * float(scale)), name
    for name, before in buffers.items():  # scoring ran BatchNorm in train mode: its statistics are restored
        assert torch.equal(dict(model.named_buffers())[name], before), name
    assert model.training


@pytest.mark.parametrize("model", ["resnet20", "vgg11"])
def test_grasp_runs_a_cell_on_batchnorm_models(model: str) -> None:
    levels = check_pruning_method("grasp", model=model, sparsity=0.5)
    assert levels[-1].row["sparsity_achieved"] == pytest.approx(0.5, abs=1e-3)


# -- filter pruning through BatchNorm ------------------------------------------------------------------


def hand_counted_resnet20_macs(model: nn.Module, keep: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(dense, pruned) multiply-adds of ResNet-20 on 8x8 inputs, walked by hand from its definition.

    Stem 3x3 conv at 8x8; stages of 16/32/64 channels at 8x8, 4x4, 2x2; each block's output
    channel is live if its second conv keeps it or the option-A shortcut carries a live channel
    (zero-padded channels carry none); fc reads the pooled live channels. ``keep``: the kept
    output channels of each conv.
    """
    def conv(cin_live: int, cout_live: int, positions: int) -> int:
        return cin_live * cout_live * 9 * positions

    dense = conv(1, 16, 64)
    pruned = conv(1, int(keep["stem.0"].sum()), 64)
    live = keep["stem.0"]
    width, side = 16, 8
    for stage, stage_width in enumerate((16, 32, 64), start=1):
        for block in range(3):
            prefix = f"stage{stage}.{block}.residual"
            if stage_width != width:
                side //= 2
            positions = side * side
            dense += conv(width, stage_width, positions) + conv(stage_width, stage_width, positions)
            inner = keep[f"{prefix}.0"]
            pruned += conv(int(live.sum()), int(inner.sum()), positions)
            pruned += conv(int(inner.sum()), int(keep[f"{prefix}.3"].sum()), positions)
            shortcut = torch.cat([live, torch.zeros(stage_width - width, dtype=torch.bool)])
            live = keep[f"{prefix}.3"] | shortcut
            width = stage_width
    dense += 64 * 10
    pruned += int(live.sum()) * 10
    return dense, pruned


def test_filter_l1_on_resnet20_removes_the_batchnorm_channel_and_the_next_layers_work() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", (1, 8, 8), 10)
    ctx = PruningContext(model, prunable_weights(model), {}, lambda: None, lambda: {}, 0, (1, 8, 8))
    masks = create_method("filter_l1").masks(ctx, 0.5)
    keep = {name.removesuffix(".weight"): m.flatten(1).any(dim=1) for name, m in masks.items() if m.dim() == 4}
    # every conv is followed by its BatchNorm (the next module); its γ and β go with the channel
    modules = dict(model.named_modules())
    for layer, kept in keep.items():
        parent, _, index = layer.rpartition(".")
        norm = f"{parent}.{int(index) + 1}"
        assert isinstance(modules[norm], nn.BatchNorm2d)
        assert masks[f"{norm}.weight"].tolist() == masks[f"{norm}.bias"].tolist() == kept.tolist()
    apply_masks(model, masks)

    outputs = {}
    for layer in keep:
        parent, _, index = layer.rpartition(".")
        norm = modules[f"{parent}.{int(index) + 1}"]
        norm.register_forward_hook(lambda m, i, out, layer=layer: outputs.__setitem__(layer, out.detach()))
    for mode in ("train", "eval"):  # batch statistics or running ones: the removed channel is exactly zero
        model.train(mode == "train")
        with torch.no_grad():
            model(torch.randn(16, 1, 8, 8))
        for layer, kept in keep.items():
            assert not outputs[layer][:, ~kept].any(), (mode, layer)

    row, _ = model_metrics(model, prunable_weights(model), torch.zeros(1, 1, 8, 8))
    dense, pruned = hand_counted_resnet20_macs(model, keep)
    assert row["flops_dense"] == dense
    assert row["flops_nonzero"] == pruned
    assert row["theoretical_speedup"] >= 3.0  # 1.999 when the BatchNorm channel stayed alive


def test_filter_l2_cell_on_resnet20_keeps_removed_channels_zero_through_fine_tuning() -> None:
    levels = check_pruning_method("filter_l2", model="resnet20", sparsity=0.5, granularity="channel")
    row = levels[-1].row
    assert any(name.endswith(".1.weight") and "residual" in name for name in levels[-1].masks)  # BN γ masked
    assert row["theoretical_speedup"] >= 3.0


def test_filter_pruning_then_a_bloomier_filter_encodes_only_the_weights() -> None:
    """The structured masks name biases and BatchNorm parameters too; the encoder stores weights only."""
    levels = run_method("pipeline", {"stages": ["filter_l1", "bloomier"]}, model="resnet20", sparsity=0.5).levels
    assert levels[-1].row["storage_format"] == "bloomier"
    assert levels[-1].row["theoretical_speedup"] >= 3.0
