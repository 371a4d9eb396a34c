"""The reusable plugin check: the five built-ins pass it, and each promise it checks catches a method
that breaks it. The broken methods are plugin classes written as a user would, never registered."""

from __future__ import annotations

import pytest
import torch

from harness.masks import masks_from_scores
from harness.methods import PruningMethod
from harness.spec import Recipe
from harness.testing import check_pruning_method

BUILTINS = ["random", "global_magnitude", "layer_magnitude", "global_gradient", "layer_gradient"]


@pytest.mark.parametrize("method", BUILTINS)
def test_builtins_keep_the_plugin_promises(method: str) -> None:
    levels = check_pruning_method(method)
    assert len(levels) == 1 and levels[0].row["sparsity"] == 0.75


def test_a_plugin_class_can_be_checked_without_registering_it() -> None:
    class SmallestWeights(PruningMethod):
        def score(self, ctx):
            return {name: w.abs() for name, w in ctx.weights.items()}

    check_pruning_method(SmallestWeights, {"prune_classifier": True}, sparsity=0.5)


class PrunesTooLittle(PruningMethod):
    """Removes half of what it is asked to."""

    def masks(self, ctx, sparsity):
        return masks_from_scores({n: w.abs() for n, w in ctx.weights.items()}, sparsity / 2, "global")


class RedrawsEachRound(PruningMethod):
    """Two rounds, each a fresh random mask: weights pruned in round one come back in round two."""

    def apply(self, job):
        for seed in (0, 1):
            generator = torch.Generator().manual_seed(seed)
            scores = {n: torch.rand(w.shape, generator=generator) for n, w in job.context().weights.items()}
            job.prune(masks_from_scores(scores, job.cell.sparsity, "global"))
            job.finetune()


class ForgetsItsMask(PruningMethod):
    """Prunes, then puts the trained dense weights back without pruning again."""

    def apply(self, job):
        ctx = job.context()
        job.prune(masks_from_scores({n: w.abs() for n, w in ctx.weights.items()}, job.cell.sparsity, "global"))
        job.model.load_state_dict(job.dense.trained_state)
        job.finish_level()


class PrunesTheClassifier(PruningMethod):
    """Scores the classifier too although ``prune_classifier`` is off."""

    def masks(self, ctx, sparsity):
        weights = dict(ctx.model.named_parameters())
        scores = {name: weights[name].detach().abs() for name in [*ctx.weights, "5.weight"]}
        return masks_from_scores(scores, sparsity, "global")


@pytest.mark.parametrize(
    ("method", "message"),
    [
        (PrunesTooLittle, r"weights pruned in .*expected 36900"),
        (RedrawsEachRound, r"level 1: \d+ weights of 1.weight pruned at the level before are kept again"),
        (ForgetsItsMask, r"level 0: \d+ pruned entries of 1.weight are nonzero after training"),
        (PrunesTheClassifier, r"the classifier 5.weight is masked"),
    ],
)
def test_the_check_catches_a_broken_promise(method: type[PruningMethod], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_pruning_method(method, finetune_recipe=Recipe(epochs=0))
