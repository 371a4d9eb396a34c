"""ImageNet as an ImageFolder tree, decoded lazily with Pillow (far too large to hold in memory).

torchvision does not import in this environment, so the standard evaluation transform (shorter
side to 256, centre 224 crop, ImageNet mean/std) is written here with Pillow and numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from harness.data import Dataset, DataSplits, not_found, register_dataset, split_train_val

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
RESIZE, CROP = 256, 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(image: Image.Image) -> torch.Tensor:
    """RGB image → normalised (3, 224, 224) float32, like torchvision's Resize(256) + CenterCrop(224)."""
    import torch

    image = image.convert("RGB")
    short = min(image.size)
    width, height = (RESIZE if side == short else int(RESIZE * side / short) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = round((width - CROP) / 2), round((height - CROP) / 2)
    pixels = np.asarray(image.crop((left, top, left + CROP, top + CROP)), dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(((pixels / 255 - MEAN) / STD).transpose(2, 0, 1)))


class ImageFiles:
    """(image, label) pairs, each file opened only when indexed (so DataLoader workers decode): a map-style
    data set by protocol (``__len__``, ``__getitem__``), so this module loads without torch."""

    def __init__(self, samples: Sequence[tuple[Path, int]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return preprocess(image), label


@lru_cache(maxsize=4)
def scan(folder: Path) -> dict[str, tuple[Path, ...]]:
    """Class folder name → its image files, both sorted; listing ImageNet is slow, so once per process."""
    return {
        class_dir.name: tuple(sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        for class_dir in sorted(folder.iterdir())
        if class_dir.is_dir()
    }


@register_dataset("imagenet")
class ImageNet(Dataset):
    """ILSVRC-2012: classes are the sorted train folder names; the official val set is the test split.

    ``num_classes`` stays 1000 even when a smaller tree (a subset, a test fixture) has fewer classes.
    """

    input_shape = (3, CROP, CROP)
    num_classes = 1000

    @classmethod
    def load(cls, root: Path, seed: int) -> DataSplits:
        folder = (root / "imagenet").absolute()
        train_dir, test_dir = folder / "train", folder / "val"
        layout = (
            f"arrange {folder} as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
            "(one folder per class, val sorted into class folders too; .jpeg/.jpg/.png accepted)"
        )
        missing = [f"{d}/<wnid>/*.JPEG" for d in (train_dir, test_dir) if not d.is_dir()]
        if missing:
            raise not_found("imagenet", missing, root, layout)
        train_files, test_files = scan(train_dir), scan(test_dir)
        if not any(train_files.values()):
            raise not_found("imagenet", [f"images in {train_dir}/<wnid>/"], root, layout)
        classes = sorted(train_files)
        if len(classes) > cls.num_classes:
            raise ValueError(f"{train_dir} has {len(classes)} class folders, at most {cls.num_classes}")
        unknown = sorted(set(test_files) - set(classes))
        if unknown:
            raise ValueError(f"{test_dir} has classes absent from {train_dir}: {', '.join(unknown[:5])}")
        label = {name: i for i, name in enumerate(classes)}
        train = [(path, label[name]) for name, paths in train_files.items() for path in paths]
        test = [(path, label[name]) for name, paths in test_files.items() for path in paths]
        train_idx, val_idx = split_train_val(len(train), cls.val_fraction, seed)
        return DataSplits(
            train=ImageFiles([train[i] for i in train_idx.tolist()]),
            val=ImageFiles([train[i] for i in val_idx.tolist()]),
            test=ImageFiles(test),
            input_shape=cls.input_shape,
            num_classes=cls.num_classes,
        )
