"""One way through the code: no import circle in the package, and the read path stays light.

The graph is built from the source with ``ast``: every ``import`` of a ``harness`` module counts,
at module level, under ``if TYPE_CHECKING:`` (a type is a dependency too) and inside functions (a
lazy import defers a circle, it does not remove it). The few late-bound edges the design needs are
listed in :data:`LATE_BOUND` with their reason, and an entry that no longer exists fails the test,
so the list cannot outlive its reason.
"""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from results_factory import fake_cell

PACKAGE = REPO / "harness"
HEAVY = ("torch", "lightning", "ray", "mlflow")

# (importer, imported): why the edge must point back up the graph.
LATE_BOUND = {
    ("harness.methods.base", "harness.methods"): (
        "a compression method prunes first with a method looked up by name in METHODS, the registry whose "
        "entries are checked against these base classes"
    ),
}


def module_names() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """``{module: harness modules it imports}``; ``from pkg import sub`` counts as importing ``pkg.sub``."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    imported.add(submodule if submodule in modules else node.module)
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    stale = [edge for edge in LATE_BOUND if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"late-bound edges that no longer exist; remove them from LATE_BOUND: {stale}"
    for importer, imported in LATE_BOUND:
        graph[importer].discard(imported)
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")
    assert order.index("harness.config") < order.index("harness.spec") < order.index("harness.cli")


def test_the_plain_types_sit_at_the_bottom() -> None:
    """What the store, the readers and the tracking process name imports nothing above it."""
    graph = import_graph()
    bottom = {"harness.config", "harness.validation", "harness.registry", "harness.schema", "harness.tuning.space"}
    for module in bottom:
        assert graph[module] <= bottom, f"{module} imports {graph[module] - bottom}"


def test_a_registry_is_defined_below_the_modules_that_register_into_it() -> None:
    graph = import_graph()

    def below(module: str) -> set[str]:
        seen, pending = set(), [module]
        while pending:
            for target in graph[pending.pop()] - seen:
                seen.add(target)
                pending.append(target)
        return seen

    assert "harness.registry" in below("harness.methods") & below("harness.models") & below("harness.data")
    for registering in ("harness.methods.score", "harness.models.lenet", "harness.data.digits"):
        assert registering.rpartition(".")[0] in below(registering)


def heavy_modules_after(code: str) -> tuple[list[str], subprocess.CompletedProcess]:
    """Run ``code`` in a fresh interpreter; the heavy packages it left loaded and the process."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done


@pytest.mark.parametrize(
    "module", ["harness.results", "harness.store", "harness.config", "harness.tracking", "harness.claims"]
)
def test_the_read_path_imports_no_torch_lightning_ray_or_mlflow(module: str) -> None:
    loaded, _ = heavy_modules_after(f"import {module}")
    assert loaded == []


def test_harness_query_loads_no_torch_lightning_ray_or_mlflow(tmp_path: Path) -> None:
    from harness.store import ResultsStore

    store = ResultsStore(tmp_path / "results")
    for seed in (0, 1):
        store.write(fake_cell("b", "digits", "lenet_300_100", "global_magnitude", 0.5, seed))
    code = (
        "import sys\nfrom harness.cli import app\n"
        f"sys.argv = ['harness', 'query', 'SELECT count(*) AS n FROM cells', '--results', {str(store.root)!r}, "
        "'--format', 'csv']\n"
        "try:\n    app()\nexcept SystemExit as exit:\n    assert exit.code in (0, None), exit.code"
    )
    loaded, done = heavy_modules_after(code)
    assert done.stdout.splitlines()[:2] == ["n", "2"]
    assert loaded == []


def test_harness_report_loads_no_torch_lightning_ray_or_mlflow(tmp_path: Path) -> None:
    """The report asks the data registry how many classes a data set has (top-5 columns from 100 on): the
    answer must come without torch, for ImageNet's image-file reader too."""
    from harness.store import ResultsStore

    store = ResultsStore(tmp_path / "results")
    for dataset, model in (("digits", "lenet_300_100"), ("imagenet", "resnet50")):
        for seed in (0, 1):
            store.write(fake_cell("b", dataset, model, "global_magnitude", 0.5, seed, top5=0.9))
    site = tmp_path / "site"
    code = (
        "import sys\nfrom harness.cli import app\n"
        f"sys.argv = ['harness', 'report', '--results', {str(store.root)!r}, '--out', {str(site)!r}, "
        "'--format', 'markdown']\n"
        "try:\n    app()\nexcept SystemExit as exit:\n    assert exit.code in (0, None), exit.code"
    )
    loaded, _ = heavy_modules_after(code)
    assert loaded == []
    pages = {page.name: page.read_text() for page in site.rglob("*.md")}
    imagenet = next(text for name, text in pages.items() if "imagenet" in name)
    digits = next(text for name, text in pages.items() if "digits" in name)
    assert "top-5 vs compression" in imagenet and "top-5 vs compression" not in digits


def test_a_dry_run_of_a_magnitude_benchmark_loads_no_lightning_ray_or_mlflow(tmp_path: Path) -> None:
    """Planning imports the methods a spec names (not every method module, some of which need Lightning), and the
    plan comes from the Ray-free scheduler part: only torch, for the meta-device checks."""
    spec = tmp_path / "plan.yaml"
    spec.write_text(
        "name: plan\nmodels: [lenet5, resnet20]\ndatasets: [mnist, cifar10]\nmethods: [global_magnitude, snip]\n"
        "sparsities: [0.5, 0.9]\nseeds: [0, 1]\n"
    )
    code = (
        "import sys\nfrom harness.cli import app\n"
        f"sys.argv = ['harness', 'run', {str(spec)!r}, '--dry-run', '--results', {str(tmp_path / 'r')!r}]\n"
        "try:\n    app()\nexcept SystemExit as exit:\n    assert exit.code in (0, None), exit.code"
    )
    loaded, done = heavy_modules_after(code)
    assert "plan: 32 cells — 0 done, 0 failed before, 32 to run" in done.stdout
    assert loaded == ["torch"]
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
