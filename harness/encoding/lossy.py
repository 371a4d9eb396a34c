"""The lossy layouts of one weight tensor: DeepSZ's SZ3-coded values and Weightless's Bloomier filter.

Each encoder here returns the weight's named byte strings; :mod:`harness.encoding.decoding` reads them
back, and the lossy encoders write exactly that decoded weight into the model.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from harness.encoding import sz
from harness.encoding.bloomier import BloomierFilter
from harness.encoding.codes import QuantizedWeight
from harness.encoding.formats import float32_bytes
from harness.encoding.sparse import bitmask_encode

LOSSLESS = 0.0  # DeepSZ's always-available bound: the values stay float32


def sz_coded(weight: torch.Tensor, bound: float) -> dict[str, bytes]:
    """A zlib-compressed bitmask of the nonzero entries, then their values: an SZ3 stream within the
    absolute ``bound`` (part ``sz``), or float32 at :data:`LOSSLESS` (part ``values``)."""
    flat = weight.detach().cpu().reshape(-1)
    present = (flat != 0).numpy()
    values = flat.numpy()[present]
    stored = {"values": float32_bytes(values)} if bound == LOSSLESS else {"sz": sz.encode(values, bound)}
    return {"mask": zlib.compress(bitmask_encode(present), 9), **stored}


def bloomier_coded(weight: torch.Tensor, codes: QuantizedWeight, cell_bits: int, seed: int) -> dict[str, bytes]:
    """A Bloomier filter mapping each nonzero entry's flat position to its code + 1 in ``cell_bits``-bit
    cells (every other position reads 0 or a random value: a false positive), then the code table."""
    present = (weight != 0).cpu().reshape(-1).numpy()
    keys = np.flatnonzero(present)
    filt = BloomierFilter.build(keys, codes.codes.reshape(-1).cpu().numpy()[present] + 1, cell_bits, seed)
    return {"filter": filt.to_bytes(), "table": codes.table_bytes()}


def bloomier_read(filter_bytes: bytes, count: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(code, present) of each of ``count`` positions as the filter reads them: a position holds a
    weight where it reads 1 … 2**bits (0 and values past the codes read as pruned)."""
    read = BloomierFilter.from_bytes(filter_bytes).query(np.arange(count)).astype(np.int64)
    present = (read >= 1) & (read <= 1 << bits)
    return np.where(present, read - 1, 0), present
