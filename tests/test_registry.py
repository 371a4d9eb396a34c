"""Registries of methods, models and data sets: decorators, kind checks at registration, entry points, freeze.

Entry points are tested with a real distribution on ``sys.path`` (a ``.dist-info`` folder with its
``entry_points.txt``), found by ``importlib.metadata`` exactly as an installed package would be.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness.data import DATASETS, Dataset, _dataset_problem, load_splits, register_dataset, tensor_splits
from harness.methods import METHODS, PruningMethod, _method_problem, frozen_registries, register_method
from harness.models import MODELS, _factory_problem, create_model, register_model
from harness.registry import Registry, RegistryError

REPO = Path(__file__).resolve().parent.parent

EP_MODULE = '''
import numpy as np
from torch import nn

from harness.data import Dataset, tensor_splits
from harness.methods import PruningMethod


class EPMagnitude(PruningMethod):
    """|w| pruning shipped by a package."""

    def score(self, ctx):
        return {name: w.abs() for name, w in ctx.weights.items()}


def ep_tiny_mlp(input_shape, num_classes):
    """A one-hidden-layer MLP shipped by a package."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 16), nn.ReLU(), nn.Linear(16, num_classes))


class EPBlobs(Dataset):
    """Two Gaussian blobs in 4 dimensions, generated (no files)."""

    input_shape = (4,)
    num_classes = 2

    @classmethod
    def load(cls, root, seed):
        rng = np.random.default_rng(0)
        y = rng.integers(0, 2, 200)
        x = (rng.normal(size=(200, 4)) + 3 * y[:, None]).astype(np.float32)
        return tensor_splits(cls, (x[:150], y[:150]), (x[150:], y[150:]), seed)


def not_a_method(job):
    job.finetune()
'''

GOOD_ENTRY_POINTS = """
[harness.methods]
ep_magnitude = harness_ep_demo:EPMagnitude

[harness.models]
ep_tiny_mlp = harness_ep_demo:ep_tiny_mlp

[harness.datasets]
ep_blobs = harness_ep_demo:EPBlobs
"""


def make_distribution(root: Path, name: str, entry_points: str) -> Path:
    """A distribution as pip leaves it in site-packages: the module and its ``.dist-info`` folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "harness_ep_demo.py").write_text(EP_MODULE)
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return root


def test_entry_points_register_methods_models_and_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path / "site", "harness-ep-demo", GOOD_ENTRY_POINTS)))
    methods = Registry("method", "harness.methods", check=_method_problem)
    models = Registry("model", "harness.models", check=_factory_problem)
    datasets = Registry("dataset", "harness.datasets", check=_dataset_problem)
    assert "ep_magnitude" in methods and "ep_tiny_mlp" in models and "ep_blobs" in datasets
    assert methods.source_of("ep_magnitude") == "entry point harness_ep_demo:EPMagnitude"
    assert issubclass(methods.get("ep_magnitude"), PruningMethod)
    model = models.get("ep_tiny_mlp")((4,), 2)
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [16, 2]
    splits = datasets.get("ep_blobs").load(tmp_path, 0)
    assert (len(splits.train) + len(splits.val), len(splits.test)) == (150, 50)


def test_an_installed_package_s_method_model_and_dataset_run_through_the_cli(tmp_path: Path) -> None:
    site = make_distribution(tmp_path / "site", "harness-ep-demo", GOOD_ENTRY_POINTS)
    spec = tmp_path / "bench.yaml"
    spec.write_text(
        "name: ep\nmodels: [ep_tiny_mlp]\ndatasets: [ep_blobs]\nmethods: [ep_magnitude]\nsparsities: [0.5]\n"
        "seeds: [0]\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "COLUMNS": "1000"}
    listed = subprocess.run(
        [sys.executable, "-m", "harness.cli", "list", "methods", "--markdown"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if line.startswith("| ep_magnitude |")]
    assert line.endswith("| entry point harness_ep_demo:EPMagnitude |")
    dry = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(spec), "--results", str(tmp_path / "r"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    assert "ep: 1 cells — 0 done, 0 failed before, 1 to run" in dry.stdout
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.parquet"))


def test_an_entry_point_of_the_wrong_kind_is_refused_with_exit_2(tmp_path: Path) -> None:
    site = make_distribution(
        tmp_path / "site", "harness-ep-bad", "[harness.methods]\nep_function = harness_ep_demo:not_a_method\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    listed = subprocess.run(
        [sys.executable, "-m", "harness.cli", "list", "methods"], capture_output=True, text=True, env=env, timeout=120
    )
    assert listed.returncode == 2
    assert listed.stderr.strip().replace("\n", " ") == (
        "error: method 'ep_function' from entry point harness_ep_demo:not_a_method is refused: it is a function; "
        "a method is a subclass of harness.methods.Method (or PruningMethod, CompressionMethod)"
    )


def test_models_and_datasets_register_with_decorators_and_built_ins_use_them() -> None:
    @register_model("registry_test_mlp")
    def registry_test_mlp(input_shape, num_classes):
        """A 2-layer MLP."""
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 8), nn.Linear(8, num_classes))

    @register_dataset("registry_test_blobs")
    class Blobs(Dataset):
        """Generated blobs."""

        input_shape = (1, 3)
        num_classes = 3

        @classmethod
        def load(cls, root, seed):
            x = np.arange(90, dtype=np.float32).reshape(30, 1, 3)
            y = np.arange(30) % 3
            return tensor_splits(cls, (x[:24], y[:24]), (x[24:], y[24:]), seed)

    model = create_model("registry_test_mlp", (1, 3), 3)
    assert model(torch.zeros(2, 1, 3)).shape == (2, 3)
    assert len(load_splits("registry_test_blobs", None, 0).test) == 6
    # defined outside the harness, so attributed to the module that registered them, never "builtin"
    assert MODELS.source_of("registry_test_mlp") == DATASETS.source_of("registry_test_blobs") == __name__
    # the built-ins register with the same decorators, from their own modules
    assert MODELS.get("resnet20").__module__ == "harness.models.resnet_cifar"
    assert DATASETS.get("cifar10").__module__ == "harness.data.cifar"


class NotADataset:
    input_shape = (1,)
    num_classes = 2


class NoLoad(Dataset):
    input_shape = (1,)
    num_classes = 2


@pytest.mark.parametrize(
    ("register", "obj", "message"),
    [
        (register_model, 42, "model 'kind_a' from builtin is refused: it is a int; a model is a callable"),
        (
            register_model,
            lambda: None,
            f"model 'kind_b' from {__name__} is refused: <lambda> cannot be called as "
            "factory(input_shape, num_classes)",
        ),
        (
            register_dataset,
            NotADataset,
            f"dataset 'kind_c' from {__name__} is refused: it is a class not derived from Dataset",
        ),
        (
            register_dataset,
            NoLoad,
            f"dataset 'kind_d' from {__name__} is refused: NoLoad does not define load(cls, root, seed)",
        ),
        (register_method, len, "method 'kind_e' from builtin is refused: it is a builtin_function_or_method"),
        (
            register_method,
            NotADataset,
            f"method 'kind_f' from {__name__} is refused: it is a class not derived from Method",
        ),
    ],
)
def test_an_object_of_the_wrong_kind_is_refused_at_registration(register, obj, message) -> None:
    name = message.split("'")[1]
    with pytest.raises(RegistryError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        register(name)(obj)
    assert name not in MODELS and name not in DATASETS and name not in METHODS


def test_a_frozen_registry_refuses_new_entries_and_thaws() -> None:
    registry: Registry[int] = Registry("number")
    registry.add("one", 1)
    registry.add_lazy("pi", "math:pi")
    registry.freeze()
    assert registry.get("pi") == pytest.approx(3.14159265)  # a lazy entry still loads on its first use
    with pytest.raises(RegistryError, match="^number 'two' from builtin is registered after the number registry"):
        registry.add("two", 2)
    with pytest.raises(RegistryError, match="frozen"):
        registry.add_lazy("e", "math:e")
    registry.thaw()
    registry.add("two", 2)
    assert registry.names() == ["one", "pi", "two"]


def test_a_run_freezes_every_registry_while_it_lasts() -> None:
    class Late(PruningMethod):
        """Registered too late."""

        def score(self, ctx):
            return {name: w.abs() for name, w in ctx.weights.items()}

    with frozen_registries():
        for register, obj in ((register_method, Late), (register_model, lambda shape, classes: None)):
            with pytest.raises(RegistryError, match="registry was frozen"):
                register("registry_test_late")(obj)
    register_method("registry_test_late")(Late)
    assert METHODS.get("registry_test_late") is Late and Late.name == "registry_test_late"


def test_each_built_in_method_module_registers_exactly_the_names_it_declares() -> None:
    from harness.methods import BUILTIN_MODULES

    for module, names in BUILTIN_MODULES.items():
        importlib.import_module(module)
        for name in names:
            assert METHODS.get(name).__module__ == module, name
    declared = {name for names in BUILTIN_MODULES.values() for name in names}
    registered = {name for name in METHODS.names() if METHODS.get(name).__module__ in BUILTIN_MODULES}
    assert registered == declared, "a built-in @register_method missing from BUILTIN_MODULES, or the reverse"


def test_a_declared_name_imports_only_its_own_module(tmp_path: Path) -> None:
    (tmp_path / "declared_demo.py").write_text(
        "from harness.methods import PruningMethod\n"
        "from declared_registry import DEMO\n"
        "@DEMO.register('demo_magnitude')\n"
        "class DemoMagnitude(PruningMethod):\n"
        "    def score(self, ctx):\n"
        "        return {}\n"
    )
    (tmp_path / "declared_registry.py").write_text(
        "from harness.registry import Registry\n"
        "DEMO = Registry('demo')\n"
        "DEMO.add_lazy_module('declared_demo', ['demo_magnitude', 'demo_missing'])\n"
    )
    code = (
        "import sys\nfrom declared_registry import DEMO\n"
        "assert 'demo_magnitude' in DEMO and DEMO.names() == ['demo_magnitude', 'demo_missing']\n"
        "assert 'declared_demo' not in sys.modules\n"  # known by name, not imported
        "print(DEMO.get('demo_magnitude').__name__)\n"
        "try:\n    DEMO.get('demo_missing')\nexcept KeyError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "DemoMagnitude",
        "demo 'demo_missing' is declared for declared_demo, which does not register it",
    ]


def test_a_plugin_cannot_take_a_declared_built_in_name_before_its_module_is_imported() -> None:
    registry: Registry[type] = Registry("method")
    registry.add_lazy_module("harness.methods.score", ["global_magnitude"])

    class Impostor:
        pass

    with pytest.raises(RegistryError, match="'global_magnitude' is registered twice: by builtin and by"):
        registry.add("global_magnitude", Impostor)
