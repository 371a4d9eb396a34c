"""The stored form of a model: real byte strings per parameter tensor, and the size columns of a row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.encoding.codes import QuantizedWeight
from harness.encoding.formats import auto, float32_bytes
from harness.masks import prunable_weights

# A weight format turns one Conv/Linear weight (and its codes, if quantised) into named byte strings.
WeightFormat = Callable[[torch.Tensor, QuantizedWeight | None], dict[str, bytes]]

FLOAT32_BYTES = 4


@dataclass
class Encoded:
    """A model as stored: ``{parameter name: {part: bytes}}``, and what the encoder measured on the way."""

    format: str
    payloads: dict[str, dict[str, bytes]]
    columns: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(len(part) for parts in self.payloads.values() for part in parts.values())

    def module_bytes(self, module: str) -> int:
        """Bytes of the parameters that belong directly to ``module`` (e.g. its weight and bias)."""
        return sum(
            len(part)
            for name, parts in self.payloads.items()
            if name.rpartition(".")[0] == module
            for part in parts.values()
        )


@dataclass
class Storage:
    """How a job's model is stored now: codes set by a quantiser, a payload pinned by an encoder.

    Without an encoder the model is stored in the default format (``auto``). Pruning or training
    changes the weights, so the job resets its storage then; a quantiser that trains sets its codes
    again afterwards.
    """

    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)
    encoded: Encoded | None = None

    def encode(self, model: nn.Module) -> Encoded:
        return self.encoded or encode_model(model, self.quantized, auto, "auto")


def encode_model(
    model: nn.Module,
    quantized: dict[str, QuantizedWeight],
    weight_format: WeightFormat,
    name: str,
    encoded: dict[str, dict[str, bytes]] | None = None,
) -> Encoded:
    """Every Conv/Linear weight (classifier included) in ``weight_format``, every other parameter as
    float32, except the parameters an encoder has already ``encoded`` itself in its layout ``name``
    (the weights it left to ``weight_format`` are then in ``auto``). Each Conv/Linear weight also
    carries its :func:`layout_header`: a decoder needs its layout and bit width."""
    weights = prunable_weights(model, include_classifier=True)
    payloads = {}
    for param_name, param in model.named_parameters():
        tensor = param.detach().cpu()
        if encoded and param_name in encoded:
            parts = encoded[param_name]
        elif param_name in weights:
            parts = weight_format(tensor, quantized.get(param_name))
        else:
            parts = {"values": float32_bytes(tensor)}
        if param_name in weights:
            layout = name if encoded is None or param_name in encoded else "auto"
            parts = {"layout": layout_header(layout, parts, quantized.get(param_name)), **parts}
        payloads[param_name] = parts
    return Encoded(name, payloads)


# the first byte of a weight's header: the layout its parts follow (a plugin's own format: OTHER_LAYOUT)
LAYOUTS = {"dense": 0, "bitmask": 1, "relative_index": 2, "huffman": 3, "sz": 4, "bloomier": 5}
OTHER_LAYOUT = 255
CODE_KIND_SHIFT = 6  # the header's width byte: bits in the low six, the code kind above


def layout_header(format_name: str, parts: dict[str, bytes], quantized: QuantizedWeight | None) -> bytes:
    """Two bytes stored before a weight's parts, which a decoder cannot do without: its layout
    (``auto`` chooses dense or bitmask per weight), then its code width in bits (0: float32 values)
    in the low six bits and what its code table holds (:data:`~harness.encoding.codes.CODE_KINDS`:
    0 symmetric uniform grids, 1 affine ones, 2 shared centroids) in the top two."""
    if format_name == "auto":
        layout = LAYOUTS["bitmask" if "mask" in parts else "dense"]
    else:
        layout = LAYOUTS.get(format_name, OTHER_LAYOUT)
    return bytes([layout, quantized.bits | quantized.kind << CODE_KIND_SHIFT if quantized is not None else 0])


def size_columns(encoded: Encoded, params_total: int) -> dict[str, Any]:
    """``size_bytes`` as stored, ``size_bytes_dense`` as float32, their ratio, and bits per parameter."""
    dense = FLOAT32_BYTES * params_total
    return {
        "storage_format": encoded.format,
        "size_bytes": encoded.size_bytes,
        "size_bytes_dense": dense,
        "storage_compression": dense / encoded.size_bytes if encoded.size_bytes else np.inf,
        "bits_per_weight": 8 * encoded.size_bytes / params_total if params_total else np.nan,
        **encoded.columns,
    }
