"""Reference numbers: the leaderboard of a results folder as a table, read back from its CSV, a user's
numbers beside the reference with the inside-spread flag, `harness reference`, and the report's column."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from results_factory import fake_cell
from typer.testing import CliRunner

from harness.claims.numbers import NUMBERS, NumbersError, beside_reference, numbers_table, read_numbers
from harness.cli import app
from harness.report.data import load_report_data, sources_from
from harness.report.pages import Options, build_pages
from harness.schema import CellResult
from harness.store import ResultsStore

REPO = Path(__file__).resolve().parent.parent
PAIR = ("digits", "lenet_300_100")
# by hand: mean (0.90 + 0.92 + 0.97) / 3 = 0.93; sample std sqrt((0.03² + 0.01² + 0.04²) / 2) = sqrt(0.0013)
GLOBAL_TOP1 = {0: 0.90, 1: 0.92, 2: 0.97}
GLOBAL_STD = math.sqrt(0.0013)


@pytest.fixture
def results(results_dir: Path) -> Path:
    store = ResultsStore(results_dir)
    for seed, top1 in GLOBAL_TOP1.items():
        store.write(fake_cell("demo", *PAIR, "global_magnitude", 0.5, seed, top1=top1))
    store.write(fake_cell("demo", *PAIR, "global_magnitude", 0.5, 3, status="failed"))  # not a result
    store.write(fake_cell("demo", *PAIR, "random", 0.5, 0, top1=0.70))
    store.write(fake_cell("demo", *PAIR, "random", 0.75, 0, top1=0.60, method_params={"scale": 2}))
    store.write(fake_cell("other", *PAIR, "random", 0.5, 7, top1=0.50))
    return results_dir


def entry(frame: pd.DataFrame, benchmark: str, method: str, sparsity: float) -> pd.Series:
    rows = frame[(frame["benchmark"] == benchmark) & (frame["method"] == method) & (frame["sparsity"] == sparsity)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def reference_csv(path: Path, rows: list[dict]) -> Path:
    """A numbers CSV as write_reference.py writes it: provenance comment lines, then the table."""
    base = {"benchmark": "demo", "dataset": PAIR[0], "model": PAIR[1], "method_params": "{}", "control": "none"}
    text = pd.DataFrame([{**base, **row} for row in rows]).to_csv(index=False)
    path.write_text("# harness leaderboard numbers on rq\n# harness 0.1.0, torch 2.13.0, commit abc\n" + text)
    return path


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    return reference_csv(
        tmp_path / "numbers.csv",
        [
            # 0.93 − 0.95 = −0.02: exactly 2 std, inside (≤)
            {"method": "global_magnitude", "sparsity": 0.5, "seeds": 3, "top1_mean": 0.95, "top1_std": 0.01},
            # 0.70 − 0.80 = −0.10: 5 std, outside
            {"method": "random", "sparsity": 0.5, "seeds": 3, "top1_mean": 0.80, "top1_std": 0.02},
            # one seed: its std of 0 says nothing about the spread
            {"method": "random", "sparsity": 0.75, "seeds": 1, "top1_mean": 0.60, "top1_std": 0.0,
             "method_params": '{"scale": 2}'},
            {"method": "global_magnitude", "sparsity": 0.9, "seeds": 3, "top1_mean": 0.5, "top1_std": 0.1},
        ],
    )  # fmt: skip


def test_numbers_are_the_leaderboard_mean_and_std_over_seeds_per_benchmark(results: Path) -> None:
    frame = numbers_table(results)
    assert len(frame) == 4 and list(frame.columns[:6]) == ["benchmark", "dataset", "model", "method",
                                                          "method_params", "control"]  # fmt: skip
    glob = entry(frame, "demo", "global_magnitude", 0.5)
    assert glob["seeds"] == 3  # the failed fourth seed is not averaged
    assert glob["top1_mean"] == pytest.approx(0.93)
    assert glob["top1_std"] == pytest.approx(GLOBAL_STD)
    assert glob["compression_ratio"] == pytest.approx(2.0) and glob["theoretical_speedup"] == pytest.approx(2.0)
    single = entry(frame, "demo", "random", 0.5)
    assert (single["seeds"], single["top1_mean"], single["top1_std"]) == (1, pytest.approx(0.70), 0.0)
    assert entry(frame, "demo", "random", 0.75)["method_params"] == '{"scale": 2}'
    assert entry(frame, "other", "random", 0.5)["top1_mean"] == pytest.approx(0.50)


def test_an_empty_results_folder_has_the_same_columns_and_no_rows(
    results: Path, reference: Path, tmp_path: Path
) -> None:
    ResultsStore(tmp_path / "empty").write(fake_cell("demo", *PAIR, "random", 0.5, 0, status="failed"))
    empty = numbers_table(tmp_path / "empty")
    assert empty.empty and list(empty.columns) == list(numbers_table(results).columns)
    beside = beside_reference(empty, read_numbers(reference))
    assert beside.empty and list(beside.columns) == list(
        beside_reference(numbers_table(results), read_numbers(reference)).columns
    )


def test_beside_reference_flags_inside_outside_and_unknown(results: Path, reference: Path) -> None:
    frame = beside_reference(numbers_table(results), read_numbers(reference))
    glob = entry(frame, "demo", "global_magnitude", 0.5)
    assert glob["reference_top1_mean"] == 0.95 and glob["reference_top1_std"] == 0.01
    assert glob["top1_diff"] == pytest.approx(-0.02) and bool(glob["inside_spread"]) is True
    outside = entry(frame, "demo", "random", 0.5)
    assert outside["top1_diff"] == pytest.approx(-0.10) and bool(outside["inside_spread"]) is False
    one_seed = entry(frame, "demo", "random", 0.75)  # matched (same params), but no spread to hold it against
    assert one_seed["reference_top1_mean"] == 0.60 and pd.isna(one_seed["inside_spread"])
    other = entry(frame, "other", "random", 0.5)  # the reference has no row of benchmark "other"
    assert pd.isna(other["reference_top1_mean"]) and pd.isna(other["inside_spread"])
    assert len(frame) == 4  # the user's rows, none added for the reference's sparsity 0.9


def test_parameters_are_part_of_the_match(results: Path, tmp_path: Path) -> None:
    ref = reference_csv(tmp_path / "ref.csv", [{"method": "random", "sparsity": 0.75, "seeds": 3,
                                               "top1_mean": 0.6, "top1_std": 0.1}])  # fmt: skip
    frame = beside_reference(numbers_table(results), read_numbers(ref))
    assert frame["reference_top1_mean"].isna().all()  # its row is random() and the user's random(scale=2)


def test_a_control_arm_matches_only_its_own_reference_row(results_dir: Path, tmp_path: Path) -> None:
    params = {"controls": ["reinit"]}
    base = fake_cell("demo", *PAIR, "imp", 0.9, 0, method_params=params)
    ticket, reinit = {**base.rows[0], "top1": 0.80}, {**base.rows[0], "top1": 0.50, "control": "reinit"}
    ResultsStore(results_dir).write(CellResult(base.cell_id, [reinit, ticket], base.epochs, base.layers))
    arms = (("none", 0.81), ("reinit", 0.45))
    rows = [{"method": "imp", "method_params": '{"controls": ["reinit"]}', "control": arm, "sparsity": 0.9,
             "seeds": 3, "top1_mean": mean, "top1_std": 0.01} for arm, mean in arms]  # fmt: skip
    frame = beside_reference(numbers_table(results_dir), read_numbers(reference_csv(tmp_path / "ref.csv", rows)))
    by_arm = frame.set_index("control")["top1_diff"]
    assert by_arm["none"] == pytest.approx(-0.01) and by_arm["reinit"] == pytest.approx(0.05)


def test_write_reference_writes_numbers_that_read_back_with_their_provenance(results: Path, tmp_path: Path) -> None:
    claims, numbers = tmp_path / "claims.csv", tmp_path / "numbers.csv"
    script = REPO / "benchmarks" / "papers" / "reference" / "write_reference.py"
    subprocess.run(
        [sys.executable, str(script), str(results), "--out", str(claims), "--numbers-out", str(numbers),
         "--note", "a test run"],
        check=True, capture_output=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    header = [line for line in numbers.read_text().splitlines() if line.startswith("#")]
    assert header[0].startswith("# harness leaderboard numbers on results")
    assert "# harness 0.1.0, torch 2.13.0, commit 0123456789abcdef0123456789abcdef01234567" in header
    assert header[-1] == "# a test run" and claims.read_text().splitlines()[1:][:1] == header[1:2]
    read, made = read_numbers(numbers), numbers_table(results)
    pd.testing.assert_frame_equal(read[made.columns], made, check_dtype=False)
    assert beside_reference(made, read)["inside_spread"].tolist()[:1] == [True]


def test_cli_prints_your_numbers_beside_the_reference(results: Path, reference: Path) -> None:
    shown = CliRunner().invoke(app, ["reference", "--results", str(results), "--numbers", str(reference)])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    glob = next(line for line in lines if "global_magnitude" in line)
    assert glob.split()[-6:] == ["95.00", "±", "1.00", "3", "-2.00", "yes"], glob
    assert next(line for line in lines if " random " in line and "0.5 " in line and "demo" in line).endswith("no")
    assert lines[-1] == f"3 of 4 entries have a reference row in {reference}"
    csv = CliRunner().invoke(app, ["reference", "--results", str(results), "--numbers", str(reference),
                                   "--format", "csv"])  # fmt: skip
    assert csv.exit_code == 0, csv.output
    printed = pd.read_csv(io.StringIO(csv.stdout), dtype={"method_params": str})
    assert list(printed.columns[-5:]) == ["reference_top1_mean", "reference_top1_std", "reference_seeds",
                                          "top1_diff", "inside_spread"]  # fmt: skip
    glob = entry(printed, "demo", "global_magnitude", 0.5)
    assert (glob["top1_mean"], glob["reference_top1_mean"], glob["top1_diff"]) == pytest.approx((0.93, 0.95, -0.02))
    inside = printed["inside_spread"].map(lambda v: None if pd.isna(v) else bool(v))
    assert inside.tolist() == [True, False, None, None]  # demo's three entries by sparsity, then other's


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "is not a file"),
        ("benchmark,method\ndemo,random\n", "lacks the columns dataset, model, method_params, control"),
        ("benchmark,dataset,model,method,method_params,control,sparsity,seeds,top1_mean,top1_std\n"
         "demo,digits,lenet_300_100,random,{},none,0.5,3,high,0.01\n", "row 1, column top1_mean: 'high' is not"),
        ("benchmark,dataset\ndemo,digits,extra,fields\n", "row 1 has 4 fields, the header 2"),
        ("# only comments\n", "it has no header line"),
        ("benchmark,dataset,model,method,method_params,control,sparsity,seeds,top1_mean,top1_std\n"
         + "demo,digits,lenet_300_100,random,{},none,0.5,3,0.9,0.01\n" * 2, "row 2: a second row for the same"),
    ],
    ids=["missing", "columns", "number", "fields", "empty", "twice"],
)  # fmt: skip
def test_a_missing_or_ill_formed_numbers_csv_exits_2_naming_it(
    results: Path, tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / "bad.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(NumbersError, match="bad.csv"):
        read_numbers(path)
    shown = CliRunner().invoke(app, ["reference", "--results", str(results), "--numbers", str(path)])
    assert shown.exit_code == 2 and message in shown.output and str(path) in shown.output, shown.output


def test_the_leaderboard_page_shows_the_reference_top1_where_a_row_matches(results: Path, reference: Path) -> None:
    index = build_pages(load_report_data(sources_from([results]), reference), Options(), {})[0]
    pair = next(s for s in index.sections if s.title == "digits / lenet_300_100")
    ranking, beside = pair.tables
    assert "reference top-1 %" not in ranking.headers
    assert beside.headers[:4] == ["method", "sparsity", "seeds", "top-1 %"]
    rows = {(row[0][0].text, row[1][0].text): [c[0].text for c in row[3:]] for row in beside.rows}
    assert rows == {
        ("global_magnitude", "0.5"): ["93.00 ± 3.61", "95.00 ± 1.00", "3", "-2.00", "yes"],
        ("random", "0.5"): ["70.00 ± 0.00", "80.00 ± 2.00", "3", "-10.00", "no"],
        ("random(scale=2)", "0.75"): ["60.00 ± 0.00", "60.00 ± 0.00", "1", "+0.00", "—"],
    }  # the "other" benchmark's entry has no reference row: not listed
    without = build_pages(load_report_data(sources_from([results]), None), Options(), {})[0]
    assert len(next(s for s in without.sections if s.title == "digits / lenet_300_100").tables) == 1


def test_the_shipped_numbers_read_and_say_what_produced_them() -> None:
    if not NUMBERS.is_file():
        pytest.skip("benchmarks/papers/reference/numbers.csv is not shipped yet")
    shipped = read_numbers(NUMBERS)
    header = [line for line in NUMBERS.read_text().splitlines() if line.startswith("#")]
    assert any("torch" in line and "commit" in line for line in header)
    quick = {"cpu_shrinkbench", "cpu_lottery_mnist1d", "cpu_supermask", "cpu_quantization", "cpu_compression"}
    assert quick <= set(shipped["benchmark"]) and (shipped["seeds"] >= 3).all()
