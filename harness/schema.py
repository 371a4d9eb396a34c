"""The results schema: the core columns of the ``cells``, ``epochs``, ``layers`` and ``trials`` views.

This is the documented contract readers rely on (docs/reference/columns.md is generated from it). The store casts every
core column it writes to the type declared here, so files written months apart still union cleanly;
any other column a method or scheduler adds flows through untouched (views read with
``union_by_name``). Every row carries ``schema_version``: bump it when a core column changes meaning
or type, so a reader can tell old rows from new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

# 2: pruning counted apart from quantisation zeros; zero_fraction, storage_compression, layer_collapse, train_epochs
# 3: channels physically removed (channels_removed, params_physical, flops_physical); batch-1 latency, measured speedups
# 4: `control` (cells, layers): a lottery ticket's control arms are rows of the ticket's cell;
#    lmc_barrier (now on the validation split) and lmc_barrier_copies as core columns: null in older rows
SCHEMA_VERSION = 4


@dataclass
class CellResult:
    """What a cell hands back: one row per level, its epoch curves, its per-layer table, its log and, unless the
    spec says ``record_masks: false``, every level's masks as a :mod:`harness.maskfile` file (``None``: none).

    Plain data (no torch), so the store and the readers can name it without importing a cell.
    """

    cell_id: str
    rows: list[dict[str, Any]]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    log: str = ""
    masks: bytes | None = None

    @property
    def ok(self) -> bool:
        return all(row["status"] == "ok" for row in self.rows)


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    definition: str
    default: str | None = None  # SQL literal read where a file lacks the column or holds NULL (older schemas)


_VERSION = Column("schema_version", pa.int32(), "version of this schema the row was written under")
_KEYS = (
    Column("benchmark", pa.string(), "the benchmark (spec `name`) the row was written under"),
    Column("cell_id", pa.string(), "hash of the cell's non-default spec fields: model, data set, method, params, …"),
)

CELLS = (
    _VERSION,
    *_KEYS,
    Column("pretrain_key", pa.string(), "hash of (model, dataset, seed, pretrain recipe): cells sharing a dense model"),
    Column("model", pa.string(), "registered model name"),
    Column("dataset", pa.string(), "registered data-set name"),
    Column("method", pa.string(), "registered method name"),
    Column("method_params", pa.string(), "the method's non-default parameters as canonical JSON (`{}` if none)"),
    Column("sparsity", pa.float64(), "target fraction of prunable weights removed at this level"),
    Column(
        "compression", pa.float64(), "target compression the sparsity was derived from (null: spec gave sparsities)"
    ),
    Column("seed", pa.int64(), "seed of pretraining, pruning and fine-tuning"),
    Column("level", pa.int64(), "0, 1, …: one row per prune/fine-tune level a method finished"),
    Column(
        "control",
        pa.string(),
        "`none`, or the control arm of the level's lottery ticket the row is (`reinit`, `random_mask`); "
        "`none` in tables written before schema 4",
        "'none'",
    ),
    Column("status", pa.string(), "`ok`, `failed`, or `partial` (a finished level of a cell still running or cut off)"),
    Column("error", pa.string(), "the error and the end of its traceback when failed, else null"),
    Column("started_at", pa.timestamp("us", tz="UTC"), "when the cell started"),
    Column("finished_at", pa.timestamp("us", tz="UTC"), "when the cell finished"),
    Column("top1", pa.float64(), "test top-1 accuracy after the level's fine-tuning, fraction in [0, 1]"),
    Column("top5", pa.float64(), "test top-5 accuracy after the level's fine-tuning"),
    Column("loss", pa.float64(), "test cross-entropy, example-weighted"),
    Column("top1_pruned", pa.float64(), "test top-1 right after pruning, before fine-tuning"),
    Column("top5_pruned", pa.float64(), "test top-5 right after pruning, before fine-tuning"),
    Column("params_total", pa.int64(), "all parameters of the model (weights, biases, BatchNorm, classifier)"),
    Column(
        "params_nonzero",
        pa.int64(),
        "parameters not pruned (nonzero; a quantiser's rounding zeros are kept), less weights reading a dead input",
    ),
    Column(
        "params_physical",
        pa.int64(),
        "parameters the model holds at its shapes, zeros included: params_total until channels are removed",
    ),
    Column("compression_ratio", pa.float64(), "parameter compression: params_total / params_nonzero (ShrinkBench)"),
    Column("sparsity_achieved", pa.float64(), "fraction of the prunable weights removed by pruning"),
    Column("zero_fraction", pa.float64(), "fraction of the prunable weights exactly zero: pruned or rounded to zero"),
    Column("layer_collapse", pa.bool_(), "some prunable layer has ≥ 99 % of its weights pruned or reading dead inputs"),
    Column("flops_dense", pa.int64(), "multiply-adds of Conv and Linear layers for one example, unpruned"),
    Column(
        "flops_nonzero",
        pa.float64(),
        "multiply-adds left: each layer's dense count × its fraction of weights not pruned nor reading a dead input",
    ),
    Column(
        "flops_physical",
        pa.float64(),
        "multiply-adds of the model's layer shapes as they are, zeros included: flops_dense until channels go",
    ),
    Column("theoretical_speedup", pa.float64(), "flops_dense / flops_nonzero (ShrinkBench)"),
    Column("channels_removed", pa.int64(), "channels physically removed from the model (`remove: true`), else 0"),
    Column("storage_format", pa.string(), "how the model is stored: dense float32, sparse, quantised codes, encoded"),
    Column("size_bytes", pa.float64(), "bytes of the model as stored in `storage_format`"),
    Column("size_bytes_dense", pa.float64(), "bytes of the dense model as float32: 4 · params_total"),
    Column("storage_compression", pa.float64(), "storage compression: size_bytes_dense / size_bytes"),
    Column("bits_per_weight", pa.float64(), "8 · size_bytes / params_total"),
    Column("latency_dense_ms", pa.float64(), "measured inference time of one batch through the dense model"),
    Column("latency_ms", pa.float64(), "the same for the model of this level (sparse kernels, channels removed)"),
    Column("measured_speedup", pa.float64(), "latency_dense_ms / latency_ms: measured, beside theoretical_speedup"),
    Column("latency_batch1_dense_ms", pa.float64(), "measured inference time of one example through the dense model"),
    Column("latency_batch1_ms", pa.float64(), "the same for the model of this level"),
    Column("measured_speedup_batch1", pa.float64(), "latency_batch1_dense_ms / latency_batch1_ms"),
    Column("dense_top1", pa.float64(), "test top-1 of the shared dense model before pruning"),
    Column("dense_top5", pa.float64(), "test top-5 of the shared dense model"),
    Column("dense_loss", pa.float64(), "test loss of the shared dense model"),
    Column(
        "train_epochs",
        pa.int64(),
        "epochs this cell trained up to this level, every phase after the shared dense pretraining (tickets too)",
    ),
    Column(
        "lmc_barrier",
        pa.float64(),
        "validation-error barrier on the line from the previous level's network to this one's (`lmc_points`)",
    ),
    Column(
        "lmc_barrier_copies",
        pa.float64(),
        "validation-error barrier between this level's network and its copy trained in another data order "
        "(`lmc_copies`), else null",
    ),
    Column("pretrain_seconds", pa.float64(), "wall seconds of the dense pretraining"),
    Column("prune_seconds", pa.float64(), "wall seconds spent choosing and applying masks in this level"),
    Column("finetune_seconds", pa.float64(), "wall seconds of this level's fine-tuning"),
    Column("eval_seconds", pa.float64(), "wall seconds of this level's evaluation and metrics"),
    Column("harness_version", pa.string(), "version of the harness that produced the row"),
    Column("torch_version", pa.string(), "PyTorch version"),
    Column("git_commit", pa.string(), "git commit of the harness checkout, when it is one"),
    Column("method_version", pa.string(), "the method class's declared `version` (in the cell id once not `1`)"),
    Column("method_source_hash", pa.string(), "sha256 of the method's source files, plugins included (16 hex)"),
    Column("mlflow_run_id", pa.string(), "the cell's MLflow run (per-epoch curves, parameters, error)"),
)

EPOCHS = (
    _VERSION,
    *_KEYS,
    Column("phase", pa.string(), "`pretrain` or `finetune-<level>`"),
    Column("epoch", pa.int64(), "0-based epoch within the phase"),
    Column("lr", pa.float64(), "learning rate at the end of the epoch"),
    Column("train_loss", pa.float64(), "mean training cross-entropy over the epoch"),
    Column("train_top1", pa.float64(), "training top-1 over the epoch"),
    Column("val_loss", pa.float64(), "validation cross-entropy (the split held out from training)"),
    Column("val_top1", pa.float64(), "validation top-1"),
)

LAYERS = (
    _VERSION,
    *_KEYS,
    Column("level", pa.int64(), "the level of the cells row this layer belongs to"),
    Column(
        "control",
        pa.string(),
        "the `control` of the cells row this layer belongs to (`none` before schema 4)",
        "'none'",
    ),
    Column("layer", pa.string(), "module name in the model, e.g. `features.0`"),
    Column("kind", pa.string(), "`Conv2d`, `Linear`, …"),
    Column("params", pa.int64(), "parameters of the layer (weight and bias)"),
    Column("nonzero", pa.int64(), "parameters of the layer not pruned, less weights reading a dead input"),
    Column("flops_dense", pa.int64(), "multiply-adds of the layer for one example, from its real output shape"),
    Column("flops_nonzero", pa.float64(), "flops_dense × (1 − weight_sparsity)"),
    Column("weight_sparsity", pa.float64(), "fraction of the layer's weights pruned or reading a dead input"),
    Column("size_bytes", pa.float64(), "bytes of the layer as stored (see the cells row's `storage_format`)"),
    Column(
        "prunable", pa.bool_(), "whether the method could prune this layer (not `exclude`d, classifier only if asked)"
    ),
    Column("max_layer_sparsity", pa.float64(), "the method's cap on this layer's sparsity, when it set one"),
)

TRIALS = (  # written by `harness tune`, one file per study (never compacted: a study is rewritten whole)
    _VERSION,
    Column("benchmark", pa.string(), "the benchmark (spec `name`) that was tuned"),
    Column("study", pa.string(), "the Optuna study: hash of the base cell, search space, sampler, pruner and cap"),
    Column("method", pa.string(), "registered method name"),
    Column("model", pa.string(), "registered model name"),
    Column("dataset", pa.string(), "registered data-set name"),
    Column("method_params", pa.string(), "the spec's own parameters of the method (canonical JSON)"),
    Column("sparsity", pa.float64(), "the study's target sparsity"),
    Column("search_seed", pa.int64(), "seed the study searched with (pretraining, pruning, fine-tuning)"),
    Column("protocol", pa.string(), "`equal` or `qmc`"),
    Column("sampler", pa.string(), "`tpe` or `qmc`"),
    Column("trial", pa.int64(), "Optuna's trial number within the study"),
    Column("state", pa.string(), "`COMPLETE`, `PRUNED`, `FAIL` or `RUNNING`"),
    Column("counted", pa.bool_(), "counts against the study's budget (false only for a trial cut off by Ctrl-C)"),
    Column("value", pa.float64(), "VALIDATION top-1 after fine-tuning (never test); the curve's value if pruned"),
    Column("params", pa.string(), "the sampled point as canonical JSON"),
    Column("epochs", pa.int64(), "training epochs the trial ran (its per-epoch curve's length)"),
    Column("seconds", pa.float64(), "wall seconds from submission to result"),
    Column("cell_id", pa.string(), "id of the cell the trial ran (its sampled recipe and parameters)"),
    Column("error", pa.string(), "why a failed trial failed (its log: tuning/logs/<study>-<trial>.log), else null"),
)

COLUMNS: dict[str, tuple[Column, ...]] = {"cells": CELLS, "epochs": EPOCHS, "layers": LAYERS, "trials": TRIALS}
VIEWS = tuple(COLUMNS)
CELL_VIEWS = ("cells", "epochs", "layers")  # the views a cell result writes, one file per cell


class SchemaError(ValueError):
    """A row's core column cannot be stored with the type the schema declares."""


def to_arrow(view: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as an Arrow table: ``schema_version`` stamped, core columns cast to their declared type."""
    if not rows:  # a cell with no rows in this view still gets a file: it hides the rows of an older write
        return pa.table({c.name: pa.array([], c.type) for c in (_VERSION, *_KEYS)})
    columns = list(dict.fromkeys(key for row in rows for key in row))  # every row's keys, not only the first's
    table = pa.Table.from_pylist([{**dict.fromkeys(columns), **row, "schema_version": SCHEMA_VERSION} for row in rows])
    for column in COLUMNS[view]:
        index = table.schema.get_field_index(column.name)
        if index < 0 or table.schema.field(index).type == column.type:
            continue
        try:
            table = table.set_column(index, column.name, table.column(index).cast(column.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(
                f"{view} column {column.name!r} must be {column.type} (harness/schema.py), "
                f"got {table.schema.field(index).type}: {exc}"
            ) from None
    return table


def sql_type(column: Column) -> str:
    """The DuckDB type a view gives ``column``."""
    return _SQL_TYPES[column.type]


def empty_select(view: str) -> str:
    """SQL for the view when nothing is written yet: its core columns, no rows."""
    return f"SELECT {core_first(view, [])} WHERE false"


def core_first(view: str, present: list[str]) -> str:
    """A select list: every core column in schema order (NULL of its type, or its default, where no file has it),
    then the rest."""
    core = [_core_select(c, c.name in present) for c in COLUMNS[view]]
    names = {c.name for c in COLUMNS[view]}
    return ", ".join(core + ['"' + name.replace('"', '""') + '"' for name in present if name not in names])


def _core_select(column: Column, present: bool) -> str:
    fallback = f"{column.default or 'NULL'}::{sql_type(column)}"
    if not present:
        return f"{fallback} AS {column.name}"
    return f"coalesce({column.name}, {fallback}) AS {column.name}" if column.default else column.name


_SQL_TYPES = {
    pa.bool_(): "BOOLEAN",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
}
