"""`harness query` and `harness.results.query`: any SELECT over the views, nothing that writes, changes
settings or reads a file outside the results folder."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from results_factory import fake_cell, write_benchmark
from typer.testing import CliRunner

from harness.cli import app
from harness.results import ReadOnlyError, query


@pytest.fixture
def results(results_dir: Path) -> Path:
    write_benchmark(results_dir, sparsities=(0.5, 0.75), seeds=(0, 1))
    return results_dir


def test_selects_over_all_three_views_work(results: Path) -> None:
    frame = query(results, "SELECT method, count(*) AS n FROM cells GROUP BY method ORDER BY method")
    assert frame.to_dict("list") == {"method": ["global_magnitude", "layer_magnitude", "random"], "n": [4, 4, 4]}
    joined = query(
        results,
        "WITH final AS (SELECT cell_id, top1 FROM cells) "
        "SELECT count(*) AS n FROM final JOIN layers USING (cell_id) JOIN epochs USING (cell_id)",
    )
    assert joined["n"].tolist() == [12 * 3]
    assert "top1" in query(results, "DESCRIBE cells")["column_name"].tolist()
    assert query(results, "SELECT 1 AS a; SELECT 2 AS b")["b"].tolist() == [2]  # the last statement's result
    inside = next((results / "cells").rglob("*.parquet"))
    assert len(query(results, f"SELECT * FROM read_parquet('{inside}')")) > 0  # files of the results folder


@pytest.mark.parametrize(
    "sql, kind",
    [
        ("COPY (SELECT * FROM cells) TO '{outside}'", "COPY"),
        ("COPY (SELECT * FROM cells) TO '{inside}'", "COPY"),
        ("SELECT 1; COPY (SELECT 1) TO '{outside}'", "COPY"),
        ("ATTACH '{outside}' AS other", "ATTACH"),
        ("INSTALL httpfs", "LOAD"),
        ("SET enable_external_access = true", "SET"),
        ("CREATE TABLE copied AS SELECT * FROM cells", "CREATE"),
        ("DROP VIEW cells", "DROP"),
        ("PRAGMA enable_profiling", "PRAGMA"),
    ],
)
def test_statements_that_could_write_or_change_settings_are_refused(results: Path, sql: str, kind: str) -> None:
    outside, inside = results.parent / "stolen.csv", results / "stolen.csv"
    with pytest.raises(ReadOnlyError, match=f"read-only: statement . is {kind}"):
        query(results, sql.format(outside=outside, inside=inside))
    assert not outside.exists() and not inside.exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('{secret}')",
        "SELECT * FROM read_text('{secret}')",
        "SELECT * FROM glob('{folder}/*')",
        "SELECT * FROM read_parquet('{results}_sibling/x.parquet')",  # a prefix of the folder name is not inside it
    ],
)
def test_selects_reading_files_outside_the_results_folder_are_refused(results: Path, sql: str) -> None:
    secret = results.parent / "secret.csv"
    secret.write_text("password\nhunter2\n")
    (results.parent / f"{results.name}_sibling").mkdir()
    with pytest.raises(ReadOnlyError, match="may read only the views and files under"):
        query(results, sql.format(secret=secret, folder=results.parent, results=results))


def test_the_cli_prints_rows_and_exits_2_with_the_reason_when_refused(results: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["query", "SELECT count(*) AS n FROM cells", "--results", str(results), "--format", "csv"])
    assert ok.exit_code == 0 and ok.stdout == "n\n12\n"
    refused = runner.invoke(app, ["query", f"COPY cells TO '{results.parent}/x.csv'", "--results", str(results)])
    assert refused.exit_code == 2
    assert "read-only: statement 1 is COPY" in refused.stderr and "--format csv" in refused.stderr
    broken = runner.invoke(app, ["query", "SELEC 1", "--results", str(results)])
    assert broken.exit_code == 2 and "query failed" in broken.stderr


def test_finished_views_count_each_cells_latest_write_once_and_only_when_every_row_is_ok(results_dir: Path) -> None:
    """A hand-built segment holding two writes of some cells (as a folder merged by hand or an older
    table may): what the leaderboard, the report's points and the claims read is each cell's newest
    write, and only a cell whose newest write is ok throughout."""
    import pyarrow.parquet as pq

    from harness.leaderboard import cells_pooled, leaderboard
    from harness.report.data import Source, load_report_data
    from harness.results import connect
    from harness.schema import to_arrow

    first, second = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)

    def rows(seed: int, finished: datetime, *levels: tuple[str, float | None]) -> list[dict]:
        [row] = fake_cell("b", "digits", "lenet_300_100", "global_magnitude", 0.5, seed).rows
        return [
            {**row, "level": level, "status": status, "top1": top1, "finished_at": finished}
            for level, (status, top1) in enumerate(levels)
        ]

    table = [
        *rows(0, first, ("ok", 0.5), ("failed", None)),  # rerun later: its newest write is what counts
        *rows(0, second, ("ok", 0.6), ("ok", 0.7)),
        *rows(1, first, ("ok", 0.9), ("ok", 0.4)),  # written once
        *rows(2, first, ("ok", 0.8)),  # rerun with --force, and failed this time: not finished
        *rows(2, second, ("failed", None)),
        *rows(3, first, ("partial", 0.3)),  # cut off after its first level
    ]
    folder = results_dir / "cells" / "benchmark=b"
    folder.mkdir(parents=True)
    pq.write_table(to_arrow("cells", table), folder / "seg-00000001-00000001.parquet")
    ids = {seed: fake_cell("b", "digits", "lenet_300_100", "global_magnitude", 0.5, seed).cell_id for seed in range(4)}

    con = connect(results_dir)
    finished = con.execute("SELECT cell_id, level, top1 FROM finished_levels ORDER BY ALL").fetchall()
    assert sorted(finished) == sorted([(ids[0], 0, 0.6), (ids[0], 1, 0.7), (ids[1], 0, 0.9), (ids[1], 1, 0.4)])
    final = con.execute("SELECT cell_id, level, top1 FROM final_cells").fetchall()
    assert sorted(final) == sorted([(ids[0], 1, 0.7), (ids[1], 1, 0.4)])

    board = leaderboard(con, "b")
    assert board[["seeds", "top1_mean"]].values.tolist() == [[2, pytest.approx((0.7 + 0.4) / 2)]]
    assert cells_pooled(con, "b") == {ids[0], ids[1]}
    points = load_report_data([Source("here", results_dir)]).points.sort_values("level")
    assert points["top1_mean"].tolist() == pytest.approx([(0.6 + 0.9) / 2, (0.7 + 0.4) / 2])
    assert points["seeds"].tolist() == [2, 2]
    assert query(results_dir, "SELECT count(*) AS n FROM final_cells")["n"].tolist() == [2]  # harness query sees them
