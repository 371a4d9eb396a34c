"""`harness report` on results written through the store: what the pages say, that every value from
the results is escaped in every format, that nothing is fetched from elsewhere, and that every point
leads back to the cells, MLflow runs and benchmark file behind it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from results_factory import DENSE_TOP1, fake_cell, top1_of, write_benchmark
from typer.testing import CliRunner

from harness.cli import app
from harness.report import ReportError, build_report
from harness.report.checklist import checklist
from harness.report.data import load_report_data, sources_from
from harness.report.pages import Options, Page, Table, build_pages

EVIL = "<script>alert(1)</script>"
MARKUP = "a|b*c_d$e#f&g[h](i)"  # breaks Markdown tables, emphasis, links and LaTeX if left raw


def pages_of(*folders: Path, labels: list[str] | None = None) -> list[Page]:
    return build_pages(load_report_data(sources_from(list(folders), labels)), Options(), {})


def table_titled(page: Page, section: str) -> Table:
    return next(s for s in page.sections if s.title.startswith(section)).tables[0]


def column(table: Table, header: str) -> list[str]:
    i = table.headers.index(header)
    return [", ".join(c.text for c in row[i]) for row in table.rows]


@pytest.fixture
def results(results_dir: Path) -> Path:
    store = write_benchmark(results_dir)
    for method in (EVIL, MARKUP):
        store.write(fake_cell("demo", "digits", "lenet_300_100", method, 0.5, 0))
    return results_dir


def test_the_site_and_markdown_have_an_index_and_a_page_per_pair(results_dir: Path, tmp_path: Path) -> None:
    store = write_benchmark(results_dir, pairs=(("digits", "lenet_300_100"), ("mnist1d", "mnist1d_mlp")))
    out = tmp_path / "site"
    written = build_report([results_dir], out)
    names = sorted(p.name for p in written)
    assert names[:4] == [
        "claims.html",
        "claims.md",
        "digits--lenet_300_100-13e8be.html",
        "digits--lenet_300_100-13e8be.md",
    ]
    assert {"index.html", "index.md"} <= set(names) and len(names) == 8
    claims = (out / "claims.md").read_text()  # the factory's random loses 3x more than magnitude at every seed
    line = next(row for row in claims.splitlines() if row.startswith("| shrinkbench.random\\_worst |"))
    assert line.split(" | ")[2] == "holds", line
    assert 'href="claims.html"' in (out / "index.html").read_text()
    index = (out / "index.html").read_text()
    assert index.count("<figure><svg") == 2  # the top-1 vs compression curve of each pair, inline
    assert '<meta name="viewport"' in index
    markdown = (out / "index.md").read_text()
    for image in re.findall(r"!\[[^]]*\]\((plots/[^)]+)\)", markdown):
        assert (out / image).read_text().startswith("<?xml")
    spec = store.specs("demo")[0]
    assert f'href="specs/{(out / "specs").iterdir().__next__().name}/{spec.name}"' in index
    assert (out / "specs").rglob(spec.name).__next__().read_text() == "name: demo\n"


def test_every_value_from_the_results_is_escaped_in_every_format(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    build_report([results], out, formats=("html", "markdown", "latex"))
    for page in out.glob("*.html"):
        html = page.read_text()
        assert "<script" not in html.lower()  # no element, not even inside the SVG plots
        if page.name != "claims.html":  # the claims page names only the methods the claims read
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    pair = next(out.glob("digits--*.md")).read_text()
    assert EVIL not in pair and r"\<script\>alert(1)\<script\>" not in pair
    assert r"\<script\>alert(1)\</script\>" in pair
    assert r"a\|b\*c\_d\$e\#f\&g\[h\](i)" in pair
    latex = (out / "leaderboard.tex").read_text()
    assert r"\textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{}" in latex
    assert r"a|b*c\_d\$e\#f\&g[h](i)" in latex


def test_markdown_table_rows_keep_their_columns_when_values_hold_pipes(results: Path) -> None:
    from harness.report.render import markdown

    for page in pages_of(results):
        tables, rows = [], []
        for line in [*markdown(page).splitlines(), ""]:
            if line.startswith("|"):
                rows.append(line)
            elif rows:
                tables.append(rows)
                rows = []
        assert tables
        for table in tables:
            assert len({len(re.split(r"(?<!\\)\|", row)) for row in table}) == 1, table


def test_the_site_fetches_nothing_and_links_out_only_to_mlflow(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    build_report([results], out, options=Options(mlflow_url="http://mlflow.example:5000"))
    for page in out.glob("*.html"):
        html = page.read_text()
        assert "default-src 'none'" in html  # the browser would refuse any script or remote asset
        assert not re.findall(r"\bsrc=", html)
        external = re.findall(r'href="(https?://[^"]*)"', html)
        assert all(url.startswith("http://mlflow.example:5000/#/runs/") for url in external)
    pair = next(out.glob("digits--*.html")).read_text()
    assert 'href="http://mlflow.example:5000/#/runs/0123456789abcdef0123456789abcdef"' in pair


def test_every_point_leads_to_its_cells_their_run_the_benchmark_file_and_versions(results: Path) -> None:
    pair = pages_of(results)[1]
    points = table_titled(pair, "Operating points")
    cells = table_titled(pair, "Cells")
    point = points.rows[points.anchors.index("pt0")]
    cell_links = point[-1]
    assert len(cell_links) == 1 or len(cell_links) == 3
    for link in cell_links:  # each cell id of a point jumps to that cell's row
        row = cells.rows[cells.anchors.index(link.anchor)]
        run, versions = row[cells.headers.index("MLflow run")][0], row[cells.headers.index("versions")][0]
        assert run.url.endswith("/#/runs/0123456789abcdef0123456789abcdef")
        assert versions.text == "harness 0.1.0, torch 2.13.0, git 0123456789"
    # every marker on the curves links to its point
    svg = next(f.svg for s in pair.sections for f in s.figures)
    assert f'{pair.slug}.html#pt0"' in svg
    assert set(points.anchors) == {f"pt{i}" for i in range(len(points.rows))}


def test_ranking_curves_front_and_dense_baseline_on_a_pair_page(results: Path) -> None:
    pair = pages_of(results)[1]
    assert pair.title == "digits / lenet_300_100"
    ranking = table_titled(pair, "Ranking")
    assert ranking.headers == ["#", "method", "2×", "4×", "8×", "16×", "32×", "mean 2×–32×"]
    assert column(ranking, "method")[:3] == ["global_magnitude", "layer_magnitude", "random"]
    two = (
        top1_of("global_magnitude", 0.5, 0) + top1_of("global_magnitude", 0.5, 1) + top1_of("global_magnitude", 0.5, 2)
    ) / 3
    assert column(ranking, "2×")[0] == f"{100 * two:.2f}"  # measured at exactly 2x: no interpolation
    assert ranking.rows[0][2][0].bold  # the best at 2x is marked
    front = table_titled(pair, "Pareto front")
    assert column(front, "method") == ["global_magnitude"] * 5  # it leads at every compression
    dense = table_titled(pair, "Dense baseline")
    assert column(dense, "top-1 %") == [f"{100 * (DENSE_TOP1 + 0.002):.2f} ± 0.20"]  # seeds add 0, 0.002, 0.004
    assert column(dense, "parameters") == ["1.11k"] and column(dense, "size (float32)") == ["4.34 KiB"]
    figures = [f.name.removeprefix(f"{pair.slug}-") for s in pair.sections for f in s.figures]
    assert figures == ["top1-compression", "top1-speedup"]  # 10 classes: no top-5; no size columns


def test_per_layer_sparsity_heatmap_at_the_chosen_compression(results: Path) -> None:
    heatmap = table_titled(pages_of(results)[1], "Per-layer sparsity near 8×")
    assert heatmap.headers[:5] == [
        "layer",
        "parameters",
        "global_magnitude at 8×",
        "layer_magnitude at 8×",
        "random at 8×",
    ]
    assert column(heatmap, "layer") == ["fc1", "fc2", "fc3"]
    # global magnitude prunes the big layer hardest (fake_cell's skew 1, 0.8, 0.5 of sparsity 0.875)
    assert column(heatmap, "global_magnitude at 8×") == ["88%", "70%", "40%"]
    assert column(heatmap, "layer_magnitude at 8×") == ["88%", "88%", "90%"]  # 10 weights: 1 of them kept
    assert heatmap.rows[0][2][0].shade.startswith("#")


def test_top5_and_size_curves_where_the_data_calls_for_them(results_dir: Path) -> None:
    from harness.store import ResultsStore

    store = ResultsStore(results_dir)
    for sparsity in (0.5, 0.75):
        for method, bits in (("global_magnitude", 32), ("kmeans", 4)):
            size = 1110 * bits / 8 * (1 - sparsity)
            store.write(
                fake_cell(
                    "q",
                    "cifar100",
                    "resnet20",
                    method,
                    sparsity,
                    0,
                    size_bytes=size,
                    bits_per_weight=bits * (1 - sparsity),
                )
            )
    page = pages_of(results_dir)[1]
    figures = [f.name.removeprefix(f"{page.slug}-") for s in page.sections for f in s.figures]
    assert figures == ["top1-compression", "top1-speedup", "top5-compression", "top5-speedup", "top1-size", "top1-bits"]
    points = table_titled(page, "Operating points")
    assert {"top-5 %", "size", "bits/weight"} <= set(points.headers)
    # global_magnitude then kmeans, each at 50% and 75% sparsity: bits x kept fraction
    assert column(points, "bits/weight") == ["16", "8", "2", "1"]


def test_the_checklist_says_what_is_missing(results_dir: Path) -> None:
    write_benchmark(results_dir, methods=("global_magnitude", "snip"), sparsities=(0.5, 0.75, 0.9), seeds=(0, 1))
    data = load_report_data(sources_from([results_dir]))
    checks = {c.item: c for c in checklist(data.cells, data.points)}
    assert checks["at least 3 data set × model pairs"].passed is False
    assert checks["at least 3 data set × model pairs"].detail == "1: digits/lenet_300_100"
    few = checks["at least 5 operating points per method"]
    assert (
        few.passed is False
        and few.detail == "too few: digits/lenet_300_100 global_magnitude (3), digits/lenet_300_100 snip (3)"
    )
    assert checks["mean ± std over at least 3 seeds"].passed is False
    assert checks["mean ± std over at least 3 seeds"].detail == "seeds per operating point: 2 to 2"
    span = checks["operating points span compression 2×–32×"]
    assert span.passed is False and span.detail == "short of it: digits/lenet_300_100 (2×–10×)"
    assert checks["both compression ratio and theoretical speedup"].passed is True
    assert checks["the dense baseline's absolute accuracy, size and FLOPs"].passed is True
    assert checks["top-5 on data sets with ≥ 100 classes"].passed is None
    baselines = checks["magnitude and random pruning as baselines"]
    assert baselines.passed is False and baselines.detail == "digits/lenet_300_100 lacks random"


def test_a_complete_benchmark_passes_the_checklist(results_dir: Path) -> None:
    pairs = (("digits", "lenet_300_100"), ("mnist1d", "mnist1d_mlp"), ("cifar100", "resnet20"))
    write_benchmark(results_dir, pairs=pairs)
    data = load_report_data(sources_from([results_dir]))
    assert [c.passed for c in checklist(data.cells, data.points)] == [True] * 9


def test_several_results_folders_side_by_side(results_dir: Path, tmp_path: Path) -> None:
    write_benchmark(results_dir)
    new = tmp_path / "new" / "results"
    write_benchmark(new, methods=("my_method",))
    pages = pages_of(results_dir, new, labels=["published", "mine"])
    ranking = table_titled(pages[1], "Ranking")
    assert sorted(column(ranking, "method")) == [
        "global_magnitude [published]",
        "layer_magnitude [published]",
        "my_method [mine]",
        "random [published]",
    ]
    sources = table_titled(pages[0], "Results")
    assert column(sources, "source") == ["published", "mine"]
    # folders with the same name are told apart by their parent
    assert [s.label for s in sources_from([results_dir, new])] == [f"{results_dir.parent.name}/results", "new/results"]
    with pytest.raises(ValueError, match="one --label per --results"):
        sources_from([results_dir, new], ["only one"])


def test_the_cli_writes_the_report_and_explains_what_is_wrong(results: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["report", "--results", str(results), "--out", str(tmp_path / "s"), "--format", "latex"])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["leaderboard.tex"]
    missing = runner.invoke(app, ["report", "--results", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no results in"):
        build_report([tmp_path / "empty"], tmp_path / "out")
