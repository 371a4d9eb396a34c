"""Training-time sparsity: GMP's cubic schedule, SET/RigL's constant-sparsity mask updates, sparse init."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from harness.cell import CellJob, pretrain
from harness.data import load_splits
from harness.masks import prunable_weights
from harness.methods import create_method
from harness.methods.dynamic import (
    DynamicSparseTraining,
    GradualMagnitudePruning,
    cubic_sparsity,
    drop_and_grow,
    layer_densities,
    random_masks,
    sparse_initialisation,
)
from harness.models import create_model
from harness.spec import CellSpec, Recipe
from harness.testing import check_pruning_method
from harness.training import train

RECIPE = Recipe(epochs=2, lr=0.05, batch_size=64)


@pytest.fixture(scope="module")
def data():
    return load_splits("digits", None, 0)


def lenet(data):
    torch.manual_seed(0)
    return create_model("lenet_300_100", data.input_shape, data.num_classes)


def test_erk_keeps_small_layers_denser_and_caps_them_at_dense():
    # a: 10x10, raw (10+10)/100 = 0.2; b: 2x10, raw 0.6. Budget 0.5·120 = 60 kept weights:
    # scale 60/(0.2·100 + 0.6·20) = 1.875 puts b at 1.125 > 1, so b is dense and a keeps 40/100.
    shapes = {"a": torch.Size([10, 10]), "b": torch.Size([2, 10])}
    assert layer_densities(shapes, 0.5, "erk") == pytest.approx({"a": 0.4, "b": 1.0})
    assert layer_densities(shapes, 0.5, "uniform") == {"a": 0.5, "b": 0.5}
    assert layer_densities(shapes, 0.0, "erk") == {"a": 1.0, "b": 1.0}


def test_random_masks_keep_exactly_the_rounded_density_of_each_layer():
    weights = {"a": torch.zeros(10, 10), "b": torch.zeros(3, 7)}
    masks = random_masks(weights, {"a": 0.4, "b": 0.5}, torch.Generator().manual_seed(0))
    assert int(masks["a"].sum()) == 40 and int(masks["b"].sum()) == round(0.5 * 21)


def test_sparse_initialisation_scales_by_layer_density_or_by_each_units_fan_in():
    mask = torch.tensor([[True, False, False, False], [True, True, True, True]])
    fanin = {"w": torch.ones(2, 4)}
    sparse_initialisation(fanin, {"w": mask}, "fanin_scaled")
    assert torch.equal(fanin["w"][:, 0], torch.tensor([2.0, 1.0]))  # sqrt(4/1), sqrt(4/4)
    layer = {"w": torch.ones(2, 4)}
    sparse_initialisation(layer, {"w": mask}, "layer_scaled")
    assert torch.allclose(layer["w"], torch.full((2, 4), 1 / math.sqrt(5 / 8)))


def test_drop_and_grow_drops_smallest_magnitude_and_grows_largest_gradient():
    weight = torch.tensor([0.5, -0.1, 0.0, 0.3, 0.0, 0.0])
    mask = torch.tensor([True, True, False, True, False, False])
    grad = torch.tensor([0.0, 0.0, 0.2, 0.0, -0.9, 0.1])
    # one swap: drop -0.1 (index 1), grow at |g| = 0.9 (index 4)
    assert drop_and_grow(weight, mask, 1, grad.abs()).tolist() == [True, False, False, True, True, False]
    # two: drop indices 1 and 3 (|w| 0.1, 0.3), grow 4 and 2 (|g| 0.9, 0.2)
    assert drop_and_grow(weight, mask, 2, grad.abs()).tolist() == [True, False, True, False, True, False]


class SparsityProbe(Callback):
    """Fraction of zero prunable weights seen at the start of every step (after GMP has pruned)."""

    def __init__(self):
        self.sparsity = []

    def on_train_batch_start(self, trainer, module, *args):
        weights = prunable_weights(module.model).values()
        zeros = sum(int((w == 0).sum()) for w in weights)
        self.sparsity.append(zeros / sum(w.numel() for w in weights))


def test_gmp_follows_the_cubic_schedule(data):
    gmp = GradualMagnitudePruning(0.9, initial_sparsity=0.2, start_fraction=0.1, end_fraction=0.6, frequency=4)
    probe = SparsityProbe()
    train(lenet(data), data.train, data.val, RECIPE, seed=0, phase="t", callbacks=[gmp, probe])
    steps = len(probe.sparsity)
    start, end = round(0.1 * steps), round(0.6 * steps)
    prunings = set(range(start, end + 1, 4)) | {end}
    expected, current = [], 0.0
    for t in range(steps):
        if t in prunings:  # s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³, held until the next pruning
            current = 0.9 + (0.2 - 0.9) * (1 - (t - start) / (end - start)) ** 3
        expected.append(current)
    assert probe.sparsity == pytest.approx(expected, abs=1e-3)  # rounding per layer: < 1 weight in 1000
    assert [s for _, s in gmp.history] == pytest.approx(
        [cubic_sparsity(t, 0.2, 0.9, start, end) for t in sorted(prunings)]
    )
    assert probe.sparsity[-1] == pytest.approx(0.9, abs=1e-4)


class UpdateProbe(Callback):
    """Before the callbacks after it: the dense gradient and the weights at the step that updates the mask."""

    def __init__(self, step):
        self.step = step

    def on_after_backward(self, trainer, module):
        if trainer.global_step + 1 == self.step:
            self.grads = {n: p.grad.detach().clone().cpu() for n, p in module.model.named_parameters()}

    def on_train_batch_end(self, trainer, module, *args):
        if trainer.global_step == self.step:
            self.masks = {n: m.clone().cpu() for n, m in module.masks.items()}


class GrownWeightsProbe(Callback):
    """After the mask update: weights and momentum where connections were just grown."""

    def __init__(self, step, before):
        self.step, self.before = step, before

    def on_train_batch_end(self, trainer, module, *args):
        if trainer.global_step == self.step:
            optimizer = trainer.optimizers[0]
            params = dict(module.model.named_parameters())
            self.grown = {}
            for name, mask in module.masks.items():
                grown = mask.cpu() & ~self.before.masks[name]
                momentum = optimizer.state[params[name]]["momentum_buffer"].cpu()
                self.grown[name] = (params[name].detach().cpu()[grown], momentum[grown])


@pytest.mark.parametrize("regrow", ["random", "gradient"])
def test_set_and_rigl_move_the_mask_at_constant_sparsity_growing_at_zero(data, regrow):
    model = lenet(data)
    weights = prunable_weights(model)
    masks = random_masks(weights, {n: 0.2 for n in weights}, torch.Generator().manual_seed(0))
    update_step = 10
    steps = RECIPE.epochs * math.ceil(len(data.train) / RECIPE.batch_size)
    end_fraction = 15 / steps  # so step 10 is the only update: the next would be at 20
    before = UpdateProbe(update_step)
    updates = DynamicSparseTraining(regrow, update_every=update_step, end_fraction=end_fraction, seed=0)
    after = GrownWeightsProbe(update_step, before)
    train(model, data.train, data.val, RECIPE, seed=0, phase="t", masks=masks, callbacks=[before, updates, after])

    assert [h["step"] for h in updates.history] == [update_step] * len(masks)
    fraction = 0.3 / 2 * (1 + math.cos(math.pi * update_step / 15))  # cosine decay, 0.3 → 0 at step 15
    assert [h["replaced"] for h in updates.history] == [round(fraction * int(m.sum())) for m in masks.values()]
    for name, mask in masks.items():
        final = updates.masks[name].cpu()
        assert int(final.sum()) == int(mask.sum())  # sparsity held
        assert not torch.equal(final, mask)  # but the connections moved
        grown_weights, grown_momentum = after.grown[name]
        assert grown_weights.numel() > 0 and not grown_weights.any() and not grown_momentum.any()
        if regrow == "gradient":  # RigL: every grown connection has a larger |dense gradient| than any left out
            grad = before.grads[name].abs()
            grown = final & ~before.masks[name]
            assert grad[grown].min() >= grad[~final].max()
    assert (weights["1.weight"] != 0).sum() == int(updates.masks["1.weight"].sum())  # enforced on the model


def test_callbacks_reject_a_misconfiguration_at_construction_and_say_what_to_change():
    with pytest.raises(ValueError, match="lower initial_sparsity"):
        GradualMagnitudePruning(0.5, initial_sparsity=0.7)
    with pytest.raises(ValueError, match="end_fraction"):
        GradualMagnitudePruning(0.5, start_fraction=0.8, end_fraction=0.5)
    with pytest.raises(ValueError, match="drop_fraction must be in"):
        DynamicSparseTraining("gradient", drop_fraction=1.5)
    with pytest.raises(ValueError, match="'random' \\(SET\\) or 'gradient' \\(RigL\\)"):
        DynamicSparseTraining("largest")


@pytest.fixture(scope="module")
def job_factory(data):
    cell = dict(benchmark="t", model="lenet_300_100", dataset="digits", seed=0, sparsity=0.75, pretrain=RECIPE)
    dense = pretrain(CellSpec(method="gmp", **cell))

    def make(method):
        finetune = Recipe(epochs=1, lr=0.01, batch_size=64)
        return CellJob(CellSpec(method=method, finetune=finetune, **cell), data, dense)

    return make


def test_gmp_method_hands_its_final_masks_to_the_cell(job_factory):
    job = job_factory("gmp")
    create_method("gmp", {"frequency": 2}).apply(job)
    weights = prunable_weights(job.model)
    assert set(job.masks) == set(weights)
    for name, w in weights.items():
        assert torch.equal(job.masks[name], w != 0)
        assert 1 - float(job.masks[name].float().mean()) == pytest.approx(0.75, abs=1e-3)
    assert job.rows[0]["sparsity_achieved"] == pytest.approx(0.75, abs=1e-3)


def test_rigl_method_trains_from_the_initial_weights_with_an_erk_mask(job_factory):
    job = job_factory("rigl")
    create_method("rigl", {"update_every": 5, "gradient_flow": True}).apply(job)
    shapes = {n: w.shape for n, w in prunable_weights(job.model).items()}
    densities = layer_densities(shapes, 0.75, "erk")
    assert densities["1.weight"] > densities["3.weight"]  # ERK ∝ (in + out)/(in · out): 364/19200 > 400/30000
    for name, mask in job.masks.items():
        assert int(mask.sum()) == round(densities[name] * mask.numel())
    assert job.rows[0]["sparsity_achieved"] == pytest.approx(0.75, abs=1e-3)
    assert all(row["gradient_flow"] > 0 for row in job.epochs)


def test_gmp_keeps_the_harness_promises():
    # (SET and RigL move their masks within a level, which check_pruning_method's "zero after
    # pruning" reads against the level's final masks; their own test above covers them.)
    check_pruning_method("gmp", {"frequency": 2})
