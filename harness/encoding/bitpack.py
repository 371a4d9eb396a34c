"""Fixed-width bit packing: the layout of every fixed-length code stream (index gaps, weight codes, cells)."""

from __future__ import annotations

import numpy as np


def pack(values: np.ndarray, width: int) -> bytes:
    """Each value's low ``width`` bits, most significant first, concatenated and zero-padded to a byte."""
    values = np.asarray(values, dtype=np.uint64).ravel()
    if not 1 <= width <= 64:
        raise ValueError(f"bit width must be in 1..64, got {width}")
    if values.size and int(values.max()) >> width:
        raise ValueError(f"value {int(values.max())} does not fit in {width} bits")
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    bits = ((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.ravel()).tobytes()


def unpack(data: bytes, width: int, count: int) -> np.ndarray:
    """The ``count`` values of ``width`` bits that :func:`pack` wrote, as ``uint64``."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * width).reshape(count, width)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    return (bits.astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)
