"""`harness tune` end to end on digits: real Optuna studies, real Ray tasks, the tuned spec run after.

One local Ray serves every test (the harness reuses a connection it finds), so each test pays
only for its own trials.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import ray
import yaml
from typer.testing import CliRunner

from harness.cli import app
from harness.results import load
from harness.spec import expand, load_spec
from harness.tuning.driver import Settings, open_storage, plan_studies

PLUGIN = Path(__file__).with_name("tune_plugins.py")
RAY_PLUGIN = Path(__file__).with_name("ray_plugins.py")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    ray.shutdown()


def spec(name: str, methods: str, *, dataset: str = "digits", tune: str = "", seeds: str = "[0]") -> str:
    return f"""
name: {name}
plugins: [{PLUGIN}, {RAY_PLUGIN}]
models: [lenet_300_100]
datasets: [{dataset}]
methods: {methods}
sparsities: [0.9]
seeds: {seeds}
pretrain: {{epochs: 1, lr: 0.05, batch_size: 64}}
finetune: {{epochs: 2, lr: 0.01, batch_size: 64}}
{tune}
"""


def harness(*args: str | Path) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def trials(results: Path) -> list[dict]:
    frame = load(results, "trials").sort_values(["study", "trial"])
    return frame.astype(object).where(frame.notna(), None).to_dict("records")  # None, not NaN: rows compare equal


def test_a_small_study_completes_and_the_tuned_spec_measures_test_accuracy(write_spec, results_dir) -> None:
    path = write_spec(spec("small", "[global_magnitude]", seeds="[0, 1]", tune="tune: {max_epochs: 1}"))
    harness("tune", path, "--trials", "3", "--results", results_dir, "--pruner", "none")

    rows = trials(results_dir)
    assert [(r["trial"], r["state"], r["counted"], r["epochs"]) for r in rows] == [
        (i, "COMPLETE", True, 1) for i in range(3)
    ]
    assert all(1e-4 <= json.loads(r["params"])["finetune.lr"] <= 1e-1 for r in rows)  # the documented default space
    best = max(rows, key=lambda r: r["value"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("small").experiment_id])
    [study_run] = [r for r in runs if r.data.tags.get("harness.role") == "study"]
    trial_runs = [r for r in runs if r.data.tags.get("harness.role") == "trial"]
    assert len(trial_runs) == 3 and {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {study_run.info.run_id}
    assert sorted(r.data.metrics["val_top1"] for r in trial_runs) == sorted(r["value"] for r in rows)

    tuned_path = results_dir / "tuned" / "small.yaml"
    tuned = yaml.safe_load(tuned_path.read_text())["tuned"]
    assert (tuned["protocol"], tuned["sampler"], tuned["trials"], tuned["max_epochs"]) == ("equal", "tpe", 3, 1)
    [entry] = tuned["cells"]
    assert entry["study"] == best["study"] and entry["best_val_top1"] == best["value"]
    assert entry["finetune"] == {"epochs": 1, "lr": json.loads(best["params"])["finetune.lr"]}

    harness("run", tuned_path, "--results", results_dir)
    cells = load(results_dir, "cells")
    assert set(cells["benchmark"]) == {"small-tuned"} and sorted(cells["seed"]) == [0, 1]
    assert (cells["status"] == "ok").all()
    expected = {c.cell_id for c in expand(load_spec(tuned_path))}
    assert set(cells["cell_id"]) == expected
    assert all(
        c.finetune.lr == entry["finetune"]["lr"] and c.finetune.epochs == 1 for c in expand(load_spec(tuned_path))
    )
    assert best["cell_id"] in expected  # the seed-0 benchmark cell is exactly the best trial's cell

    harness("report", "--results", results_dir, "--out", results_dir / "site", "--format", "markdown")
    index = (results_dir / "site" / "index.md").read_text()
    assert "global\\_magnitude (tuned: equal, tpe, 3 trials)" in index  # the leaderboard entry is marked
    page = (results_dir / "site" / "tuning.md").read_text()
    assert f"plots/history-{best['study']}.svg" in page and "importance (fANOVA)" in page
    assert f"best validation top-1 {100 * best['value']:.2f}%" in page


def test_test_data_never_reaches_a_trial(write_spec, results_dir) -> None:
    path = write_spec(spec("sealed", "[global_magnitude]", dataset="digits_sealed", tune="tune: {max_epochs: 1}"))
    url = f"sqlite:///{results_dir.parent / 'optuna.db'}"  # a user's RDB instead of the journal file
    harness("tune", path, "--trials", "2", "--results", results_dir, "--protocol", "qmc", "--storage", url)
    rows = trials(results_dir)
    assert [(r["state"], r["sampler"], r["protocol"]) for r in rows] == [("COMPLETE", "qmc", "qmc")] * 2
    assert all(0.5 < r["value"] <= 1.0 for r in rows)
    assert yaml.safe_load((results_dir / "tuned" / "sealed.yaml").read_text())["tuned"]["storage"] == url
    assert len(optuna.load_study(study_name=rows[0]["study"], storage=url).trials) == 2
    assert not (results_dir / "tuning" / "sealed.journal").exists()

    # the seal is real: a benchmark run, which does read test data, fails on it
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(results_dir / "run")])
    assert result.exit_code == 1
    assert "the test split was read" in load(results_dir / "run", "cells")["error"].iloc[0]


def test_an_interrupted_study_resumes_without_repeating_finished_trials(write_spec, results_dir) -> None:
    path = write_spec(spec("resume", "[global_magnitude]", tune="tune: {max_epochs: 1}"))
    harness("tune", path, "--trials", "2", "--results", results_dir, "--pruner", "none")
    before = trials(results_dir)

    # a driver killed mid-trial leaves the trial RUNNING in the journal
    settings = Settings(trials=3)  # as the command line: the pruner is part of the search
    [study] = plan_studies(load_spec(path), settings)
    storage, _ = open_storage(settings, results_dir, "resume")
    handle = optuna.load_study(study_name=study.name, storage=storage)
    cut_off = handle.ask()
    cut_off.suggest_float("finetune.lr", 1e-4, 1e-1, log=True)
    del handle, storage

    output = harness("tune", path, "--trials", "3", "--results", results_dir, "--pruner", "none")
    assert "ran 1 trials" in output
    after = trials(results_dir)
    assert after[:2] == before  # the finished trials are untouched: same values, points, cells
    assert (after[2]["trial"], after[2]["state"], after[2]["counted"], after[2]["error"]) == (
        2,
        "FAIL",
        False,
        "interrupted",
    )
    assert (after[3]["state"], after[3]["counted"]) == ("COMPLETE", True)
    assert json.loads(after[3]["params"]) == cut_off.params  # the cut-off point is tried again
    assert sum(r["counted"] for r in after) == 3

    harness("tune", path, "--trials", "3", "--results", results_dir, "--pruner", "none")
    assert trials(results_dir) == after  # the budget is spent: nothing runs again


def test_equal_budgets_hold_when_a_methods_trials_fail_or_are_pruned(write_spec, results_dir) -> None:
    tune = "tune: {max_epochs: 1, space: {finetune.lr: {low: 0.01, high: 0.05}, dial.broken: {choices: [false, true]}}}"
    path = write_spec(spec("budget", "[dial, explode]", tune=tune))
    settings = Settings(trials=4, pruner="median")  # as the command line below
    storage, _ = open_storage(settings, results_dir, "budget")
    dial = next(s for s in plan_studies(load_spec(path), settings) if s.base.method == "dial")
    handle = optuna.create_study(study_name=dial.name, storage=storage, direction="maximize")
    for broken in (False, False, True, True):  # two good trials, then two at chance level
        handle.enqueue_trial({"finetune.lr": 0.03, "dial.broken": broken})

    # one at a time, so the pruner has seen both good trials when it judges the third
    output = harness(
        "tune", path, "--trials", "4", "--max-parallel", "1", "--results", results_dir, "--pruner", "median"
    )
    rows = trials(results_dir)
    by_method = {m: [r for r in rows if r["method"] == m] for m in ("dial", "explode")}
    assert [r["state"] for r in by_method["dial"]] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert [r["state"] for r in by_method["explode"]] == ["FAIL"] * 4
    assert all("boom: a plugin bug" in r["error"] for r in by_method["explode"])
    explode_study = by_method["explode"][0]["study"]
    assert "about to explode" in (results_dir / "tuning" / "logs" / f"{explode_study}-0.log").read_text()
    assert all(sum(r["counted"] for r in group) == 4 for group in by_method.values())  # the same budget
    assert all(r["epochs"] == 1 for r in by_method["dial"]) and all(r["epochs"] == 0 for r in by_method["explode"])
    # a pipe gets the summary as plain columns: method, studies, trials, complete, pruned, failed, epochs, best
    rows = [line.split() for line in output.splitlines()]
    summary = {row[0]: row[1:7] for row in rows if len(row) == 8 and row[0] in by_method}
    assert summary["dial"] == ["1", "4", "2", "2", "0", "4"]
    assert summary["explode"] == ["1", "4", "0", "0", "4", "0"]


def test_two_parallel_trials_never_share_a_parameter_point(write_spec, results_dir, tmp_path) -> None:
    # rendezvous waits until two trials are in its folder at once: the study really ran two at a time
    method = f'[{{name: rendezvous, folder: "{tmp_path / "met"}", count: 2, timeout: 60}}]'
    path = write_spec(spec("parallel", method, tune="tune: {max_epochs: 1}"))
    harness("tune", path, "--trials", "6", "--max-parallel", "2", "--results", results_dir, "--pruner", "none")
    rows = trials(results_dir)
    assert len(rows) == 6 and all(r["state"] == "COMPLETE" for r in rows)
    assert all(r["seconds"] < 30 for r in rows)  # no trial waited out the rendezvous: each had a peer
    assert len({r["params"] for r in rows}) == 6


def test_the_defaults_protocol_tunes_nothing_and_says_so(write_spec, results_dir) -> None:
    path = write_spec(spec("plain", "[global_magnitude]"))
    harness("tune", path, "--protocol", "defaults", "--results", results_dir)
    tuned = yaml.safe_load((results_dir / "tuned" / "plain.yaml").read_text())
    assert tuned["name"] == "plain-tuned"
    assert (tuned["tuned"]["protocol"], tuned["tuned"]["trials"], tuned["tuned"]["cells"]) == ("defaults", 0, [])
    assert [c.cell_id for c in expand(load_spec(results_dir / "tuned" / "plain.yaml"))] == [
        c.cell_id for c in expand(load_spec(path))
    ]
    assert not (results_dir / "trials").exists()


@pytest.mark.parametrize(
    ("tune", "args", "message"),
    [
        ("tune: {space: {finetune.lr: {low: 0.1, high: 0.01}}}", [], "tune.space.finetune.lr: need finite low < high"),
        ("tune: {space: {finetune.epochs: {low: 1, high: 9}}}", [], "up to the budget's cap max_epochs=2"),
        ("tune: {space: {snip.rate: {low: 0.1, high: 0.5}}}", [], "method 'snip' is not in the spec's methods"),
        ("tune: {space: {imp.rat: {low: 0.1, high: 0.5}}}", [], "imp has no parameter 'rat'"),
        ("tune: {space: {finetune.save_epochs: {choices: [1]}}}", [], "not a tunable recipe field"),
        ("", ["--protocol", "qmc", "--sampler", "tpe"], "--sampler tpe contradicts it"),
        ("", ["--storage", "nosuch://db"], "--storage nosuch://db: cannot open it as an Optuna RDB storage"),
    ],
)
def test_a_bad_search_space_exits_2_naming_file_and_field(write_spec, results_dir, tune, args, message) -> None:
    path = write_spec(spec("bad", "[imp]", tune=tune))
    result = CliRunner().invoke(app, ["tune", str(path), "--results", str(results_dir), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not results_dir.exists()  # nothing started or written
