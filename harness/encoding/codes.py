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


@dataclass(frozen=True)
class QuantizedWeight:
    """Codes in ``[0, 2**bits)`` of one weight tensor (its shape) and how to turn them into values."""

    codes: torch.Tensor  # int64, the weight's shape
    bits: int

    # Whether some code decodes to exactly 0, so a dense layout can store pruned weights as codes.
    has_zero_code: ClassVar[bool] = False

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

    def table_bytes(self) -> bytes:
        return self.centroids.detach().cpu().numpy().astype("<f4").tobytes()
