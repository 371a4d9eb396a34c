"""The benchmark spec: every mistake is one exit-2 message that starts nothing; the matrix and its ids.

Hand counts used below (lenet_300_100 on digits: 64 → 300 → 100 → 10):
weights 64·300 = 19200, 300·100 = 30000, 100·10 = 1000 (the classifier); biases 300 + 100 + 10 = 410.
All parameters 50610; prunable (classifier excluded) 49200, so 1410 are never pruned.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from harness.cli import app
from harness.config import non_default
from harness.spec import CellSpec, Recipe, SpecError, expand, load_spec

BASE = {
    "name": "t",
    "models": ["lenet_300_100"],
    "datasets": ["digits"],
    "methods": ["global_magnitude"],
    "sparsities": [0.5],
    "seeds": [0],
}


def spec_text(**changes: object) -> str:
    """BASE with some keys replaced; a value of None removes the key."""
    fields = {**BASE, **changes}
    return yaml.safe_dump({k: v for k, v in fields.items() if v is not None}, sort_keys=False)


# (what the user wrote, the field the message must name, what it must say is allowed)
MISTAKES = {
    "unknown top-level key": (dict(colour="red"), "colour", "allowed keys: name, models, datasets"),
    "unknown pretrain key": (dict(pretrain={"epochz": 3}), "pretrain.epochz", "allowed keys: epochs, optimizer"),
    "unknown finetune key": (dict(finetune={"epochz": 3}), "finetune.epochz", "allowed keys: epochs, optimizer"),
    "unknown resources key": (dict(resources={"gpu": 1}), "resources.gpu", "allowed keys: cpus, gpus, custom"),
    "bad finetune value": (dict(finetune={"epochs": -1}), "finetune.epochs", "greater than or equal to 0"),
    "bad optimizer": (dict(pretrain={"optimizer": "sgdd"}), "pretrain.optimizer", "'sgd', 'adam' or 'adamw'"),
    "unknown model": (dict(models=["lenet_300_10"]), "models[0]", "did you mean 'lenet_300_100'"),
    "unknown dataset": (dict(datasets=["mnist", "digit"]), "datasets[1]", "did you mean 'digits'"),
    "unknown method": (dict(methods=["global_magnitud"]), "methods[0].name", "did you mean 'global_magnitude'"),
    "sparsity 1": (dict(sparsities=[0.5, 1.0]), "sparsities", "outside [0, 1)"),
    "negative sparsity": (dict(sparsities=[-0.1]), "sparsities", "outside [0, 1)"),
    "compression below 1": (dict(sparsities=None, compressions=[0.5]), "compressions", "below 1"),
    "compression out of reach": (dict(sparsities=None, compressions=[40]), "compressions", "allowed: 1 to below"),
    "both target axes": (dict(compressions=[2]), "sparsities", "exactly one of 'sparsities' or 'compressions'"),
    "no target axis": (dict(sparsities=None), "sparsities", "exactly one of 'sparsities' or 'compressions'"),
    "empty models": (dict(models=[]), "models", "at least 1 item"),
    "empty methods": (dict(methods=[]), "methods", "at least 1 item"),
    "empty seeds": (dict(seeds=[]), "seeds", "at least 1 item"),
    "empty sparsities": (dict(sparsities=[]), "sparsities", "at least 1 item"),
    "unknown method parameter": (
        dict(methods=["random", {"name": "global_magnitude", "amount": 3}]),
        "methods[1].amount",
        "allowed keys: prune_classifier",
    ),
    "method parameter of the wrong type": (
        dict(methods=[{"name": "global_magnitude", "prune_classifier": [1]}]),
        "methods[0].prune_classifier",
        "valid boolean",
    ),
    "model that cannot take the input": (
        dict(models=["lenet5"], datasets=["mnist1d"]),
        "models",
        "lenet5 needs a (C, H, W) image",
    ),
}


@pytest.mark.parametrize("changes, field, allowed", MISTAKES.values(), ids=MISTAKES.keys())
def test_a_mistake_is_one_message_exit_2_and_nothing_written(
    changes: dict, field: str, allowed: str, write_spec, results_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_spec(spec_text(**changes))
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(results_dir)])

    assert result.exit_code == 2, result.output
    [message] = result.stderr.strip().splitlines()  # one message, one line
    assert message.startswith(f"error: {path}: ")
    assert field in message and allowed in message, message
    assert not results_dir.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bench.yaml"]  # no mlflow.db, no mlruns, nothing


def test_a_missing_or_malformed_file_is_exit_2(write_spec, results_dir: Path) -> None:
    missing = CliRunner().invoke(app, ["run", str(results_dir / "nope.yaml"), "--results", str(results_dir)])
    assert missing.exit_code == 2 and "no such benchmark file" in missing.stderr

    not_a_mapping = CliRunner().invoke(app, ["run", str(write_spec("- a\n- b\n")), "--results", str(results_dir)])
    assert not_a_mapping.exit_code == 2 and "expected a mapping" in not_a_mapping.stderr
    assert not results_dir.exists()


def test_load_spec_raises_spec_error_naming_file_and_field(write_spec) -> None:
    path = write_spec(spec_text(sparsities=[1.5]))
    with pytest.raises(SpecError, match=rf"^{path}: sparsities: sparsity 1.5 is outside \[0, 1\)"):
        load_spec(path)


# -- the matrix ---------------------------------------------------------------------------------


def test_expand_is_the_cross_product_seed_by_seed(write_spec) -> None:
    text = spec_text(methods=["random", "global_magnitude"], sparsities=[0.5, 0.9], seeds=[0, 1])
    cells = expand(load_spec(write_spec(text)))

    assert [(c.seed, c.method, c.sparsity) for c in cells] == [
        (0, "random", 0.5),
        (0, "random", 0.9),
        (0, "global_magnitude", 0.5),
        (0, "global_magnitude", 0.9),
        (1, "random", 0.5),
        (1, "random", 0.9),
        (1, "global_magnitude", 0.5),
        (1, "global_magnitude", 0.9),
    ]
    assert len({c.cell_id for c in cells}) == 8
    # one dense pretraining per seed, shared by every method and sparsity
    assert len({c.pretrain_key for c in cells}) == 2


def test_finetune_inherits_what_it_does_not_set_from_pretrain(write_spec) -> None:
    text = spec_text(pretrain={"epochs": 3, "lr": 0.05, "batch_size": 64}, finetune={"epochs": 1, "lr": 0.01})
    [cell] = expand(load_spec(write_spec(text)))
    assert cell.pretrain == Recipe(epochs=3, lr=0.05, batch_size=64)
    assert cell.finetune == Recipe(epochs=1, lr=0.01, batch_size=64)


def test_method_parameters_inline_nested_or_default_give_the_same_cell(write_spec) -> None:
    def cell(method: object) -> CellSpec:
        [only] = expand(load_spec(write_spec(spec_text(methods=[method]))))
        return only

    inline = cell({"name": "global_magnitude", "prune_classifier": True})
    nested = cell({"name": "global_magnitude", "params": {"prune_classifier": True}})
    assert inline.method_params == nested.method_params == {"prune_classifier": True}
    assert inline.cell_id == nested.cell_id
    # a parameter spelled out at its default is the same experiment as leaving it out
    assert cell({"name": "global_magnitude", "prune_classifier": False}).cell_id == cell("global_magnitude").cell_id
    assert inline.cell_id != cell("global_magnitude").cell_id


def test_compressions_become_sparsities_by_shrinkbench_rule(write_spec) -> None:
    """keep = (total / compression − nonprunable) / prunable.

    compression 4: (50610/4 − 1410) / 49200 = 11242.5 / 49200 = 0.2285060975…, sparsity 0.7714939024…
    compression 4 with the classifier prunable: (12652.5 − 410) / 50200 = 0.2438745019…, sparsity 0.7561254980…
    compression 50 is out of reach unless the classifier is prunable: the 1410 unprunable parameters alone
    give at most 50610 / 1410 = 35.9x; with it, (1012.2 − 410) / 50200 = 0.0119960159…
    """
    text = spec_text(
        sparsities=None, compressions=[1, 4], methods=["global_magnitude", {"name": "random", "prune_classifier": True}]
    )
    cells = expand(load_spec(write_spec(text)))
    assert [(c.method, c.compression) for c in cells] == [
        ("global_magnitude", 1),
        ("global_magnitude", 4),
        ("random", 1),
        ("random", 4),
    ]
    assert cells[0].sparsity == 0.0
    assert cells[1].sparsity == pytest.approx(1 - 11242.5 / 49200, abs=1e-12)
    assert cells[1].sparsity == pytest.approx(0.771493902439, abs=1e-12)
    assert cells[3].sparsity == pytest.approx(0.756125498008, abs=1e-12)

    reachable = spec_text(sparsities=None, compressions=[50], methods=[{"name": "random", "prune_classifier": True}])
    [cell] = expand(load_spec(write_spec(reachable)))
    assert cell.sparsity == pytest.approx(1 - 602.2 / 50200, abs=1e-12)
    with pytest.raises(SpecError, match=r"compressions: compression 50.0 is out of reach .* 35.9x"):
        load_spec(write_spec(spec_text(sparsities=None, compressions=[50], methods=["random"])))


# -- identity -----------------------------------------------------------------------------------

CELL = CellSpec(
    benchmark="tiny",
    model="lenet_300_100",
    dataset="digits",
    method="global_magnitude",
    sparsity=0.5,
    seed=0,
    pretrain=Recipe(epochs=2, lr=0.05, batch_size=64),
    finetune=Recipe(epochs=1, lr=0.01, batch_size=64),
)


def sha256_16(value: dict) -> str:
    """The id rule written out: first 16 hex digits of SHA-256 of the sorted, compact JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def test_ids_are_pinned() -> None:
    """Changing these literals means every stored result is orphaned: only ever on purpose."""
    assert CELL.cell_id == "69766511b20b7cdb"
    assert CELL.pretrain_key == "e981bdae9c5880f0"


def test_the_id_hashes_only_the_fields_that_differ_from_their_defaults() -> None:
    """OpenLTH's rule: so a new field with a default can never change an existing id."""
    hashed = {
        "model": "lenet_300_100",
        "dataset": "digits",
        "method": "global_magnitude",
        "sparsity": 0.5,
        "seed": 0,
        "pretrain": {"epochs": 2, "lr": 0.05, "batch_size": 64},
        "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 64},
    }
    assert non_default(CELL, exclude=CELL._NOT_IDENTITY) == hashed
    assert CELL.cell_id == sha256_16(hashed)
    assert CELL.pretrain_key == sha256_16(
        {"model": "lenet_300_100", "dataset": "digits", "seed": 0, "pretrain": hashed["pretrain"]}
    )

    class RecipeWithANewKnob(Recipe):
        label_smoothing: float = 0.0

    class CellSpecWithNewFields(CellSpec):
        pruning_schedule: str = "one-shot"
        pretrain: RecipeWithANewKnob = RecipeWithANewKnob()
        finetune: RecipeWithANewKnob = RecipeWithANewKnob()

    later = CellSpecWithNewFields(
        **{**CELL.model_dump(), "pretrain": CELL.pretrain.model_dump(), "finetune": CELL.finetune.model_dump()}
    )
    assert (later.cell_id, later.pretrain_key) == (CELL.cell_id, CELL.pretrain_key)
    assert later.model_copy(update={"pruning_schedule": "gradual"}).cell_id != CELL.cell_id


def test_where_things_run_is_not_part_of_identity() -> None:
    moved = CELL.model_copy(
        update={"benchmark": "other", "data_root": "/data", "plugins": ("my_plugin",), "compression": 2.0}
    )
    assert (moved.cell_id, moved.pretrain_key) == (CELL.cell_id, CELL.pretrain_key)


def test_pretrain_key_ignores_what_happens_after_pretraining() -> None:
    after = CELL.model_copy(update={"method": "random", "sparsity": 0.9, "finetune": Recipe(epochs=5)})
    assert after.pretrain_key == CELL.pretrain_key and after.cell_id != CELL.cell_id
    assert CELL.model_copy(update={"seed": 1}).pretrain_key != CELL.pretrain_key
    assert CELL.model_copy(update={"pretrain": Recipe(epochs=3)}).pretrain_key != CELL.pretrain_key


def test_weight_rewinding_without_the_snapshot_it_needs_is_refused_when_the_spec_loads(write_spec) -> None:
    path = write_spec(spec_text(methods=[{"name": "weight_rewinding"}], pretrain={"epochs": 3}))
    with pytest.raises(SpecError, match=r"methods\[0\]: rewind 'epoch:1' .* save_epochs: \[1\]"):
        load_spec(path)
    assert load_spec(write_spec(spec_text(methods=["weight_rewinding"], pretrain={"epochs": 3, "save_epochs": [1]})))


def test_a_method_that_sets_its_own_sparsity_gets_one_cell_per_seed_not_one_per_target(write_spec) -> None:
    spec = load_spec(write_spec(spec_text(methods=["nm_sparsity", "random"], sparsities=[0.5, 0.9], seeds=[0, 1])))
    cells = expand(spec)
    assert sorted((c.method, c.sparsity) for c in cells if c.method == "nm_sparsity") == [("nm_sparsity", 0.0)] * 2
    assert len([c for c in cells if c.method == "random"]) == 4
