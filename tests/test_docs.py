"""The manual is a reference a reader can trust: generated pages in step with the code, every registered
name and spec field described, links that resolve, tables that render as tables, a README that is a front page."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.docs import REFERENCE, field_rows, main, registry_table, render

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", REPO / "ARCHITECTURE.md", *(REPO / "docs").rglob("*.md")])


def test_the_checked_in_reference_is_what_make_docs_writes() -> None:
    # a fresh process: registries hold the built-ins only, as under `make docs`
    check = subprocess.run([sys.executable, "-m", "harness.docs", "--check"], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, f"{check.stdout}{check.stderr}: run `make docs` and commit docs/reference/"


def test_check_finds_stale_pages_and_writing_them_makes_them_current(tmp_path: Path) -> None:
    (tmp_path / REFERENCE).mkdir(parents=True)
    (tmp_path / REFERENCE / "models.md").write_text("| model | summary |\n| --- | --- |\n| lenet5 | old |\n")
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert (tmp_path / REFERENCE / "models.md").read_text().endswith("| lenet5 | old |\n"), "--check writes nothing"
    assert main(["--root", str(tmp_path)]) == 0
    assert {p: (tmp_path / p).read_text() for p in render()} == render()
    assert main(["--root", str(tmp_path), "--check"]) == 0


@pytest.mark.parametrize("registry", ["methods", "models", "datasets"])
def test_harness_list_markdown_prints_the_reference_table(registry: str) -> None:
    listed = CliRunner().invoke(app, ["list", registry, "--markdown"])
    assert listed.exit_code == 0, listed.output
    page = (REPO / REFERENCE / f"{registry}.md").read_text()
    builtin = [line for line in listed.stdout.splitlines() if line.endswith("| builtin |")]
    assert len(builtin) >= 6 and all(f"{line}\n" in page for line in builtin)


@pytest.mark.parametrize(("registry", "column"), [("methods", 2), ("models", 1), ("datasets", 3)])
def test_every_registered_name_has_a_summary(registry: str, column: int) -> None:
    columns, rows = registry_table(registry)
    assert columns[column] == "summary"
    assert [row[0] for row in rows if not row[column].strip()] == []


def test_every_spec_field_says_what_it_means() -> None:
    from harness.spec import BenchmarkSpec, MethodSpec, Recipe, Resources

    for model in (BenchmarkSpec, MethodSpec, Recipe, Resources):
        assert [row[0] for row in field_rows(model) if not row[-1]] == [], f"{model.__name__}: add a field docstring"


def test_the_readme_is_a_front_page_that_starts_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first_block = re.search(r"```\w*\n(.*?)```", text, re.S).group(1)
    assert first_block.startswith("make run") and "\nmake test" in first_block
    manual = {p.name for p in (REPO / "docs").glob("*.md")}
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", text))
    assert manual <= linked, f"pages of docs/ the README does not link: {sorted(manual - linked)}"


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and anchor not in anchors(linked)):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []


def test_a_table_ends_at_a_blank_line_so_no_paragraph_renders_as_a_row() -> None:
    glued = []
    for page in PAGES:
        in_code = False
        lines = page.read_text().splitlines()
        for number, (line, following) in enumerate(zip(lines, [*lines[1:], ""], strict=True), start=1):
            in_code ^= line.lstrip().startswith("```")
            if not in_code and line.startswith("|") and following.strip() and not following.startswith("|"):
                glued.append(f"{page.relative_to(REPO)}:{number + 1}: {following[:60]}")
    assert glued == []


def test_every_benchmark_file_the_docs_show_loads(tmp_path: Path) -> None:
    from harness.spec import expand, load_spec

    blocks = [
        (page, block)
        for page in PAGES
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)
        if re.search(r"^models:", block, re.M)
    ]
    assert len(blocks) >= 2
    for index, (page, block) in enumerate(blocks):
        path = tmp_path / f"example_{index}.yaml"
        path.write_text(block)
        assert expand(load_spec(path)), f"{page.relative_to(REPO)}: the example has no cells"


def test_every_registered_method_says_what_it_implements_and_leaves_out() -> None:
    from harness.methods import METHODS

    text = (REPO / "docs" / "methods.md").read_text()
    section = text.split("## What each method implements, and what it leaves out", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    described = {}
    for row in rows:
        first, implements, leaves_out = [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:4]]
        for name in re.findall(r"`([a-z0-9_]+)`", first):
            described[name] = (implements, leaves_out)
    builtin = {name for name in METHODS.names() if METHODS.source_of(name) == "builtin"}
    assert sorted(builtin - set(described)) == [], "add a row to docs/methods.md for these methods"
    assert sorted(set(described) - builtin) == [], "these rows name no registered method"
    assert [name for name, cells in described.items() if not all(cells)] == []
