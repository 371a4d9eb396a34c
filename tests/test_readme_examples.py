"""The README's plugin examples work exactly as written: each block is loaded as a plugin and run on a real cell."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.cell import execute_cell, pretrain
from harness.methods import METHODS, load_plugins
from harness.spec import CellSpec, Recipe

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "@register_method" in b]
RECIPE = Recipe(epochs=2, lr=0.05, batch_size=64)


@pytest.fixture(scope="module")
def dense() -> bytes:
    return pretrain(cell("global_magnitude")).to_bytes()


def cell(method: str) -> CellSpec:
    return CellSpec(
        benchmark="readme",
        model="lenet_300_100",
        dataset="digits",
        method=method,
        sparsity=0.75,
        seed=0,
        pretrain=RECIPE,
        finetune=RECIPE,
    )


def test_the_readme_shows_a_score_a_training_callback_and_an_encoder() -> None:
    assert len(BLOCKS) == 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_readme_plugin_runs_a_cell(index: int, dense: bytes, tmp_path: Path) -> None:
    plugin = tmp_path / f"readme_plugin_{index}.py"
    plugin.write_text(BLOCKS[index])
    load_plugins([str(plugin)])
    name = re.search(r'@register_method\("(\w+)"\)', BLOCKS[index]).group(1)
    assert METHODS.source_of(name) == f"plugin {plugin}"
    result = execute_cell(cell(name).model_copy(update={"plugins": (str(plugin),)}), dense)
    row = result.rows[-1]
    assert row["status"] == "ok", row["error"]
    if name == "zlib_float16":  # float16 values, compressed: well under half of float32
        assert row["storage_format"] == "zlib_float16" and row["size_bytes"] < row["size_bytes_dense"] / 2
    else:  # pruned to the cell's target, to within one weight
        assert abs(row["sparsity_achieved"] - 0.75) * 49200 <= 1
