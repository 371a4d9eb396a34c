"""Pipelines and the encoders at the end of them: each stage records a labelled level, lossless stages
keep the accuracy and shrink ``size_bytes``, lossy ones score their decoded weights, every row is
sized and timed, and a pipeline spec is checked stage by stage when it loads."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from harness.latency import CsrLinear, median_ms, sparse_inference_model
from harness.methods.quantization import ActivationFakeQuant, activation_grid, quantized_weights
from harness.spec import SpecError, expand, load_spec
from harness.testing import run_method

SIZE_AND_LATENCY = ("size_bytes", "size_bytes_dense", "bits_per_weight", "latency_dense_ms", "latency_ms")


def stages(job) -> list[str]:
    return [level.row["stage"] for level in job.levels]


def test_prune_share_huffman_records_one_level_per_stage() -> None:
    spec = {"stages": ["global_magnitude", {"name": "kmeans", "bits": 4}, {"name": "huffman", "index_bits": 4}]}
    job = run_method("pipeline", spec, sparsity=0.8)
    pruned, shared, coded = (level.row for level in job.levels)
    assert stages(job) == ["global_magnitude", "kmeans", "huffman"]
    assert [row["storage_format"] for row in (pruned, shared, coded)] == ["auto", "auto", "huffman"]
    assert pruned["size_bytes"] > shared["size_bytes"] > coded["size_bytes"]
    assert coded["top1"] == shared["top1"]  # Huffman coding is lossless
    for row in (pruned, shared, coded):
        assert row["size_bytes_dense"] == 4 * row["params_total"]
        assert all(row[column] > 0 for column in SIZE_AND_LATENCY)


def test_a_quantiser_alone_on_a_pruning_cell_prunes_first_and_keeps_the_mask() -> None:
    job = run_method("ptq", {"bits": 4}, sparsity=0.5)
    assert stages(job) == ["global_magnitude", "ptq"]
    for name, mask in job.levels[0].masks.items():
        assert torch.all(job.levels[-1].final_state[name][~mask] == 0)


def test_a_quantiser_on_a_dense_cell_does_not_prune() -> None:
    job = run_method("ptq", {"bits": 8}, sparsity=0.0)
    assert stages(job) == ["ptq"]
    assert job.masks == {}


def test_deepsz_keeps_each_layer_within_its_chosen_bound_and_the_budget() -> None:
    job = run_method("pipeline", {"stages": ["global_magnitude", {"name": "sz", "accuracy_budget": 0.02}]})
    pruned, coded = job.levels
    row = coded.row
    bounds = json.loads(row["sz_bounds"])
    assert set(bounds) == set(quantized_weights(job.model))
    for name, bound in bounds.items():
        before, after = pruned.final_state[name], coded.final_state[name]
        assert (after - before).abs().max() <= bound + 1e-7  # lossless (bound 0) is exact
        assert torch.all(after[before == 0] == 0)  # positions are stored losslessly
    assert row["sz_probe_drop"] <= 0.02
    assert row["size_bytes"] < pruned.row["size_bytes"]


def test_lossless_encoders_keep_accuracy_and_differ_only_in_size() -> None:
    spec = {"stages": ["global_magnitude", {"name": "ptq", "bits": 4}, "bitmask", "relative_index", "huffman"]}
    job = run_method("pipeline", spec, sparsity=0.9)
    rows = [level.row for level in job.levels[1:]]
    assert len({row["top1"] for row in rows}) == 1
    sizes = {row["stage"]: row["size_bytes"] for row in rows}
    assert sizes["huffman"] < sizes["relative_index"] < sizes["bitmask"]  # at 90% sparsity, 5-bit gaps win


@pytest.mark.parametrize(
    ("preset", "params", "last_stages"),
    [
        ("deep_compression", {"rate": 0.5, "bits": 4}, ["iterative", "iterative", "kmeans", "huffman"]),
        ("prune_int8_bitmask", {}, ["global_magnitude", "ptq", "bitmask"]),
    ],
)
def test_presets_run_their_stages_in_order(preset: str, params: dict, last_stages: list[str]) -> None:
    job = run_method(preset, params, sparsity=0.75)
    assert stages(job) == last_stages
    assert job.levels[-1].row["bits_per_weight"] < job.levels[0].row["bits_per_weight"]


def test_a_pipeline_spec_is_checked_stage_by_stage(write_spec) -> None:
    def spec(stages: str) -> str:
        return f"""
name: p
models: [lenet_300_100]
datasets: [digits]
methods: [{{name: pipeline, stages: {stages}}}]
sparsities: [0.5]
seeds: [0]
"""

    with pytest.raises(SpecError, match=r"stages\[1\].*huffmann.*did you mean.*huffman"):
        load_spec(write_spec(spec("[global_magnitude, huffmann]")))
    with pytest.raises(SpecError, match=r"methods\[0\]\.stages\[1\]\.bits: .*less than or equal to 8"):
        load_spec(write_spec(spec("[global_magnitude, {name: kmeans, bits: 12}]")))
    (cell,) = expand(load_spec(write_spec(spec("[global_magnitude, {name: kmeans, bits: 4}, huffman]"))))
    assert cell.method_params == {
        "stages": ({"name": "global_magnitude"}, {"name": "kmeans", "params": {"bits": 4}}, {"name": "huffman"})
    }


def test_sparse_kernels_compute_what_the_model_computes_and_only_where_sparse_enough() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) < 0.1)  # density 0.1 ≤ 0.3: CSR
        model[2].weight.mul_(torch.rand_like(model[2].weight) < 0.6)  # density 0.6: stays dense
    grid = activation_grid(torch.linspace(-3, 3, 100), bits=4, method="minmax", percentile=100.0)
    model[2].register_forward_pre_hook(ActivationFakeQuant(*grid, bits=4))  # hooks survive the swap
    model[0].register_forward_pre_hook(ActivationFakeQuant(*grid, bits=4))
    compressed, replaced = sparse_inference_model(model)
    assert replaced == 1 and isinstance(compressed[0], CsrLinear) and isinstance(compressed[2], nn.Linear)
    x = torch.randn(16, 64)
    with torch.inference_mode():
        assert torch.allclose(compressed(x), model(x), atol=1e-5)
    assert median_ms(compressed, x) > 0
