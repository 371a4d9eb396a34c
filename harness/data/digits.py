"""scikit-learn's 8x8 digits: bundled with scikit-learn, so always available offline."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.data import Dataset, DataSplits, register_dataset, split_train_val, tensor_splits

TEST_FRACTION = 0.2
TEST_SEED = 0  # fixed, so every run seed is scored on the same test set


@lru_cache(maxsize=1)
def _read() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[:, None].astype(np.float32), digits.target.astype(np.int64)


@register_dataset("digits")
class Digits(Dataset):
    """1797 grey 8x8 digits; no official test split, so 20% is held out once with a fixed seed.

    Pixels (0..16) are standardised with train statistics, which also makes a [0, 1] rescale moot.
    """

    input_shape = (1, 8, 8)
    num_classes = 10

    @classmethod
    def load(cls, root: Path, seed: int) -> DataSplits:
        x, y = _read()
        rest, test = (idx.numpy() for idx in split_train_val(len(x), TEST_FRACTION, TEST_SEED))
        return tensor_splits(cls, (x[rest], y[rest]), (x[test], y[test]), seed)
