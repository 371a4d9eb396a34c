"""The options every pruning method takes from the base class: exclude, max_layer_sparsity, prune_classifier.

LeNet-300-100 on digits (8x8 inputs): prunable weights ``1.weight`` [300, 64] = 19,200,
``3.weight`` [100, 300] = 30,000 and the classifier ``5.weight`` [10, 100] = 1,000. The expected
counts below are worked out from those sizes.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.testing import run_method


def pruned(job) -> dict[str, int]:
    """Pruned entries per masked weight of the last level."""
    return {name: int((~mask).sum()) for name, mask in job.levels[-1].masks.items()}


def layer_rows(job) -> dict[str, dict]:
    return {row["layer"]: row for row in job.layers if row["level"] == 0}


def test_exclude_keeps_matching_layers_dense_and_prunes_the_rest_to_the_target() -> None:
    job = run_method("global_magnitude", {"exclude": ["1"]}, sparsity=0.75)
    # the target applies to what may be pruned: 0.75 · 30,000 of 3.weight; 1.weight untouched
    assert pruned(job) == {"3.weight": 22_500}
    assert int((job.levels[-1].final_state["1.weight"] == 0).sum()) == 0
    layers = layer_rows(job)
    assert [layers[name]["prunable"] for name in ("1", "3", "5")] == [False, True, False]


def test_exclude_matches_parameter_names_and_globs() -> None:
    job = run_method("layer_magnitude", {"exclude": ["3.w*"]}, sparsity=0.5)
    assert pruned(job) == {"1.weight": 9_600}


def test_max_layer_sparsity_caps_each_layer_and_restores_its_best_scored_weights() -> None:
    job = run_method("global_magnitude", {"max_layer_sparsity": 0.8}, sparsity=0.9)
    trained = job.levels[0].row  # the row's sparsity stays the target; the masks tell what was pruned
    assert trained["sparsity"] == 0.9
    counts = pruned(job)
    # global |w| at 0.9 removes 44,280 of 49,200; a layer above 80 % keeps its top 20 % by |w|
    dense_weights = {n: w for n, w in job.dense.trained_state.items() if n in ("1.weight", "3.weight")}
    flat = torch.cat([w.abs().flatten() for w in dense_weights.values()])
    threshold = flat.sort().values[round(0.9 * flat.numel()) - 1]
    for name, w in dense_weights.items():
        uncapped = int((w.abs() <= threshold).sum())
        assert counts[name] == min(uncapped, math.floor(0.8 * w.numel()))
    assert max(counts[n] / dense_weights[n].numel() for n in counts) == pytest.approx(0.8)
    # the capped layer kept exactly its 20 % largest |w|
    capped = max(counts, key=lambda n: counts[n] / dense_weights[n].numel())
    kept = job.levels[-1].masks[capped]
    w = dense_weights[capped].abs()
    assert w[kept].min() >= w[~kept].max()
    assert {row["max_layer_sparsity"] for row in layer_rows(job).values()} == {0.8}


def test_max_layer_sparsity_applies_to_methods_with_their_own_masks() -> None:
    job = run_method("filter_l1", {"max_layer_sparsity": 0.25}, sparsity=0.5)
    # filter_l1 removes 150 of 300 rows of 1.weight (9,600 weights); the cap allows floor(0.25 · 19,200)
    assert pruned(job)["1.weight"] == 4_800
    assert pruned(job)["3.weight"] == 7_500


def test_prune_classifier_counts_the_classifier_in_the_global_target() -> None:
    job = run_method("global_magnitude", {"prune_classifier": True}, sparsity=0.75)
    counts = pruned(job)
    assert set(counts) == {"1.weight", "3.weight", "5.weight"}
    assert sum(counts.values()) == round(0.75 * 50_200)
    assert counts["5.weight"] > 0
    assert all(row["prunable"] for row in layer_rows(job).values())


def test_the_options_are_validated_with_the_method_params() -> None:
    from pydantic import ValidationError

    from harness.methods import create_method

    with pytest.raises(ValidationError, match="max_layer_sparsity"):
        create_method("global_magnitude", {"max_layer_sparsity": 1.5})
    assert create_method("snip", {"exclude": ["features.*"]}).params.exclude == ("features.*",)


@pytest.mark.parametrize(
    ("method", "cap"),
    [("gmp", 0.6), ("set", 0.6), ("rigl", 0.6), ("lottery_anatomy", 0.6), ("learned_supermask", 0.3)],
)
def test_methods_that_are_not_pruning_methods_take_exclude_and_max_layer_sparsity(method: str, cap: float) -> None:
    job = run_method(method, {"exclude": ["1"], "max_layer_sparsity": cap}, sparsity=0.9)
    last = job.levels[-1]
    assert "1.weight" not in last.masks, "an excluded layer gets no mask"
    assert int((last.final_state["1.weight"] == 0).sum()) == 0
    # 3.weight would lose 90 % (gmp, set, rigl, lottery_anatomy) or about half (a supermask that starts at
    # σ(s) = 0.5); the cap leaves exactly floor(cap · 30,000) of it pruned
    assert pruned(job)["3.weight"] == math.floor(cap * 30_000)
    if method == "learned_supermask":  # the classifier is masked too, and capped
        assert pruned(job)["5.weight"] <= math.floor(cap * 1_000)
        masked = sum(m.numel() for m in last.masks.values())
        assert last.row["sparsity"] == pytest.approx(sum(pruned(job).values()) / masked)
    layers = {row["layer"]: row for row in job.layers if row["level"] == len(job.levels) - 1}
    assert layers["1"]["prunable"] is False and layers["3"]["prunable"] is True
    assert {row["max_layer_sparsity"] for row in layers.values()} == {cap}
