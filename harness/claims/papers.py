"""The seed papers' claims (benchmarks/papers/ has the specs that test them, ../shared/reference/methods.md
the papers). Accuracy differences are in points of test top-1; every interval is the paired t-interval
of harness.claims.stats over seeds, within one setting (benchmark, model, data set)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable

import pandas as pd

from harness.claims.base import claim
from harness.claims.stats import UNDECIDED, Verdict, above, across, all_of, below, paired_interval

SETTING = ["benchmark", "model", "dataset"]
POINT = 0.01  # "within a point", "equal accuracy": one point of top-1
CHANCE_CLASSES = {"digits": 10, "mnist1d": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}

SHRINKBENCH = "Blalock et al. 2020, What is the State of Neural Network Pruning?"
FRANKLE_CARBIN = "Frankle & Carbin 2019, The Lottery Ticket Hypothesis"
RENDA = "Renda et al. 2020, Comparing Rewinding and Fine-tuning in Neural Network Pruning"
ZHOU = "Zhou et al. 2019, Deconstructing Lottery Tickets"
DEEP_COMPRESSION = "Han et al. 2016, Deep Compression"
NAGEL = "Nagel et al. 2021, A White Paper on Neural Network Quantization; Krishnamoorthi 2018"
DEEPSZ = "Jin et al. 2019, DeepSZ"
WEIGHTLESS = "Reagen et al. 2017, Weightless"
EVCI = "Evci et al. 2020, Gradient Flow in Sparse Neural Networks and How Lottery Tickets Win"
LMC = "Paul et al. 2022, Unmasking the Lottery Ticket Hypothesis; Frankle et al. 2020, Linear Mode Connectivity"

# Every level of every finished cell (the finished_levels view), with what the claims need; ``final`` marks
# the cell's last row.
LEVELS = """
SELECT benchmark, model, dataset, method, method_params, cell_id, seed, level, control, sparsity, top1, dense_top1,
       level = max(level) OVER (PARTITION BY benchmark, cell_id) AS final{extra}
FROM finished_levels {where}
"""


def levels_sql(methods: Iterable[str], extra: Iterable[str] = (), arms: bool = False) -> str:
    """The levels of ``methods``' cells: the main line's only, or with ``arms`` the control arms' rows too."""
    names = ", ".join(f"'{m}'" for m in methods)
    where = f"WHERE method IN ({names})" + ("" if arms else " AND control = 'none'")
    return LEVELS.format(extra="".join(f", {c}" for c in extra), where=where)


def param(frame: pd.DataFrame, name: str, default: object = None) -> pd.Series:
    """One method parameter of every row (``default`` where the spec left it out)."""
    return frame["method_params"].map(lambda text: json.loads(text or "{}").get(name, default))


def aligned(a: pd.DataFrame, b: pd.DataFrame, value: str, on: Iterable[str] = ("seed",)) -> pd.DataFrame:
    """``value`` of a and b side by side (columns a, b) over the keys both have; a repeated key is averaged."""
    keys = list(on)
    left, right = a.groupby(keys)[value].mean(), b.groupby(keys)[value].mean()
    return pd.concat([left.rename("a"), right.rename("b")], axis=1, join="inner")


def differences(a: pd.DataFrame, b: pd.DataFrame, value: str = "top1", on: Iterable[str] = ("seed",)) -> list[float]:
    """a − b of ``value`` per key (seed by default)."""
    joined = aligned(a, b, value, on)
    return list(joined["a"] - joined["b"])


def per_seed(rows: pd.DataFrame, values: pd.Series) -> list[float]:
    """One value per seed, the mean of its rows: two cells of one seed (e.g. two IMP variants sharing its dense
    model) are one observation, not two, so they must not narrow the interval."""
    return list(values.groupby(rows["seed"]).mean())


def log_ratios(a: pd.DataFrame, b: pd.DataFrame, value: str, on: Iterable[str] = ("seed",)) -> list[float]:
    """log(a / b) of ``value`` per key: sizes compare by ratio, so the interval is on its logarithm."""
    joined = aligned(a, b, value, on)
    return [math.log(x / y) for x, y in zip(joined["a"], joined["b"], strict=True) if x > 0 and y > 0]


def per_setting(frame: pd.DataFrame, judge: Callable[[pd.DataFrame], tuple[Verdict, str]]) -> tuple[Verdict, str]:
    """Judge each setting on its own, then :func:`across` them; the evidence names every setting."""
    verdicts, notes = [], []
    for key, group in frame.groupby(SETTING, sort=True):
        verdict, note = judge(group)
        verdicts.append(verdict)
        notes.append(f"{'/'.join(map(str, key))}: {note} → {verdict}")
    return across(verdicts), "; ".join(notes)


def seeds_text(frame: pd.DataFrame) -> str:
    return "seeds " + ",".join(str(s) for s in sorted(frame["seed"].unique()))


def _need(n_needed: str) -> tuple[Verdict, str]:
    return UNDECIDED, n_needed


# -- ShrinkBench ------------------------------------------------------------------------------------

BASELINES = ("global_magnitude", "layer_magnitude", "global_gradient", "layer_gradient")


def _highest_shared(frame: pd.DataFrame, methods: Iterable[str]) -> float | None:
    """The highest sparsity at which every one of ``methods`` has rows."""
    shared = set.intersection(*(set(frame.loc[frame["method"] == m, "sparsity"]) for m in methods))
    return max(shared) if shared else None


@claim(
    "shrinkbench.random_worst",
    SHRINKBENCH,
    "random pruning is the worst method at the highest compression tested",
    levels_sql(("random", *BASELINES)) + " AND method_params = '{}'",
)
def random_worst(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        others = [m for m in BASELINES if m in set(group["method"])]
        if "random" not in set(group["method"]) or not others:
            return _need("needs random and a magnitude or gradient baseline")
        sparsity = _highest_shared(group, ["random", *others])
        if sparsity is None:
            return _need("no sparsity shared by random and the baselines")
        at = group[group["sparsity"] == sparsity]
        parts, notes = [], []
        for other in others:
            interval = paired_interval(differences(at[at["method"] == other], at[at["method"] == "random"]))
            parts.append(above(interval))
            notes.append(f"{other} − random {interval.text() if interval else 'fewer than 3 paired seeds'}")
        return all_of(parts), f"at sparsity {sparsity:g}, {seeds_text(at)}: " + "; ".join(notes)

    return per_setting(frame, judge)


@claim(
    "shrinkbench.global_geq_layer",
    SHRINKBENCH,
    "global magnitude pruning is at least as accurate as layer-wise (within a point or better) at high compression",
    levels_sql(("global_magnitude", "layer_magnitude")) + " AND method_params = '{}'",
)
def global_geq_layer(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        sparsity = _highest_shared(group, ["global_magnitude", "layer_magnitude"])
        if sparsity is None:
            return _need("needs global_magnitude and layer_magnitude at one sparsity")
        at = group[group["sparsity"] == sparsity]
        g, layer = at[at["method"] == "global_magnitude"], at[at["method"] == "layer_magnitude"]
        interval = paired_interval(differences(g, layer))
        evidence = f"at sparsity {sparsity:g}, global − layer {interval.text() if interval else 'fewer than 3 seeds'}"
        return above(interval, -POINT), evidence + " (holds above −1 pt)"

    return per_setting(frame, judge)


# -- the lottery ticket -----------------------------------------------------------------------------


def _tickets(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tickets and their reinit arms, of the cells that trained both (the arm's pair is in its own cell)."""
    reinit = frame[frame["control"] == "reinit"]
    ticket = frame[(frame["control"] == "none") & frame["cell_id"].isin(reinit["cell_id"])]
    return ticket, reinit


@claim(
    "lottery.beats_reinit",
    FRANKLE_CARBIN,
    "at the highest sparsity, the rewound ticket (IMP) is more accurate than the same mask randomly reinitialised",
    levels_sql(("imp",), arms=True),
)
def ticket_beats_reinit(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        ticket, reinit = _tickets(group)
        if ticket.empty or reinit.empty:
            return _need("needs imp with controls: [reinit]")
        sparsity = min(ticket["sparsity"].max(), reinit["sparsity"].max())
        t, r = ticket[ticket["sparsity"] == sparsity], reinit[reinit["sparsity"] == sparsity]
        interval = paired_interval(differences(t, r, on=("cell_id", "seed")))
        text = interval.text() if interval else "fewer than 3 paired seeds"
        return above(interval), f"at sparsity {sparsity:g}, ticket − reinit {text}, {seeds_text(t)}"

    return per_setting(frame, judge)


MODERATE = 0.85  # "moderate sparsity": the largest IMP level at or below 85 % of the weights removed


@claim(
    "lottery.matches_dense",
    FRANKLE_CARBIN,
    f"at moderate sparsity (the IMP level nearest {MODERATE:.0%} from below) the ticket is within a point "
    "of the dense network or better",
    levels_sql(("imp",)),
)
def ticket_matches_dense(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        moderate = group[(group["sparsity"] > 0) & (group["sparsity"] <= MODERATE + 1e-9)]
        if moderate.empty:
            return _need(f"needs an IMP level at or below sparsity {MODERATE}")
        at = moderate[moderate["sparsity"] == moderate["sparsity"].max()]
        interval = paired_interval(per_seed(at, at["top1"] - at["dense_top1"]))
        text = interval.text() if interval else "fewer than 3 seeds"
        return above(interval, -POINT), f"at sparsity {at['sparsity'].iloc[0]:g}, ticket − dense {text}"

    return per_setting(frame, judge)


@claim(
    "renda.lr_rewinding_geq_finetuning",
    RENDA,
    "at the highest sparsity, learning-rate rewinding is at least as accurate as fine-tuning (within a point or "
    "better), both iterative global magnitude pruning",
    levels_sql(("lr_rewinding", "iterative")),
)
def lr_rewinding_geq_finetuning(frame: pd.DataFrame) -> tuple[Verdict, str]:
    frame = frame.assign(rewind=param(frame, "rewind", None), score=param(frame, "score", "global_magnitude"))
    finetuning = (frame["method"] == "iterative") & frame["rewind"].isin([None, "none"])
    frame = frame[(frame["method"] == "lr_rewinding") | (finetuning & (frame["score"] == "global_magnitude"))]

    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        lr, ft = group[group["method"] == "lr_rewinding"], group[group["method"] == "iterative"]
        if lr.empty or ft.empty:
            return _need("needs lr_rewinding and iterative (rewind: none) pruning")
        sparsity = min(lr["sparsity"].max(), ft["sparsity"].max())
        interval = paired_interval(differences(lr[lr["sparsity"] == sparsity], ft[ft["sparsity"] == sparsity]))
        text = interval.text() if interval else "fewer than 3 paired seeds"
        return above(interval, -POINT), f"at sparsity {sparsity:g}, lr rewinding − fine-tuning {text}"

    return per_setting(frame, judge)


SUPERMASK_FACTOR = 3  # "far above chance": at least three times the chance accuracy


@claim(
    "supermask.above_chance",
    ZHOU,
    f"the untrained ticket (mask only, supermask) scores at least {SUPERMASK_FACTOR}× chance at its best sparsity",
    levels_sql(("lottery_anatomy",), ("supermask_top1",)),
)
def supermask_above_chance(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        classes = CHANCE_CLASSES.get(group["dataset"].iloc[0])
        if classes is None:
            return _need("chance accuracy of this data set is not known to the claim")
        bar = SUPERMASK_FACTOR / classes
        rows = group[param(group, "criterion", "large_final") == "large_final"].dropna(subset=["supermask_top1"])
        if rows.empty:
            return _need("no large_final supermask rows")
        best = rows.groupby("sparsity")["supermask_top1"].mean().idxmax()  # Zhou et al. report the best rate
        rows = rows[rows["sparsity"] == best]
        interval = paired_interval(per_seed(rows, rows["supermask_top1"] - bar))
        text = interval.text() if interval else "fewer than 3 seeds"
        mean = rows["supermask_top1"].mean()
        return above(interval), f"at sparsity {best:g} (its best), supermask top-1 {mean:.1%} vs {bar:.0%}: {text}"

    return per_setting(frame, judge)


# -- compression -----------------------------------------------------------------------------------

STAGES = """
SELECT benchmark, model, dataset, method, cell_id, seed, level, sparsity, stage, top1, size_bytes,
       level = max(level) OVER (PARTITION BY benchmark, cell_id) AS final
FROM finished_levels WHERE method IN ('deep_compression', 'pipeline')
"""


@claim(
    "deep_compression.smaller_than_pruning",
    DEEP_COMPRESSION,
    "pruning + weight sharing + Huffman stores the model in fewer bytes than pruning alone, within a point of "
    "its accuracy",
    STAGES + " AND method = 'deep_compression'",
)
def deep_compression_smaller(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        final = group[group["final"]]
        pruned = group[group["stage"] == "iterative"]
        pruned = pruned[pruned["level"] == pruned.groupby("cell_id")["level"].transform("max")]
        size = paired_interval(log_ratios(pruned, final, "size_bytes"))
        accuracy = paired_interval(differences(final, pruned))
        if size is None or accuracy is None:
            return _need(f"fewer than 3 seeds with both rows ({seeds_text(final)})")
        factor = math.exp(size.mean)
        evidence = (
            f"pruned alone / full pipeline bytes ×{factor:.2f} (log ratio {size.text(1, '')}); "
            f"accuracy full − pruned {accuracy.text()}"
        )
        return all_of([above(size), above(accuracy, -POINT)]), evidence

    return per_setting(frame, judge)


def _encoder_vs_huffman(frame: pd.DataFrame, encoder: str) -> tuple[Verdict, str]:
    """``encoder``'s pipelines against the smallest Huffman-coded model of the same seed and sparsity
    (the strongest Huffman baseline present, so a "holds" is not won against a weak one)."""

    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        mine, huffman = group[group["stage"] == encoder], group[group["stage"] == "huffman"]
        if mine.empty or huffman.empty:
            return _need(f"needs a pipeline ending in {encoder} and one ending in huffman")
        best = huffman.loc[huffman.groupby(["seed", "sparsity"])["size_bytes"].idxmin()]
        on = ("seed", "sparsity")
        ratio = paired_interval(log_ratios(best, mine, "size_bytes", on))
        accuracy = paired_interval(differences(mine, best, "top1", on))
        if ratio is None or accuracy is None:
            return _need("fewer than 3 paired seeds")
        evidence = (
            f"Huffman / {encoder} bytes ×{math.exp(ratio.mean):.2f} (log ratio {ratio.text(1, '')}); "
            f"accuracy {encoder} − Huffman {accuracy.text()}"
        )
        return all_of([above(ratio), above(accuracy, -POINT)]), evidence

    return per_setting(frame[frame["final"]], judge)


@claim(
    "deepsz.smaller_than_huffman",
    DEEPSZ,
    "an SZ-coded pruned model is smaller than the Huffman-coded one (Deep Compression's coding), within a point",
    STAGES,
)
def sz_vs_huffman(frame: pd.DataFrame) -> tuple[Verdict, str]:
    return _encoder_vs_huffman(frame, "sz")


@claim(
    "weightless.smaller_than_huffman",
    WEIGHTLESS,
    "a Bloomier-filter-coded pruned model is smaller than the Huffman-coded one, within a point",
    STAGES,
)
def bloomier_vs_huffman(frame: pd.DataFrame) -> tuple[Verdict, str]:
    return _encoder_vs_huffman(frame, "bloomier")


# -- quantisation ----------------------------------------------------------------------------------

PTQ = levels_sql(("ptq",)) + " AND sparsity = 0"


def _ptq(frame: pd.DataFrame) -> pd.DataFrame:
    """Final PTQ rows with their bits and granularity, weights only (activations left float)."""
    frame = frame[frame["final"]].assign(
        bits=param(frame, "bits", 8),
        granularity=param(frame, "granularity", "per_channel"),
        activation_bits=param(frame, "activation_bits", None),
    )
    return frame[frame["activation_bits"].isna()]


@claim(
    "quantization.int8_within_point",
    NAGEL,
    "8-bit post-training weight quantisation of the unpruned model is within a point of float accuracy",
    PTQ,
)
def int8_within_point(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        int8 = group[group["bits"] == 8]
        interval = paired_interval(per_seed(int8, int8["top1"] - int8["dense_top1"]))
        text = interval.text() if interval else "fewer than 3 seeds"
        return above(interval, -POINT), f"int8 − float {text}, {seeds_text(int8) if len(int8) else 'no seeds'}"

    return per_setting(_ptq(frame), judge)


@claim(
    "quantization.per_channel_4bit",
    NAGEL,
    "at 4 bits, per-channel weight ranges are more accurate than one range per tensor (where the task separates them)",
    PTQ,
)
def per_channel_beats_per_tensor(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        four = group[group["bits"] == 4]
        channel, tensor = four[four["granularity"] == "per_channel"], four[four["granularity"] == "per_tensor"]
        interval = paired_interval(differences(channel, tensor))
        if interval is None:
            return _need("needs 4-bit per_channel and per_tensor PTQ on 3 seeds")
        verdict = above(interval)
        note = "" if verdict != UNDECIDED else " — the task does not separate them"
        return verdict, f"per-channel − per-tensor {interval.text()}{note}"

    return per_setting(_ptq(frame), judge)


# -- gradient flow (Evci et al.): the GradientFlow callback's epoch columns ---------------------------

GRADIENT_INIT = """
SELECT c.benchmark, c.model, c.dataset, c.method, c.method_params, c.seed, c.sparsity, e.gradient_flow_init AS value
FROM epochs e JOIN finished_levels c USING (benchmark, cell_id)
WHERE c.level = 0 AND e.epoch = 0 AND e.gradient_flow_init IS NOT NULL
"""


@claim(
    "gradient_flow.sparse_lower_at_init",
    EVCI,
    "at initialisation the sparser network of a method has the lower gradient norm (lowest vs highest sparsity)",
    GRADIENT_INIT,
)
def sparse_lower_gradient_at_init(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        parts, notes = [], []
        for (method, _), rows in group.groupby(["method", "method_params"]):
            low, high = rows["sparsity"].min(), rows["sparsity"].max()
            if low == high:
                continue
            interval = paired_interval(
                log_ratios(rows[rows["sparsity"] == high], rows[rows["sparsity"] == low], "value")
            )
            parts.append(below(interval))
            text = interval.text(1, "") if interval else "fewer than 3 seeds"
            notes.append(f"{method} log(norm at {high:g} / at {low:g}) {text}")
        if not parts:
            return _need("needs one method at two sparsities with gradient_flow_init")
        return all_of(parts), "; ".join(notes)

    return per_setting(frame, judge)


GRADIENT_TRAINING = """
SELECT c.benchmark, c.model, c.dataset, c.method, c.seed, c.sparsity, avg(e.gradient_flow) AS value
FROM epochs e JOIN finished_levels c USING (benchmark, cell_id)
WHERE c.method IN ('rigl', 'set') AND e.gradient_flow IS NOT NULL
GROUP BY ALL
"""


@claim(
    "gradient_flow.rigl_raises",
    EVCI,
    "RigL's gradient-based regrowth keeps the gradient norm during training above SET's random regrowth",
    GRADIENT_TRAINING,
)
def rigl_raises_gradient_flow(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        rigl, set_ = group[group["method"] == "rigl"], group[group["method"] == "set"]
        sparsity = _highest_shared(group, ["rigl", "set"])
        if sparsity is None:
            return _need("needs rigl and set with gradient_flow: true at one sparsity")
        rigl, set_ = rigl[rigl["sparsity"] == sparsity], set_[set_["sparsity"] == sparsity]
        interval = paired_interval(log_ratios(rigl, set_, "value"))
        text = interval.text(1, "") if interval else "fewer than 3 paired seeds"
        return above(interval), f"at sparsity {sparsity:g}, log(mean gradient norm RigL / SET) {text}"

    return per_setting(frame, judge)


# -- linear mode connectivity (the ``lmc_barrier*`` columns of iterative schedules) ---------------------

BARRIER = 0.02  # "connected": the validation-error barrier stays below two points
BARRIERS = ("lmc_barrier_copies", "lmc_barrier")  # the copies' (Frankle et al. 2020's test) preferred
LMC_SQL = levels_sql(("imp", "weight_rewinding", "lr_rewinding", "iterative"), BARRIERS)


def barrier_rows(group: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """A setting's plain (no control) rows with a barrier, the barrier column judged and its name: the barrier
    between two copies of a level where ``lmc_copies`` recorded it, else the one between successive levels."""
    rows = group[param(group, "control", "none") == "none"]
    column = next((c for c in BARRIERS if rows[c].notna().any()), BARRIERS[-1])
    return rows.dropna(subset=[column]), column, "copies barrier" if column == BARRIERS[0] else "barrier"


@claim(
    "lmc.connected_while_tickets_work",
    LMC,
    f"IMP levels are linearly mode-connected (validation-error barrier < {BARRIER:.0%}: between two copies of the "
    "level trained in different data orders where recorded, else to the previous level) at every level where the "
    "ticket is within a point of dense",
    LMC_SQL,
)
def connected_while_working(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        rows, column, name = barrier_rows(group)
        working = rows.groupby("sparsity").filter(lambda r: (r["top1"] - r["dense_top1"]).mean() >= -POINT)
        if working.empty:
            return _need("no level with a barrier where the ticket works")
        parts, notes = [], []
        for sparsity, level in working.groupby("sparsity"):
            interval = paired_interval(per_seed(level, level[column] - BARRIER))
            parts.append(below(interval))
            notes.append(f"s={sparsity:g}: {name} − {BARRIER:g} {interval.text() if interval else 'n<3'}")
        return all_of(parts), "; ".join(notes)

    return per_setting(frame.dropna(subset=list(BARRIERS), how="all"), judge)


def _working(rows: pd.DataFrame) -> pd.Series:
    """Per row: is its level one where the ticket works (mean top-1 over seeds within a point of dense)? NA where
    the level has no dense accuracy to compare with."""
    gap = (rows["top1"] - rows["dense_top1"]).groupby(rows["sparsity"]).transform("mean")
    return (gap >= -POINT).astype("boolean").mask(gap.isna())


def _span(sparsities: pd.Series) -> str:
    low, high = sparsities.min(), sparsities.max()
    return f"s={low:g}" if low == high else f"s={low:g}–{high:g}"


@claim(
    "lmc.barrier_rises",
    LMC,
    "the error barrier between successive IMP levels (Paul et al.'s test) is higher at the levels where the ticket "
    "has stopped working (more than a point below dense) than at those where it works",
    LMC_SQL,
)
def barrier_rises(frame: pd.DataFrame) -> tuple[Verdict, str]:
    def judge(group: pd.DataFrame) -> tuple[Verdict, str]:
        rows = group[param(group, "control", "none") == "none"]
        working = _working(rows)
        context = _copies_context(rows, working)
        rows, working = rows[rows["lmc_barrier"].notna()], working[rows["lmc_barrier"].notna()]
        fails, works = rows[~working], rows[working]  # a level without dense accuracy (NA) is in neither
        if rows.empty:
            return _need("no level of the ticket itself has a successive barrier")
        if fails.empty and works.empty:
            return _need("no level with a successive barrier has a dense accuracy to compare with")
        if fails.empty or works.empty:
            where = "works" if fails.empty else "has stopped working"
            return _need(f"the ticket {where} at every level with a successive barrier ({_span(rows['sparsity'])})")
        interval = paired_interval(differences(fails, works, "lmc_barrier"))
        text = interval.text() if interval else "fewer than 3 seeds"
        spans = f"fails ({_span(fails['sparsity'])}) − where it works ({_span(works['sparsity'])})"
        return above(interval), f"barrier where the ticket {spans} {text}{context}"

    return per_setting(frame.dropna(subset=list(BARRIERS), how="all"), judge)


def _copies_context(rows: pd.DataFrame, working: pd.Series) -> str:
    """The same comparison for the barrier between two copies of a level (Frankle et al. 2020's instability),
    shown beside the verdict: a ticket can fail from lack of capacity while its copies stay connected."""
    copies = rows["lmc_barrier_copies"].notna()
    fails, works = rows[copies & ~working], rows[copies & working]
    interval = paired_interval(differences(fails, works, "lmc_barrier_copies")) if len(fails) and len(works) else None
    return f" (copies barrier, not judged: {interval.text()})" if interval else ""
