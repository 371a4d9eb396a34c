"""Encoders as their papers define them: Weightless retrains the network after each Bloomier-encoded
layer to absorb its false positives, DeepSZ's accuracy budget binds on small data sets, and every
stored model decodes back to the weights its row evaluated (the conformance check catches one that does not)."""

from __future__ import annotations

import json

import pytest
import torch

from harness.config import Recipe
from harness.encoding import Encoded, encode_model, formats
from harness.methods.base import Method
from harness.methods.encoding import Encoder
from harness.testing import check_conformance, run_method

pytestmark = pytest.mark.usefixtures("conformance_models_removed")

# pretrained well enough (≈ 0.96 top-1 on digits) that losing weights costs accuracy one can measure
PRETRAIN = Recipe(epochs=3, lr=0.05, batch_size=32)
FINETUNE = Recipe(epochs=1, lr=0.01, batch_size=32)
ENCODED = ("1.weight", "3.weight")  # lenet_300_100's pruned layers; the classifier 5.weight stays dense


def weightless(retrain_epochs: int) -> list:
    stages = ["global_magnitude", {"name": "bloomier", "cell_bits": 6, "retrain_epochs": retrain_epochs}]
    return check_conformance(
        "pipeline",
        {"stages": stages},
        model="mlp",
        sparsity=0.9,
        false_positives=True,
        pretrain_recipe=PRETRAIN,
        finetune_recipe=FINETUNE,
    )


@pytest.mark.slow
def test_weightless_retraining_recovers_the_accuracy_false_positives_cost() -> None:
    pruned, encoded = weightless(retrain_epochs=0)
    _, retrained = weightless(retrain_epochs=1)
    lost = pruned.row["top1"] - encoded.row["top1"]
    assert encoded.row["bloomier_false_positive_rate"] == pytest.approx(16 / 64, abs=0.02)  # 2^4 codes in 2^6 cells
    assert lost > 0.05, "6-bit cells (a quarter of the pruned weights read back) must cost accuracy"
    assert retrained.row["top1"] > encoded.row["top1"] + lost / 2, "retraining wins back most of the loss"
    # one epoch after each of the two encoded layers, counted for equal-budget comparisons
    assert encoded.row["train_epochs"] == pruned.row["train_epochs"]
    assert retrained.row["train_epochs"] == pruned.row["train_epochs"] + len(ENCODED)
    first, second = ENCODED
    # the first layer is encoded before any retraining and then frozen: false positives and all
    assert torch.equal(retrained.final_state[first], encoded.final_state[first])
    fp = (retrained.final_state[first] != 0) & ~retrained.masks[first]
    assert int(fp.sum()) > 0
    # the second was retrained (under its mask) before its own encoding, the classifier throughout
    assert not torch.equal(retrained.final_state[second], encoded.final_state[second])
    assert not torch.equal(retrained.final_state["5.weight"], encoded.final_state["5.weight"])


def deepsz(budget: float, probe_examples: int = 2000) -> dict:
    stages = [
        "global_magnitude",
        {"name": "sz", "accuracy_budget": budget, "probe_examples": probe_examples, "bounds": [0.01, 0.03, 0.1, 0.3]},
    ]
    job = run_method("pipeline", {"stages": stages}, sparsity=0.5, pretrain_recipe=PRETRAIN, finetune_recipe=FINETUNE)
    return job.levels[-1].row


@pytest.mark.slow
def test_a_tighter_deepsz_budget_picks_less_aggressive_bounds() -> None:
    tight, loose = deepsz(0.005), deepsz(0.1)
    # digits: 144 validation + 1294 training examples probe the drop (the 2000 asked for, capped)
    assert tight["sz_probe_examples"] == loose["sz_probe_examples"] == 1438
    assert tight["sz_probe_drop"] <= 0.005 and loose["sz_probe_drop"] <= 0.1
    assert loose["sz_probe_drop"] > 0.005, "the loose choice would break the tight budget: the budget binds"
    tight_bounds, loose_bounds = json.loads(tight["sz_bounds"]), json.loads(loose["sz_bounds"])
    assert all(tight_bounds[name] <= loose_bounds[name] for name in tight_bounds)
    assert tight_bounds != loose_bounds
    assert tight["size_bytes"] > loose["size_bytes"]
    assert tight["top1"] > loose["top1"]


def test_a_deepsz_budget_worth_less_than_one_probe_example_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0.005 of 144 probe examples is 0.72 examples, less than one"):
        run_method("pipeline", {"stages": ["global_magnitude", {"name": "sz", "probe_examples": 144}]})


class Rounded(Encoder):
    """Stores every weight rounded to 0.1 in the bitmask layout, but keeps evaluating the float weights."""

    class Params(Method.Params):
        pass

    def encode(self, job) -> Encoded:
        rounded = {name: torch.round(p.detach() * 10) / 10 for name, p in job.model.named_parameters()}
        payloads = {name: formats.bitmask(value.cpu(), None) for name, value in rounded.items() if value.dim() > 1}
        return encode_model(job.model, {}, formats.bitmask, "bitmask", payloads)


def test_the_conformance_check_catches_stored_bytes_that_decode_to_other_weights() -> None:
    with pytest.raises(AssertionError, match=r"decodes .* away from the weights the row evaluated"):
        check_conformance(Rounded, model="mlp", sparsity=0.0)
