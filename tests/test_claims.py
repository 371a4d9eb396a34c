"""Every claim's verdict rule on results written by hand: holds, does not hold, and not enough data.

Each scenario writes cells through the real store (tests/results_factory.py) for an effect of sign
``e`` (+1: the paper's direction, −1: against it) with a small per-seed jitter, so the paired
t-interval over three seeds is narrow and lies on a known side of the claim's threshold; the same
scenario on two seeds must be "not enough data".
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.claims import CLAIMS, check_claims
from harness.claims.stats import FAILS, HOLDS, UNDECIDED, above, paired_interval
from harness.schema import CellResult
from harness.store import ResultsStore
from tests.results_factory import DENSE_TOP1, fake_cell

JITTER = (0.0, 0.004, -0.003)


def jitter(seed: int, arm: int = 0) -> float:
    return JITTER[(seed + arm) % len(JITTER)]


def dense(seed: int) -> float:
    return DENSE_TOP1 + 0.002 * seed  # the factory's dense_top1


def cell(method: str, seed: int, levels: list[dict], params: dict | None = None, epochs: list[dict] | None = None):
    """A cell of ``method`` whose rows are ``levels`` (sparsity, top1, any extra column), one per level."""
    base = fake_cell("papers", "digits", "lenet_300_100", method, levels[-1]["sparsity"], seed, method_params=params)
    rows = [{**base.rows[0], "level": i, **level} for i, level in enumerate(levels)]
    return CellResult(base.cell_id, rows, base.epochs if epochs is None else epochs, base.layers)


def at(method: str, seed: int, top1: float, params: dict | None = None, sparsity: float = 0.9, **extra):
    return cell(method, seed, [{"sparsity": sparsity, "top1": top1, **extra}], params)


def imp(
    seed: int,
    top1s: list[float],
    reinit: list[float] | None = None,
    barriers: list[float] | None = None,
    copies: list[float] | None = None,
):
    """An IMP cell, the ticket's levels at sparsity 0.5, 0.8, …; with ``reinit`` its reinit arm's rows in the
    same cell, each beside the ticket's row of its level (as ``controls: [reinit]`` writes them)."""
    sparsities = (0.5, 0.8, 0.9, 0.95)
    levels = [{"sparsity": s, "top1": t, "control": "none"} for s, t in zip(sparsities, top1s, strict=False)]
    for level, barrier in zip(levels, barriers or [], strict=False):
        level["lmc_barrier"] = barrier
    for level, barrier in zip(levels, copies or [], strict=False):
        level["lmc_barrier_copies"] = barrier
    if reinit is None:
        return cell("imp", seed, levels, {"rate": 0.5})
    arms = [{"sparsity": s, "top1": t, "control": "reinit"} for s, t in zip(sparsities, reinit, strict=False)]
    rows = [{**row, "level": i} for i, pair in enumerate(zip(arms, levels, strict=True)) for row in pair]
    return cell("imp", seed, rows, {"rate": 0.5, "controls": ["reinit"]})


def stored(method: str, seed: int, stages: list[tuple[str, float, float]], params: dict | None = None):
    """A pipeline cell: one row per (stage, size_bytes, top1)."""
    return cell(method, seed, [{"sparsity": 0.9, "stage": s, "size_bytes": b, "top1": t} for s, b, t in stages], params)


def gradient(method: str, seed: int, sparsity: float, column: str, value: float):
    base = at(method, seed, 0.9, {"gradient_flow": True}, sparsity)
    epochs = [{"phase": "finetune-0", "epoch": i, "lr": 0.1, column: value * (1 + 0.1 * i)} for i in range(2)]
    return CellResult(base.cell_id, base.rows, epochs, base.layers)


def ptq(seed: int, top1: float, **params):
    return at("ptq", seed, top1, params, sparsity=0.0)


Scenario = Callable[[int, int], list[CellResult]]  # (e, seed) -> cells

SCENARIOS: dict[str, Scenario] = {
    "shrinkbench.random_worst": lambda e, s: [
        at("random", s, 0.6 - 0.2 * e + jitter(s)),
        at("global_magnitude", s, 0.6 + jitter(s, 1)),
        at("layer_magnitude", s, 0.6 + jitter(s, 2)),
    ],
    "shrinkbench.global_geq_layer": lambda e, s: [
        at("global_magnitude", s, 0.8 + 0.05 * e + jitter(s)),
        at("layer_magnitude", s, 0.8 + jitter(s, 1)),
    ],
    "lottery.beats_reinit": lambda e, s: [
        imp(s, [dense(s), 0.8 + jitter(s)], reinit=[dense(s), 0.8 - 0.1 * e + jitter(s, 1)]),
    ],
    "lottery.matches_dense": lambda e, s: [imp(s, [0.5, dense(s) + (0.0 if e > 0 else -0.1) + jitter(s), 0.2])],
    "renda.lr_rewinding_geq_finetuning": lambda e, s: [
        at("lr_rewinding", s, 0.8 + 0.05 * e + jitter(s), {"rate": 0.5}),
        at("iterative", s, 0.8 + jitter(s, 1), {"rate": 0.5}),
    ],
    "supermask.above_chance": lambda e, s: [
        at("lottery_anatomy", s, 0.9, {"kept": "signed_constant"}, 0.8, supermask_top1=0.3 + 0.2 * e + jitter(s))
    ],
    "deep_compression.smaller_than_pruning": lambda e, s: [
        stored("deep_compression", s, [("iterative", 1000, 0.9), ("huffman", 1000 * 3.0**-e + 10 * s, 0.9 + jitter(s))])
    ],
    "deepsz.smaller_than_huffman": lambda e, s: [
        stored("pipeline", s, [("global_magnitude", 1000, 0.9), ("sz", 300 * 2.0**-e + 5 * s, 0.9)], {"s": "sz"}),
        stored("pipeline", s, [("global_magnitude", 1000, 0.9), ("huffman", 300, 0.9 + jitter(s))], {"s": "h"}),
    ],
    "weightless.smaller_than_huffman": lambda e, s: [
        stored("pipeline", s, [("global_magnitude", 1000, 0.9), ("bloomier", 300, 0.9 + 0.05 * e + jitter(s))]),
        stored("pipeline", s, [("global_magnitude", 1000, 0.9), ("huffman", 400, 0.9)], {"s": "h"}),
    ],
    "quantization.int8_within_point": lambda e, s: [ptq(s, dense(s) - (0.002 if e > 0 else 0.05) + jitter(s) / 2)],
    "quantization.per_channel_4bit": lambda e, s: [
        ptq(s, 0.8 + 0.1 * e + jitter(s), bits=4),
        ptq(s, 0.8 + jitter(s, 1), bits=4, granularity="per_tensor"),
    ],
    "gradient_flow.sparse_lower_at_init": lambda e, s: [
        gradient("rigl", s, 0.5, "gradient_flow_init", 1.0 + jitter(s)),
        gradient("rigl", s, 0.95, "gradient_flow_init", 2.0**-e + jitter(s, 1)),
    ],
    "gradient_flow.rigl_raises": lambda e, s: [
        gradient("rigl", s, 0.9, "gradient_flow", 2.0**e + jitter(s)),
        gradient("set", s, 0.9, "gradient_flow", 1.0 + jitter(s, 1)),
    ],
    "lmc.connected_while_tickets_work": lambda e, s: [
        imp(s, [dense(s), dense(s) + jitter(s), 0.5], barriers=[None, 0.01 + 0.02 * (e < 0) + jitter(s), 0.3])
    ],
    "lmc.barrier_rises": lambda e, s: [
        imp(s, [dense(s), dense(s), 0.5], barriers=[None, 0.06, 0.06 + 0.05 * e + jitter(s)])
    ],
}


def write(root: Path, scenario: Scenario, e: int, seeds: tuple[int, ...]) -> Path:
    store = ResultsStore(root)
    for seed in seeds:
        for result in scenario(e, seed):
            store.write(result)
    return root


def test_every_claim_has_a_scenario():
    assert set(SCENARIOS) == set(CLAIMS)


@pytest.mark.parametrize("key", sorted(SCENARIOS))
@pytest.mark.parametrize(
    ("e", "seeds", "expected"), [(1, (0, 1, 2), HOLDS), (-1, (0, 1, 2), FAILS), (1, (0, 1), UNDECIDED)]
)
def test_verdict_rule(tmp_path: Path, key: str, e: int, seeds: tuple[int, ...], expected: str):
    verdict, evidence = CLAIMS[key].check(write(tmp_path, SCENARIOS[key], e, seeds))
    assert verdict == expected, evidence
    if expected != UNDECIDED:
        assert "95% CI" in evidence and "3 seeds" in evidence


def test_interval_matches_hand_computed_t():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653 → half width 4.302653 / sqrt(3) = 2.484138
    interval = paired_interval([1.0, 2.0, 3.0])
    assert interval.mean == pytest.approx(2.0)
    assert interval.high - interval.mean == pytest.approx(2.484138, abs=1e-5)
    assert above(interval) == UNDECIDED and above(paired_interval([2.0, 2.1, 2.2])) == HOLDS
    assert paired_interval([1.0, 2.0]) is None


def test_missing_column_and_empty_results_are_not_enough_data(tmp_path: Path):
    write(tmp_path, SCENARIOS["shrinkbench.random_worst"], 1, (0, 1, 2))
    frame = check_claims(tmp_path).set_index("claim")
    assert frame.loc["shrinkbench.random_worst", "verdict"] == HOLDS
    gradient = frame.loc["gradient_flow.rigl_raises"]
    assert gradient["verdict"] == UNDECIDED and "gradient_flow" in gradient["evidence"]
    assert frame.loc["lmc.barrier_rises", "verdict"] == UNDECIDED


def test_the_ticket_is_paired_with_the_reinit_arm_of_its_own_cell(tmp_path: Path):
    # a plain IMP cell of the same seeds, far less accurate, is no pair of the arms: the ticket − reinit
    # differences are the controls cell's alone, 0.1 + jitter(s) − jitter(s, 1) = 0.096, 0.107, 0.097, mean 0.1
    def scenario(e: int, s: int) -> list[CellResult]:
        return [*SCENARIOS["lottery.beats_reinit"](e, s), imp(s, [0.1, 0.1])]

    verdict, evidence = CLAIMS["lottery.beats_reinit"].check(write(tmp_path, scenario, 1, (0, 1, 2)))
    assert verdict == HOLDS and "ticket − reinit +10.00 pt" in evidence, evidence


def test_connected_judges_the_copies_barrier_where_recorded(tmp_path: Path):
    # the successive-level barriers alone would fail it: 30 pt and 25 pt where the ticket matches dense
    store = ResultsStore(tmp_path)
    for s in (0, 1, 2):
        store.write(imp(s, [dense(s)] * 3, barriers=[None, 0.3, 0.25 + jitter(s)], copies=[0.005 + jitter(s) / 2] * 3))
    connected = check_claims(tmp_path).set_index("claim").loc["lmc.connected_while_tickets_work"]
    assert connected["verdict"] == HOLDS and "s=0.5: copies barrier − 0.02" in connected["evidence"]


def test_barrier_rises_compares_successive_barriers_where_the_ticket_fails_with_where_it_works(tmp_path: Path):
    # Paul et al.'s barrier is the successive levels' one. The ticket matches dense at s=0.5 and 0.8 and fails at
    # 0.9 and 0.95; per seed, mean(0.03 + j, 0.05 + j) − 0.01 = 0.03 + j: 3.00, 3.40, 2.70 pt, mean 3.03 pt.
    # The copies barrier stays flat, and is shown beside the verdict without deciding it.
    store = ResultsStore(tmp_path)
    for s in (0, 1, 2):
        barriers, copies = [None, 0.01, 0.03 + jitter(s), 0.05 + jitter(s)], [0.005 + jitter(s) / 2] * 4
        store.write(imp(s, [dense(s), dense(s), 0.5, 0.4], barriers=barriers, copies=copies))
    rises = check_claims(tmp_path).set_index("claim").loc["lmc.barrier_rises"]
    assert rises["verdict"] == HOLDS, rises["evidence"]
    assert "barrier where the ticket fails (s=0.9–0.95) − where it works (s=0.8) +3.03 pt" in rises["evidence"]
    assert "(copies barrier, not judged: +0.00 pt" in rises["evidence"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "the ticket works at every level with a successive barrier (s=0.8–0.9)"),
        ({"dense_top1": None}, "no level with a successive barrier has a dense accuracy to compare with"),
    ],
)
def test_barrier_rises_needs_levels_where_the_ticket_fails_and_where_it_works(tmp_path: Path, extra, message):
    # the barrier rises by 8 pt, but no level is known to have failed: the ticket matches dense, or no dense is known
    store = ResultsStore(tmp_path)
    for s in (0, 1, 2):
        levels = [{"sparsity": sp, "top1": dense(s), "control": "none", **extra} for sp in (0.5, 0.8, 0.9)]
        for level, barrier in zip(levels, (None, 0.01, 0.09 + jitter(s)), strict=True):
            level["lmc_barrier"] = barrier
        store.write(cell("imp", s, levels, {"rate": 0.5}))
    rises = check_claims(tmp_path).set_index("claim").loc["lmc.barrier_rises"]
    assert rises["verdict"] == UNDECIDED and message in rises["evidence"], rises["evidence"]


def test_two_cells_of_one_seed_are_one_observation(tmp_path: Path):
    # two IMP variants per seed share its dense model: ticket − dense is their mean per seed, 0.02 + jitter(s) / 2
    # = 2.00, 2.20, 1.85 pt (mean 2.02), over 3 seeds, not 6
    store = ResultsStore(tmp_path)
    for s in (0, 1, 2):
        for params, gap in (({"rate": 0.5}, 0.01), ({"rate": 0.5, "rewind": "epoch:1"}, 0.03 + jitter(s))):
            levels = [{"sparsity": 0.5, "top1": dense(s), "control": "none"}]
            levels.append({"sparsity": 0.8, "top1": dense(s) + gap, "control": "none"})
            store.write(cell("imp", s, levels, params))
    matches = check_claims(tmp_path).set_index("claim").loc["lottery.matches_dense"]
    assert matches["verdict"] == HOLDS
    assert "ticket − dense +2.02 pt" in matches["evidence"] and "paired t over 3 seeds" in matches["evidence"]


def test_cli_claims_csv_with_reference(tmp_path: Path):
    write(tmp_path / "r", SCENARIOS["lottery.beats_reinit"], 1, (0, 1, 2))
    reference = tmp_path / "ref.csv"
    reference.write_text("# harness 0.1.0\nclaim,verdict,evidence\nlottery.beats_reinit,holds,+10 pt\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "claims",
            "--results",
            str(tmp_path / "r"),
            "--format",
            "csv",
            "--reference",
            str(reference),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(row for row in out.splitlines() if row.startswith("lottery.beats_reinit"))
    assert ",holds," in line and line.endswith(",holds,+10 pt")
    missing = subprocess.run(
        [sys.executable, "-m", "harness.cli", "claims", "--results", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stdout + missing.stderr


def test_the_shipped_reference_covers_every_claim_and_says_what_produced_it():
    from harness.claims import REFERENCE, read_reference

    shipped = read_reference(REFERENCE)
    assert set(shipped) == set(CLAIMS)
    assert {row["verdict"] for row in shipped.values()} <= {HOLDS, FAILS, UNDECIDED}
    header = [line for line in REFERENCE.read_text().splitlines() if line.startswith("#")]
    assert any("torch" in line and "commit" in line for line in header)
    decided = [key for key, row in shipped.items() if row["verdict"] != UNDECIDED]
    assert len(decided) >= 6 and "lottery.beats_reinit" in decided  # what make reproduce-quick promises
