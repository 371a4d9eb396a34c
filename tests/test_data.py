"""The data zoo against tiny files written in the real on-disk formats (nothing is downloaded)."""

from __future__ import annotations

import gzip
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data import DATASETS, DatasetNotFound, load_splits
from harness.data.cifar import CIFAR10, CIFAR100, read_batches
from harness.data.digits import Digits
from harness.data.imagenet import ImageNet, preprocess
from harness.data.mnist import MNIST, read_idx
from harness.data.mnist1d import MNIST1D, _generate

# -- writers of the real formats ------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic 00 00 08 <ndim>, big-endian uint32 sizes, then unsigned bytes; gzipped if .gz."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def unique_images(n: int, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """Random uint8 images whose first pixel makes each one distinct (offset + index)."""
    images = np.random.default_rng(offset).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    images.reshape(n, -1)[:, 0] = offset + np.arange(n)
    return images


@pytest.fixture
def mnist_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path / "mnist"
    folder.mkdir()
    arrays = {
        "train-images-idx3-ubyte.gz": unique_images(50, (28, 28), 0),  # one file gzipped, like downloads
        "train-labels-idx1-ubyte": np.arange(50, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": unique_images(20, (28, 28), 100),
        "t10k-labels-idx1-ubyte": (np.arange(20, dtype=np.uint8) * 3) % 10,
    }
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return tmp_path, arrays


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int], label_key: bytes) -> None:
    batch = {b"batch_label": b"test fixture", b"data": images.reshape(len(images), 3072), label_key: labels}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [label // 5 for label in labels]
    with path.open("wb") as f:
        pickle.dump(batch, f)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", unique_images(8, (3, 32, 32), 10 * i), [i] * 8, b"labels")
    write_cifar_batch(folder / "test_batch", unique_images(6, (3, 32, 32), 200), list(range(6)), b"labels")
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_batch(folder / "train", unique_images(30, (3, 32, 32), 0), list(range(30)), b"fine_labels")
    write_cifar_batch(folder / "test", unique_images(10, (3, 32, 32), 50), [99] * 10, b"fine_labels")
    return tmp_path


def rows(tensor: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in tensor}


def assert_split_properties(name: str, root: Path, sizes: tuple[int, int, int]) -> None:
    """Sizes, dtypes, determinism per seed, a different split for another seed, disjoint train/val."""
    splits, again, other = (load_splits(name, root, seed) for seed in (0, 0, 1))
    assert (len(splits.train), len(splits.val), len(splits.test)) == sizes
    x, y = splits.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape[1:] == splits.input_shape == DATASETS.get(name).input_shape
    for a, b in zip(splits.train.tensors + splits.val.tensors, again.train.tensors + again.val.tensors, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(splits.val.tensors[0], other.val.tensors[0])
    assert torch.equal(splits.test.tensors[0], other.test.tensors[0])  # inputs never depend on the seed
    train_rows, val_rows = rows(splits.train.tensors[0]), rows(splits.val.tensors[0])
    assert not train_rows & val_rows
    assert train_rows | val_rows == rows(other.train.tensors[0]) | rows(other.val.tensors[0])


def test_registry_lists_the_six_data_sets() -> None:
    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "imagenet", "mnist", "mnist1d"]
    assert DATASETS.get("cifar100") is CIFAR100


# -- digits and mnist1d: generated or bundled, always available -----------------------------------


def test_digits_splits(tmp_path: Path) -> None:
    assert_split_properties("digits", tmp_path, (1294, 144, 359))
    splits = Digits.load(tmp_path, 3)
    assert torch.equal(splits.test.tensors[0], Digits.load(tmp_path, 0).test.tensors[0])
    assert splits.num_classes == 10 and set(splits.test.tensors[1].tolist()) == set(range(10))
    inputs = torch.cat([splits.train.tensors[0], splits.val.tensors[0]])
    assert abs(inputs.mean().item()) < 1e-4 and abs(inputs.std().item() - 1) < 1e-3


def test_mnist1d_generates_offline_without_side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _generate.cache_clear()  # really run the generator in this test
    np.random.seed(123)
    random.seed(123)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    splits = MNIST1D.load(tmp_path, 0)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    assert random.getstate() == python_state
    assert list(tmp_path.iterdir()) == []
    assert splits.train.tensors[0].shape[1:] == (1, 40) and splits.num_classes == 10
    assert_split_properties("mnist1d", tmp_path, (3600, 400, 1000))


# -- MNIST: IDX files ------------------------------------------------------------------------------


def test_read_idx_round_trips_plain_and_gzipped(tmp_path: Path) -> None:
    array = unique_images(3, (5, 7), 0)
    for name in ("plain-idx3-ubyte", "zipped-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name, 3), array)


def test_read_idx_rejects_a_wrong_magic_or_truncated_data(tmp_path: Path) -> None:
    write_idx(tmp_path / "labels", np.arange(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="magic 00000801, expected 00000803"):
        read_idx(tmp_path / "labels", 3)
    (tmp_path / "short").write_bytes((tmp_path / "labels").read_bytes()[:-1])
    with pytest.raises(ValueError, match="3 data bytes"):
        read_idx(tmp_path / "short", 1)


def test_mnist_splits(mnist_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, arrays = mnist_root
    assert_split_properties("mnist", root, (45, 5, 20))
    splits = MNIST.load(root, 0)
    assert splits.test.tensors[0].shape == (20, 1, 28, 28)
    assert splits.test.tensors[1].tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # the first pixel identifies each training image, so its label must have travelled with it
    x, y = (torch.cat(t) for t in zip(splits.train.tensors, splits.val.tensors, strict=True))
    order = torch.argsort(x[:, 0, 0, 0])
    assert y[order].tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_mnist_counts_must_match(mnist_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = mnist_root
    write_idx(root / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8))
    with pytest.raises(ValueError, match="20 images but .* 19 labels"):
        MNIST.load(root, 0)


# -- CIFAR: pickle batches -------------------------------------------------------------------------


def test_cifar_batches_read_back_exactly(cifar_root: Path) -> None:
    images = unique_images(6, (3, 32, 32), 200)
    x, y = read_batches((cifar_root / "cifar-10-batches-py" / "test_batch",), b"labels")
    assert x.shape == (6, 3, 32, 32) and x.dtype == np.uint8 and np.array_equal(x, images)
    assert y.dtype == np.int64 and y.tolist() == list(range(6))


def test_cifar10_splits(cifar_root: Path) -> None:
    assert_split_properties("cifar10", cifar_root, (36, 4, 6))
    splits = CIFAR10.load(cifar_root, 0)
    assert splits.num_classes == 10 and splits.test.tensors[1].tolist() == list(range(6))
    assert sorted(torch.cat([splits.train.tensors[1], splits.val.tensors[1]]).tolist()) == sorted(
        [i for i in range(1, 6) for _ in range(8)]
    )
    channel_means = torch.cat([splits.train.tensors[0], splits.val.tensors[0]]).mean(dim=(0, 2, 3))
    assert torch.allclose(channel_means, torch.zeros(3), atol=1e-5)


def test_cifar100_uses_fine_labels(cifar_root: Path) -> None:
    assert_split_properties("cifar100", cifar_root, (27, 3, 10))
    splits = CIFAR100.load(cifar_root, 0)
    assert splits.num_classes == 100 and splits.test.tensors[1].tolist() == [99] * 10


# -- ImageNet: an ImageFolder of JPEGs -------------------------------------------------------------


@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    sizes = [(300, 260), (240, 500), (256, 256), (400, 300)]
    for split, per_class in (("train", 4), ("val", 1)):
        for c, wnid in enumerate(["n01440764", "n01443537", "n01484850"]):
            folder = tmp_path / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                suffix = [".JPEG", ".jpg", ".png", ".jpeg"][i]
                Image.new("RGB", sizes[i], (40 * c, 80, 20 * i)).save(folder / f"{wnid}_{i}{suffix}")
            (folder / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagenet_splits_and_labels(imagenet_root: Path) -> None:
    splits, again, other = (ImageNet.load(imagenet_root, seed) for seed in (0, 0, 1))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (11, 1, 3)
    assert splits.num_classes == 1000 and splits.input_shape == (3, 224, 224)
    assert splits.train.samples == again.train.samples and splits.val.samples == again.val.samples
    assert splits.train.samples != other.train.samples
    assert not set(splits.train.samples) & set(splits.val.samples)
    assert [label for _, label in splits.test.samples] == [0, 1, 2]
    assert all(
        path.parent.name == ["n01440764", "n01443537", "n01484850"][label] for path, label in splits.train.samples
    )
    for dataset in (splits.train, splits.test):
        image, label = dataset[0]
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and isinstance(label, int)


def test_preprocess_takes_the_normalised_centre() -> None:
    pixels = np.zeros((256, 512, 3), dtype=np.uint8)
    pixels[:, 144:368] = (255, 128, 0)  # exactly the central 224 columns
    image = preprocess(Image.fromarray(pixels))
    expected = (torch.tensor([255, 128, 0]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    assert image.shape == (3, 224, 224)
    assert torch.allclose(image, expected[:, None, None].expand(3, 224, 224), atol=1e-5)
    assert preprocess(Image.new("L", (100, 700))).shape == (3, 224, 224)  # grey and small: still RGB 224


def test_imagenet_val_classes_must_exist_in_train(imagenet_root: Path) -> None:
    (imagenet_root / "imagenet" / "val" / "n99999999").mkdir()
    with pytest.raises(ValueError, match="n99999999"):
        ImageNet.load(imagenet_root, 0)


# -- missing data sets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnist", "mnist/train-images-idx3-ubyte (or .gz)"),
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("imagenet", "imagenet/train/<wnid>/*.JPEG"),
    ],
)
def test_missing_files_are_named(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(DatasetNotFound) as error:
        load_splits(name, tmp_path, 0)
    message = str(error.value)
    assert message.startswith(f"{name}: missing {tmp_path}/")
    assert f"{tmp_path}/{expected}" in message
    assert "data_root" in message and "$HARNESS_DATA" in message and "downloaded" in message


def test_root_defaults_to_harness_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFound, match="elsewhere/mnist/t10k-images-idx3-ubyte"):
        load_splits("mnist", None, 0)


def test_imagenet_without_images(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split / "n01440764").mkdir(parents=True)
    with pytest.raises(DatasetNotFound, match="images in"):
        ImageNet.load(tmp_path, 0)
