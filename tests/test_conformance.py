"""The conformance matrix: every registered method × every model family runs one tiny cell and keeps
the promises of :func:`harness.testing.check_conformance` (slow: run with ``-m slow``)."""

from __future__ import annotations

import pytest

from harness.methods import METHODS
from harness.models import MODELS
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
}
FALSE_POSITIVES = {"bloomier"}  # a Bloomier filter reads some pruned positions back as weights, by design


@pytest.fixture(scope="module", autouse=True)
def models_kept():
    """check_conformance registers its small models; other tests list the built-ins, so they go again."""
    MODELS.names()  # the built-ins loaded first, so they are among what is kept
    saved = dict(MODELS._entries)
    yield
    MODELS._entries = saved


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CONFORMANCE_MODELS))
@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_every_method_keeps_its_promises_on_every_model_family(method: str, family: str) -> None:
    check_conformance(method, PARAMS.get(method), model=family, sparsity=0.5, false_positives=method in FALSE_POSITIVES)


def test_the_matrix_covers_the_families_the_papers_use() -> None:
    assert set(CONFORMANCE_MODELS) == {
        "mlp", "lenet5", "batchnorm-resnet", "batchnorm-vgg", "grouped-conv", "layernorm", "groupnorm",
    }  # fmt: skip
