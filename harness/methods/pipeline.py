"""Pipelines: several methods applied in order to one cell's model, e.g. prune → quantise → encode.

Stages share the job, so each builds on the last: a pruning stage sets the masks and fine-tunes, a
quantiser changes the weights and sets their codes, an encoder sets how the model is stored. Every
stage records its own level(s), labelled in the ``stage`` column, so one cell's rows show what each
stage did to accuracy, ``size_bytes`` and latency; the last row (highest ``level``) is the whole
pipeline, which is what the leaderboard shows.

In a spec::

    methods:
      - {name: pipeline, stages: [global_magnitude, {name: kmeans, bits: 5}, huffman]}
      - deep_compression
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from harness.config import MethodSpec, Recipe
from harness.methods import METHODS, create_method, register_method
from harness.methods.base import Method
from harness.methods.quantization import DEEP_COMPRESSION
from harness.validation import fail_at, validate_nested

if TYPE_CHECKING:
    from harness.methods.base import Job


@register_method("pipeline")
class Pipeline(Method):
    """Apply methods in order to one model (prune → quantise → encode); each stage records its level."""

    resumable = True

    family = "pipeline"
    reference = DEEP_COMPRESSION

    class Params(Method.Params):
        stages: tuple[MethodSpec, ...] = Field(min_length=1)

        @field_validator("stages")
        @classmethod
        def _known_stages(cls, stages: tuple[MethodSpec, ...]) -> tuple[MethodSpec, ...]:
            for i, stage in enumerate(stages):  # errors at stages[i].<param>: pydantic prepends "stages"
                if stage.name not in METHODS:
                    raise fail_at((i, "name"), METHODS.unknown_message(stage.name))
                validate_nested(METHODS.get(stage.name).Params, stage.params, (i,))
            return stages

    def stage_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(method name, parameters) of each stage, in order."""
        return [(stage.name, stage.params) for stage in self.params.stages]

    @classmethod
    def check_recipes(cls, params: Method.Params, pretrain: Recipe, finetune: Recipe) -> None:
        """Each stage's own needs (e.g. an iterative stage rewinding to a pretraining epoch)."""
        for i, (name, stage_params) in enumerate(cls(params).stage_specs()):
            stage = METHODS.get(name)
            try:
                stage.check_recipes(stage.Params.model_validate(stage_params), pretrain, finetune)
            except ValueError as exc:
                raise fail_at(("stages", i), str(exc)) from None

    def source_files(self) -> set[Path]:
        stages = (create_method(name, params).source_files() for name, params in self.stage_specs())
        return super().source_files().union(*stages)

    def apply(self, job: Job) -> None:
        """Each stage in order; a resumed run skips the stages before the one it stopped in, and that one too
        unless it can resume (a stage that cannot records its one level when it ends)."""
        first = 0
        if (resumed := job.resumed()) is not None and "pipeline_stage" in resumed:
            name, _ = self.stage_specs()[resumed["pipeline_stage"]]
            first = resumed["pipeline_stage"] + (0 if METHODS.get(name).resumable else 1)
        for index, (name, params) in enumerate(self.stage_specs()):
            with job.stage(name):  # entered even when skipped: a resumed stage is known by its position
                if index >= first:
                    job.remember("pipeline_stage", index)
                    create_method(name, params).apply(job)


@register_method("deep_compression")
class DeepCompression(Pipeline):
    """Deep Compression: iterative magnitude pruning, k-means weight sharing, Huffman coding.

    As Han et al.: every layer pruned by its own magnitudes (``layer_magnitude``, ``rate`` of the
    remaining weights per round), the classifier too (at half the rate, ``prune_classifier``);
    2^``conv_bits`` shared values per Conv layer and 2^``bits`` per fully connected one (8 and 5).
    """

    class Params(Method.Params):
        rate: float = Field(0.2, gt=0, lt=1)  # fraction of the remaining weights pruned per round
        bits: int = Field(5, ge=1, le=8)  # 2^bits shared values per fully connected layer
        conv_bits: int = Field(8, ge=1, le=8)  # 2^conv_bits shared values per Conv layer
        index_bits: int = Field(5, ge=1, le=16)  # relative-index gap code width
        prune_classifier: bool = True

    def stage_specs(self) -> list[tuple[str, dict[str, Any]]]:
        p = self.params
        pruning = {"rate": p.rate, "score": "layer_magnitude", "prune_classifier": p.prune_classifier}
        return [
            ("iterative", pruning),
            ("kmeans", {"bits": p.bits, "conv_bits": p.conv_bits}),
            ("huffman", {"index_bits": p.index_bits}),
        ]


@register_method("prune_int8_bitmask")
class PruneInt8Bitmask(Pipeline):
    """Global magnitude pruning, 8-bit per-channel PTQ, stored as bitmask + int8 codes."""

    reference = "Blalock et al. 2020 (global magnitude); Nagel et al. 2021 (PTQ)"

    class Params(Method.Params):
        pass

    def stage_specs(self) -> list[tuple[str, dict[str, Any]]]:
        return [("global_magnitude", {}), ("ptq", {"bits": 8}), ("bitmask", {})]
