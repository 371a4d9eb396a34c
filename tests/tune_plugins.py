"""What the tuning tests load as a plugin: a data set whose test split cannot be read, and a method
whose accuracy a searched parameter switches off (so a pruner has something to stop)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset as TorchDataset

from harness.data import DataSplits, register_dataset
from harness.data.digits import Digits
from harness.methods import register_method
from harness.methods.score import GlobalMagnitude


class Sealed(TorchDataset):
    """A split that raises on any read: whoever touches it fails loudly."""

    def __len__(self) -> int:
        raise RuntimeError("the test split was read")

    def __getitem__(self, index: int):
        raise RuntimeError("the test split was read")


@register_dataset("digits_sealed")
class SealedDigits(Digits):
    """scikit-learn's digits with an unreadable test split."""

    @classmethod
    def load(cls, root: Path, seed: int) -> DataSplits:
        data = super().load(root, seed)
        return DataSplits(data.train, data.val, Sealed(), data.input_shape, data.num_classes)


@register_method("dial")
class Dial(GlobalMagnitude):
    """Global magnitude pruning, or (``broken``) every prunable weight removed: chance-level accuracy."""

    class Params(GlobalMagnitude.Params):
        broken: bool = False

    def apply(self, job) -> None:
        ctx = job.context()
        masks = self.masks(ctx, job.cell.sparsity)
        if self.params.broken:
            masks = {name: torch.zeros_like(mask) for name, mask in masks.items()}
        job.prune(masks)
        job.finetune()
