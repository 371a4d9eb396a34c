"""The results table as readers see it: schema, views, reruns replacing rows, compaction keeping every
row exactly once, and the layout surviving a compaction that crashed half-way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from results_factory import fake_cell

from harness.results import connect, load
from harness.schema import CELLS, EPOCHS, LAYERS, SCHEMA_VERSION, CellResult, SchemaError
from harness.store import FANOUT, ResultsStore


def cell(seed: int, top1: float = 0.9, benchmark: str = "b", **extra) -> CellResult:
    return fake_cell(benchmark, "digits", "lenet_300_100", "global_magnitude", 0.5, seed, top1=top1, **extra)


def files(root: Path, view: str = "cells") -> list[str]:
    return sorted(p.name for p in (root / view).rglob("*.parquet"))


def test_views_have_the_documented_core_columns_in_order_then_any_extra_column(results_dir: Path) -> None:
    store = ResultsStore(results_dir)
    store.write(cell(0, my_metric=3.5))
    cells = load(results_dir, "cells")
    assert list(cells.columns[: len(CELLS)]) == [c.name for c in CELLS]
    assert cells.columns[-1] == "my_metric" and cells["my_metric"].tolist() == [3.5]
    assert cells["schema_version"].tolist() == [SCHEMA_VERSION]
    assert list(load(results_dir, "epochs").columns[: len(EPOCHS)]) == [c.name for c in EPOCHS]
    layers = load(results_dir, "layers")
    assert list(layers.columns[: len(LAYERS)]) == [c.name for c in LAYERS]
    assert layers["params"].tolist() == [1000, 100, 10]
    # declared types, even where every written value was null or an int
    types = dict(connect(results_dir).execute("SELECT column_name, column_type FROM (DESCRIBE cells)").fetchall())
    assert types["compression"] == "DOUBLE" and types["error"] == "VARCHAR" and types["seed"] == "BIGINT"
    assert types["started_at"] == "TIMESTAMP WITH TIME ZONE" and types["latency_ms"] == "DOUBLE"


def test_rows_written_before_the_control_column_read_as_the_main_line(results_dir: Path) -> None:
    old, new = cell(0), cell(1)
    for row in (*old.rows, *old.layers):
        row.pop("control", None)  # a table of schema 3: no control column at all
    ResultsStore(results_dir).write(old)
    assert load(results_dir, "cells")["control"].tolist() == ["none"]
    new.rows[0]["control"], new.layers[0]["control"] = "reinit", "reinit"
    ResultsStore(results_dir).write(new)
    con = connect(results_dir)
    assert con.execute("SELECT seed, control FROM cells ORDER BY seed").fetchall() == [(0, "none"), (1, "reinit")]
    layers = con.execute("SELECT control, count(*) FROM layers GROUP BY control ORDER BY control").fetchall()
    assert layers == [("none", 5), ("reinit", 1)]


def test_an_empty_results_folder_has_empty_views_with_their_columns(results_dir: Path) -> None:
    results_dir.mkdir()
    frame = load(results_dir, "layers")
    assert frame.empty and list(frame.columns) == [c.name for c in LAYERS]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(results_dir / "missing")
    with pytest.raises(ValueError, match="allowed: cells, epochs, layers"):
        load(results_dir, "cels")


def test_a_core_column_of_the_wrong_type_is_refused_with_its_name(results_dir: Path) -> None:
    with pytest.raises(SchemaError, match="cells column 'latency_ms' must be double"):
        ResultsStore(results_dir).write(cell(0, latency_ms="slow"))


@pytest.mark.parametrize("compact_between", [False, True])
def test_a_rerun_replaces_the_cell_in_every_view(results_dir: Path, compact_between: bool) -> None:
    store = ResultsStore(results_dir, fresh_limit=1000)
    store.write(cell(0, top1=0.5))
    store.write(cell(1, top1=0.6))
    if compact_between:
        store.compact()
        assert files(results_dir) == ["seg-00000001-00000001.parquet"]
    again = cell(0, top1=0.7)
    again.epochs, again.layers = [], []  # the rerun recorded no curve and no layers
    store.write(again)
    for _ in range(2):  # before and after the rerun is compacted
        cells = load(results_dir).sort_values("seed")
        assert cells["top1"].tolist() == [0.7, 0.6]
        assert set(load(results_dir, "epochs")["cell_id"]) == {cell(1).cell_id}
        assert set(load(results_dir, "layers")["cell_id"]) == {cell(1).cell_id}
        store.compact()


def test_compaction_bounds_the_files_and_keeps_every_row_once(results_dir: Path) -> None:
    store = ResultsStore(results_dir, fresh_limit=4)
    for seed in range(4 * FANOUT + 3):
        store.write(cell(seed, top1=seed / 100))
    # 35 cells: 8 compactions of 4 merged into one segment, the 33rd..35th still fresh files
    fresh = [f"cell-{cell(seed).cell_id}.parquet" for seed in (32, 33, 34)]
    assert files(results_dir) == sorted(["seg-00000001-00000008.parquet", *fresh])
    cells = load(results_dir)
    assert sorted(cells["seed"]) == list(range(35))
    assert cells["top1"].sum() == pytest.approx(sum(range(35)) / 100)
    store.compact()
    assert files(results_dir) == ["seg-00000001-00000008.parquet", "seg-00000009-00000009.parquet"]
    assert len(load(results_dir)) == len(load(results_dir, "epochs")) == 35
    assert len(load(results_dir, "layers")) == 35 * 3


def test_a_merge_that_crashed_before_deleting_its_inputs_neither_duplicates_nor_loses_rows(results_dir: Path) -> None:
    store = ResultsStore(results_dir, fresh_limit=1)
    for seed in range(FANOUT - 1):
        store.write(cell(seed))
    partition = results_dir / "cells" / "benchmark=b"
    kept = {p.name: p.read_bytes() for p in partition.glob("seg-*")}  # the inputs of the next merge
    store.write(cell(FANOUT - 1))  # the 8th segment: merged into seg-1-8, inputs deleted
    for name, data in kept.items():  # as if the merge had crashed before deleting them
        (partition / name).write_bytes(data)
    assert sorted(load(results_dir)["seed"]) == list(range(FANOUT))
    store.write(cell(FANOUT))  # the next compaction clears them away
    assert files(results_dir) == ["seg-00000001-00000008.parquet", "seg-00000009-00000009.parquet"]
    assert sorted(load(results_dir)["seed"]) == list(range(FANOUT + 1))


def test_statuses_say_which_cells_are_done_and_which_failed(results_dir: Path) -> None:
    store = ResultsStore(results_dir, fresh_limit=2)
    ok, failed = cell(0), cell(1, status="failed")
    store.write(ok)
    store.write(failed)
    store.write(cell(2))
    assert store.statuses() == {ok.cell_id: "ok", failed.cell_id: "failed", cell(2).cell_id: "ok"}
    store.write(cell(1))  # retried and passed
    assert store.statuses()[failed.cell_id] == "ok"


def test_benchmarks_are_partitions_a_rerun_in_one_leaves_the_other_alone(results_dir: Path) -> None:
    store = ResultsStore(results_dir)
    store.write(cell(0, top1=0.5, benchmark="first"))
    store.write(cell(0, top1=0.6, benchmark="second/odd name"))
    store.compact()
    store.write(cell(0, top1=0.8, benchmark="first"))
    frame = load(results_dir).set_index("benchmark")["top1"]
    assert frame.to_dict() == {"first": 0.8, "second/odd name": 0.6}
    assert sorted(p.name for p in (results_dir / "cells").iterdir()) == [
        "benchmark=first",
        "benchmark=second%2Fodd%20name",
    ]


def test_a_result_without_a_benchmark_is_refused(results_dir: Path) -> None:
    result = cell(0)
    result.rows = [{k: v for k, v in row.items() if k != "benchmark"} for row in result.rows]
    with pytest.raises(ValueError, match="no 'benchmark'"):
        ResultsStore(results_dir).write(result)


def test_views_keep_reading_while_files_are_compacted_away(results_dir: Path) -> None:
    store = ResultsStore(results_dir, fresh_limit=1000)
    for seed in range(3):
        store.write(cell(seed))
    con = connect(results_dir)  # a snapshot of the fresh files
    store.compact()
    shutil.rmtree(results_dir / "epochs")
    with pytest.raises(Exception, match="No files found|No such file"):
        con.execute("SELECT * FROM cells").df()
    assert len(load(results_dir)) == 3  # load lists the files anew


def test_checkpoints_logs_and_specs_are_kept_beside_the_tables(results_dir: Path) -> None:
    store = ResultsStore(results_dir)
    assert store.load_checkpoint("k") is None
    store.save_checkpoint("k", b"weights")
    assert store.load_checkpoint("k") == b"weights"
    store.save_log("c1", "line 1\n")
    assert store.log_path("c1").read_text() == "line 1\n"
    first = store.save_spec("demo", "name: demo\n")
    assert store.save_spec("demo", "name: demo\n") == first  # the same file is kept once
    second = store.save_spec("demo", "name: demo\nseeds: [0]\n")
    assert store.specs("demo") == sorted([first, second], key=lambda p: p.stat().st_mtime)
    assert store.specs("other") == []


def test_load_returns_pandas_with_timestamps_and_numbers(results_dir: Path) -> None:
    ResultsStore(results_dir).write(cell(0))
    frame = load(results_dir)
    assert isinstance(frame, pd.DataFrame)
    assert str(frame["finished_at"].dtype).startswith("datetime64") and frame["top1"].dtype == float


def test_a_column_that_only_a_later_level_has_is_kept(results_dir: Path) -> None:
    result = cell(0)
    result.rows = [{**result.rows[0], "level": 0}, {**result.rows[0], "level": 1, "sz_bounds": "[0.001]"}]
    ResultsStore(results_dir).write(result)
    frame = load(results_dir, view="cells").sort_values("level")
    assert frame["sz_bounds"].tolist()[1] == "[0.001]" and frame["sz_bounds"].isna().tolist()[0]


def test_a_cell_done_in_one_benchmark_is_still_to_run_in_another(results_dir: Path) -> None:
    store = ResultsStore(results_dir)
    done = cell(0, benchmark="a")
    store.write(done)
    assert store.statuses("a") == {done.cell_id: "ok"}
    assert store.statuses("b") == {}
    assert store.statuses() == {done.cell_id: "ok"}


def test_a_batch_of_new_cells_is_one_segment_per_view_and_merges_like_any_other(results_dir: Path) -> None:
    store = ResultsStore(results_dir, fresh_limit=4)
    store.write_batch([cell(seed, top1=seed / 100) for seed in range(10)])
    assert files(results_dir) == files(results_dir, "epochs") == ["seg-00000001-00000001.parquet"]
    assert files(results_dir, "layers") == ["seg-00000001-00000001.parquet"]  # no fresh file, no compaction
    for batch in range(1, FANOUT):
        store.write_batch([cell(100 * batch + seed) for seed in range(3)])
    assert files(results_dir) == ["seg-00000001-00000008.parquet"]  # 8 batches of equal span merged
    cells = load(results_dir)
    assert len(cells) == cells["cell_id"].nunique() == 10 + 3 * (FANOUT - 1)
    assert cells.set_index("seed").loc[range(10), "top1"].tolist() == [seed / 100 for seed in range(10)]
    assert len(load(results_dir, "layers")) == 3 * len(cells) and len(load(results_dir, "epochs")) == len(cells)


def test_a_batch_replaces_a_running_cells_levels_and_a_rerun_in_a_batch_replaces_the_old_rows(
    results_dir: Path,
) -> None:
    store = ResultsStore(results_dir, fresh_limit=1000)
    running = cell(0, top1=0.1)
    running.rows[0]["status"] = "partial"
    store.write(running)  # a finished level of a cell still running: a fresh file
    assert store.statuses() == {cell(0).cell_id: "partial"}
    store.write_batch([cell(0, top1=0.5), cell(1, top1=0.6)])  # its final rows, with another cell's
    assert files(results_dir) == ["seg-00000001-00000001.parquet"], "the level's fresh file went"
    assert load(results_dir).sort_values("seed")["top1"].tolist() == [0.5, 0.6]
    assert store.statuses() == {cell(0).cell_id: "ok", cell(1).cell_id: "ok"}

    again = cell(1, top1=0.7)
    again.epochs = []  # the rerun recorded no curve
    store.write_batch([again, cell(2, top1=0.8)])  # cell 1 is in a segment already: a fresh file hides it
    assert files(results_dir) == sorted(
        ["seg-00000001-00000001.parquet", "seg-00000002-00000002.parquet", f"cell-{again.cell_id}.parquet"]
    )
    reopened = ResultsStore(results_dir)  # another driver finds the segments' cells by reading them
    reopened.write_batch([cell(0, top1=0.9)])
    for _ in range(2):  # before and after compaction
        cells = load(results_dir).sort_values("seed")
        assert cells["top1"].tolist() == [0.9, 0.7, 0.8] and len(cells) == 3
        assert set(load(results_dir, "epochs")["cell_id"]) == {cell(0).cell_id, cell(2).cell_id}
        store.compact()
