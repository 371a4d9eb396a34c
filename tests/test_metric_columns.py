"""Columns that say what they mean: pruning apart from quantisation zeros, parameter apart from
storage compression, layer collapse; counted by hand on tiny models and recounted on a real cell."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch
from results_factory import write_benchmark
from rich.console import Console
from torch import nn

from harness.leaderboard import print_leaderboard
from harness.masks import prunable_weights
from harness.metrics import model_metrics
from harness.report.checklist import checklist
from harness.report.data import load_report_data, sources_from
from harness.schema import CELLS
from harness.testing import run_method


def two_layer() -> nn.Sequential:
    """Linear 4→3 (prunable) → ReLU → Linear 3→2 (the classifier); every bias 0.5."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 13.0).view(3, 4))
        model[2].weight.fill_(1.0)
        for layer in (model[0], model[2]):
            layer.bias.fill_(0.5)
    return model


MASK = torch.tensor([[False, True, True, True], [True, False, True, True], [True, True, True, False]])


def quantised_two_layer() -> nn.Sequential:
    """three weights of the first layer pruned by MASK, two more and one classifier weight rounded to 0."""
    model = two_layer()
    with torch.no_grad():
        model[0].weight.mul_(MASK)
        model[0].weight[0, 1] = model[0].weight[2, 2] = 0.0
        model[2].weight[1, 0] = 0.0
    return model


def test_rounding_zeros_of_a_quantised_weight_are_not_pruning() -> None:
    model = quantised_two_layer()
    kept = {"0.weight": MASK, "2.weight": torch.ones(2, 3, dtype=torch.bool)}
    row, layers = model_metrics(model, prunable_weights(model), torch.zeros(1, 4), kept)
    # parameters: 12 + 3 + 6 + 2 = 23; kept: 9 (the mask's) + 3 + 6 (a rounded weight is a weight) + 2
    assert (row["params_total"], row["params_nonzero"]) == (23, 20)
    assert row["compression_ratio"] == 23 / 20
    assert row["sparsity_achieved"] == 3 / 12  # the mask's three
    assert row["zero_fraction"] == 5 / 12  # the mask's three and two rounded
    # multiply-adds: 4·3 + 3·2 = 18 dense; 9 + 6 left
    assert (row["flops_dense"], row["flops_nonzero"], row["theoretical_speedup"]) == (18, 15, 18 / 15)
    assert [s.weight_sparsity for s in layers] == [3 / 12, 0.0]
    assert row["layer_collapse"] is False


def test_without_codes_every_zero_counts_as_pruned() -> None:
    model = quantised_two_layer()
    row, layers = model_metrics(model, prunable_weights(model), torch.zeros(1, 4))
    assert row["params_nonzero"] == 7 + 3 + 5 + 2
    assert row["sparsity_achieved"] == row["zero_fraction"] == 5 / 12
    assert row["flops_nonzero"] == 7 + 5


def collapse_model(pruned_first: int) -> tuple[nn.Sequential, dict]:
    model = nn.Sequential(nn.Linear(100, 3), nn.ReLU(), nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.view(-1)[:pruned_first] = 0.0
    return model, prunable_weights(model)


@pytest.mark.parametrize(("pruned", "collapsed"), [(296, False), (297, True)])  # 296/300 < 0.99 <= 297/300
def test_layer_collapse_is_a_layer_at_least_99_percent_pruned(pruned: int, collapsed: bool) -> None:
    model, prunable = collapse_model(pruned)
    row, layers = model_metrics(model, prunable, torch.zeros(1, 100))
    assert layers[0].weight_sparsity == pruned / 300
    assert row["layer_collapse"] is collapsed


def test_a_layer_reading_only_dead_inputs_has_collapsed_too() -> None:
    model, prunable = collapse_model(0)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    row, layers = model_metrics(model, prunable, torch.zeros(1, 100))
    # the middle layer's 12 weights read the first layer's three dead units: removed with them
    assert [s.weight_sparsity for s in layers] == [1.0, 1.0, 0.0]
    assert row["layer_collapse"] is True


def test_two_bit_ptq_at_sparsity_zero_prunes_nothing_and_stores_far_smaller() -> None:
    job = run_method("ptq", {"bits": 2}, sparsity=0.0)
    row = job.rows[-1]
    weights = prunable_weights(job.model)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    assert zeros / total > 0.2  # 2-bit rounding zeroes many weights (main reported them as 0.89 sparsity)…
    assert row["zero_fraction"] == zeros / total
    assert row["sparsity_achieved"] == 0.0  # …but none were pruned
    assert row["theoretical_speedup"] == 1.0
    assert row["compression_ratio"] == 1.0  # every parameter is still there, as a 2-bit code
    assert row["storage_compression"] == row["size_bytes_dense"] / row["size_bytes"]
    assert row["storage_compression"] > 10  # 2 bits + per-channel scales instead of 32 bits


def test_pruned_then_quantised_counts_the_masks_pruning() -> None:
    job = run_method("ptq", {"bits": 2}, sparsity=0.5)
    row = job.rows[-1]
    assert row["sparsity_achieved"] == pytest.approx(0.5, abs=1e-4)
    assert row["zero_fraction"] > row["sparsity_achieved"]


def test_the_leaderboard_names_both_compressions() -> None:
    frame = pd.DataFrame(
        [
            dict(
                dataset="d",
                model="m",
                method="kmeans",
                method_params="{}",
                control="none",
                sparsity=0.5,
                seeds=1,
                top1_mean=0.9,
                top1_std=0.0,
                dense_top1=0.95,
                compression_ratio=2.0,
                storage_compression=29.96,
                theoretical_speedup=2.0,
                layer_collapse=False,
            ),
            dict(
                dataset="d",
                model="m",
                method="old",
                method_params="{}",
                control="none",
                sparsity=0.5,
                seeds=1,
                top1_mean=0.8,
                top1_std=0.0,
                dense_top1=0.95,
                compression_ratio=2.0,
                storage_compression=None,
                theoretical_speedup=2.0,
                layer_collapse=None,
            ),
        ]
    )
    out = io.StringIO()
    print_leaderboard(frame, Console(file=out, width=200))
    text = out.getvalue()
    assert "params ×" in text and "storage ×" in text
    assert "2.00x" in text and "29.96x" in text


def test_the_schema_documents_the_new_columns() -> None:
    documented = {c.name: c.definition for c in CELLS}
    assert "size_bytes_dense / size_bytes" in documented["storage_compression"]
    assert "params_total / params_nonzero" in documented["compression_ratio"]
    assert "pruning" in documented["sparsity_achieved"] and "rounded" in documented["zero_fraction"]
    assert "99 %" in documented["layer_collapse"]


def test_the_report_checklist_names_the_points_whose_layer_collapsed(results_dir) -> None:
    write_benchmark(results_dir, methods=("global_magnitude", "random"), sparsities=(0.5, 0.995), seeds=(0,))
    data = load_report_data(sources_from([results_dir]))
    check = {c.item: c for c in checklist(data.cells, data.points)}["no layer collapse (a layer ≥ 99 % pruned)"]
    assert check.passed is False
    expected = "digits/lenet_300_100 global_magnitude at 0.995, digits/lenet_300_100 random at 0.995"
    assert check.detail == f"collapsed: {expected}"
