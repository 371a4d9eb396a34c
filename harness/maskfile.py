"""The file a cell's recorded masks live in: ``masks/<benchmark>/<cell_id>.npz`` (numpy only, no torch).

One ``.npz`` (a deflated zip) per cell holds every finished level's masks, each parameter's mask as
``np.packbits`` of its flattened boolean array (1 bit per weight, zero-padded to a byte) under
``bits/<level>/<parameter>`` and its shape under ``shape/<level>/<parameter>``. A parameter the
method left without a mask is wholly kept and has no entry. Masks are kept packed in memory too:
``harness analyze masks`` counts overlaps with ``bitwise_count`` on the packed bytes, never unpacking.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

FORMAT = 1  # the ``format`` entry: bump when the layout above changes


@dataclass(frozen=True)
class PackedMask:
    """A boolean mask as bits: ``True`` = the weight is kept."""

    bits: np.ndarray  # uint8, np.packbits of the flattened mask (big-endian bits, zero padding)
    shape: tuple[int, ...]

    @classmethod
    def of(cls, mask: np.ndarray) -> PackedMask:
        return cls(np.packbits(np.asarray(mask, dtype=bool).ravel()), tuple(int(n) for n in mask.shape))

    @classmethod
    def full(cls, shape: tuple[int, ...]) -> PackedMask:
        """Every weight kept: what a parameter without a mask is."""
        return cls.of(np.ones(shape, dtype=bool))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def kept(self) -> int:
        return int(np.bitwise_count(self.bits).sum())

    def unpack(self) -> np.ndarray:
        return np.unpackbits(self.bits, count=self.size).astype(bool).reshape(self.shape)


LevelMasks = dict[str, PackedMask]


def encode(levels: Mapping[int, Mapping[str, PackedMask]]) -> bytes:
    arrays: dict[str, np.ndarray] = {"format": np.array([FORMAT])}
    for level, masks in levels.items():
        for name, mask in masks.items():
            arrays[f"bits/{level}/{name}"] = mask.bits
            arrays[f"shape/{level}/{name}"] = np.array(mask.shape, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def decode(data: bytes) -> dict[int, LevelMasks]:
    """``{level: {parameter: PackedMask}}``, levels in order; raises ValueError for a file of another format."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        if "format" not in npz.files or int(npz["format"][0]) != FORMAT:
            raise ValueError(f"not a mask file of format {FORMAT} (harness/maskfile.py)")
        levels: dict[int, LevelMasks] = {}
        for key in npz.files:
            if key.startswith("bits/"):
                level, name = key.removeprefix("bits/").split("/", 1)
                shape = tuple(int(n) for n in npz[f"shape/{level}/{name}"])
                levels.setdefault(int(level), {})[name] = PackedMask(npz[key], shape)
    return dict(sorted(levels.items()))
