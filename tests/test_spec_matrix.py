"""The spec beyond a cross product: model–data-set pairs, per-model recipes, pretrained weights."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from harness.cell import pretrain
from harness.models import create_model
from harness.spec import SpecError, expand, load_spec

BASE = {
    "name": "grown",
    "methods": ["random", "global_magnitude"],
    "sparsities": [0.5, 0.9],
    "seeds": [0, 1],
    "pretrain": {"epochs": 3, "lr": 0.05, "batch_size": 64},
    "finetune": {"epochs": 1, "lr": 0.01},
}
CROSS = {"models": ["lenet_300_100", "mnist1d_mlp"], "datasets": ["digits", "mnist1d"]}


def write(folder: Path, **fields) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, **fields}, sort_keys=False))
    return path


def cells_of(path: Path) -> list:
    return expand(load_spec(path), path)


def refused(path: Path) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return str(caught.value)


def test_pairs_run_only_the_pairs_given_with_the_ids_of_the_cross_product(tmp_path: Path) -> None:
    cross = cells_of(write(tmp_path, **CROSS))
    pairs = [{"model": "lenet_300_100", "dataset": "digits"}, {"model": "mnist1d_mlp", "dataset": "mnist1d"}]
    paired = cells_of(write(tmp_path, pairs=pairs))
    assert len(cross) == 2 * 2 * 2 * 2 * 2 and len(paired) == 2 * 2 * 2 * 2
    assert {(c.model, c.dataset) for c in paired} == {("lenet_300_100", "digits"), ("mnist1d_mlp", "mnist1d")}
    same = {
        c.cell_id for c in cross if (c.model, c.dataset) in {("lenet_300_100", "digits"), ("mnist1d_mlp", "mnist1d")}
    }
    assert {c.cell_id for c in paired} == same  # a pair is a cell of the cross product, not a new identity


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({**CROSS, "pairs": [{"model": "lenet_300_100", "dataset": "digits"}]}, "or 'pairs', not both"),
        ({"models": ["lenet_300_100"]}, "give 'models' and 'datasets' (every model on every data set), or 'pairs'"),
        ({"pairs": [{"model": "lenet_300_100", "dataset": "digits"}] * 2}, "pairs: [1] repeats [0]"),
        ({"pairs": [{"model": "lenet_300_10", "dataset": "digits"}]}, "pairs[0].model: "),
        ({"pairs": [{"model": "lenet5", "dataset": "mnist1d"}]}, "pairs: 'lenet5' cannot take dataset 'mnist1d'"),
    ],
)
def test_pairs_mistakes_are_named(tmp_path: Path, fields: dict, message: str) -> None:
    assert message in refused(write(tmp_path, **fields))


def test_a_model_recipe_changes_that_models_cells_only(tmp_path: Path) -> None:
    plain = cells_of(write(tmp_path, **CROSS))
    recipes = {"mnist1d_mlp": {"pretrain": {"epochs": 7, "optimizer": "adam", "lr": 0.001}, "finetune": {"epochs": 2}}}
    tuned = cells_of(write(tmp_path, **CROSS, recipes=recipes))
    for before, after in zip(plain, tuned, strict=True):
        if after.model == "lenet_300_100":
            assert after.cell_id == before.cell_id and after.pretrain_key == before.pretrain_key
            continue
        assert after.cell_id != before.cell_id and after.pretrain_key != before.pretrain_key
        assert (after.pretrain.epochs, after.pretrain.optimizer, after.pretrain.lr) == (7, "adam", 0.001)
        # fine-tuning: the model's own pretrain recipe, then the benchmark's finetune, then its own fields
        assert (after.finetune.optimizer, after.finetune.lr, after.finetune.epochs) == ("adam", 0.01, 2)
        assert after.finetune.batch_size == 64


@pytest.mark.parametrize(
    ("recipes", "message"),
    [
        ({"resnet20": {"pretrain": {"epochs": 2}}}, "recipes.resnet20: not a model of this benchmark; allowed: "),
        ({"mnist1d_mlp": {"pretrain": {"lr": -1}}}, "recipes.mnist1d_mlp.pretrain.lr"),
        ({"mnist1d_mlp": {"finetune": {"optimizer": "rmsprop"}}}, "recipes.mnist1d_mlp.finetune.optimizer"),
        ({"mnist1d_mlp": {"pretrian": {}}}, "recipes.mnist1d_mlp.pretrian"),
    ],
)
def test_model_recipe_mistakes_are_named(tmp_path: Path, recipes: dict, message: str) -> None:
    assert message in refused(write(tmp_path, **CROSS, recipes=recipes))


def lenet_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return create_model("lenet_300_100", (1, 8, 8), 10).state_dict()


def test_pretrained_weights_replace_dense_training_and_their_content_is_identity(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(lenet_state(123), weights / "lenet.pt")
    fields = {"models": ["lenet_300_100"], "datasets": ["digits"]}
    plain = cells_of(write(tmp_path, **fields))
    loaded = cells_of(write(tmp_path, **fields, pretrained={"lenet_300_100": "weights/lenet.pt"}))  # beside the spec
    digest = hashlib.sha256((weights / "lenet.pt").read_bytes()).hexdigest()[:16]
    assert {c.pretrained_sha256 for c in loaded} == {digest}
    assert {c.pretrained for c in loaded} == {str(weights / "lenet.pt")}
    assert not {c.cell_id for c in plain} & {c.cell_id for c in loaded}
    assert not {c.pretrain_key for c in plain} & {c.pretrain_key for c in loaded}

    torch.save(lenet_state(124), weights / "lenet.pt")  # other weights under the same name: other cells
    again = cells_of(write(tmp_path, **fields, pretrained={"lenet_300_100": "weights/lenet.pt"}))
    assert not {c.pretrain_key for c in again} & {c.pretrain_key for c in loaded}

    dense = pretrain(again[0])
    expected = lenet_state(124)
    assert dense.epochs == []  # nothing trained
    assert all(torch.equal(dense.trained_state[name], expected[name]) for name in expected)
    assert not all(torch.equal(dense.init_state[name], expected[name]) for name in expected)  # θ0: the seed's init


class NotAStateDict:
    pass


def test_pretrained_files_that_do_not_fit_are_refused_before_anything_runs(tmp_path: Path) -> None:
    fields = {"models": ["lenet_300_100"], "datasets": ["digits"]}
    torch.manual_seed(0)
    torch.save(create_model("lenet_300_100", (1, 28, 28), 10).state_dict(), tmp_path / "mnist.pt")
    message = refused(write(tmp_path, **fields, pretrained={"lenet_300_100": "mnist.pt"}))
    assert "pretrained.lenet_300_100: mnist.pt does not fit lenet_300_100 on digits: other shapes for " in message

    (tmp_path / "object.pt").write_bytes(pickle.dumps(NotAStateDict()))
    message = refused(write(tmp_path, **fields, pretrained={"lenet_300_100": "object.pt"}))
    assert "pretrained.lenet_300_100: " in message and "is not a state dict torch can load safely" in message

    message = refused(write(tmp_path, **fields, pretrained={"lenet_300_100": "absent.pt"}))
    assert f"pretrained.lenet_300_100: no such file {tmp_path / 'absent.pt'}" in message

    message = refused(write(tmp_path, **fields, pretrained={"lenet5": "absent.pt"}))
    assert "pretrained.lenet5: not a model of this benchmark; allowed: lenet_300_100" in message


TORCHVISION_RESNET18_KEYS = [  # torchvision.models.resnet18().state_dict(): 122 entries, in this order
    *(f"{module}.{t}" for module in ["conv1"] for t in ["weight"]),
    *(f"bn1.{t}" for t in ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
    *(
        key
        for stage in (1, 2, 3, 4)
        for block in (0, 1)
        for key in [
            f"layer{stage}.{block}.conv1.weight",
            *(
                f"layer{stage}.{block}.bn1.{t}"
                for t in ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
            ),
            f"layer{stage}.{block}.conv2.weight",
            *(
                f"layer{stage}.{block}.bn2.{t}"
                for t in ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
            ),
            *(
                [f"layer{stage}.0.downsample.0.weight"]
                + [
                    f"layer{stage}.0.downsample.1.{t}"
                    for t in ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
                ]
                if stage > 1 and block == 0
                else []
            ),
        ]
    ),
    "fc.weight",
    "fc.bias",
]


def test_a_torchvision_resnet18_file_loads_under_torchvisions_names(tmp_path: Path) -> None:
    torch.manual_seed(5)
    ours = create_model("resnet18", (3, 32, 32), 10).state_dict()
    assert len(TORCHVISION_RESNET18_KEYS) == len(ours) == 122
    # torchvision's module order is this model's: the i-th tensor of one is the i-th of the other
    as_torchvision = dict(zip(TORCHVISION_RESNET18_KEYS, ours.values(), strict=True))
    torch.save(as_torchvision, tmp_path / "resnet18-torchvision.pth")
    path = write(
        tmp_path, models=["resnet18"], datasets=["cifar10"], pretrained={"resnet18": "resnet18-torchvision.pth"}
    )
    [cell, *_] = cells_of(path)
    assert (
        cell.pretrained_sha256 == hashlib.sha256((tmp_path / "resnet18-torchvision.pth").read_bytes()).hexdigest()[:16]
    )

    shuffled = dict(zip(TORCHVISION_RESNET18_KEYS, ours.values(), strict=True))
    shuffled["layer1.0.conv1.weight"], shuffled["layer1.0.conv2.weight"] = (
        torch.zeros(1),
        shuffled["layer1.0.conv2.weight"],
    )
    torch.save(shuffled, tmp_path / "resnet18-torchvision.pth")
    message = refused(path)
    assert "other shapes for stage1.0.residual.0.weight" in message
