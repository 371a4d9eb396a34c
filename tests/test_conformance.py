"""The conformance matrix: every registered method × every model family runs one tiny cell and keeps
the promises of :func:`harness.testing.check_conformance` (``make conformance`` runs all of it)."""

from __future__ import annotations

import pytest

from harness.methods import METHODS
from harness.testing import CONFORMANCE_MODELS, check_conformance

# what a method needs to run at all on a tiny cell
PARAMS = {
    "pipeline": {"stages": ["global_magnitude", {"name": "ptq", "bits": 4}, "huffman"]},
    "iterative": {"rate": 0.5},
    "imp": {"rate": 0.5},
    "lr_rewinding": {"rate": 0.5},
    "weight_rewinding": {"rate": 0.5},
    "han_iterative": {"rate": 0.5},
    "deep_compression": {"rate": 0.5},
    # kept small for the cover: DeepSZ evaluates every layer at every bound, Weightless retrains after
    # every encoded layer (tests/test_fidelity_encoders.py runs both at their defaults on the MLP)
    "sz": {"probe_examples": 256, "bounds": [0.001, 0.009]},
    "bloomier": {"retrain_epochs": 0},
}
FALSE_POSITIVES = {"bloomier"}  # a Bloomier filter reads some pruned positions back as weights, by design


pytestmark = pytest.mark.usefixtures("conformance_models_removed")


def _matrix() -> list:
    """Every method × every family. ``make test`` runs a cover of it — every method on the BatchNorm
    ResNet (where the papers' methods broke) and every family under global magnitude pruning — and
    ``make conformance`` the whole matrix (about 240 cells: too long for the suite)."""
    cells = []
    for method in sorted(METHODS.names()):
        for family in sorted(CONFORMANCE_MODELS):
            in_cover = family == "batchnorm-resnet" or method == "global_magnitude"
            marks = [pytest.mark.slow] + ([] if in_cover else [pytest.mark.conformance])
            cells.append(pytest.param(method, family, marks=marks, id=f"{method}-{family}"))
    return cells


@pytest.mark.parametrize(("method", "family"), _matrix())
def test_every_method_keeps_its_promises_on_every_model_family(method: str, family: str) -> None:
    check_conformance(method, PARAMS.get(method), model=family, sparsity=0.5, false_positives=method in FALSE_POSITIVES)


def _removal_matrix() -> list:
    """Filter pruning with ``remove: true`` on every family: the cover runs the BatchNorm ResNet."""
    return [
        pytest.param(
            family, marks=[pytest.mark.slow] + ([] if family == "batchnorm-resnet" else [pytest.mark.conformance])
        )
        for family in sorted(CONFORMANCE_MODELS)
    ]


@pytest.mark.parametrize("family", _removal_matrix())
def test_removing_the_pruned_channels_keeps_the_promises_on_every_model_family(family: str) -> None:
    levels = check_conformance("filter_l1", {"remove": True}, model=family, sparsity=0.5)
    assert all(level.row["flops_physical"] <= level.row["flops_dense"] for level in levels)


def test_the_matrix_covers_the_families_the_papers_use() -> None:
    assert set(CONFORMANCE_MODELS) == {
        "mlp", "lenet5", "batchnorm-resnet", "batchnorm-vgg", "grouped-conv", "layernorm", "groupnorm",
    }  # fmt: skip
