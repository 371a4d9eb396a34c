"""The ranking maths on numbers worked out by hand, and the leaderboard printed after a run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from results_factory import fake_cell

from harness.leaderboard import leaderboard, method_label
from harness.report.ranking import common_range, interpolate_log2, mean_over_log_range, pareto_front, rank
from harness.results import connect
from harness.store import ResultsStore

# a curve measured at 2x, 8x and 32x: accuracy 0.90, 0.70, 0.40
XS, YS = [8.0, 2.0, 32.0], [0.70, 0.90, 0.40]  # unsorted on purpose


def test_interpolation_is_linear_in_log2_compression_and_never_extrapolates() -> None:
    assert interpolate_log2(XS, YS, 2) == pytest.approx(0.90)  # a measured point
    assert interpolate_log2(XS, YS, 4) == pytest.approx(0.80)  # log2 4 is halfway between log2 2 and log2 8
    assert interpolate_log2(XS, YS, 16) == pytest.approx(0.55)  # halfway between 8x (0.70) and 32x (0.40)
    assert interpolate_log2(XS, YS, 2 ** (1 + 2 / 4)) == pytest.approx(0.85)  # a quarter of the 2x→8x octaves
    assert math.isnan(interpolate_log2(XS, YS, 1.9)) and math.isnan(interpolate_log2(XS, YS, 33))


def test_points_at_the_same_compression_are_averaged_and_bad_points_ignored() -> None:
    assert interpolate_log2([2, 2, 4, math.inf, math.nan], [0.8, 0.9, 0.5, 0.1, 0.1], 2) == pytest.approx(0.85)


def test_the_area_is_the_mean_accuracy_over_the_log_range() -> None:
    # trapezoids in log2 x: 2x→8x spans 2 octaves at mean 0.80, 8x→32x spans 2 at mean 0.55
    assert mean_over_log_range(XS, YS, 2, 32) == pytest.approx((2 * 0.80 + 2 * 0.55) / 4)
    # 4x→16x: 4x→8x (0.80 → 0.70, 1 octave) and 8x→16x (0.70 → 0.55, 1 octave)
    assert mean_over_log_range(XS, YS, 4, 16) == pytest.approx((0.75 + 0.625) / 2)
    assert math.isnan(mean_over_log_range(XS, YS, 2, 64))  # beyond the measured range
    assert math.isnan(mean_over_log_range(XS, YS, 8, 8))


def test_the_common_range_is_what_every_curve_with_two_points_covers() -> None:
    assert common_range([(XS, YS), ([4, 64], [0.9, 0.1]), ([3], [0.5])]) == (4.0, 32.0)
    assert common_range([([2, 4], [1, 1]), ([8, 16], [1, 1])]) is None


def test_ranking_by_mean_accuracy_over_the_common_range() -> None:
    ranking = rank(
        {
            "steady": ([2, 32], [0.80, 0.80]),  # mean 0.80 over 4x–16x
            "front-loaded": (XS, YS),  # mean 0.6875 over 4x–16x (above)
            "wide": ([4, 16], [0.95, 0.45]),  # mean 0.70: ranks above front-loaded
            "single": ([8], [0.99]),  # one point: no area, last
        }
    )
    assert ranking.common == (4.0, 16.0)
    assert [r.series for r in ranking.rows] == ["steady", "wide", "front-loaded", "single"]
    assert [r.area for r in ranking.rows[:3]] == pytest.approx([0.80, 0.70, 0.6875])
    front_loaded = ranking.rows[2]
    assert front_loaded.at == pytest.approx((0.90, 0.80, 0.70, 0.55, 0.40))
    wide = ranking.rows[1]
    assert math.isnan(wide.at[0]) and wide.at[1:4] == pytest.approx((0.95, 0.70, 0.45)) and math.isnan(wide.at[4])
    assert math.isnan(ranking.rows[3].area) and ranking.rows[3].at[2] == pytest.approx(0.99)


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes() -> None:
    xs = [2, 4, 4, 8, 16, 16, 32]
    ys = [0.9, 0.85, 0.80, 0.86, 0.70, 0.70, 0.30]
    # (4, .85) is beaten by (8, .86); (4, .80) too; one of the equal (16, .70) points is kept
    assert pareto_front(xs, ys) == [0, 3, 4, 6]
    assert pareto_front([1, math.nan], [0.5, 0.9]) == [0]


def test_leaderboard_averages_the_last_level_of_each_cell_over_seeds(results_dir: Path) -> None:
    store = ResultsStore(results_dir)
    for seed, top1 in ((0, 0.80), (1, 0.90)):
        result = fake_cell("b", "digits", "lenet_300_100", "iterative", 0.75, seed, top1=top1)
        first_level = {**result.rows[0], "level": 0, "top1": 0.1}
        result.rows = [first_level, {**result.rows[0], "level": 1}]
        store.write(result)
    store.write(fake_cell("b", "digits", "lenet_300_100", "iterative", 0.75, 0, top1=0.5, method_params={"rounds": 3}))
    store.write(fake_cell("b", "digits", "lenet_300_100", "iterative", 0.75, 2, status="failed"))
    store.write(fake_cell("other", "digits", "lenet_300_100", "iterative", 0.75, 0, top1=0.2))
    frame = leaderboard(connect(results_dir), "b")
    labels = [method_label(m, p) for m, p in zip(frame["method"], frame["method_params"], strict=True)]
    assert labels == ["iterative", "iterative(rounds=3)"]
    assert frame["seeds"].tolist() == [2, 1]
    assert frame["top1_mean"].tolist() == pytest.approx([0.85, 0.5])
    assert frame["top1_std"].tolist() == pytest.approx([math.sqrt(0.005), 0.0])  # sample std of 0.80, 0.90
    assert frame["compression_ratio"].tolist() == pytest.approx([4.0, 4.0])
