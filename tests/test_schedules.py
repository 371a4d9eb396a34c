"""Iterative pruning and its retraining schedules: counts per round, what each rewind restores, which
learning rates each replays, the controls, and the pretrain snapshots weight rewinding needs.

LeNet-300-100 on digits: 64·300 + 300·100 = 49200 prunable weights, a 1000-weight classifier.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import TensorDataset

import harness.cell
from harness.cell import DenseCheckpoint, LevelCheckpoint, pretrain, run_cell, stream_seed
from harness.methods import create_method
from harness.methods.schedules import error_barrier, level_targets, schedule_lrs
from harness.models import create_model
from harness.spec import BenchmarkSpec, Recipe, SpecError, load_spec
from harness.testing import check_pruning_method, run_method, tiny_cell
from harness.training import evaluate, loader

HARNESS = str(Path(sys.executable).with_name("harness"))
PRUNABLE = 49200
STEP = Recipe(epochs=3, lr=0.1, batch_size=512, schedule="step", milestones=(1, 2), gamma=0.5)  # 0.1, 0.05, 0.025


def kept(level) -> int:
    return sum(int(mask.sum()) for name, mask in level.masks.items() if name.endswith("weight"))


def lrs(job, phase: str) -> list[float]:
    return [round(row["lr"], 12) for row in job.epochs if row["phase"] == phase]


def assert_starts_from(level, state: dict[str, torch.Tensor]) -> None:
    """Right after pruning, every parameter of the level is ``state``'s, masked."""
    for name, value in state.items():
        assert torch.equal(level.pruned_state[name], value * level.masks.get(name, torch.ones_like(value))), name


def untrained(model: str = "lenet_300_100") -> DenseCheckpoint:
    """θ0 and a 'trained' state that is a different draw, so rewinding to the wrong one shows."""
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append({k: v.detach().clone() for k, v in create_model(model, (1, 8, 8), 10).state_dict().items()})
    return DenseCheckpoint("hand-made", states[0], states[1], {}, [])


def test_level_targets_follow_the_rate_and_clip_the_last_round() -> None:
    assert level_targets(0.488, 0.2) == pytest.approx([0.2, 0.36, 0.488])  # 1 − 0.8³ = 0.488: three rounds
    assert level_targets(0.9, 0.5) == pytest.approx([0.5, 0.75, 0.875, 0.9])  # ceil(log 0.1 / log 0.5) = 4
    assert level_targets(0.5, 0.2, rounds=2) == pytest.approx([0.2, 0.5])
    assert level_targets(0.0, 0.2) == [0.0]


@pytest.mark.parametrize(
    ("method", "params", "pretrain"),
    [
        ("iterative", {"rate": 0.5}, None),
        ("imp", {"rate": 0.5}, None),
        ("lr_rewinding", {"rate": 0.5}, None),
        ("han_iterative", {"rate": 0.5}, None),
        ("weight_rewinding", {"rate": 0.5}, Recipe(epochs=2, lr=0.05, batch_size=256, save_epochs=(1,))),
        ("imp", {"rate": 0.5, "prune_classifier": True}, None),
        ("imp", {"rate": 0.5, "controls": ["reinit", "random_mask"]}, None),
        ("iterative", {"rate": 0.5, "score": "filter_l1"}, None),
    ],
)
def test_schedule_keeps_the_plugin_promises(method: str, params: dict, pretrain: Recipe | None) -> None:
    options = {"pretrain_recipe": pretrain} if pretrain else {}
    granularity = "channel" if params.get("score") == "filter_l1" else "weight"
    levels = check_pruning_method(method, params, granularity=granularity, **options)
    dense = [0.0] if params.get("controls") else []  # with controls the ticket's curve starts at full density
    assert [level.row["sparsity"] for level in levels] == pytest.approx([*dense, 0.5, 0.75])


def test_imp_keeps_a_power_of_the_rate_and_rewinds_survivors_to_theta0() -> None:
    dense = untrained()
    job = run_method("imp", dense=dense, sparsity=1 - 0.8**3, pretrain_recipe=Recipe(epochs=0))
    assert len(job.levels) == 3  # one row per round
    for k, level in enumerate(job.levels, start=1):
        assert abs(kept(level) - 0.8**k * PRUNABLE) <= 1
        assert_starts_from(level, dense.init_state)  # survivors, biases and classifier exactly at θ0
    # the first mask ranks the trained weights, not θ0
    trained = dense.trained_state["1.weight"].abs()
    assert trained[job.levels[0].masks["1.weight"]].min() >= trained[~job.levels[0].masks["1.weight"]].max()


def test_imp_prunes_the_classifier_at_half_the_rate() -> None:
    job = run_method("imp", {"prune_classifier": True}, sparsity=0.36, pretrain_recipe=Recipe(epochs=0))
    assert [level.row["classifier_sparsity"] for level in job.levels] == pytest.approx([0.1, 0.19])
    assert [int((~level.masks["5.weight"]).sum()) for level in job.levels] == [100, 190]


def test_pretraining_keeps_the_weights_of_the_save_epochs() -> None:
    one = run_method("global_magnitude", pretrain_recipe=Recipe(epochs=1, batch_size=256, save_epochs=(1,))).dense
    assert all(torch.equal(one.snapshots[1][k], v) for k, v in one.trained_state.items())  # after the last epoch
    two = run_method("global_magnitude", pretrain_recipe=Recipe(epochs=2, batch_size=256, save_epochs=(1,))).dense
    assert torch.equal(two.snapshots[1]["1.weight"], one.trained_state["1.weight"])  # same seed, same first epoch
    assert not torch.equal(two.snapshots[1]["1.weight"], two.trained_state["1.weight"])


def test_weight_rewinding_restores_epoch_k_and_replays_the_rest_of_the_schedule() -> None:
    pretrain = STEP.model_copy(update={"save_epochs": (1,)})
    job = run_method("weight_rewinding", {"rate": 0.5}, sparsity=0.5, pretrain_recipe=pretrain)
    assert_starts_from(job.levels[0], job.dense.snapshots[1])
    assert lrs(job, "finetune-0") == [0.05, 0.025]  # epochs 1 and 2 of the pretrain schedule


def test_weight_rewinding_without_a_snapshot_says_how_to_keep_one() -> None:
    with pytest.raises(KeyError, match=r"save_epochs: \[1\]"):
        run_method("weight_rewinding", sparsity=0.5)


def test_lr_rewinding_keeps_the_weights_and_replays_the_lr_schedule() -> None:
    job = run_method("lr_rewinding", {"rate": 0.5}, sparsity=0.75, pretrain_recipe=STEP)
    assert [row["lr"] for row in job.dense.epochs] == pytest.approx([0.1, 0.05, 0.025])
    assert lrs(job, "finetune-0") == lrs(job, "finetune-1") == [0.1, 0.05, 0.025]
    first, second = job.levels
    assert_starts_from(first, job.dense.trained_state)
    assert_starts_from(second, first.final_state)  # round 2 starts where round 1's training ended

    partial = run_method("iterative", {"rate": 0.5, "rewind": "lr:1"}, sparsity=0.5, pretrain_recipe=STEP)
    assert lrs(partial, "finetune-0") == [0.05, 0.025]


def test_han_iterative_fine_tunes_the_trained_survivors_per_layer() -> None:
    job = run_method("han_iterative", {"rate": 0.5}, sparsity=0.5)
    level = job.levels[0]
    assert_starts_from(level, job.dense.trained_state)
    assert [int((~level.masks[name]).sum()) for name in ("1.weight", "3.weight")] == [9600, 15000]
    assert lrs(job, "finetune-0") == [0.01]  # the finetune recipe


def arm_levels(job, control: str) -> dict[int, object]:
    return {level.row["level"]: level for level in job.levels if level.row["control"] == control}


def test_controls_train_the_ticket_once_and_follow_its_masks() -> None:
    job = run_method("imp", {"rate": 0.5, "controls": ["reinit", "random_mask"]}, sparsity=0.75)
    ticket, reinit, random = (arm_levels(job, c) for c in ("none", "reinit", "random_mask"))
    assert sorted(ticket) == sorted(reinit) == [0, 1, 2] and sorted(random) == [1, 2]  # no random mask at 100 %
    # one training of the ticket per pruned level (the 1-epoch pretrain recipe from θ0), one per arm beside it
    phases = [row["phase"] for row in job.epochs]
    assert sorted(phases) == sorted(
        ["reinit-0", "finetune-1", "reinit-1", "random_mask-1", "finetune-2", "reinit-2", "random_mask-2"]
    )
    assert [ticket[k].row["train_epochs"] for k in range(3)] == [0, 1, 2]  # the ticket's line only
    assert [reinit[k].row["train_epochs"] for k in range(3)] == [1, 1, 2]  # the ticket's levels before + its own
    # the dense level: the ticket is the trained dense model, the reinit arm draw 0 trained unpruned
    assert ticket[0].row["top1"] == pytest.approx(job.dense.metrics["dense_top1"])
    assert reinit[0].masks == {} and all(
        torch.equal(reinit[0].pruned_state[n], v) for n, v in job.fresh_init(draw=0).items()
    )
    init = job.dense.init_state
    for level in (1, 2):
        fresh = job.fresh_init(draw=level)
        for name, mask in ticket[level].masks.items():
            assert torch.equal(reinit[level].masks[name], mask)  # the ticket's own mask ...
            assert torch.equal(reinit[level].pruned_state[name], fresh[name] * mask)  # ... on this level's draw
            shuffled = random[level].masks[name]
            assert int(shuffled.sum()) == int(mask.sum()) and not torch.equal(shuffled, mask)  # as many, elsewhere
            assert torch.equal(random[level].pruned_state[name], init[name] * shuffled)
            assert torch.equal(ticket[level].pruned_state[name], init[name] * mask)  # the arms left the ticket be


def test_each_level_draws_its_own_reinitialisation_unlike_any_seeds_theta0() -> None:
    job = run_method("imp", {"rate": 0.5, "controls": ["reinit"]}, sparsity=0.75, pretrain_recipe=Recipe(epochs=0))
    draws = [job.fresh_init(draw=k)["1.weight"] for k in range(3)]
    assert all(not torch.equal(a, b) for i, a in enumerate(draws) for b in draws[i + 1 :])
    torch.manual_seed(1)  # seed + 1's θ0, the old control's initialisation
    next_seed = create_model("lenet_300_100", (1, 8, 8), 10).state_dict()["1.weight"]
    assert not any(torch.equal(d, next_seed) for d in draws)
    assert torch.equal(job.fresh_init(draw=1)["1.weight"], draws[1])  # a draw is a function of (seed, level)


def test_the_old_control_key_is_refused_naming_the_new_spelling(write_spec) -> None:
    spec = write_spec(
        "name: b\nmodels: [lenet_300_100]\ndatasets: [digits]\nsparsities: [0.5]\nseeds: [0]\n"
        "methods: [{name: imp, control: reinit}]\n"
    )
    with pytest.raises(
        SpecError, match=r"methods\[0\]\.control: `control` was replaced by `controls`.*controls: \[reinit\]"
    ):
        load_spec(spec)
    done = subprocess.run([HARNESS, "run", str(spec), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "controls: [reinit]" in done.stderr, done.stderr


def test_a_resumed_cell_with_controls_gives_the_uninterrupted_rows() -> None:
    cell = tiny_cell("imp", {"rate": 0.5, "controls": ["reinit"]}, sparsity=0.75)
    dense = pretrain(cell)
    checkpoints: list[LevelCheckpoint] = []
    whole = run_cell(cell, dense, on_level=checkpoints.append)
    assert [c.level for c in checkpoints] == [0, 1, 2]  # one checkpoint per level, its arm's row inside it
    resumed = run_cell(cell, dense, resume=LevelCheckpoint.from_bytes(checkpoints[1].to_bytes()))
    keys = ("level", "control", "sparsity", "top1", "train_epochs")
    assert [[r[k] for k in keys] for r in resumed.rows] == [[r[k] for k in keys] for r in whole.rows]
    assert [(r["level"], r["control"]) for r in whole.rows] == [
        (0, "reinit"),
        (0, "none"),
        (1, "reinit"),
        (1, "none"),
        (2, "reinit"),
        (2, "none"),
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"score": "imp"}, "not a pruning method"),
        ({"score": "global_magnitud"}, "did you mean"),
        ({"score": "grasp", "score_params": {"temperature": -1}}, "score_params.temperature"),
        ({"controls": ["reinit"]}, "needs a rewind point"),
        ({"rewind": "init", "controls": ["reinit", "reinit"]}, "named twice"),
        ({"rewind": "epoch:one"}, "pattern"),
    ],
)
def test_iterative_rejects_inconsistent_params(params: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        create_method("iterative", params)


def test_save_epochs_stay_with_pretraining() -> None:
    spec = BenchmarkSpec(
        name="b",
        models=["lenet_300_100"],
        datasets=["digits"],
        methods=["weight_rewinding"],
        sparsities=[0.5],
        seeds=[0],
        pretrain={"epochs": 4, "save_epochs": [1]},
        finetune={"epochs": 1},
    )
    assert spec.finetune_recipe.save_epochs == ()
    with pytest.raises(ValidationError, match=r"save_epochs \[5\] outside 1..epochs \(4\)"):
        Recipe(epochs=4, save_epochs=(5,))


def test_schedule_lrs_match_the_optimiser_training_builds() -> None:
    assert schedule_lrs(STEP) == pytest.approx([0.1, 0.05, 0.025])
    assert schedule_lrs(Recipe(epochs=2, lr=0.3)) == [0.3, 0.3]
    cosine = schedule_lrs(Recipe(epochs=4, lr=1.0, schedule="cosine"))
    assert cosine == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])


class _ScalarJob:
    """Just the verbs error_barrier uses, on one scalar weight whose test top-1 is 1 − (1 − w²) / 2."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.state = dict(state)

    def evaluate(self, split: str = "test") -> dict[str, float]:
        w = float(self.state["w"])
        return {"top1": 1 - (1 - w * w) / 2}


@pytest.mark.parametrize("points", [3, 11])
def test_error_barrier_is_the_peak_error_on_the_line_minus_the_mean_end_error(points: int) -> None:
    job = _ScalarJob()
    steps = torch.tensor(7)  # not floating point: carried over from the end state, never interpolated
    start, end = {"w": torch.tensor(-1.0), "n": steps}, {"w": torch.tensor(1.0), "n": steps}
    # error along the line is (1 − w²) / 2: 0 at both ends, 0.5 at the midpoint (w = 0)
    assert error_barrier(job, start, end, points) == pytest.approx(0.5)
    assert job.state["w"] == 1.0 and job.state["n"] is steps  # the model is left at the end point


def test_imp_records_the_barrier_between_successive_levels() -> None:
    job = run_method("imp", {"lmc_points": 5, "rate": 0.5}, sparsity=0.75, pretrain_recipe=Recipe(epochs=1))
    rows = [level.row for level in job.levels]
    assert "lmc_barrier" not in rows[0]  # nothing to connect the first level to
    assert 0.0 <= rows[1]["lmc_barrier"] <= 1.0
    with pytest.raises(ValidationError, match="at least 3 points"):
        create_method("imp", {"lmc_points": 2})


class _LinearJob:
    """The verbs error_barrier uses on a real nn.Linear(1, 2) and two splits of two examples each."""

    def __init__(self, splits: dict[str, TensorDataset]) -> None:
        self.model, self.splits = nn.Linear(1, 2), splits

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def evaluate(self, split: str = "test") -> dict[str, float]:
        return evaluate(self.model, self.splits[split])


def test_error_barrier_of_two_linear_models_is_measured_on_validation() -> None:
    # class-0 margin w·x + b, class 1 fixed at 0. A: w = 2, b = −1; B: w = −2, b = −1; on the line w = 2 − 4α:
    # x = +1 has margin 1 − 4α (class 0 until α = 1/4), x = −1 has −3 + 4α (class 0 after α = 3/4)
    a = {"weight": torch.tensor([[2.0], [0.0]]), "bias": torch.tensor([-1.0, 0.0])}
    b = {"weight": torch.tensor([[-2.0], [0.0]]), "bias": torch.tensor([-1.0, 0.0])}
    x = torch.tensor([[1.0], [-1.0]])
    # validation, both labelled 0: error 1/2 at each end, 1 for α in (1/4, 3/4) → barrier 1 − 1/2;
    # test, both labelled 1: 1/2 at each end, 0 in between → barrier 0: the barrier must read validation
    splits = {"val": TensorDataset(x, torch.tensor([0, 0])), "test": TensorDataset(x, torch.tensor([1, 1]))}
    job = _LinearJob(splits)
    assert error_barrier(job, a, b, 11) == pytest.approx(0.5)
    assert torch.equal(job.model.weight, b["weight"])  # left at the end point
    assert error_barrier(job, a, a, 11) == 0.0


def test_error_barrier_between_identical_networks_is_zero() -> None:
    job = run_method("global_magnitude", sparsity=0.5)
    state = {name: value.clone() for name, value in job.model.state_dict().items()}
    assert error_barrier(job, state, state, 11) == 0.0


def test_lmc_copies_train_from_the_same_start_and_mask_in_another_data_order(monkeypatch) -> None:
    calls: list[dict] = []
    real_train = harness.cell.train

    def recording_train(model, train_set, val_set, recipe, *, seed, phase, masks=None, **kwargs):
        start = {name: value.detach().clone() for name, value in model.state_dict().items()}
        calls.append({"phase": phase, "seed": seed, "start": start, "masks": dict(masks), "data": train_set})
        return real_train(model, train_set, val_set, recipe, seed=seed, phase=phase, masks=masks, **kwargs)

    dense = untrained()
    monkeypatch.setattr(harness.cell, "train", recording_train)
    params = {"rate": 0.5, "lmc_points": 3, "lmc_copies": True}
    job = run_method("imp", params, dense=dense, sparsity=0.75, pretrain_recipe=Recipe(epochs=1, batch_size=256))
    assert [c["phase"] for c in calls] == ["copy-0", "finetune-0", "copy-1", "finetune-1"]
    for level in (0, 1):
        copy_, plain = calls[2 * level], calls[2 * level + 1]
        assert copy_["masks"].keys() == plain["masks"].keys()
        for name, mask in plain["masks"].items():
            assert torch.equal(copy_["masks"][name], mask)  # the same mask ...
            theta0 = dense.init_state[name] * mask
            assert torch.equal(copy_["start"][name] * mask, theta0)  # ... from the same rewind point (θ0)
            assert torch.equal(plain["start"][name], theta0)
        for name, value in dense.init_state.items():  # biases and the rest: θ0 as well
            if name not in plain["masks"]:
                assert torch.equal(copy_["start"][name], value) and torch.equal(plain["start"][name], value)
        assert plain["seed"] == 1000 * level  # the level's own order is unchanged ...
        assert copy_["seed"] == stream_seed("copy", 0, level) >= 2**63  # ... the copy's is a stream of its own
        orders = [list(loader(c["data"], 256, shuffle=True, seed=c["seed"]).sampler) for c in (copy_, plain)]
        assert orders[0] != orders[1]
    rows = [level.row for level in job.levels]
    assert [row["train_epochs"] for row in rows] == [2, 4]  # the copies' epochs count: equal-budget bookkeeping
    assert all(0.0 <= row["lmc_barrier_copies"] <= 1.0 for row in rows)
    assert "lmc_barrier" not in rows[0] and 0.0 <= rows[1]["lmc_barrier"] <= 1.0


def test_lmc_copies_without_lmc_points_is_refused_when_the_spec_loads(tmp_path) -> None:
    with pytest.raises(ValidationError, match="lmc_copies needs lmc_points"):
        create_method("weight_rewinding", {"lmc_copies": True})
    path = tmp_path / "b.yaml"
    path.write_text(
        "name: b\nmodels: [lenet_300_100]\ndatasets: [digits]\nsparsities: [0.5]\nseeds: [0]\n"
        "methods: [{name: imp, lmc_copies: true}]\n"
    )
    with pytest.raises(SpecError, match=rf"^{path}: methods\[0\]\.lmc_copies: lmc_copies needs lmc_points"):
        load_spec(path)
