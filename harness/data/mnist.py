"""MNIST from the four standard IDX files (optionally gzipped), parsed here with numpy."""

from __future__ import annotations

import gzip
import math
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.data import Dataset, DataSplits, not_found, register_dataset, tensor_splits

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
UNSIGNED_BYTE = 0x08  # IDX type code; MNIST uses nothing else


@lru_cache(maxsize=8)
def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX array: magic ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then the data."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    magic = raw[:4]
    if magic != bytes([0, 0, UNSIGNED_BYTE, ndim]):
        raise ValueError(
            f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s) (magic {magic.hex()}, "
            f"expected {bytes([0, 0, UNSIGNED_BYTE, ndim]).hex()})"
        )
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise ValueError(f"{path}: {len(raw) - header} data bytes, header says {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@register_dataset("mnist")
class MNIST(Dataset):
    """60000 / 10000 grey 28x28 handwritten digits."""

    input_shape = (1, 28, 28)
    num_classes = 10

    @classmethod
    def load(cls, root: Path, seed: int) -> DataSplits:
        folder = (root / "mnist").absolute()
        paths = {name: _find(folder / name) for names in FILES.values() for name in names}
        missing = [f"{folder / name} (or .gz)" for name, path in paths.items() if path is None]
        if missing:
            raise not_found("mnist", missing, root, f"put the four IDX files ({', '.join(paths)}) in {folder}")
        train, test = (cls._read_pair(paths[images], paths[labels]) for images, labels in FILES.values())
        return tensor_splits(cls, train, test, seed)

    @staticmethod
    def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
        images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if len(images) != len(labels):
            raise ValueError(f"{images_path} has {len(images)} images but {labels_path} {len(labels)} labels")
        return images[:, None], labels.astype(np.int64)


def _find(path: Path) -> Path | None:
    """The file as named, else its gzipped twin, else None."""
    gzipped = path.with_name(path.name + ".gz")
    return next((p for p in (path, gzipped) if p.is_file()), None)
