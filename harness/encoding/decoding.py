"""Reading a stored model back: every parameter tensor from its byte strings alone (and its shape, which
is code). ``decode_model(encode_model(...))`` is the model a user would load; the conformance checks
(:func:`harness.testing.check_conformance`) hold every method's rows to it."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import torch

from harness.encoding import huffman, sz
from harness.encoding.bitpack import unpack
from harness.encoding.codes import from_table
from harness.encoding.lossy import bloomier_read
from harness.encoding.sparse import bitmask_decode, relative_index_decode
from harness.encoding.storage import CODE_KIND_SHIFT, LAYOUTS, Encoded

_LAYOUT_NAMES = {code: name for name, code in LAYOUTS.items()}


def decode_model(encoded: Encoded, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """``{parameter name: float32 tensor}`` of every stored parameter, shaped as ``shapes`` says."""
    return {
        name: decode_weight(parts, shapes[name]) if "layout" in parts else _floats(parts["values"], shapes[name])
        for name, parts in encoded.payloads.items()
    }


def decode_weight(parts: dict[str, bytes], shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """One Conv/Linear weight from its parts, read as its two-byte ``layout`` header says."""
    layout, width = parts["layout"]
    bits, kind = width & ((1 << CODE_KIND_SHIFT) - 1), width >> CODE_KIND_SHIFT
    n = math.prod(shape)
    name = _LAYOUT_NAMES.get(layout)
    if name == "bloomier":
        codes, present = bloomier_read(parts["filter"], n, bits)
        return _decoded(present, codes, bits, kind, parts["table"], shape)
    if name == "dense":
        present = np.ones(n, dtype=bool)
    elif name in ("bitmask", "sz"):
        mask = zlib.decompress(parts["mask"]) if name == "sz" else parts["mask"]
        present = bitmask_decode(mask, n)
    elif name in ("relative_index", "huffman"):
        index_bits = parts["index_bits"][0]
        if name == "huffman":
            gaps = huffman.decode(parts["index"], 1 << index_bits)
        else:
            gaps = unpack(parts["index"], index_bits, struct.unpack("<I", parts["count"])[0])
        present = np.zeros(n, dtype=bool)
        present[relative_index_decode(gaps, index_bits)] = True
    else:
        raise ValueError(f"layout {layout} is not one the harness writes (known: {LAYOUTS}): a plugin's own format")
    z = int(present.sum())
    if "sz" in parts:
        return _placed(present, sz.decode(parts["sz"], z), shape)
    if bits == 0:
        return _placed(present, np.frombuffer(parts["values"], dtype="<f4", count=z), shape)
    stored = huffman.decode(parts["codes"], 1 << bits) if name == "huffman" else unpack(parts["codes"], bits, z)
    codes = np.zeros(n, dtype=np.int64)
    codes[present] = stored.astype(np.int64)
    return _decoded(present, codes, bits, kind, parts["table"], shape)


def _floats(data: bytes, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32)).reshape(shape)


def _placed(present: np.ndarray, values: np.ndarray, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    flat = np.zeros(present.size, dtype=np.float32)
    flat[present] = values
    return torch.from_numpy(flat).reshape(shape)


def _decoded(
    present: np.ndarray, codes: np.ndarray, bits: int, kind: int, table: bytes, shape: torch.Size | tuple[int, ...]
) -> torch.Tensor:
    codes_t = torch.from_numpy(codes).reshape(shape)
    quantized = from_table(kind, bits, table, codes_t)
    return quantized.decode(codes_t, torch.from_numpy(present).reshape(shape)).to(torch.float32)
