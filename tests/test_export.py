"""A ``remove: true`` cell end to end: the same rows as the masked cell where they must agree, latency measured
on the smaller model, and the model exported as a state dict with masks and as ONNX that onnxruntime runs."""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app
from harness.export import export_job, load_exported
from harness.testing import run_method

SAME = ("top1_pruned", "params_total", "params_nonzero", "flops_dense", "flops_nonzero", "sparsity_achieved")


@pytest.fixture(scope="module")
def cells():
    """filter_l1 at 0.5 on LeNet-5 / digits, masked and removed, from the same dense model and seed."""
    masked = run_method("filter_l1", model="lenet5", sparsity=0.5)
    removed = run_method("filter_l1", {"remove": True}, model="lenet5", sparsity=0.5)
    return masked, removed


def test_removed_cell_rows_agree_with_the_masked_cells(cells) -> None:
    masked, removed = cells
    before, after = masked.rows[-1], removed.rows[-1]
    for column in SAME:  # accuracy before fine-tuning is the same model's: identical
        assert after[column] == pytest.approx(before[column], rel=1e-12), column
    assert before["channels_removed"] == 0 and after["channels_removed"] > 0
    assert before["flops_physical"] == before["flops_dense"]
    assert after["flops_physical"] == pytest.approx(after["flops_nonzero"])  # LeNet-5 is a chain: all of it goes
    assert after["params_physical"] == after["params_nonzero"] < before["params_physical"]


def test_latency_is_measured_on_the_smaller_model_beside_the_theoretical_speedup(cells) -> None:
    _, removed = cells
    row = removed.rows[-1]
    for batch in ("", "_batch1"):
        dense, ours = row[f"latency{batch}_dense_ms"], row[f"latency{batch}_ms"]
        assert dense > 0 and ours > 0
        assert row[f"measured_speedup{batch}"] == pytest.approx(dense / ours)
    assert row["theoretical_speedup"] > 1


def test_the_exported_model_runs_in_onnxruntime_and_loads_back(cells, tmp_path: Path) -> None:
    _, removed = cells
    weights, graph = export_job(removed, tmp_path)
    model = removed.model.cpu().eval()
    x = torch.stack([removed.data.test[i][0] for i in range(7)])
    with torch.no_grad():
        expected = model(x)
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    for batch in (x, x[:1]):  # the batch dimension is dynamic
        (out,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
        assert torch.allclose(torch.from_numpy(out), expected[: len(batch)], atol=1e-4, rtol=0)
    loaded, masks = load_exported(weights)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert masks.keys() == removed.masks.keys()
    assert all(torch.equal(masks[name], removed.masks[name].cpu()) for name in masks)
    assert sum(p.numel() for p in loaded.parameters()) == removed.rows[-1]["params_physical"]


def test_a_model_with_batchnorm_folded_exports_and_loads_back_folded(tmp_path: Path) -> None:
    job = run_method("ptq", {"bits": 4, "fold_batchnorm": True}, model="resnet20", sparsity=0.0)
    weights, _ = export_job(job, tmp_path)
    loaded, _ = load_exported(weights)
    x = torch.stack([job.data.test[i][0] for i in range(7)])
    with torch.no_grad():
        assert torch.equal(loaded(x), job.model.cpu().eval()(x))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    assert sum(p.numel() for p in loaded.parameters()) == job.rows[-1]["params_total"]


SPEC = """
name: exported
models: [lenet_300_100]
datasets: [digits]
methods: [{name: filter_l1, params: {remove: true}}]
sparsities: [0.5]
seeds: [0]
pretrain: {epochs: 1, lr: 0.05, batch_size: 256}
finetune: {epochs: 1, lr: 0.01, batch_size: 256}
"""


def test_harness_export_writes_both_files_for_one_cell(write_spec, tmp_path: Path) -> None:
    spec = write_spec(SPEC)
    wrong = CliRunner().invoke(app, ["export", str(spec), "--cell", "nosuchcell", "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 2
    assert "--cell nosuchcell: no cell" in wrong.output
    assert not (tmp_path / "x").exists()
    from harness.spec import expand, load_spec

    (cell,) = expand(load_spec(spec), spec)
    answer = CliRunner().invoke(app, ["export", str(spec), "--cell", cell.cell_id[:8], "--out", str(tmp_path / "out")])
    assert answer.exit_code == 0, answer.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{cell.cell_id}.onnx", f"{cell.cell_id}.pt"]
    model, _ = load_exported(tmp_path / "out" / f"{cell.cell_id}.pt")
    assert model.get_submodule("1").out_features == 150  # LeNet-300-100's first layer, half its units removed
