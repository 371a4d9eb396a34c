"""Methods on BatchNorm networks (ResNet-20, VGG): GraSP's Hessian-gradient product and filter pruning.

References are independent of the code under test: GraSP's H·g by central finite differences of
the gradient in float64; filter pruning's speedup counted by hand from ResNet-20's layer shapes.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from harness.masks import prunable_weights
from harness.methods import create_method
from harness.methods.base import PruningContext
from harness.models import create_model
from harness.testing import check_pruning_method


def context(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> PruningContext:
    return PruningContext(model, prunable_weights(model), {}, lambda: batch, lambda: {}, 0, (3, 8, 8))


def digit_like_batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)


# -- GraSP -------------------------------------------------------------------------------------------


def finite_difference_hessian_gradient(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], temperature: float, eps: float = 1e-4
) -> dict[str, torch.Tensor]:
    """H·g of the tempered loss over the prunable weights: (g(θ + εg) − g(θ − εg)) / 2ε, float64."""
    probe = copy.deepcopy(model).double().train()
    weights = prunable_weights(probe)
    inputs, targets = batch[0].double(), batch[1]

    def gradient() -> list[torch.Tensor]:
        loss = nn.functional.cross_entropy(probe(inputs) / temperature, targets)
        return [g.detach() for g in torch.autograd.grad(loss, list(weights.values()))]

    g = gradient()
    shifted = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for w, direction in zip(weights.values(), g, strict=True):
                w.add_(sign * eps * direction)
        shifted.append(gradient())
        with torch.no_grad():
            for w, direction in zip(weights.values(), g, strict=True):
                w.sub_(sign * eps * direction)
    return {
        name: (plus - minus) / (2 * eps) for name, plus, minus in zip(weights, shifted[0], shifted[1], strict=True)
    }


def test_grasp_scores_resnet20_as_theta_times_hessian_gradient_and_keeps_its_statistics() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", (3, 8, 8), 10).train()
    batch = digit_like_batch()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    scores = create_method("grasp").score(context(model, batch))

    reference = finite_difference_hessian_gradient(model, batch, temperature=200.0)
    weights = prunable_weights(model)
    assert set(scores) == set(weights)
    for name, w in weights.items():
        expected = (w.detach().double() * reference[name]).float()
        scale = expected.abs().max()
        assert scale > 0, name
        assert torch.allclose(scores[name], expected, atol=1e-3 * float(scale)), name
    for name, before in buffers.items():  # scoring ran BatchNorm in train mode: its statistics are restored
        assert torch.equal(dict(model.named_buffers())[name], before), name
    assert model.training


@pytest.mark.parametrize("model", ["resnet20", "vgg11"])
def test_grasp_runs_a_cell_on_batchnorm_models(model: str) -> None:
    levels = check_pruning_method("grasp", model=model, sparsity=0.5)
    assert levels[-1].row["sparsity_achieved"] == pytest.approx(0.5, abs=1e-3)
