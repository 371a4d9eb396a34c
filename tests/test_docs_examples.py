"""The manual's plugin examples work exactly as written: each block of docs/plugins.md, docs/models.md and
docs/datasets.md is loaded as a plugin file and run on a real cell, and then shows up in the generated reference.

Hand counts: lenet_300_100 on digits has 19200 + 30000 = 49200 prunable weights; tiny_cnn has
1·16·9 + 16·16·9 = 2448 (the classifier is not pruned), so 75 % sparsity removes 1836 of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from harness.cell import execute_cell, pretrain
from harness.data import DATASETS
from harness.docs import datasets_page, methods_page, models_page, registry_table
from harness.methods import METHODS, load_plugins
from harness.models import MODELS
from harness.spec import CellSpec, Recipe, SpecError, load_spec

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(page: str, decorator: str) -> list[str]:
    """The page's Python blocks that register something with ``decorator``."""
    return [b for b in re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S) if decorator in b]


METHOD_BLOCKS = python_blocks("plugins.md", "@register_method")
[MODEL_BLOCK] = python_blocks("models.md", "@register_model")
[DATASET_BLOCK] = python_blocks("datasets.md", "@register_dataset")
RECIPE = Recipe(epochs=1, lr=0.05, batch_size=64)
PARAMS = {"magnitude_power": {"power": 0.5}}  # the docs' parameter example, run with a non-default value


def cell(method: str, model: str = "lenet_300_100", dataset: str = "digits", **fields) -> CellSpec:
    return CellSpec(
        benchmark="docs",
        model=model,
        dataset=dataset,
        method=method,
        sparsity=0.75,
        seed=0,
        pretrain=RECIPE,
        finetune=RECIPE,
        **fields,
    )


def load_block(block: str, tmp_path: Path, stem: str) -> Path:
    plugin = tmp_path / f"{stem}.py"
    plugin.write_text(block)
    load_plugins([str(plugin)])
    return plugin


@pytest.fixture
def registries_kept():
    """The model and data-set registries as they were before the test: other tests list the built-ins."""
    saved = {registry: dict(registry._entries) for registry in (MODELS, DATASETS)}
    yield
    for registry, entries in saved.items():
        registry._entries = entries


@pytest.fixture(scope="module")
def dense() -> bytes:
    return pretrain(cell("global_magnitude")).to_bytes()


def test_the_plugin_page_shows_a_score_its_parameters_a_training_callback_and_an_encoder() -> None:
    names = [re.search(r'@register_method\("(\w+)"\)', block).group(1) for block in METHOD_BLOCKS]
    assert names == ["smallest_weights_per_layer", "magnitude_power", "prune_halfway", "zlib_float16"]


@pytest.mark.parametrize("index", range(len(METHOD_BLOCKS)))
def test_each_method_example_runs_a_cell_and_is_in_the_reference(index: int, dense: bytes, tmp_path: Path) -> None:
    plugin = load_block(METHOD_BLOCKS[index], tmp_path, f"docs_method_{index}")
    name = re.search(r'@register_method\("(\w+)"\)', METHOD_BLOCKS[index]).group(1)
    assert METHODS.source_of(name) == f"plugin {plugin}"
    params = PARAMS.get(name, {})
    result = execute_cell(cell(name, method_params=params, plugins=(str(plugin),)), dense)
    row = result.rows[-1]
    assert row["status"] == "ok", row["error"]
    if name == "zlib_float16":  # float16 values, compressed: well under half of float32
        assert row["storage_format"] == "zlib_float16" and row["size_bytes"] < row["size_bytes_dense"] / 2
    else:  # pruned to the cell's target, to within one weight
        assert abs(row["sparsity_achieved"] - 0.75) * 49200 <= 1
    # the generator reads the registry when it runs: a loaded plugin has its own section
    assert f"## `{name}`\n\n{METHODS.get(name).summary()}" in methods_page()
    [listed] = [r for r in registry_table("methods")[1] if r[0] == name]
    assert listed[-1] == f"plugin {plugin}"


def test_a_parameter_that_does_not_fit_is_refused_when_the_spec_loads(tmp_path: Path) -> None:
    plugin = tmp_path / "docs_method_1.py"
    plugin.write_text(METHOD_BLOCKS[1])
    spec = tmp_path / "bench.yaml"
    spec.write_text(
        f"name: docs\nmodels: [lenet_300_100]\ndatasets: [digits]\nplugins: [{plugin}]\n"
        "methods: [{name: magnitude_power, power: 0}]\nsparsities: [0.5]\nseeds: [0]\n"
    )
    with pytest.raises(SpecError, match=r"methods\[0\]\.power: Input should be greater than 0"):
        load_spec(spec)


def test_the_model_example_is_checked_against_each_data_set_and_trains(tmp_path: Path, registries_kept) -> None:
    plugin = load_block(MODEL_BLOCK, tmp_path, "docs_model")
    spec = tmp_path / "bench.yaml"
    spec.write_text(
        "name: docs\nmodels: [tiny_cnn]\ndatasets: [digits, mnist1d]\nmethods: [global_magnitude]\n"
        "sparsities: [0.75]\nseeds: [0]\n"
    )
    with pytest.raises(SpecError, match=r"'tiny_cnn' cannot take dataset 'mnist1d': tiny_cnn needs a \(C, H, W\)"):
        load_spec(spec)

    one = cell("global_magnitude", model="tiny_cnn", plugins=(str(plugin),))
    row = execute_cell(one, pretrain(one).to_bytes()).rows[-1]
    assert row["status"] == "ok", row["error"]
    assert abs(row["sparsity_achieved"] - 0.75) * 2448 <= 1
    assert "| tiny_cnn | Two 3x3 conv layers of 16 channels, global average pooling and the classifier; any image." in (
        models_page()
    )


def write_signals(root: Path, n: int) -> None:
    """Four classes, each lifting its own quarter of the signal by 1 over unit noise: easy to learn."""
    rng = np.random.default_rng(0)
    (root / "my_signals").mkdir(parents=True)
    for split in ("train", "test"):
        y = rng.integers(0, 4, n)
        x = rng.normal(size=(n, 1, 32)).astype(np.float32)
        for k in range(4):
            x[y == k, 0, 8 * k : 8 * k + 8] += 2.0
        np.savez(root / "my_signals" / f"{split}.npz", x=x, y=y)


def test_the_data_set_example_trains_from_its_files_and_names_missing_ones(tmp_path: Path, registries_kept) -> None:
    plugin = load_block(DATASET_BLOCK, tmp_path, "docs_dataset")
    write_signals(tmp_path / "data", 400)
    two_epochs = Recipe(epochs=2, lr=0.05, batch_size=64)
    one = cell("global_magnitude", model="mnist1d_mlp", dataset="my_signals", plugins=(str(plugin),))
    one = one.model_copy(update={"pretrain": two_epochs})
    one = one.model_copy(update={"data_root": str(tmp_path / "data")})
    dense = pretrain(one).to_bytes()
    row = execute_cell(one, dense).rows[-1]
    assert row["status"] == "ok", row["error"]
    assert row["dense_top1"] > 0.9, "the dense model learned the four classes from the files"
    assert "| my_signals | (1, 32) | 4 |" in datasets_page()

    missing = execute_cell(one.model_copy(update={"data_root": str(tmp_path / "nowhere")}), dense).rows[-1]
    assert missing["status"] == "failed"
    assert f"my_signals: missing {tmp_path / 'nowhere' / 'my_signals' / 'train.npz'}" in missing["error"]
