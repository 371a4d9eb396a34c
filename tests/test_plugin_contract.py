"""The plugin contract: what a method may touch (the Job protocol) and what its hooks must return.

A bad plugin is refused when it registers (exit 2, one message) or its cell becomes a ``failed``
row that names the method, the parameter and what was wrong — never an ``ok`` row.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.cell import execute_cell, pretrain
from harness.methods import METHODS, Job, Method, PruningMethod, register_method
from harness.methods.encoding import Encoder
from harness.registry import RegistryError
from harness.testing import tiny_cell

REPO = Path(__file__).resolve().parent.parent


class BroadcastMask(PruningMethod):
    """Returns a mask that broadcasts against the weight but is not its shape (one value per input)."""

    def masks(self, ctx, sparsity):
        return {name: torch.rand(w.shape[1]) > sparsity for name, w in ctx.weights.items()}


class NaNScore(PruningMethod):
    """Scores one weight of the first layer NaN."""

    def score(self, ctx):
        scores = {name: w.abs() for name, w in ctx.weights.items()}
        first = next(iter(scores))
        scores[first] = scores[first].clone()
        scores[first][0, 0] = float("nan")
        return scores


class ScoresTooFewLayers(PruningMethod):
    """Forgets the last prunable layer."""

    def score(self, ctx):
        return {name: w.abs() for name, w in list(ctx.weights.items())[:-1]}


class FloatMaskOfTwos(PruningMethod):
    """A float mask holding 2.0 where it means 'keep'."""

    def masks(self, ctx, sparsity):
        return {name: torch.full_like(w, 2.0) for name, w in ctx.weights.items()}


for _name, _cls in {
    "contract_broadcast_mask": BroadcastMask,
    "contract_nan_score": NaNScore,
    "contract_too_few": ScoresTooFewLayers,
    "contract_mask_of_twos": FloatMaskOfTwos,
}.items():
    if _name not in METHODS:
        register_method(_name)(_cls)


@pytest.fixture(scope="module")
def dense():
    return pretrain(tiny_cell("global_magnitude"))


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (
            "contract_broadcast_mask",
            "method 'contract_broadcast_mask': masks(), parameter '1.weight': the mask has shape [64] "
            "but the parameter has shape [300, 64]",
        ),
        (
            "contract_nan_score",
            "method 'contract_nan_score': score(), parameter '1.weight': 1 of 19200 scores are NaN or infinite",
        ),
        ("contract_too_few", "method 'contract_too_few': score() returned no score for parameter '3.weight'"),
        (
            "contract_mask_of_twos",
            "method 'contract_mask_of_twos': masks(), parameter '1.weight': a mask of dtype torch.float32 "
            "holds values other than 0 and 1",
        ),
    ],
)
def test_a_bad_hook_output_is_a_failed_row_naming_method_parameter_and_problem(dense, method, expected) -> None:
    result = execute_cell(tiny_cell(method), dense)
    [row] = result.rows
    assert row["status"] == "failed"
    assert row["error"].startswith(f"PluginError: {expected}")


def test_a_bad_mask_given_straight_to_job_prune_fails_the_cell_too(dense) -> None:
    class PrunesWrongShape(Method):
        """Skips the pruning-method path and hands job.prune a transposed mask."""

        def apply(self, job):
            weight = job.context().weights["1.weight"]
            job.prune({"1.weight": torch.ones(weight.shape[::-1], dtype=torch.bool)})
            job.finetune()

    register_method("contract_prune_wrong_shape")(PrunesWrongShape)
    [row] = execute_cell(tiny_cell("contract_prune_wrong_shape"), dense).rows
    assert row["status"] == "failed"
    assert row["error"].startswith(
        "PluginError: method 'contract_prune_wrong_shape': job.prune(), parameter '1.weight': "
        "the mask has shape [64, 300] but the parameter has shape [300, 64]"
    )


def test_a_class_missing_its_required_hook_is_refused_at_registration() -> None:
    class NoScore(PruningMethod):
        """Neither score nor masks."""

    class NoEncode(Encoder):
        """An encoder that never says how it encodes."""

    class NoApply(Method):
        """A method that does nothing."""

    for cls, hook in ((NoScore, "score(self, ctx) or masks(...)"), (NoEncode, "encode(self, job)"), (NoApply, "apply")):
        with pytest.raises(RegistryError) as caught:
            register_method(f"contract_{cls.__name__.lower()}")(cls)
        assert str(caught.value).startswith(f"method 'contract_{cls.__name__.lower()}' from {__name__} is refused: ")
        assert f"{cls.__qualname__} does not define the required hook {hook}" in str(caught.value)
        assert f"contract_{cls.__name__.lower()}" not in METHODS


FUNCTION_PLUGIN = """
from harness.methods import register_method


@register_method("not_a_class")
def not_a_class(job):
    job.finetune()
"""


def test_a_function_registered_as_a_method_exits_2_with_one_message(tmp_path: Path) -> None:
    plugin = tmp_path / "function_plugin.py"
    plugin.write_text(FUNCTION_PLUGIN)
    spec = tmp_path / "bench.yaml"
    spec.write_text(
        "name: f\nmodels: [lenet_300_100]\ndatasets: [digits]\nmethods: [not_a_class]\nsparsities: [0.5]\nseeds: [0]\n"
    )
    for args in (
        ["list", "methods", "--plugin", str(plugin)],
        ["run", str(spec), "--dry-run", "--plugin", str(plugin)],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().replace("\n", " ") == (
            f"error: method 'not_a_class' from plugin {plugin} is refused: it is a function; a method is a "
            "subclass of harness.methods.Method (or PruningMethod, CompressionMethod)"
        )
        assert "Traceback" not in done.stderr


def _job_members() -> set[str]:
    return {name for name in vars(Job) if not name.startswith("_")}


def test_built_in_methods_touch_the_job_only_through_the_protocol() -> None:
    """Every ``job.<attribute>`` in harness/methods is a member of the Job protocol (none of CellJob's own)."""
    allowed = _job_members()
    assert {"prune", "finetune", "train", "finish_level", "load_weights", "set_storage", "model", "weights"} <= allowed
    outside = []
    for path in sorted((REPO / "harness" / "methods").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            is_job = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "job"
            if is_job and node.attr not in allowed:
                outside.append(f"{path.name}:{node.lineno} job.{node.attr}")
    assert outside == []


def test_cell_job_implements_every_member_of_the_protocol_with_its_signature() -> None:
    from harness.cell import CellJob

    for name in _job_members():
        ours, theirs = getattr(Job, name), getattr(CellJob, name)
        if isinstance(ours, property):
            assert isinstance(theirs, property), f"CellJob.{name} is not a property"
        else:
            assert inspect.signature(theirs).parameters.keys() == inspect.signature(ours).parameters.keys(), name


def test_every_hook_and_job_member_says_when_it_is_called_and_what_it_returns() -> None:
    from harness.methods.base import CompressionMethod

    hooks = [Method.apply, Method.check_recipes, PruningMethod.score, PruningMethod.masks]
    hooks += [CompressionMethod.compress, Encoder.encode]
    for hook in hooks:
        doc = inspect.getdoc(hook) or ""
        assert "called" in doc.lower() and ("return" in doc.lower()), hook.__qualname__
    for name in _job_members():
        assert inspect.getdoc(getattr(Job, name)), f"Job.{name} has no docstring"
