"""Masks and the five built-in score methods: exact counts, and each prunes what its definition says.

lenet_300_100 on digits has prunable weights 64·300 = 19200 and 300·100 = 30000 (49200), and a
100·10 = 1000-weight classifier that stays dense unless ``prune_classifier: true`` (50200 then).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.cell import CellJob, DenseCheckpoint, run_cell
from harness.data import load_splits
from harness.masks import apply_masks, mask_gradients, masks_from_scores, prunable_weights
from harness.methods import create_method
from harness.methods.base import PruningContext
from harness.models import create_model
from harness.spec import CellSpec, Recipe, expand, load_spec

BUILTINS = ["random", "global_magnitude", "layer_magnitude", "global_gradient", "layer_gradient"]
LAYER_SCOPE = {"layer_magnitude", "layer_gradient"}
SIZES = {"1.weight": 19200, "3.weight": 30000, "5.weight": 1000}  # lenet_300_100's Linear layers


def context(model: nn.Module, batch=None, seed: int = 0, include_classifier: bool = False) -> PruningContext:
    return PruningContext(
        model=model,
        weights=prunable_weights(model, include_classifier),
        masks={},
        calibration_batch=lambda: batch,
        initial_state=lambda: {},
        seed=seed,
    )


def lenet_cell(method: str = "global_magnitude", sparsity: float = 0.7, **params: object) -> CellSpec:
    """A cell that fine-tunes for 0 epochs: pruning and measuring only, no training."""
    return CellSpec(
        benchmark="t",
        model="lenet_300_100",
        dataset="digits",
        method=method,
        method_params=params,
        sparsity=sparsity,
        seed=0,
        finetune=Recipe(epochs=0),
    )


def untrained_checkpoint(cell: CellSpec) -> DenseCheckpoint:
    """A freshly initialised model stands in for the pretrained one (the scores only read weights)."""
    torch.manual_seed(cell.seed)
    model = create_model(cell.model, (1, 8, 8), 10)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return DenseCheckpoint(cell.pretrain_key, state, state, {}, [])


@pytest.fixture(scope="module")
def digits():
    return load_splits("digits", None, 0)


def pruned_count(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: int((~mask).sum()) for name, mask in masks.items()}


# -- masks ------------------------------------------------------------------------------------------


def test_masks_remove_round_sparsity_times_n_globally_or_per_layer() -> None:
    scores = {"a": torch.rand(7), "b": torch.rand(5)}
    assert sum(pruned_count(masks_from_scores(scores, 0.3, "global")).values()) == 4  # round(0.3 · 12)
    assert pruned_count(masks_from_scores(scores, 0.3, "layer")) == {"a": 2, "b": 2}  # round(2.1), round(1.5)
    assert pruned_count(masks_from_scores(scores, 0.0, "global")) == {"a": 0, "b": 0}


def test_ties_are_broken_by_position_so_the_count_stays_exact() -> None:
    masks = masks_from_scores({"a": torch.ones(2, 3)}, 0.5, "global")
    assert masks["a"].tolist() == [[False, False, False], [True, True, True]]


def test_a_pruned_weight_stays_pruned_whatever_its_score() -> None:
    scores = {"a": torch.tensor([9.0, 1.0, 2.0, 3.0])}
    existing = {"a": torch.tensor([False, True, True, True])}
    masks = masks_from_scores(scores, 0.5, "global", existing=existing)
    assert masks["a"].tolist() == [False, False, True, True]  # 9.0 was already gone; 1.0 goes next


@pytest.mark.parametrize("sparsity", [-0.1, 1.0])
def test_sparsity_outside_zero_one_is_refused(sparsity: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        masks_from_scores({"a": torch.rand(4)}, sparsity, "global")


def test_masks_zero_weights_and_their_gradients() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    masks = {"0.weight": torch.tensor([[True, False, True], [False, True, True]])}
    apply_masks(model, masks)
    assert (model[0].weight[~masks["0.weight"]] == 0).all() and (model[0].weight[masks["0.weight"]] != 0).all()

    model(torch.randn(4, 3)).sum().backward()
    mask_gradients(model, masks)
    assert (model[0].weight.grad[~masks["0.weight"]] == 0).all()
    assert model[1].weight.grad.abs().sum() > 0  # unmasked layers keep their gradients


def test_prunable_weights_are_conv_and_linear_weights_without_the_classifier() -> None:
    model = create_model("lenet5", (1, 8, 8), 10)
    assert list(prunable_weights(model)) == [
        "features.0.weight",
        "features.3.weight",
        "classifier.1.weight",
        "classifier.3.weight",
    ]
    assert list(prunable_weights(model, include_classifier=True))[-1] == "classifier.5.weight"


# -- the five built-in methods ----------------------------------------------------------------------


@pytest.mark.parametrize("prune_classifier", [False, True], ids=["classifier dense", "classifier pruned"])
@pytest.mark.parametrize("method", BUILTINS)
def test_each_builtin_hits_the_sparsity_to_within_one_weight(method: str, prune_classifier: bool, digits) -> None:
    params = {"prune_classifier": True} if prune_classifier else {}
    cell = lenet_cell(method, sparsity=0.7, **params)
    job = CellJob(cell, digits, untrained_checkpoint(cell))
    masks = create_method(method, params).masks(job.context(include_classifier=prune_classifier), 0.7)

    expected_layers = set(SIZES) if prune_classifier else {"1.weight", "3.weight"}
    assert set(masks) == expected_layers
    removed = pruned_count(masks)
    if method in LAYER_SCOPE:
        for name, count in removed.items():
            assert abs(count - 0.7 * SIZES[name]) <= 1, name
    total = sum(SIZES[name] for name in expected_layers)
    assert abs(sum(removed.values()) - 0.7 * total) <= 1

    # the result row measures sparsity over the same weights the method may prune
    [row] = run_cell(cell, untrained_checkpoint(cell)).rows
    assert abs(row["sparsity_achieved"] * total - 0.7 * total) <= 1


def test_the_classifier_stays_dense_in_the_row_unless_asked(digits) -> None:
    dense_cell, pruned_cell = lenet_cell(), lenet_cell(prune_classifier=True)
    dense = {s["layer"]: s for s in run_cell(dense_cell, untrained_checkpoint(dense_cell)).layers}
    pruned = {s["layer"]: s for s in run_cell(pruned_cell, untrained_checkpoint(pruned_cell)).layers}
    assert dense["5"]["nonzero"] == dense["5"]["params"] == 1010
    assert pruned["5"]["nonzero"] < 1010


def layered_model() -> nn.Sequential:
    """Two 4x4 hidden layers with weights 1..16 and 0.01..0.16: layer scales 100x apart."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 17).view(4, 4))
        model[2].weight.copy_(-torch.arange(1.0, 17).view(4, 4) / 100)  # signs must not matter
    return model


def test_global_magnitude_takes_the_small_layer_first_layer_magnitude_takes_half_of_each() -> None:
    model = layered_model()
    global_masks = create_method("global_magnitude").masks(context(model), 0.5)
    layer_masks = create_method("layer_magnitude").masks(context(model), 0.5)
    # global: the 16 smallest |w| of the 32 are all of layer 2
    assert global_masks["0.weight"].all() and not global_masks["2.weight"].any()
    # per layer: the 8 smallest of each, 1..8 and 0.01..0.08, i.e. the first two rows
    keep_last_two_rows = torch.tensor([[False] * 4] * 2 + [[True] * 4] * 2)
    assert torch.equal(layer_masks["0.weight"], keep_last_two_rows)
    assert torch.equal(layer_masks["2.weight"], keep_last_two_rows)


@pytest.mark.parametrize("method", ["global_magnitude", "layer_magnitude"])
def test_magnitude_keeps_every_weight_larger_than_every_pruned_one(method: str) -> None:
    torch.manual_seed(0)
    model = create_model("lenet_300_100", (1, 8, 8), 10)
    masks = create_method(method).masks(context(model), 0.6)
    weights = prunable_weights(model)
    groups = [[name] for name in masks] if method in LAYER_SCOPE else [list(masks)]
    for names in groups:
        kept = torch.cat([weights[n].detach().abs()[masks[n]] for n in names])
        pruned = torch.cat([weights[n].detach().abs()[~masks[n]] for n in names])
        assert kept.min() >= pruned.max()
    if method == "global_magnitude":  # one threshold: layers lose different fractions
        fractions = [float((~m).float().mean()) for m in masks.values()]
        assert abs(fractions[0] - fractions[1]) > 0.05


def test_random_is_one_seeded_draw() -> None:
    torch.manual_seed(0)
    model = create_model("lenet_300_100", (1, 8, 8), 10)
    first = create_method("random").masks(context(model, seed=3), 0.7)
    again = create_method("random").masks(context(model, seed=3), 0.7)
    other = create_method("random").masks(context(model, seed=4), 0.7)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)
    for name, mask in first.items():  # uniform over all weights: each layer loses about 70%
        assert float((~mask).float().mean()) == pytest.approx(0.7, abs=0.02), name


def test_gradient_score_is_weight_times_hand_computed_gradient() -> None:
    """logits z = W x with W = [[1.0, 0.3], [0.2, 0.7]], x = [1, 2]: z = [1.6, 1.6], softmax [0.5, 0.5].
    Target 1: dL/dz = softmax − onehot = [0.5, −0.5], so g = dL/dz ⊗ x = [[0.5, 1.0], [−0.5, −1.0]]
    and |w·g| = [[0.5, 0.3], [0.1, 0.7]]. At 75% the gradient score keeps W[1][1] (0.7), while
    magnitude would keep W[0][0] (1.0)."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.3], [0.2, 0.7]]))
    batch = (torch.tensor([[1.0, 2.0]]), torch.tensor([1]))
    ctx = context(model, batch, include_classifier=True)

    assert torch.allclose(ctx.gradients["0.weight"], torch.tensor([[0.5, 1.0], [-0.5, -1.0]]))
    score = create_method("global_gradient").score(ctx)["0.weight"]
    assert torch.allclose(score, torch.tensor([[0.5, 0.3], [0.1, 0.7]]))
    for method in ("global_gradient", "layer_gradient"):
        mask = create_method(method, {"prune_classifier": True}).masks(ctx, 0.75)["0.weight"]
        assert mask.tolist() == [[False, False], [False, True]]
    magnitude = create_method("global_magnitude").masks(context(model, include_classifier=True), 0.75)
    assert magnitude["0.weight"].tolist() == [[True, False], [False, False]]


@pytest.mark.parametrize("method", ["global_gradient", "layer_gradient"])
def test_gradient_methods_keep_the_largest_weight_times_gradient(method: str, digits) -> None:
    cell = lenet_cell(method)
    job = CellJob(cell, digits, untrained_checkpoint(cell))
    ctx = job.context()
    masks = create_method(method).masks(ctx, 0.6)
    # the gradient again, by the other road: loss.backward() on the same calibration batch
    inputs, targets = ctx.batch
    job.model.zero_grad()
    nn.functional.cross_entropy(job.model(inputs), targets).backward()
    params = dict(job.model.named_parameters())
    score = {name: (params[name] * params[name].grad).detach().abs() for name in masks}
    groups = [[name] for name in masks] if method in LAYER_SCOPE else [list(masks)]
    for names in groups:
        kept = torch.cat([score[n][masks[n]] for n in names])
        pruned = torch.cat([score[n][~masks[n]] for n in names])
        assert kept.min() >= pruned.max() * (1 - 1e-5)


def test_scoring_leaves_the_model_as_it_found_it() -> None:
    """A training-mode forward pass updates BatchNorm's running statistics; a score must not."""
    torch.manual_seed(0)
    model = create_model("resnet20", (3, 8, 8), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = context(model, (torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))))
    create_method("global_gradient").masks(ctx, 0.5)
    _ = ctx.activations
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == []


def test_a_compression_target_is_met_to_within_one_weight(write_spec) -> None:
    """compression 4 → sparsity 0.77149…: 50610 / 4 = 12652.5 nonzero parameters wanted."""
    text = """
name: c
models: [lenet_300_100]
datasets: [digits]
methods: [global_magnitude]
compressions: [4]
seeds: [0]
finetune: {epochs: 0}
"""
    [cell] = expand(load_spec(write_spec(text)))
    [row] = run_cell(cell, untrained_checkpoint(cell)).rows
    assert row["params_total"] == 50610
    assert abs(row["params_nonzero"] - 50610 / 4) <= 1
    assert row["compression_ratio"] == pytest.approx(4, rel=1e-4)
