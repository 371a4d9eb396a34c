"""MNIST-1D, generated procedurally by the ``mnist1d`` package (never its downloading ``get_dataset``)."""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.data import Dataset, DataSplits, register_dataset, tensor_splits


@lru_cache(maxsize=1)
def _generate() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The package's default 4000/1000 train/test set (its own fixed seed, 42).

    ``make_dataset`` reseeds the global ``numpy`` and ``random`` generators; both are restored so
    that loading data never changes the caller's random streams.
    """
    from mnist1d.data import get_dataset_args, make_dataset  # imports scipy and matplotlib: keep lazy

    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return (
        data["x"][:, None].astype(np.float32),
        data["y"].astype(np.int64),
        data["x_test"][:, None].astype(np.float32),
        data["y_test"].astype(np.int64),
    )


@register_dataset("mnist1d")
class MNIST1D(Dataset):
    """Ten 1-D digit templates, padded, sheared, translated and noised into length-40 signals."""

    input_shape = (1, 40)
    num_classes = 10

    @classmethod
    def load(cls, root: Path, seed: int) -> DataSplits:
        x, y, x_test, y_test = _generate()
        return tensor_splits(cls, (x, y), (x_test, y_test), seed)
