"""Lottery-ticket fidelity to Zhou et al. 2019: the learned supermask's own optimiser, the anatomy's
remaining criteria and treatments, checked on hand-made weights and a tiny real cell."""

from __future__ import annotations

import pytest

from harness.cell import CellJob, pretrain
from harness.data import load_splits
from harness.methods import create_method
from harness.spec import CellSpec, Recipe

ADAM = Recipe(epochs=10, optimizer="adam", lr=1e-3, batch_size=64, weight_decay=1e-4)
CELL = dict(benchmark="t", model="lenet_300_100", dataset="digits", seed=0, sparsity=0.5)


@pytest.fixture(scope="module")
def data():
    return load_splits("digits", None, 0)


@pytest.fixture(scope="module")
def dense_adam():
    return pretrain(CellSpec(**CELL, method="learned_supermask", pretrain=ADAM))


def test_learned_supermask_under_an_adam_recipe_trains_its_scores_with_sgd_far_above_chance(data, dense_adam):
    cell = CellSpec(**CELL, method="learned_supermask", pretrain=ADAM)
    job = CellJob(cell, data, dense_adam)
    create_method("learned_supermask").apply(job)
    row = job.rows[0]
    assert row["top1"] > 0.6  # chance is 0.1; the pretraining optimizer (Adam at lr 100) left it at ~0.2
    assert 0.0 < row["sparsity"] < 1.0
    adam_epochs = [e for e in job.epochs if e["phase"].startswith("finetune")]
    assert len(adam_epochs) == ADAM.epochs and all(e["lr"] == 100.0 for e in adam_epochs)  # the scores' SGD rate
