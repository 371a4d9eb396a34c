"""The Bloomier filter and Weightless: exact answers for stored keys, a measured false-positive rate
that matches non-null values / 2^t, a table of 1.23·n cells, and a model evaluated as decoded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.encoding.bloomier import BloomierFilter, table_cells
from harness.models import create_model
from harness.testing import run_method
from harness.training import evaluate


def stored_set(n: int, universe: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.choice(universe, size=n, replace=False), rng.integers(1, clusters + 1, size=n)


@pytest.mark.parametrize("n", [0, 1, 2, 50, 3000])
def test_every_stored_key_reads_back_its_value_also_after_serialisation(n: int) -> None:
    keys, values = stored_set(n, universe=10 * n + 10, clusters=16)
    filt = BloomierFilter.build(keys, values, cell_bits=8)
    assert np.array_equal(filt.query(keys), values)
    assert np.array_equal(BloomierFilter.from_bytes(filt.to_bytes()).query(keys), values)


def test_table_has_about_1_23_n_cells_of_t_bits() -> None:
    keys, values = stored_set(3000, universe=30000, clusters=16)
    filt = BloomierFilter.build(keys, values, cell_bits=7)
    assert len(filt.table) == table_cells(3000) == 3 * math.ceil((1.23 * 3000 + 32) / 3) == 3723
    assert len(filt.to_bytes()) == 9 + math.ceil(3723 * 7 / 8)  # seed, cells, width; then the packed cells


@pytest.mark.parametrize(("clusters", "cell_bits"), [(16, 8), (4, 6), (16, 10)])
def test_false_positive_rate_is_non_null_values_over_2_to_the_t(clusters: int, cell_bits: int) -> None:
    keys, values = stored_set(4000, universe=40000, clusters=clusters)
    filt = BloomierFilter.build(keys, values, cell_bits=cell_bits)
    absent = np.setdiff1d(np.arange(40000), keys)  # 36000 keys that were never stored
    read = filt.query(absent)
    rate = float(((read >= 1) & (read <= clusters)).mean())
    expected = clusters / 2**cell_bits
    sigma = math.sqrt(expected * (1 - expected) / len(absent))
    assert abs(rate - expected) < 4 * sigma


def test_weightless_evaluates_the_decoded_weights_false_positives_included() -> None:
    stages = ["layer_magnitude", {"name": "bloomier", "cluster_bits": 3, "cell_bits": 6}]
    job = run_method("pipeline", {"stages": stages}, sparsity=0.9)
    pruned, level = job.levels[0], job.levels[-1]
    assert [lv.row["stage"] for lv in job.levels] == ["layer_magnitude", "bloomier"]
    false_positives = 0
    for name, mask in pruned.masks.items():
        before, after = pruned.final_state[name], level.final_state[name]
        assert len(torch.unique(after[mask])) <= 8  # stored weights are one of the 2^3 clusters
        assert torch.count_nonzero(after[mask]) == torch.count_nonzero(before[mask])
        false_positives += int(torch.count_nonzero(after[~mask]))
        assert torch.unique(after[~mask][after[~mask] != 0]).numel() <= 8  # a false positive reads a cluster
    row = level.row
    assert row["bloomier_false_positives"] == false_positives > 0
    assert row["bloomier_expected_rate"] == pytest.approx(8 / 64)
    assert abs(row["bloomier_false_positive_rate"] - 8 / 64) < 0.02
    assert row["storage_format"] == "bloomier"
    decoded = create_model("lenet_300_100", (1, 8, 8), 10)
    decoded.load_state_dict(level.final_state)
    assert row["top1"] == evaluate(decoded, job.data.test)["top1"]  # the row scores the decoded weights


def test_cells_must_be_wider_than_the_cluster_codes() -> None:
    with pytest.raises(ValueError, match="cell_bits .* must exceed cluster_bits"):
        run_method("bloomier", {"cluster_bits": 4, "cell_bits": 4})
