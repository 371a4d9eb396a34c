"""Shared fixtures. Every test keeps Ray's, MLflow's and the harness's files in temporary folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before Ray or MLflow are imported anywhere: nothing may land in the user's home.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="hh-"))
os.environ["HOME"] = str(_SESSION_HOME)
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's Unix sockets
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("HARNESS_DATA", str(_SESSION_HOME / "data"))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write a YAML benchmark file from text and return its path."""

    def write(text: str, name: str = "bench.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


TINY_SPEC = """
name: tiny
models: [lenet_300_100]
datasets: [digits]
methods: [global_magnitude, layer_magnitude]
sparsities: [0.5, 0.9]
seeds: [0]
pretrain: {epochs: 2, optimizer: sgd, lr: 0.05, batch_size: 64}
finetune: {epochs: 1, lr: 0.01}
"""


@pytest.fixture(scope="module")
def conformance_models_removed():
    """check_conformance registers its small models; other tests list the built-ins, so they go again."""
    from harness.models import MODELS

    MODELS.names()  # the built-ins loaded first, so they are among what is kept
    saved = dict(MODELS._entries)
    yield
    MODELS._entries = saved
