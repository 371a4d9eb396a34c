"""CIFAR-10 and CIFAR-100 from the official "python version" pickle batches."""

from __future__ import annotations

import pickle
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from harness.data import Dataset, DataSplits, not_found, register_dataset, tensor_splits


class BatchUnpickler(pickle.Unpickler):
    """Reads a CIFAR batch and nothing else: a dict of bytes, lists of ints and bytes, and numpy
    arrays. Any other global a pickle names (``os.system``, ``builtins.eval``) is refused, so a
    file from elsewhere cannot run code the way a plain ``pickle.load`` would let it."""

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),  # ndarray, protocols 0-4
        ("numpy._core.numeric", "_frombuffer"),  # ndarray, protocol 5
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
    }

    def find_class(self, module: str, name: str) -> object:
        module = module.replace("numpy.core.", "numpy._core.", 1)  # the official files predate numpy 2
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch; refusing to load it")
        return super().find_class(module, name)


@lru_cache(maxsize=4)
def read_batches(paths: tuple[Path, ...], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated images (N, 3, 32, 32) uint8 and labels (N,) int64 of pickle batches."""
    images, labels = [], []
    for path in paths:
        with path.open("rb") as f:
            try:
                batch = BatchUnpickler(f, encoding="bytes").load()
            except (pickle.UnpicklingError, EOFError, ValueError) as exc:
                raise ValueError(f"{path}: not a CIFAR batch file: {exc}") from None
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise ValueError(f"{path}: expected keys b'data' and {label_key!r}, found {_keys(batch)}")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _keys(batch: object) -> str:
    return str(sorted(batch)) if isinstance(batch, dict) else type(batch).__name__


class _CIFAR(Dataset):
    """The shared loader; subclasses name the folder, the batch files and the label key."""

    input_shape = (3, 32, 32)
    folder: ClassVar[str]
    train_files: ClassVar[tuple[str, ...]]
    test_files: ClassVar[tuple[str, ...]]
    label_key: ClassVar[bytes]

    @classmethod
    def load(cls, root: Path, seed: int) -> DataSplits:
        folder = (root / cls.folder).absolute()
        names = cls.train_files + cls.test_files
        missing = [folder / name for name in names if not (folder / name).is_file()]
        if missing:
            raise not_found(
                cls.__name__.lower(),
                missing,
                root,
                f"unpack the official CIFAR python archive so that {folder} holds {', '.join(names)}",
            )
        train = read_batches(tuple(folder / name for name in cls.train_files), cls.label_key)
        test = read_batches(tuple(folder / name for name in cls.test_files), cls.label_key)
        return tensor_splits(cls, train, test, seed)


@register_dataset("cifar10")
class CIFAR10(_CIFAR):
    """50000 / 10000 colour 32x32 images in 10 classes."""

    num_classes = 10
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = b"labels"


@register_dataset("cifar100")
class CIFAR100(_CIFAR):
    """50000 / 10000 colour 32x32 images in 100 fine classes."""

    num_classes = 100
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = b"fine_labels"
