"""Evci et al.'s gradient-flow probe: the value at initialisation, per-layer norms, and a probe that
leaves BatchNorm's statistics alone; the reference gradient is taken by hand with autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from harness.masks import prunable_weights
from harness.methods.dynamic import GradientFlow
from harness.spec import Recipe
from harness.training import ClassifierModule, train


def bn_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )


def dataset(n: int, seed: int) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,)))


def masked_norms(model: nn.Module, masks: dict, batch) -> dict[str, float]:
    """The reference: eval-mode loss on the held-out batch, gradient per weight, masked, its norm."""
    probe = copy.deepcopy(model).eval()
    params = dict(probe.named_parameters())
    loss = nn.functional.cross_entropy(probe(batch[0]), batch[1])
    grads = torch.autograd.grad(loss, [params[name] for name in masks])
    return {name: float((g * m).norm()) for (name, m), g in zip(masks.items(), grads, strict=True)}


def test_gradient_flow_logs_the_initial_value_and_per_layer_norms_without_touching_batchnorm() -> None:
    torch.manual_seed(0)
    model = bn_net()
    weights = prunable_weights(model, include_classifier=True)
    generator = torch.Generator().manual_seed(1)
    masks = {name: torch.rand(w.shape, generator=generator) > 0.5 for name, w in weights.items()}
    held_out = dataset(32, seed=2).tensors
    with torch.no_grad():  # pruned entries are zero from the start, as after job.prune
        for name, w in weights.items():
            w.mul_(masks[name])
    expected_init = masked_norms(model, masks, held_out)

    probe = GradientFlow(held_out, masks)
    model.train()
    before = {name: b.clone() for name, b in model.named_buffers()}
    norms = probe.measure(ClassifierModule(model, Recipe()))
    assert {n: float(v) for n, v in norms.items()} == pytest.approx(expected_init, rel=1e-5)
    for name, value in model.named_buffers():  # no statistics moved by the held-out batch
        assert torch.equal(value, before[name]), name
    assert model.training

    recipe = Recipe(epochs=2, lr=0.05, batch_size=16)
    rows = train(
        model, dataset(64, seed=3), dataset(16, seed=4), recipe, seed=0, phase="t", masks=masks, callbacks=[probe]
    )
    first, last = rows
    assert first["gradient_flow_init"] == pytest.approx(sum(v**2 for v in expected_init.values()) ** 0.5, rel=1e-5)
    for name, value in expected_init.items():
        assert first[f"gradient_flow_init/{name}"] == pytest.approx(value, rel=1e-5)
    expected_final = masked_norms(model, masks, held_out)  # after the last step of the last epoch
    for name, value in expected_final.items():
        assert last[f"gradient_flow/{name}"] == pytest.approx(value, rel=1e-4)
    assert last["gradient_flow"] == pytest.approx(sum(v**2 for v in expected_final.values()) ** 0.5, rel=1e-4)
