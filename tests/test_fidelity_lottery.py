"""Lottery-ticket fidelity to Zhou et al. 2019: the learned supermask's own optimiser, the anatomy's
remaining criteria and treatments, checked on hand-made weights and a tiny real cell."""

from __future__ import annotations

import pytest
import torch

from harness.cell import CellJob, pretrain
from harness.data import load_splits
from harness.masks import masks_from_scores
from harness.methods import create_method
from harness.methods.lottery import criterion_scores, rescale_kept, treat_kept
from harness.models import create_model
from harness.spec import CellSpec, Recipe
from harness.testing import run_method

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


# -- Zhou et al.'s anatomy on hand-made weights ---------------------------------------------------------
# One layer of four weights, keep two. Init is on a smaller scale than final (as after training), so
# min(|wi|, |wf|) is min |wi| and would pick large_init's pair; the paper intersects percentiles.
WI = {"w": torch.tensor([0.01, 0.04, 0.03, 0.02])}
WF = {"w": torch.tensor([0.9, 0.1, 0.8, 0.5])}


def kept(criterion: str, initial=WI, final=WF, sparsity: float = 0.5) -> list[int]:
    masks = masks_from_scores(criterion_scores(criterion, initial, final, seed=0), sparsity, "layer")
    return torch.nonzero(masks["w"]).flatten().tolist()


def test_large_init_large_final_intersects_the_same_percentile_of_each() -> None:
    # top-2 |wi| = {1, 2}, top-2 |wf| = {0, 2}: only {2}; top-3: {1, 2, 3} ∩ {0, 2, 3} = {2, 3}
    assert kept("large_init_large_final") == [2, 3]
    assert kept("large_init") == [1, 2]  # what thresholding min(|wi|, |wf|) keeps here
    # at 75 % sparsity one weight stays: the top-2 intersection {2}
    assert kept("large_init_large_final", sparsity=0.75) == [2]


def test_small_init_small_final_intersects_the_bottom_percentiles() -> None:
    # bottom-2 |wi| = {0, 3}, bottom-2 |wf| = {1, 3}: {3}; bottom-3: {0, 2, 3} ∩ {1, 2, 3} = {2, 3}
    assert kept("small_init_small_final") == [2, 3]
    assert kept("small_init_small_final", sparsity=0.75) == [3]


def test_large_final_same_sign_keeps_the_largest_weights_that_kept_their_sign() -> None:
    initial = {"w": torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5])}
    final = {"w": torch.tensor([-0.9, -0.5, 0.2, 0.1, 0.05])}  # flipped: 0 and 3
    assert kept("large_final", initial, final, sparsity=0.6) == [0, 1]
    assert kept("large_final_same_sign", initial, final, sparsity=0.6) == [1, 2]
    # more kept than there are same-sign weights: the flipped ones follow, largest |wf| first
    assert kept("large_final_same_sign", initial, final, sparsity=0.2) == [0, 1, 2, 4]


INIT = {"w": torch.tensor([0.5, -0.25, 0.125, -1.0, 2.0])}
MASK = {"w": torch.tensor([True, True, False, True, True])}
FRESH = {"w": torch.tensor([-3.0, 4.0, 7.0, -5.0, -6.0]), "other": torch.zeros(1)}


def test_signed_reinit_takes_the_fresh_magnitudes_and_the_initial_signs() -> None:
    start = treat_kept("signed_reinit", INIT, MASK, seed=0, fresh_init=lambda: FRESH)
    assert start["w"].tolist() == [3.0, -4.0, 0.125, -5.0, 6.0]  # pruned entry 2 stays at θ0
    plain = treat_kept("reinit", INIT, MASK, seed=0, fresh_init=lambda: FRESH)
    assert plain["w"].tolist() == [-3.0, 4.0, 0.125, -5.0, -6.0]


def test_signed_reshuffle_permutes_the_magnitudes_and_keeps_each_positions_sign() -> None:
    start = treat_kept("signed_reshuffle", INIT, MASK, seed=0, fresh_init=lambda: FRESH)["w"]
    assert torch.equal(start.sign(), INIT["w"].sign())
    assert sorted(start[MASK["w"]].abs().tolist()) == [0.25, 0.5, 1.0, 2.0]
    assert start[2] == 0.125
    reshuffled = treat_kept("reshuffle", INIT, MASK, seed=0, fresh_init=lambda: FRESH)["w"]
    assert torch.equal(start.abs(), reshuffled.abs())  # the same permutation, signs put back


def test_rescaling_multiplies_kept_weights_by_the_layers_size_over_its_kept_count() -> None:
    scaled = rescale_kept(INIT, MASK)["w"]
    assert scaled.tolist() == [0.625, -0.3125, 0.125, -1.25, 2.5]  # × 5/4 where kept


def test_anatomy_rescale_starts_the_supermask_from_rescaled_survivors(data, dense_adam) -> None:
    untrained = ADAM.model_copy(update={"epochs": 0})  # the ticket as it starts
    cell = CellSpec(**{**CELL, "sparsity": 0.75}, method="lottery_anatomy", pretrain=untrained)
    job = CellJob(cell, data, dense_adam)
    create_method("lottery_anatomy", {"kept": "signed_reinit", "rescale": True}).apply(job)
    weights = dict(job.model.named_parameters())
    for name, mask in job.masks.items():
        init = dense_adam.init_state[name]
        kept_values = weights[name].detach()[mask]
        assert torch.equal(kept_values.sign(), init[mask].sign())
        fresh = job.fresh_init()[name][mask].abs() * 4  # 4 = weights / kept weights at 75 % sparsity
        assert torch.allclose(kept_values.abs(), fresh, rtol=1e-3)


def test_each_reinit_is_a_new_draw_unlike_any_cells_initialisation(data, dense_adam) -> None:
    job = CellJob(CellSpec(**CELL, method="imp", pretrain=ADAM), data, dense_adam)
    draws = [job.fresh_init(draw=k) for k in range(2)]
    torch.manual_seed(1)  # θ0 of the cell with seed 1, as pretrain draws it
    theta0_seed1 = create_model("lenet_300_100", (1, 8, 8), 10).state_dict()
    for name in ("1.weight", "3.weight"):
        assert not torch.equal(draws[0][name], draws[1][name])
        assert not torch.equal(draws[0][name], theta0_seed1[name])
        assert not torch.equal(draws[0][name], dense_adam.init_state[name])
        assert torch.equal(job.fresh_init(draw=1)[name], draws[1][name])  # reproducible


# -- rewinding to an iteration (Frankle et al. 2020) ----------------------------------------------------


def test_rewinding_to_iteration_k_starts_from_the_weights_after_k_steps(data) -> None:
    steps_per_epoch = -(-len(data.train) // 256)
    recipe = Recipe(epochs=2, lr=0.05, batch_size=256, save_epochs=(1,), save_iterations=(2, steps_per_epoch))
    dense = pretrain(CellSpec(**CELL, method="iterative", pretrain=recipe))
    # the weights after one epoch's steps are the weights after epoch 1: an independent check of the counting
    after_epoch = dense.weights_at(1)
    after_steps = dense.weights_at_iteration(steps_per_epoch)
    assert all(torch.equal(after_steps[name], after_epoch[name]) for name in after_epoch)
    assert not torch.equal(dense.weights_at_iteration(2)["1.weight"], after_epoch["1.weight"])

    job = run_method("iterative", {"rate": 0.5, "rewind": "iter:2"}, dense=dense, sparsity=0.5, pretrain_recipe=recipe)
    [level] = job.levels
    start = dense.weights_at_iteration(2)
    for name, value in start.items():
        assert torch.equal(level.pruned_state[name], value * level.masks.get(name, torch.ones_like(value))), name
    # step 2 falls in epoch 0: the whole pretrain schedule is replayed from there
    assert len([e for e in job.epochs if e["phase"] == "finetune-0"]) == recipe.epochs


def test_rewinding_to_an_iteration_the_recipe_did_not_keep_is_refused() -> None:
    method = create_method("iterative", {"rewind": "iter:7"})
    with pytest.raises(ValueError, match=r"save_iterations: \[7\]"):
        method.check_recipes(method.params, Recipe(epochs=1), Recipe(epochs=1))
    with pytest.raises(ValueError, match="k >= 1"):
        Recipe(save_iterations=(0,))
