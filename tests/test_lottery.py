"""Zhou et al.'s lottery-ticket anatomy and learned supermasks: each variant's defining property."""

from __future__ import annotations

import math

import pytest
import torch

from harness.cell import CellJob, pretrain
from harness.data import load_splits
from harness.masks import masks_from_scores
from harness.methods import create_method
from harness.methods.lottery import BernoulliMask, criterion_scores
from harness.spec import CellSpec, Recipe
from harness.testing import check_pruning_method

# Two layers of four weights, chosen so that every criterion keeps a different pair per layer.
INITIAL = {
    "a.weight": torch.tensor([[0.1, -0.5], [0.15, -0.2]]),
    "b.weight": torch.tensor([[0.9, 0.05], [-0.4, 0.2]]),
}
FINAL = {
    "a.weight": torch.tensor([[0.6, -0.1], [-0.25, -0.9]]),
    "b.weight": torch.tensor([[0.95, 0.5], [-0.1, 0.3]]),
}
# Kept flat indices per layer, worked out by hand from each formula (keep the top 2 of 4).
KEPT = {
    "large_final": ([0, 3], [0, 1]),  # |wf|: a .6 .1 .25 .9 | b .95 .5 .1 .3
    "small_final": ([1, 2], [2, 3]),
    "large_init": ([1, 3], [0, 2]),  # |wi|: a .1 .5 .15 .2 | b .9 .05 .4 .2
    "small_init": ([0, 2], [1, 3]),
    "large_init_large_final": ([2, 3], [0, 3]),  # min: a .1 .1 .15 .2 | b .9 .05 .1 .2
    "magnitude_increase": ([0, 3], [1, 3]),  # |wf|-|wi|: a .5 -.4 .1 .7 | b .05 .45 -.3 .1
    "movement": ([0, 3], [1, 2]),  # |wf-wi|: a .5 .4 .4 .7 | b .05 .45 .3 .1
}


@pytest.mark.parametrize("criterion", sorted(KEPT))
def test_each_criterion_keeps_the_weights_its_formula_ranks_highest(criterion):
    masks = masks_from_scores(criterion_scores(criterion, INITIAL, FINAL, seed=0), 0.5, "layer")
    kept = tuple(torch.nonzero(masks[name].flatten()).flatten().tolist() for name in ("a.weight", "b.weight"))
    assert kept == KEPT[criterion]


def test_random_criterion_keeps_half_of_each_layer_and_depends_only_on_the_seed():
    def kept(seed):
        return masks_from_scores(criterion_scores("random", INITIAL, FINAL, seed), 0.5, "layer")

    assert all(int(m.sum()) == 2 for m in kept(0).values())
    assert all(torch.equal(kept(3)[n], kept(3)[n]) for n in INITIAL)
    assert any(not torch.equal(kept(s)[n], kept(0)[n]) for s in range(1, 6) for n in INITIAL)


CELL = dict(
    benchmark="t",
    model="lenet_300_100",
    dataset="digits",
    method="lottery_anatomy",
    seed=0,
    sparsity=0.8,
    pretrain=Recipe(epochs=1, lr=0.05, batch_size=64),
)


@pytest.fixture(scope="module")
def dense():
    return pretrain(CellSpec(**CELL))


@pytest.fixture(scope="module")
def data():
    return load_splits("digits", None, 0)


def run(data, dense, method, params, epochs=0, **recipe):
    """Apply ``method`` to a fresh job; ``epochs=0`` stops right after the ticket is set up."""
    cell = CellSpec(**{**CELL, "method": method, "pretrain": Recipe(epochs=epochs, lr=0.05, batch_size=64, **recipe)})
    job = CellJob(cell, data, dense)
    create_method(method, params).apply(job)
    weights = {n: p.detach().cpu() for n, p in job.model.named_parameters()}
    return job, weights


def layer_masks(dense, sparsity=0.8):
    final = {n: dense.trained_state[n] for n in ("1.weight", "3.weight")}
    return masks_from_scores({n: w.abs() for n, w in final.items()}, sparsity, "layer")


def test_rewind_restores_the_exact_initial_values_of_the_survivors(data, dense):
    job, weights = run(data, dense, "lottery_anatomy", {"kept": "rewind"})
    for name, mask in layer_masks(dense).items():
        assert torch.equal(weights[name], torch.where(mask, dense.init_state[name], 0.0))
    assert torch.equal(weights["1.bias"], dense.init_state["1.bias"])
    assert torch.equal(weights["5.weight"], dense.init_state["5.weight"])  # the classifier is not masked
    # The supermask column is the untrained ticket's accuracy, the same the prune step measured.
    assert job.rows[0]["supermask_top1"] == job.rows[0]["top1_pruned"]


def test_reshuffle_keeps_each_layers_multiset_of_surviving_initial_values(data, dense):
    _, weights = run(data, dense, "lottery_anatomy", {"kept": "reshuffle"})
    for name, mask in layer_masks(dense).items():
        init = dense.init_state[name]
        assert torch.equal(weights[name][mask].sort().values, init[mask].sort().values)
        assert not torch.equal(weights[name][mask], init[mask])
        assert int(torch.count_nonzero(weights[name][~mask])) == 0


def test_signed_constant_is_the_layers_init_std_with_the_init_sign(data, dense):
    _, weights = run(data, dense, "lottery_anatomy", {"kept": "signed_constant"})
    for name, mask in layer_masks(dense).items():
        init = dense.init_state[name]
        assert torch.allclose(weights[name][mask].abs(), torch.full((int(mask.sum()),), float(init.std())))
        assert torch.equal(weights[name][mask].sign(), init[mask].sign())


def test_reinit_draws_new_values_from_the_same_initialiser(data, dense):
    _, weights = run(data, dense, "lottery_anatomy", {"kept": "reinit"})
    for name, mask in layer_masks(dense).items():
        init, kept = dense.init_state[name], weights[name][mask]
        assert (kept != init[mask]).float().mean() > 0.99
        bound = 1 / math.sqrt(init.shape[1])  # PyTorch's Linear init is uniform in ±1/sqrt(fan_in)
        assert 0.99 * bound < float(kept.abs().max()) <= bound


def test_frozen_pruned_weights_stay_at_their_initial_values_through_training(data, dense):
    job, weights = run(data, dense, "lottery_anatomy", {"pruned": "frozen"}, epochs=1, weight_decay=0.01, momentum=0.9)
    for name, mask in layer_masks(dense).items():
        init = dense.init_state[name]
        assert torch.equal(weights[name][~mask], init[~mask])
        assert (weights[name][mask] != init[mask]).float().mean() > 0.9  # the kept weights did train
    assert job.masks == {}  # nothing is zeroed: the pruned weights live on, frozen
    assert job.rows[0]["sparsity"] == 0.8 and 0.0 <= job.rows[0]["supermask_top1"] <= 1.0


def test_learned_supermask_trains_the_mask_and_leaves_every_weight_unchanged(data, dense):
    job, weights = run(data, dense, "learned_supermask", {"lr": 300.0}, epochs=3)
    zeros = total = 0
    for name, init in dense.init_state.items():
        if name.endswith("bias"):
            assert torch.equal(weights[name], init)
            continue
        kept = weights[name] != 0
        assert torch.equal(weights[name][kept], init[kept])  # bitwise: survivors are θ0
        zeros, total = zeros + int((~kept).sum()), total + kept.numel()
    row = job.rows[0]
    assert row["sparsity"] == pytest.approx(zeros / total)  # the learned sparsity, not the cell's 0.8
    assert row["top1"] > 0.3  # a random half of the weights scores ~0.1: the mask has learned
    assert all(p.requires_grad for p in job.model.parameters())


def test_bernoulli_mask_passes_the_gradient_straight_through_the_sample():
    scores = torch.tensor([0.0, 2.0, -1.0])
    weight = torch.tensor([0.5, -1.0, 2.0])
    mask = BernoulliMask(scores.clone(), eval_mask="mode")
    (mask(weight) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    sigma = torch.sigmoid(scores)
    # d loss / d s = upstream · w · σ'(s), whatever was drawn.
    assert torch.allclose(mask.scores.grad, torch.tensor([1.0, 2.0, 3.0]) * weight * sigma * (1 - sigma))
    mask.eval()
    assert torch.equal(mask(weight), weight * torch.tensor([0.0, 1.0, 0.0]))  # mode: σ(s) > 1/2


@pytest.mark.parametrize("params", [{}, {"criterion": "movement", "kept": "signed_constant", "scope": "global"}])
def test_lottery_anatomy_keeps_the_harness_promises(params):
    check_pruning_method("lottery_anatomy", params)
