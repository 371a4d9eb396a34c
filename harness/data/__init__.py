"""Data zoo: every data set is a registered :class:`Dataset` that reads local files only.

``DATASETS.get(name)`` returns the class; ``load_splits(name, root, seed)`` gives deterministic
train / validation / test splits. Nothing here downloads: a missing file is reported with the
exact paths expected. Register a data set with ``@register_dataset("name")`` on a
:class:`Dataset` subclass in a plugin module, or through the entry-point group ``harness.datasets``.

A data set's shape and class count are read without torch (the report asks for them), so this package
and the built-in data set modules import torch only inside the functions that build tensors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from harness.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset as TorchDataset


class DatasetNotFound(FileNotFoundError):
    """Local files for a data set are missing; the message lists what is expected where."""


def not_found(name: str, missing: Iterable[Path | str], root: Path, fix: str) -> DatasetNotFound:
    """One message shape for every data set: what is missing, which root was searched, what to do."""
    return DatasetNotFound(
        f"{name}: missing {', '.join(str(m) for m in missing)} (data root searched: {root.absolute()}; "
        f"it comes from the spec's data_root, else $HARNESS_DATA, else ./data); {fix}. "
        "Nothing is downloaded."
    )


@dataclass
class DataSplits:
    """Train / validation / test splits of one data set; validation is held out from train."""

    train: TorchDataset
    val: TorchDataset
    test: TorchDataset
    input_shape: tuple[int, ...]
    num_classes: int


def validation_only(data: DataSplits) -> DataSplits:
    """What a tuning trial sees: the validation split stands in for test, so every number a trial
    reports (and the objective it is chosen by) is validation accuracy; the test split is dropped
    unread, so no choice made while tuning can depend on it."""
    return DataSplits(data.train, data.val, data.val, data.input_shape, data.num_classes)


class Dataset:
    """Base of every data set: its shape is known without reading any file."""

    input_shape: ClassVar[tuple[int, ...]]  # one example, without the batch dimension: (C, H, W) or (C, L)
    num_classes: ClassVar[int]
    val_fraction: ClassVar[float] = 0.1

    @classmethod
    def load(cls, root: Path, seed: int) -> DataSplits:
        raise NotImplementedError


def _dataset_problem(name: str, obj: object) -> str | None:
    """Why ``obj`` cannot be a data set (None: it can)."""
    if not (isinstance(obj, type) and issubclass(obj, Dataset)):
        what = "a class not derived from Dataset" if isinstance(obj, type) else f"a {type(obj).__name__}"
        return f"it is {what}; a data set is a subclass of harness.data.Dataset"
    missing = [attr for attr in ("input_shape", "num_classes") if not hasattr(obj, attr)]
    if obj.load.__func__ is Dataset.load.__func__:
        missing.append("load(cls, root, seed)")
    return f"{obj.__qualname__} does not define {', '.join(missing)}" if missing else None


DATASETS: Registry[type[Dataset]] = Registry("dataset", entry_point_group="harness.datasets", check=_dataset_problem)
register_dataset = DATASETS.register

# Each module registers its data sets with @register_dataset, exactly as a plugin does; imported on the first lookup.
for _module in ("digits", "mnist1d", "mnist", "cifar", "imagenet"):
    DATASETS.add_lazy_module(f"harness.data.{_module}")


def data_root(configured: str | os.PathLike | None = None) -> Path:
    """The spec's data root, else ``$HARNESS_DATA``, else ``./data``."""
    return Path(configured or os.environ.get("HARNESS_DATA") or "data").expanduser()


def load_splits(name: str, root: str | os.PathLike | None, seed: int) -> DataSplits:
    return DATASETS.get(name).load(data_root(root), seed)


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic permutation of ``range(n)`` into (train indices, validation indices)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_val = max(1, round(n * val_fraction))
    return order[n_val:], order[:n_val]


def tensor_splits(
    cls: type[Dataset],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    seed: int,
) -> DataSplits:
    """In-memory splits: validation held out from ``train``, inputs standardised per channel.

    The statistics come from the whole official train split, so an example's inputs are the same
    for every seed (the held-out validation part adds nothing beyond two numbers per channel). The
    given arrays (often cached) are copied, never modified.
    """
    import torch
    from torch.utils.data import TensorDataset

    (x, y), (x_test, y_test) = train, test
    for split, inputs in (("train", x), ("test", x_test)):
        if inputs.shape[1:] != cls.input_shape:
            raise ValueError(f"{cls.__name__} {split} inputs have shape {inputs.shape[1:]}, expected {cls.input_shape}")
    inputs, test_inputs = (torch.tensor(a, dtype=torch.float32) for a in (x, x_test))
    std, mean = torch.std_mean(inputs, dim=[0, *range(2, inputs.ndim)], keepdim=True)  # all but channels
    for tensor in (inputs, test_inputs):
        tensor.sub_(mean).div_(std.clamp_min(1e-8))
    labels = torch.tensor(y, dtype=torch.int64)
    train_idx, val_idx = split_train_val(len(x), cls.val_fraction, seed)
    return DataSplits(
        train=TensorDataset(inputs[train_idx], labels[train_idx]),
        val=TensorDataset(inputs[val_idx], labels[val_idx]),
        test=TensorDataset(test_inputs, torch.tensor(y_test, dtype=torch.int64)),
        input_shape=cls.input_shape,
        num_classes=cls.num_classes,
    )
