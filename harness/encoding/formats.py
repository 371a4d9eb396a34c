"""Lossless layouts of one weight tensor, each returning its named byte strings.

``present`` = the weight's nonzero entries (row-major). Values are stored as float32, or, when the
weight is quantised, as its ``bits``-bit codes plus the code table (:mod:`harness.encoding.codes`).
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from harness.encoding import huffman
from harness.encoding.bitpack import pack
from harness.encoding.codes import QuantizedWeight
from harness.encoding.sparse import bitmask_encode, relative_index_encode

_COUNT = struct.Struct("<I")


def float32_bytes(tensor: torch.Tensor | np.ndarray) -> bytes:
    array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else tensor
    return np.asarray(array).astype("<f4").tobytes()


def _present(weight: torch.Tensor) -> np.ndarray:
    return (weight != 0).cpu().numpy().ravel()


def _values(weight: torch.Tensor, q: QuantizedWeight | None, present: np.ndarray) -> dict[str, bytes]:
    """The stored values of the ``present`` entries: float32, or codes of ``q.bits`` bits plus their table."""
    if q is None:
        return {"values": float32_bytes(weight.reshape(-1)[torch.from_numpy(present)])}
    return {"codes": pack(q.codes.cpu().numpy().ravel()[present], q.bits), "table": q.table_bytes()}


def dense(weight: torch.Tensor, q: QuantizedWeight | None) -> dict[str, bytes] | None:
    """Every entry in order; None when the codes have no zero to store pruned entries with."""
    present = np.ones(weight.numel(), dtype=bool)
    if q is not None and not q.has_zero_code and bool((weight == 0).any()):
        return None
    return _values(weight, q, present)


def bitmask(weight: torch.Tensor, q: QuantizedWeight | None) -> dict[str, bytes]:
    """One bit per entry, then the values of the nonzero entries."""
    present = _present(weight)
    return {"mask": bitmask_encode(present), **_values(weight, q, present)}


def auto(weight: torch.Tensor, q: QuantizedWeight | None) -> dict[str, bytes]:
    """The default: the smaller of :func:`dense` and :func:`bitmask`."""
    candidates = [parts for parts in (dense(weight, q), bitmask(weight, q)) if parts is not None]
    return min(candidates, key=lambda parts: sum(map(len, parts.values())))


def relative_index(weight: torch.Tensor, q: QuantizedWeight | None, index_bits: int) -> dict[str, bytes]:
    """Deep Compression's sparse layout: the index width (one byte), the number of index codes, the
    ``index_bits``-bit gap codes (fillers included, :mod:`harness.encoding.sparse`), then the values
    of the nonzero entries."""
    present = _present(weight)
    gaps = relative_index_encode(np.flatnonzero(present), index_bits)
    return {
        "index_bits": bytes([index_bits]),
        "count": _COUNT.pack(len(gaps)),
        "index": pack(gaps, index_bits),
        **_values(weight, q, present),
    }


def huffman_coded(weight: torch.Tensor, q: QuantizedWeight | None, index_bits: int) -> dict[str, bytes]:
    """:func:`relative_index` with the gap codes and the weight codes each Huffman-coded (codebooks
    included; the index width byte stays, the count is in the stream); float values, having no small
    alphabet, stay float32."""
    present = _present(weight)
    gaps = relative_index_encode(np.flatnonzero(present), index_bits)
    parts = {"index_bits": bytes([index_bits]), "index": huffman.encode(gaps, 1 << index_bits)}
    if q is None:
        return parts | _values(weight, q, present)
    codes = q.codes.cpu().numpy().ravel()[present]
    return parts | {"codes": huffman.encode(codes, 1 << q.bits), "table": q.table_bytes()}
