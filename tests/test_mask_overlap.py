"""Recorded masks and `harness analyze masks`: each cell's masks written beside its rows and read back
bit-exact, the Jaccard overlaps and their chance levels counted by hand on tiny masks, and
``record_masks: false`` writing nothing."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import maskfile
from harness.analysis import ALL_LAYERS, MissingColumns, Overlap, chance_jaccard, mask_overlap
from harness.maskfile import PackedMask
from harness.results import load_masks
from harness.store import ResultsStore
from tests.results_factory import fake_cell

# Two methods at one seed, hand-made masks (True = kept). fc1: kept in both {0, 1}, in either {0..5};
# fc2: kept in both {0, 1}, in either {0, 1, 2}.
FC1_A = [1, 1, 1, 1, 0, 0, 0, 0]
FC1_B = [1, 1, 0, 0, 1, 1, 0, 0]
FC2_A = [1, 1, 0, 0]
FC2_B = [1, 1, 1, 0]


def masks_of(**layers: list[int]) -> bytes:
    return maskfile.encode({0: {f"{name}.weight": PackedMask.of(np.array(v, bool)) for name, v in layers.items()}})


def write_pair(root: Path | str) -> tuple[str, str]:
    store = ResultsStore(root)
    ids = []
    for method, fc1, fc2 in (("global_magnitude", FC1_A, FC2_A), ("random", FC1_B, FC2_B)):
        cell = fake_cell("b", "digits", "lenet", method, 0.5, 0)
        store.save_masks("b", cell.cell_id, masks_of(fc1=fc1, fc2=fc2))
        store.write(cell)
        ids.append(cell.cell_id)
    return ids[0], ids[1]


def test_a_mask_file_reads_back_bit_exact_at_every_level_and_shape():
    rng = np.random.default_rng(0)
    levels = {k: {"conv.weight": rng.random((3, 5, 7, 1)) < 0.3, "fc.weight": rng.random((13,)) < 0.5} for k in (0, 2)}
    decoded = maskfile.decode(
        maskfile.encode({k: {n: PackedMask.of(m) for n, m in v.items()} for k, v in levels.items()})
    )
    assert list(decoded) == [0, 2]
    for level, masks in levels.items():
        for name, mask in masks.items():
            got = decoded[level][name]
            assert got.shape == mask.shape and got.kept() == mask.sum()
            assert np.array_equal(got.unpack(), mask)
    with pytest.raises(ValueError, match="format"):
        buffer = io.BytesIO()
        np.savez(buffer, x=np.zeros(1))
        maskfile.decode(buffer.getvalue())


def test_jaccard_of_kept_and_pruned_sets_and_their_chance_levels_by_hand(tmp_path: Path):
    write_pair(tmp_path)
    frame = mask_overlap(tmp_path)
    assert set(frame["compare"]) == {"method"} and set(frame["seed_a"]) == {0}
    rows = frame.set_index("layer")
    fc1, fc2, overall = rows.loc["fc1.weight"], rows.loc["fc2.weight"], rows.loc[ALL_LAYERS]
    # fc1: kept 2 of 6, pruned {6, 7} of {2..7}; chance at densities 1/2, 1/2: (1/4) / (1 - 1/4) = 1/3 both ways
    assert (fc1.jaccard_kept, fc1.jaccard_pruned, fc1.chance_kept, fc1.chance_pruned) == pytest.approx([1 / 3] * 4)
    # fc2: kept 2 of 3; pruned {3} of {2, 3}; chance: E∩ = 2·3/4 = 1.5 of E∪ = 3.5, pruned 2·1/4 = 0.5 of 2.5
    assert (fc2.jaccard_kept, fc2.jaccard_pruned) == pytest.approx([2 / 3, 1 / 2])
    assert (fc2.chance_kept, fc2.chance_pruned) == pytest.approx([3 / 7, 1 / 5])
    # overall: counts summed over the 12 weights: kept 4 of 9, pruned 3 of 8; chance 3.5 / 9.5 and 2.5 / 8.5
    assert (overall.weights, overall.density_a, overall.density_b) == (12, pytest.approx(6 / 12), pytest.approx(7 / 12))
    assert (overall.jaccard_kept, overall.jaccard_pruned) == pytest.approx([4 / 9, 3 / 8])
    assert (overall.chance_kept, overall.chance_pruned) == pytest.approx([7 / 19, 5 / 17])


def test_chance_level_matches_random_masks_drawn_independently():
    rng = np.random.default_rng(1)
    n, p, q = 200_000, 0.2, 0.3
    a, b = (PackedMask.of(rng.permutation(n) < round(d * n)) for d in (p, q))
    drawn = Overlap.of(a, b)
    assert drawn.jaccard_kept() == pytest.approx(chance_jaccard([drawn]), abs=2e-3)
    assert chance_jaccard([drawn]) == pytest.approx(p * q / (p + q - p * q))
    assert drawn.jaccard_pruned() == pytest.approx(chance_jaccard([drawn], pruned=True), abs=2e-3)


def test_a_parameter_one_cell_left_unmasked_is_wholly_kept_and_seeds_are_compared(tmp_path: Path):
    store = ResultsStore(tmp_path)
    for seed, fc1 in ((0, FC1_A), (1, FC1_B)):
        cell = fake_cell("b", "digits", "lenet", "random", 0.5, seed)
        layers = {"fc1": fc1, "fc2": FC2_A} if seed == 0 else {"fc1": fc1}
        store.save_masks("b", cell.cell_id, masks_of(**layers))
        store.write(cell)
    store.write(fake_cell("b", "digits", "lenet", "random", 0.5, 2))  # no masks recorded: not compared
    rows = mask_overlap(tmp_path).set_index("layer")
    assert set(rows["compare"]) == {"seed"} and (rows["seed_a"].iloc[0], rows["seed_b"].iloc[0]) == (0, 1)
    assert rows.loc["fc2.weight", "jaccard_kept"] == pytest.approx(2 / 4)  # seed 1 keeps all of fc2
    assert rows.loc["fc2.weight", "density_b"] == 1.0
    assert rows.loc["fc2.weight", "jaccard_pruned"] == 0.0  # seed 0 prunes 2 of fc2, seed 1 none: 0 / 2
    assert np.isnan(chance_jaccard([Overlap(4, 4, 4, 4, 4)], pruned=True))  # nothing pruned in either: undefined


def test_load_masks_reads_a_cell_back_and_says_what_is_missing(tmp_path: Path):
    first, _ = write_pair(tmp_path)
    masks = load_masks(tmp_path, first)
    assert sorted(masks) == ["fc1.weight", "fc2.weight"]
    assert masks["fc1.weight"].dtype == bool and masks["fc1.weight"].tolist() == [bool(v) for v in FC1_A]
    with pytest.raises(KeyError, match="recorded levels: \\[0\\]"):
        load_masks(tmp_path, first, level=3)
    with pytest.raises(FileNotFoundError, match="record_masks: false"):
        load_masks(tmp_path, "0" * 16)
    ResultsStore(tmp_path).save_masks("b", first, None)  # a rerun without masks removes the old file
    with pytest.raises(FileNotFoundError):
        load_masks(tmp_path, first)


def test_cli_analyze_masks_prints_the_overlaps_and_exits_2_without_masks(tmp_path: Path):
    write_pair(tmp_path / "r")
    cli = [sys.executable, "-m", "harness.cli", "analyze", "masks", "--results"]
    out = subprocess.run([*cli, str(tmp_path / "r"), "--format", "csv"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    frame = pd.read_csv(io.StringIO(out.stdout)).set_index("layer")
    assert frame.loc[ALL_LAYERS, ["method_a", "method_b"]].tolist() == ["global_magnitude", "random"]
    assert frame.loc[ALL_LAYERS, "jaccard_kept"] == pytest.approx(4 / 9)
    ResultsStore(tmp_path / "none").write(fake_cell("b", "digits", "lenet", "random", 0.5, 0))
    missing = subprocess.run([*cli, str(tmp_path / "none")], capture_output=True, text=True)
    assert missing.returncode == 2 and "record_masks: false" in missing.stdout + missing.stderr
    with pytest.raises(MissingColumns, match="record_masks"):
        mask_overlap(tmp_path / "none")


SPEC = """
name: masks
models: [lenet_300_100]
datasets: [digits]
methods: [global_magnitude, random, {name: imp, rounds: 2, rate: 0.5}]
sparsities: [0.75]
seeds: [0, 1]
pretrain: {epochs: 1, optimizer: sgd, lr: 0.05, batch_size: 128}
finetune: {epochs: 1, lr: 0.01}
"""


@pytest.mark.slow
def test_cells_record_every_levels_masks_through_the_driver_and_record_masks_false_writes_none(
    tmp_path: Path, write_spec
):
    from harness.cell import pretrain, run_cell
    from harness.runner import run_matrix
    from harness.spec import expand, load_spec

    cells = expand(load_spec(write_spec(SPEC)))
    store = ResultsStore(tmp_path / "on")
    run_matrix(cells, store, backend="local")
    imp = next(c for c in cells if c.method == "imp" and c.seed == 0)
    jobs: list = []
    run_cell(imp, pretrain(imp), jobs=jobs)  # the same cell again in this process: its final masks in memory
    recorded = maskfile.decode(store.load_masks("masks", imp.cell_id))
    assert list(recorded) == [0, 1]  # one entry per level of the iterative method
    final = load_masks(tmp_path / "on", imp.cell_id)
    assert sorted(final) == sorted(jobs[0].masks)
    for name, mask in jobs[0].masks.items():
        assert np.array_equal(final[name], mask.numpy())  # bit-exact
    assert 1 - sum(m.sum() for m in final.values()) / sum(m.size for m in final.values()) == pytest.approx(0.75, 1e-3)

    frame = mask_overlap(tmp_path / "on")
    overall = frame[frame["layer"] == ALL_LAYERS]
    assert len(overall[overall["compare"] == "method"]) == 2 * 3  # 3 pairs of methods at each of 2 seeds
    assert len(overall[overall["compare"] == "seed"]) == 3  # seed 0 vs 1 for each method
    random_seeds = overall[(overall["compare"] == "seed") & (overall["method_a"] == "random")].iloc[0]
    assert random_seeds.jaccard_kept == pytest.approx(random_seeds.chance_kept, abs=0.02)  # independent draws
    same_seed = overall[(overall["compare"] == "method") & (overall["method_b"] == 'imp {"rate": 0.5, "rounds": 2}')]
    assert (same_seed.jaccard_kept > same_seed.chance_kept).all()  # magnitude criteria agree beyond chance

    off = expand(load_spec(write_spec(SPEC.replace("name: masks", "name: masks\nrecord_masks: false"), "off.yaml")))
    assert [c.cell_id for c in off] == [c.cell_id for c in cells]  # not identity
    run_matrix(off[:1], ResultsStore(tmp_path / "off"), backend="local")
    assert not (tmp_path / "off" / "masks").exists()
    assert (tmp_path / "off" / "cells").is_dir()


def test_the_report_claims_page_shows_the_mask_overlap(tmp_path: Path):
    from harness.report import build_report

    write_pair(tmp_path / "r")
    build_report([tmp_path / "r"], tmp_path / "site", formats=("markdown",))
    section = (tmp_path / "site" / "claims.md").read_text().split("## Mask overlap")[1]
    # the overall row of the hand-counted pair above: 4/9, 7/19, 3/8, 5/17
    assert (
        r"| b | lenet | digits | 0.5 | method | global\_magnitude | random | 0.4444 | 0.3684 | 0.375 | 0.2941 | 1 |"
        in section
    )
