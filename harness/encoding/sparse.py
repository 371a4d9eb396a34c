"""Where the nonzero weights are: a bitmask, or Deep Compression's relative indices.

Positions are flat (row-major) indices into one weight tensor.

Relative index (Han et al. 2015, "Deep Compression", Fig. 2) with ``b``-bit codes: each nonzero
stores its distance to the previous one (the first: to position −1). Code ``c < 2**b − 1`` means a
gap of ``c + 1``; when a gap is longer, the reserved code ``F = 2**b − 1`` is emitted first, a filler
that advances ``F`` positions (Deep Compression's "padding zero", here without the value field a
zero weight would carry). Example with ``b = 2`` (F = 3): positions [0, 2, 9] have gaps [1, 2, 7]
and codes [0, 1, 3, 3, 0].
"""

from __future__ import annotations

import numpy as np


def bitmask_encode(present: np.ndarray) -> bytes:
    """One bit per weight, 1 where it is stored."""
    return np.packbits(np.asarray(present, dtype=bool).ravel()).tobytes()


def bitmask_decode(data: bytes, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count).astype(bool)


def relative_index_encode(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Gap codes (with fillers) of sorted flat ``positions``; each code fits in ``index_bits`` bits."""
    if index_bits < 1:
        raise ValueError(f"relative indices need at least 1 bit, got {index_bits}")
    filler = (1 << index_bits) - 1
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1)
    if gaps.size and gaps.min() < 1:
        raise ValueError("positions must be strictly increasing and non-negative")
    fillers = np.maximum(-(-gaps // filler) - 1, 0)  # ceil(gap / F) − 1 fillers before the entry
    codes = np.full(int(fillers.sum()) + gaps.size, filler, dtype=np.uint64)
    codes[np.cumsum(fillers + 1) - 1] = gaps - fillers * filler - 1
    return codes


def relative_index_decode(codes: np.ndarray, index_bits: int) -> np.ndarray:
    """The flat positions that :func:`relative_index_encode` coded."""
    codes = np.asarray(codes, dtype=np.int64)
    filler = (1 << index_bits) - 1
    steps = np.where(codes == filler, filler, codes + 1)
    return (np.cumsum(steps) - 1)[codes != filler]
