"""Quantisers: PyTorch's grids, codes that decode to exactly the evaluated weights, the accuracy a
trained LeNet keeps at 8 bits, per-channel ranges at 4 bits, k-means's 2^b shared values, and
BatchNorm folded into the layers before quantising (outputs unchanged, folded weights stored)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from harness.methods.quantization import (
    fold_batchnorm,
    kmeans_1d,
    qparams,
    quantized_weights,
    share_weights,
    uniform_quantize,
)
from harness.models import create_model
from harness.spec import Recipe
from harness.testing import run_method

TRAINED = Recipe(epochs=4, lr=0.05, batch_size=64)  # LeNet-300-100 reaches ~95% top-1 on digits


def weight_with_zeros(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(16, 40, generator=generator) * 0.1
    return weight * (torch.rand(16, 40, generator=generator) > 0.5)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_grids_are_those_of_pytorchs_min_max_observers(bits: int, symmetric: bool) -> None:
    weight = weight_with_zeros() + 0.02  # shift so that min and max differ in size
    qmax = 2**bits - 1
    observer = MinMaxObserver(
        dtype=torch.quint8,
        qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine,
        quant_min=0,
        quant_max=qmax,
    )
    observer(weight)
    scale, zero_point = qparams(weight.min().view(1), weight.max().view(1), bits, symmetric)
    torch_scale, torch_zero_point = observer.calculate_qparams()
    assert torch.allclose(scale, torch_scale) and torch.equal(zero_point, torch_zero_point.int())

    per_channel = PerChannelMinMaxObserver(
        ch_axis=0,
        dtype=torch.quint8,
        qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine,
        quant_min=0,
        quant_max=qmax,
    )
    per_channel(weight)
    scale, zero_point = qparams(weight.min(dim=1).values, weight.max(dim=1).values, bits, symmetric)
    torch_scale, torch_zero_point = per_channel.calculate_qparams()
    assert torch.allclose(scale, torch_scale) and torch.equal(zero_point, torch_zero_point.int())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("weight_range", ["minmax", "mse"])
def test_codes_decode_to_the_fake_quantised_weight_and_zeros_stay_zero(
    symmetric: bool, per_channel: bool, weight_range: str
) -> None:
    weight = weight_with_zeros()
    codes = uniform_quantize(weight, 4, symmetric, per_channel, weight_range)
    decoded = codes.decode(codes.codes, torch.ones_like(weight, dtype=torch.bool))
    rows = weight.reshape(16 if per_channel else 1, -1)
    scale, zero_point = codes.scale, codes.zero_point.int()
    expected = torch.fake_quantize_per_channel_affine(rows, scale, zero_point, 0, 0, 15).view_as(weight)
    assert torch.equal(decoded, expected)
    assert codes.codes.min() >= 0 and codes.codes.max() <= 15
    assert torch.all(decoded[weight == 0] == 0)  # zero is on every grid: pruned weights stay pruned


def test_per_channel_ranges_beat_one_range_at_4_bits_when_rows_differ_in_scale() -> None:
    row_scale = torch.logspace(-3, 0, 16).unsqueeze(1)  # rows from 0.001 to 1
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(0)) * row_scale

    def relative_mse(per_channel: bool) -> float:
        """Squared error of each row relative to the row's scale², averaged over rows."""
        codes = uniform_quantize(weight, 4, True, per_channel)
        error = codes.decode(codes.codes, torch.ones_like(weight, dtype=torch.bool)) - weight
        return float((error.pow(2).mean(dim=1) / row_scale.squeeze(1).pow(2)).mean())

    # one grid's step (~2·3/15 ≈ 0.4) rounds the small rows to 0: relative error 1 for most of them;
    # per-channel grids follow each row: about step²/12 / scale² ≈ (2·3/15)²/12 ≈ 0.013 for every row
    assert relative_mse(per_channel=False) > 0.5
    assert relative_mse(per_channel=True) < 0.05


def test_mse_range_search_is_never_worse_than_min_max_and_clips_heavy_tails() -> None:
    generator = torch.Generator().manual_seed(0)
    normal, uniform = torch.randn(8, 512, generator=generator), torch.rand(8, 512, generator=generator)
    heavy = 0.05 * normal / torch.sqrt(-torch.log(uniform))  # Student's t with 2 degrees of freedom: outliers

    def error(weight_range: str) -> float:
        codes = uniform_quantize(heavy, 4, True, True, weight_range)
        return float((codes.decode(codes.codes, torch.ones_like(heavy, dtype=torch.bool)) - heavy).pow(2).mean())

    assert error("mse") < 0.9 * error("minmax")


def test_kmeans_starts_linear_over_min_max_and_converges_to_the_cluster_means() -> None:
    values = torch.tensor([0.0, 0.1, 1.0, 1.1, 2.0, 2.1])
    centroids, codes = kmeans_1d(values, 3, iterations=0)  # linear initialisation only
    assert torch.allclose(centroids, torch.tensor([0.0, 1.05, 2.1]))
    centroids, codes = kmeans_1d(values, 3, iterations=10)
    assert torch.allclose(centroids, torch.tensor([0.05, 1.05, 2.05]))
    assert codes.tolist() == [0, 0, 1, 1, 2, 2]


def test_share_weights_clusters_only_the_nonzero_weights() -> None:
    weight = weight_with_zeros()
    shared = share_weights(weight, bits=2, iterations=20)
    present = weight != 0
    decoded = shared.decode(shared.codes, present)
    assert torch.all(decoded[~present] == 0)
    assert len(torch.unique(decoded[present])) <= 4


@pytest.mark.parametrize(
    "params",
    [{"bits": 8}, {"bits": 8, "scheme": "affine", "activation_bits": 8, "activation_range": "percentile"}],
)
def test_int8_ptq_of_a_trained_lenet_loses_less_than_a_point(params: dict) -> None:
    job = run_method("ptq", params, sparsity=0.0, pretrain_recipe=TRAINED)
    dense_top1 = job.dense.metrics["dense_top1"]
    assert dense_top1 > 0.9
    assert job.levels[-1].row["top1"] > dense_top1 - 0.01
    assert job.levels[-1].row["bits_per_weight"] < 9  # 8-bit codes plus scales and float32 biases


def test_kmeans_leaves_at_most_2_to_the_b_values_per_layer_and_fine_tunes_the_centroids() -> None:
    job = run_method("kmeans", {"bits": 3}, sparsity=0.8, pretrain_recipe=TRAINED)
    pruned, shared = job.levels
    assert [pruned.row["stage"], shared.row["stage"]] == ["global_magnitude", "kmeans"]
    for name in quantized_weights(job.model):
        before, after = pruned.final_state[name], shared.final_state[name]
        values = torch.unique(after[after != 0])
        assert len(values) <= 8
        assert torch.equal(after != 0, before != 0)  # pruned weights stay zero, kept ones stay kept
        assert not torch.isin(values, share_weights(before, 3, 100).centroids).all()  # training moved them
        stored = job.storage.quantized[name]
        assert torch.equal(stored.decode(stored.codes, after != 0), after)  # what is stored is what was scored


def test_qat_stores_codes_that_decode_to_the_weights_it_evaluates() -> None:
    job = run_method("qat", {"bits": 4}, sparsity=0.0, pretrain_recipe=TRAINED)
    for name, weight in quantized_weights(job.model).items():
        codes = job.storage.quantized[name]
        assert codes.bits == 4
        assert torch.equal(codes.decode(codes.codes, weight != 0), weight.detach().cpu())
        assert all(len(torch.unique(row)) <= 16 for row in weight.detach())  # one 4-bit grid per channel
    assert job.levels[-1].row["top1"] > job.dense.metrics["dense_top1"] - 0.05


def with_trained_statistics(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """``model`` with random BatchNorm affines and running statistics far from (0, 1), in eval mode."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 2 + 0.1)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator))
                module.momentum = None  # cumulative average over the forward passes below
        model.train()
        for _ in range(3):
            model(inputs * 3 + 1)
    return model.eval()


@pytest.mark.parametrize("model_name", ["resnet20", "conv_bn_mlp_bn"])
def test_a_folded_float_model_gives_the_unfolded_outputs_without_its_batchnorms(model_name: str) -> None:
    torch.manual_seed(0)
    if model_name == "resnet20":
        model, inputs = create_model("resnet20", (3, 8, 8), 10), torch.randn(32, 3, 8, 8)
    else:  # a Conv with a bias, and a Linear read by BatchNorm1d
        model = nn.Sequential(
            nn.Conv2d(3, 6, 3, bias=True), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
            nn.Linear(6 * 36, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Linear(20, 10),
        )  # fmt: skip
        inputs = torch.randn(32, 3, 8, 8)
    model = with_trained_statistics(model, inputs)
    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    expected = model(inputs).detach()
    folded = fold_batchnorm(model, inputs[:4])
    assert len(folded) == norms == (19 if model_name == "resnet20" else 2)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert torch.allclose(model(inputs), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_ptq_with_folding_quantises_and_stores_the_folded_weights() -> None:
    job = run_method("ptq", {"bits": 4, "fold_batchnorm": True}, sparsity=0.0, model="resnet20")
    state = job.dense.trained_state  # the unfolded trained model the job started from
    expected_size = 0
    for name, weight in quantized_weights(job.model).items():
        layer = name.removesuffix(".weight")
        parent, _, index = layer.rpartition(".")
        # in ResNet-20 each conv's BatchNorm follows it in its Sequential; the classifier fc has none
        norm = f"{parent}.{int(index) + 1}" if index.isdigit() else None
        original = state[name]
        if norm is not None:
            scale = state[f"{norm}.weight"] / torch.sqrt(state[f"{norm}.running_var"] + 1e-5)
            folded = original * scale.reshape(-1, 1, 1, 1)
            bias = state[f"{norm}.bias"] - scale * state[f"{norm}.running_mean"]
        else:  # the classifier: no norm after it
            folded, bias = original, state[f"{layer}.bias"]
        codes = job.storage.quantized[name]
        assert torch.equal(codes.codes, uniform_quantize(folded, 4, True, True).codes)
        assert torch.allclose(dict(job.model.named_parameters())[f"{layer}.bias"].detach().cpu(), bias, atol=1e-5)
        channels = weight.shape[0]
        # two header bytes, 4-bit codes packed, one float32 scale per channel; the (folded) bias as float32
        expected_size += 2 + math.ceil(weight.numel() * 4 / 8) + 4 * channels + 4 * channels
    assert job.levels[-1].row["size_bytes"] == expected_size  # no BatchNorm parameters left to store
    assert job.levels[-1].row["params_total"] == sum(p.numel() for p in job.model.parameters())


def test_channels_filter_pruning_removed_stay_zero_once_their_batchnorm_is_folded() -> None:
    job = run_method(
        "pipeline", {"stages": ["filter_l1", {"name": "ptq", "fold_batchnorm": True}]}, model="resnet20", sparsity=0.5
    )
    layers = dict(job.model.named_modules())
    pruned_channels = 0
    for name, mask in job.masks.items():
        layer = layers.get(name.removesuffix(".weight"))
        if not isinstance(layer, nn.Conv2d) or not name.endswith(".weight"):
            continue  # the norms' γ/β masks (and biases): those norms are folded away
        gone = ~mask.flatten(1).any(dim=1)  # output channels the filter pruning emptied
        pruned_channels += int(gone.sum())
        assert torch.all(layer.weight.detach()[gone] == 0) and torch.all(layer.bias.detach()[gone] == 0)
    assert pruned_channels > 0
