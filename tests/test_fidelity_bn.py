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
    return {name: (plus - minus) / (2 * eps) for name, plus, minus in zip(weights, shifted[0], shifted[1], strict=True)}


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


def kept_channels(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The kept output channels of every conv of ``model``: all of them where no mask names it."""
    return {
        name: masks[f"{name}.weight"].flatten(1).any(dim=1) if f"{name}.weight" in masks
        else torch.ones(module.out_channels, dtype=torch.bool)
        for name, module in model.named_modules() if isinstance(module, nn.Conv2d)
    }  # fmt: skip


@pytest.mark.parametrize(("mode", "masked_convs"), [("per_layer", 19), ("skip", 9)])
def test_filter_l1_on_resnet20_removes_the_batchnorm_channel_and_the_next_layers_work(mode: str, masked_convs: int):
    torch.manual_seed(0)
    model = create_model("resnet20", (1, 8, 8), 10)
    ctx = PruningContext(model, prunable_weights(model), {}, lambda: None, lambda: {}, 0, (1, 8, 8))
    masks = create_method("filter_l1", {"residual_layers": mode}).masks(ctx, 0.5)
    keep = {name.removesuffix(".weight"): m.flatten(1).any(dim=1) for name, m in masks.items() if m.dim() == 4}
    assert len(keep) == masked_convs  # skip: the blocks' first convs; not the stem nor any block's second conv
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
    for train in (True, False):  # batch statistics or running ones: the removed channel is exactly zero
        model.train(train)
        with torch.no_grad():
            model(torch.randn(16, 1, 8, 8))
        for layer, kept in keep.items():
            assert not outputs[layer][:, ~kept].any(), (train, layer)

    row, _ = model_metrics(model, prunable_weights(model), torch.zeros(1, 1, 8, 8))
    dense, pruned = hand_counted_resnet20_macs(model, kept_channels(model, masks))
    assert row["flops_dense"] == dense
    assert row["flops_nonzero"] == pruned
    if mode == "per_layer":
        assert row["theoretical_speedup"] >= 3.0  # 1.999 when the BatchNorm channel stayed alive
    else:  # each block loses half its multiply-adds, the stem none: below 1 / (1 − 0.5)
        assert 1.9 < row["theoretical_speedup"] < 2.0


def test_filter_l2_cell_on_resnet20_keeps_removed_channels_zero_through_fine_tuning() -> None:
    levels = check_pruning_method(
        "filter_l2", {"residual_layers": "per_layer"}, model="resnet20", sparsity=0.5, granularity="channel"
    )
    row = levels[-1].row
    assert any(name.endswith(".1.weight") and "residual" in name for name in levels[-1].masks)  # BN γ masked
    assert row["theoretical_speedup"] >= 3.0


def test_filter_l1_cell_on_resnet20_skips_the_residual_stream_and_records_it() -> None:
    job = run_method("filter_l1", model="resnet20", sparsity=0.5)
    row, masks = job.levels[-1].row, job.levels[-1].masks
    offered = {layer["layer"] for layer in job.layers if layer["prunable"]}
    assert offered == {f"stage{stage}.{block}.residual.0" for stage in (1, 2, 3) for block in range(3)}
    # by hand, on 1x8x8 digits: the first convs hold 3·16·16·9 + (16·32 + 2·32·32)·9 + (32·64 + 2·64·64)·9
    # = 122,112 of the 267,408 conv weights (stem 144, second convs 145,152); half of their filters go
    assert row["sparsity_achieved"] == pytest.approx(61_056 / 267_408, rel=1e-12)
    dense, pruned = hand_counted_resnet20_macs(job.model, kept_channels(job.model, masks))
    assert row["theoretical_speedup"] == pytest.approx(dense / pruned, rel=1e-12)
    check_pruning_method("filter_l1", model="resnet20", sparsity=0.5, granularity="channel")


def test_filter_pruning_then_a_bloomier_filter_encodes_only_the_weights() -> None:
    """The structured masks name biases and BatchNorm parameters too; the encoder stores weights only."""
    stages = [{"name": "filter_l1", "residual_layers": "per_layer"}, "bloomier"]
    levels = run_method("pipeline", {"stages": stages}, model="resnet20", sparsity=0.5).levels
    assert levels[-1].row["storage_format"] == "bloomier"
    assert levels[-1].row["theoretical_speedup"] >= 3.0
