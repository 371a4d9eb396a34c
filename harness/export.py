"""A cell's compressed model as files: a state dict with its masks, and ONNX.

``harness export SPEC --cell ID`` reruns one cell in this process (its dense model from the results
folder's checkpoint when there is one, else trained here) and writes the model of its last level:

- ``<cell_id>.pt``: a plain dict that ``torch.load(..., weights_only=True)`` reads: ``state_dict``,
  ``masks`` (bool, at the model's shapes), ``removed`` (Torch-Pruning's history of the channels a
  ``remove: true`` method removed, as plain lists), ``folded`` (the BatchNorms ``fold_batchnorm``
  folded into a layer: norm name -> layer name; absent in older files), ``model``, ``input_shape``,
  ``num_classes``, ``cell_id`` and ``format``. :func:`load_exported` rebuilds the model from it.
- ``<cell_id>.onnx``: the model in eval mode through ``torch.onnx.export`` (the torch.export-based
  exporter), the batch dimension dynamic; onnxruntime runs it to the same outputs as torch.

Quantised weights are exported as the float values they decode to (as they are evaluated).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.cell import CellJob, DenseCheckpoint, run_cell
from harness.config import CellSpec
from harness.masks import Masks
from harness.methods.quantization import folded_norms, folded_structure
from harness.models import create_model
from harness.removal import replay

FORMAT = 1
# the exporter warns once per torchvision operator it cannot register; the harness never uses torchvision
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def export_job(job: CellJob, out: Path) -> tuple[Path, Path]:
    """Write the job's model as it is now to ``out/<cell_id>.pt`` and ``out/<cell_id>.onnx``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(job.model).cpu().eval()
    payload: dict[str, Any] = {
        "format": FORMAT,
        "cell_id": job.cell.cell_id,
        "model": job.cell.model,
        "input_shape": list(job.input_shape),
        "num_classes": job.data.num_classes,
        "state_dict": {name: value.detach().clone() for name, value in model.state_dict().items()},
        "masks": {name: mask.detach().cpu().clone() for name, mask in job.masks.items()},
        "removed": [[name, out_channels, list(idxs)] for name, out_channels, idxs in job.removed_history],
        "folded": folded_norms(model),
    }
    weights, graph = out / f"{job.cell.cell_id}.pt", out / f"{job.cell.cell_id}.onnx"
    _write(weights, lambda path: torch.save(payload, path))
    _write(graph, lambda path: onnx_program(model, job.input_shape).save(str(path)))
    return weights, graph


def onnx_program(model: nn.Module, input_shape: tuple[int, ...]) -> torch.onnx.ONNXProgram:
    """``model`` (in eval mode, on the CPU) as ONNX with a dynamic batch dimension."""
    example = torch.zeros((2, *input_shape))
    batch = torch.export.Dim("batch")
    return torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)


def load_exported(path: Path) -> tuple[nn.Module, Masks]:
    """The model and masks of an exported ``.pt``: the architecture rebuilt, the removed channels removed
    again, the folded norms folded again."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: export format {payload.get('format')!r}, this harness reads format {FORMAT}")
    input_shape = tuple(payload["input_shape"])
    model = create_model(payload["model"], input_shape, payload["num_classes"])
    replay(model, [(name, out, idxs) for name, out, idxs in payload["removed"]], torch.zeros((2, *input_shape)))
    folded_structure(model, payload.get("folded", {}))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload["masks"]


def export_cell(cell: CellSpec, dense: DenseCheckpoint, out: Path) -> tuple[Path, Path]:
    """Run ``cell`` on ``dense`` here and export the model of its last level."""
    jobs: list[CellJob] = []
    run_cell(cell, dense, jobs=jobs)  # raises when the cell fails: nothing to export then
    return export_job(jobs[0], out)


def _write(path: Path, write) -> None:
    """Write through a temporary name and rename: a crash never leaves a partial file."""
    partial = path.with_name(path.name + ".tmp")
    write(partial)
    partial.replace(path)
