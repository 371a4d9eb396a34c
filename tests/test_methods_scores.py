"""Activation scores, pruning at initialisation, filter and N:M pruning: each method's defining property.

Hand-built networks with numbers worked out by hand where a property is arithmetic; a tiny real
cell (LeNet-300-100 on digits, one epoch) through :func:`check_pruning_method` for the invariants.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.cell import DenseCheckpoint
from harness.masks import apply_masks, masks_from_scores, prunable_weights
from harness.methods import create_method
from harness.methods.base import PruningContext
from harness.metrics import model_metrics
from harness.models import create_model
from harness.spec import Recipe
from harness.testing import check_pruning_method, run_method


def context(model: nn.Module, batch=None, input_shape=None) -> PruningContext:
    return PruningContext(
        model=model,
        weights=prunable_weights(model),
        masks={},
        calibration_batch=lambda: batch,
        initial_state=lambda: {},
        seed=0,
        input_shape=input_shape,
    )


# -- the shared invariants, on a real tiny cell -----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("global_activation", {}),
        ("layer_activation", {}),
        ("snip", {}),
        ("grasp", {}),
        ("synflow", {}),
        ("filter_l1", {"granularity": "channel"}),
        ("filter_l2", {"granularity": "channel", "model": "lenet5"}),
        ("nm_sparsity", {"expected_sparsity": 0.5}),
    ],
)
def test_method_keeps_the_plugin_promises(method: str, options: dict) -> None:
    check_pruning_method(method, **options)


# -- activation scores ------------------------------------------------------------------------------


def test_activation_score_is_weight_magnitude_times_input_norm() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 9.0], [2.0, 8.0]]))
    batch = (torch.tensor([[3.0, 0.0], [4.0, 0.0]]), torch.tensor([0, 1]))  # feature batch means 3.5 and 0
    ctx = context(model, batch)
    scores = create_method("global_activation").score(ctx)
    assert scores["0.weight"].tolist() == [[3.5, 0.0], [7.0, 0.0]]
    # half the weights go: exactly those reading the silent feature, despite their large |w|
    masks = create_method("layer_activation").masks(ctx, 0.5)
    assert masks["0.weight"].tolist() == [[True, False], [True, False]]


# -- pruning at initialisation ----------------------------------------------------------------------


def init_and_trained(model_name: str = "lenet_300_100") -> DenseCheckpoint:
    """θ0 and a 'trained' state that is a different draw: a score that reads the wrong one shows."""
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model(model_name, (1, 8, 8), 10)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return DenseCheckpoint("hand-made", states[0], states[1], {}, [])


def snip_masks(job, state: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """|g ⊙ θ| of the state on the job's calibration batch, ranked globally."""
    model = create_model(job.cell.model, (1, 8, 8), 10)
    model.load_state_dict(state)
    weights = prunable_weights(model)
    inputs, targets = job.train_batches(1)[0]
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(inputs), targets), list(weights.values()))
    scores = {name: (w * g).abs() for (name, w), g in zip(weights.items(), grads, strict=True)}
    return masks_from_scores(scores, sparsity, "global")


def test_snip_scores_and_trains_the_initial_weights() -> None:
    dense = init_and_trained()
    job = run_method("snip", dense=dense, sparsity=0.8, pretrain_recipe=Recipe(epochs=0))
    level = job.levels[0]
    expected = snip_masks(job, dense.init_state, 0.8)
    assert all(torch.equal(level.masks[name], expected[name]) for name in expected)
    assert any(not torch.equal(level.masks[name], m) for name, m in snip_masks(job, dense.trained_state, 0.8).items())
    for name, value in dense.init_state.items():  # θ0 ⊙ mask: every parameter from θ0, none from training
        assert torch.equal(level.pruned_state[name], value * level.masks.get(name, torch.ones_like(value)))


def test_grasp_score_is_theta_times_hessian_gradient_product() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Tanh(), nn.Linear(2, 2, bias=False))
    batch = (torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 1, 0]))
    theta = model[0].weight.detach().clone()

    def loss(first_layer: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(batch[0] @ first_layer.view(2, 2).T)
        return nn.functional.cross_entropy(hidden @ model[2].weight.T, batch[1])

    flat = theta.flatten()
    gradient = torch.autograd.functional.jacobian(loss, flat)
    hessian = torch.autograd.functional.hessian(loss, flat)
    expected = (flat * (hessian @ gradient)).view(2, 2)

    grasp = create_method("grasp", {"temperature": 1.0})
    ctx = context(model, batch)
    assert torch.allclose(grasp.score(ctx)["0.weight"], expected, atol=1e-6)
    # Wang et al.: remove the largest −θ ⊙ Hg, i.e. the smallest θ ⊙ Hg (a negative one here)
    mask = grasp.masks(ctx, 0.25)["0.weight"]
    assert (~mask).sum() == 1 and expected[~mask].item() == expected.min().item() < 0


def test_grasp_removes_the_weight_whose_removal_costs_least_gradient_flow() -> None:
    """Near θ = 0 the first-order picture is exact enough to measure: zeroing the weight GraSP
    removes leaves ‖g‖² higher than zeroing the one it keeps best."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.mul_(0.05)
    batch = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    grasp = create_method("grasp", {"temperature": 1.0})
    ctx = context(model, batch)
    scores = grasp.score(ctx)["0.weight"].flatten()

    def gradient_norm_without(index: int) -> float:
        probe = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False))
        probe.load_state_dict(model.state_dict())
        with torch.no_grad():
            probe[0].weight.view(-1)[index] = 0.0
        loss = nn.functional.cross_entropy(probe(batch[0]), batch[1])
        return sum(float(g.pow(2).sum()) for g in torch.autograd.grad(loss, list(probe.parameters())))

    removed, best_kept = int(scores.argmin()), int(scores.argmax())
    assert gradient_norm_without(removed) > gradient_norm_without(best_kept)


def test_synflow_never_touches_data_and_leaves_the_model_untouched() -> None:
    def no_data():
        raise AssertionError("synflow asked for a batch of data")

    torch.manual_seed(0)
    model = nn.Sequential(  # BatchNorm: scored in eval mode, on a copy
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = PruningContext(model, prunable_weights(model), {}, no_data, lambda: {}, seed=0, input_shape=(3, 8, 8))
    masks = create_method("synflow", {"rounds": 10}).masks(ctx, 0.9)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * total)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_synflow_reaches_the_target_along_an_exponential_schedule() -> None:
    """With one round, SynFlow is single-shot; more rounds change the mask, never the count."""
    torch.manual_seed(0)
    model = create_model("lenet_300_100", (1, 8, 8), 10)
    ctx = context(model, input_shape=(1, 8, 8))
    one = create_method("synflow", {"rounds": 1}).masks(ctx, 0.95)
    many = create_method("synflow", {"rounds": 20}).masks(ctx, 0.95)
    assert sum(int(m.sum()) for m in one.values()) == sum(int(m.sum()) for m in many.values())
    assert any(not torch.equal(one[name], many[name]) for name in one)


# -- filter pruning and honest FLOPs ------------------------------------------------------------------


def two_conv_net() -> nn.Sequential:
    """conv 1→4 (3x3, pad 1) → ReLU → conv 4→4 → ReLU → flatten → Linear 256→10 (classifier), on 8x8.

    Filter c of each conv has every weight equal to c + 1, so the L1 order is 0 < 1 < 2 < 3.
    """
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )
    with torch.no_grad():
        for conv in (model[0], model[2]):
            conv.weight.copy_(torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand_as(conv.weight))
            conv.bias.fill_(0.5)
    return model


def test_filter_pruning_zeroes_whole_channels_and_counts_flops_by_hand() -> None:
    model = two_conv_net()
    masks = create_method("filter_l1").masks(context(model, input_shape=(1, 8, 8)), 0.5)
    apply_masks(model, masks)
    for conv in ("0", "2"):  # channels 0 and 1 gone, weights and bias; 2 and 3 whole
        assert masks[f"{conv}.weight"].flatten(1).all(dim=1).tolist() == [False, False, True, True]
        assert not masks[f"{conv}.weight"][:2].any()
        assert masks[f"{conv}.bias"].tolist() == [False, False, True, True]
    assert "5.weight" not in masks  # the classifier keeps its units: they are the classes

    row, layers = model_metrics(model, prunable_weights(model), torch.zeros(1, 1, 8, 8))
    # dense:  conv1 1·4·9·64 = 2304, conv2 4·4·9·64 = 9216, linear 256·10 = 2560
    # pruned: conv1 1·2·9·64 = 1152; conv2 2 live inputs · 2 outputs · 9 · 64 = 2304;
    #         linear reads 2 live channels · 64 positions = 128 features · 10 = 1280
    assert row["flops_dense"] == 2304 + 9216 + 2560
    assert row["flops_nonzero"] == 1152 + 2304 + 1280
    # parameters: conv1 18 + 2 bias; conv2 2·2·9 + 2 bias (its weights on dead channels go too);
    # linear 1280 + 10 bias
    assert row["params_total"] == 40 + 148 + 2570
    assert row["params_nonzero"] == 20 + 38 + 1290
    assert [s.dead_inputs for s in layers] == [0, 2, 128]


def test_a_channel_is_dead_only_if_nothing_can_reach_it() -> None:
    """A zero filter whose bias survives still feeds a constant to the next layer; so does BatchNorm's shift."""
    model = two_conv_net()
    with torch.no_grad():
        model[0].weight[:2] = 0.0  # bias 0.5 stays: channels 0 and 1 are constant, not zero
    _, layers = model_metrics(model, prunable_weights(model), torch.zeros(1, 1, 8, 8))
    assert layers[1].dead_inputs == 0 and layers[1].flops_nonzero == 9216

    with torch.no_grad():
        model[0].bias[:2] = 0.0
    _, layers = model_metrics(model, prunable_weights(model), torch.zeros(1, 1, 8, 8))
    assert layers[1].dead_inputs == 2 and layers[1].flops_nonzero == 9216 / 2

    with_norm = nn.Sequential(model[0], nn.BatchNorm2d(4), *model[1:])
    with torch.no_grad():
        with_norm[1].running_mean.fill_(0.3)  # eval-mode shift β − γ·μ/σ ≠ 0: the channel is a constant
    _, layers = model_metrics(with_norm, prunable_weights(with_norm), torch.zeros(1, 1, 8, 8))
    assert layers[1].dead_inputs == 0


# -- N:M ----------------------------------------------------------------------------------------------


def test_two_four_keeps_exactly_the_two_largest_of_every_four_inputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    ctx = context(model)
    masks = create_method("nm_sparsity").masks(ctx, 0.9)  # the cell's 0.9 is ignored
    assert "0.weight" not in masks  # 3 input channels: not a multiple of 4, left dense like NVIDIA ASP
    weight, mask = ctx.weights["2.weight"], masks["2.weight"]
    groups = mask.movedim(1, -1).reshape(-1, 4)  # 4 consecutive input channels at one kernel position
    assert groups.sum(dim=1).eq(2).all() and groups.shape[0] == 8 * 3 * 3 * 2
    magnitudes = weight.abs().movedim(1, -1).reshape(-1, 4)
    kept_min = torch.where(groups, magnitudes, torch.inf).min(dim=1).values
    pruned_max = torch.where(groups, -torch.inf, magnitudes).max(dim=1).values
    assert (kept_min >= pruned_max).all()


def test_nm_row_records_the_sparsity_it_achieves() -> None:
    job = run_method("nm_sparsity", {"n": 1, "m": 4}, sparsity=0.9, finetune_recipe=Recipe(epochs=0))
    assert job.rows[0]["sparsity"] == 0.75 == job.rows[0]["sparsity_achieved"]  # LeNet: 64, 300 inputs


def test_nm_rejects_n_not_below_m() -> None:
    with pytest.raises(ValueError, match="n must be below m"):
        create_method("nm_sparsity", {"n": 4, "m": 4})
