"""SZ3 error-bounded lossy coding of a 1-D float32 array (via ``pysz``): every decoded value is
within the absolute bound of the original."""

from __future__ import annotations

import numpy as np
from pysz import sz, szConfig, szErrorBoundMode


def encode(values: np.ndarray, bound: float) -> bytes:
    """SZ3's compressed stream of ``values`` with absolute error bound ``bound`` (> 0)."""
    if not bound > 0:
        raise ValueError(f"an SZ error bound must be positive, got {bound}")
    values = np.ascontiguousarray(values, dtype=np.float32).ravel()
    if values.size == 0:
        return b""
    config = szConfig()
    config.errorBoundMode = szErrorBoundMode.ABS
    config.absErrorBound = bound
    compressed, _ = sz.compress(values, config)
    return compressed.tobytes()


def decode(data: bytes, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=np.float32)
    values, _ = sz.decompress(np.frombuffer(data, dtype=np.uint8).copy(), np.float32, (count,))
    return values
