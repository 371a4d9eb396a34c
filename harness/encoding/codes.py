"""Quantised weights as the storage sees them: integer codes plus the small table that decodes them.

A quantiser (PTQ, QAT, k-means) leaves the model holding the *decoded* float weights, which is what
is evaluated, and hands the storage a :class:`QuantizedWeight` per weight tensor, which is what is
encoded: ``bits`` bits per code, plus ``table_bytes()`` (scales and zero points, or centroids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

# what a weight's code table holds, as its header's top two bits name it (harness.encoding.storage.layout_header)
CODE_KINDS = {"uniform_symmetric": 0, "uniform_affine": 1, "shared": 2}


@dataclass(frozen=True)
class QuantizedWeight:
    """Codes in ``[0, 2**bits)`` of one weight tensor (its shape) and how to turn them into values."""

    codes: torch.Tensor  # int64, the weight's shape
    bits: int

    # Whether some code decodes to exactly 0, so a dense layout can store pruned weights as codes.
    has_zero_code: ClassVar[bool] = False

    @property
    def kind(self) -> int:
        """How :meth:`table_bytes` reads back (one of :data:`CODE_KINDS`): stored in the weight's header."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Float weights of ``codes`` (the weight's shape); entries not ``present`` are 0."""
        raise NotImplementedError

    def table_bytes(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True)
class UniformCodes(QuantizedWeight):
    """Uniform quantisation: ``value = scale · (code − zero_point)``, per output channel or per tensor.

    ``scale`` and ``zero_point`` have one entry per output channel (dim 0), or one for the tensor.
    Symmetric quantisation fixes ``zero_point = (2**bits − 1) // 2 = 2**(bits−1) − 1``, so only the scales are stored;
    affine quantisation also stores each zero point in one byte (``bits`` ≤ 8).
    """

    scale: torch.Tensor  # float32 [channels] or [1]
    zero_point: torch.Tensor  # int64, same shape
    symmetric: bool

    has_zero_code: ClassVar[bool] = True

    def decode(self, codes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (codes.dim() - 1)
        return (codes - self.zero_point.view(shape)).to(torch.float32) * self.scale.view(shape) * present

    @property
    def kind(self) -> int:
        return CODE_KINDS["uniform_symmetric" if self.symmetric else "uniform_affine"]

    def table_bytes(self) -> bytes:
        scales = self.scale.detach().cpu().numpy().astype("<f4").tobytes()
        return scales if self.symmetric else scales + self.zero_point.cpu().numpy().astype(np.uint8).tobytes()


@dataclass(frozen=True)
class SharedCodes(QuantizedWeight):
    """Weight sharing: ``value = centroids[code]`` where present; the centroids are stored as float32.

    No code means zero, so pruned weights must be located by a sparse layout (bitmask, indices).
    """

    centroids: torch.Tensor  # float32 [2**bits]

    def decode(self, codes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.centroids[codes] * present

    @property
    def kind(self) -> int:
        return CODE_KINDS["shared"]

    def table_bytes(self) -> bytes:
        return self.centroids.detach().cpu().numpy().astype("<f4").tobytes()


def from_table(kind: int, bits: int, table: bytes, codes: torch.Tensor) -> QuantizedWeight:
    """The :class:`QuantizedWeight` of stored ``codes`` (the weight's shape) whose table reads as ``kind``:
    per-channel or per-tensor uniform grids (one scale, or one per output channel, by the table's length)
    or ``2**bits`` shared centroids. The inverse of :meth:`QuantizedWeight.table_bytes`."""
    if kind == CODE_KINDS["shared"]:
        return SharedCodes(codes, bits, torch.from_numpy(np.frombuffer(table, dtype="<f4").astype(np.float32)))
    if kind not in (CODE_KINDS["uniform_symmetric"], CODE_KINDS["uniform_affine"]):
        raise ValueError(f"unknown code kind {kind}; known: {CODE_KINDS}")
    symmetric = kind == CODE_KINDS["uniform_symmetric"]
    channels = len(table) // (4 if symmetric else 5)
    scale = torch.from_numpy(np.frombuffer(table, dtype="<f4", count=channels).astype(np.float32))
    if symmetric:
        zero_point = torch.full((channels,), ((1 << bits) - 1) // 2, dtype=torch.long)
    else:
        zero_point = torch.from_numpy(np.frombuffer(table, dtype=np.uint8, offset=4 * channels).astype(np.int64))
    return UniformCodes(codes, bits, scale, zero_point, symmetric)
