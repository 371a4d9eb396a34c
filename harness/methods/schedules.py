"""Prune → retrain, repeated: any registered pruning method under any retraining schedule.

``iterative`` removes ``rate`` of the remaining weights per round with the pruning method named
by ``score`` until the cell's sparsity is reached, and after every round restarts training from
its ``rewind`` point:

- ``none``: keep the trained weights, fine-tune with the FINETUNE recipe (Han et al. 2015);
- ``init``: survivors back to θ0, then the whole PRETRAIN recipe (lottery ticket, Frankle & Carbin);
- ``epoch:k``: survivors back to the weights after k epochs of pretraining, then the PRETRAIN
  schedule from epoch k on (weight rewinding); the spec's pretrain recipe must keep them:
  ``save_epochs: [k]``;
- ``iter:k``: survivors back to the weights after k optimiser steps of pretraining (Frankle et al.
  2020), then the PRETRAIN schedule from the epoch step k falls in, its remaining whole epochs
  (so up to one epoch more than the paper's remaining steps); needs ``save_iterations: [k]``;
- ``lr`` or ``lr:k``: keep the trained weights, replay the PRETRAIN learning-rate schedule from
  epoch k on (default 0: all of it) — learning-rate rewinding (Renda et al. 2020).

Every round is one row whose ``sparsity`` is that round's target, so one run yields the whole
sparsity curve. Controls (Frankle & Carbin), ``controls: [reinit, random_mask]``: arms trained in the
same cell from each level's ticket mask, each its own row (``control`` column) with the ticket's level
and sparsity. The ticket is trained once per level; ``reinit`` trains its mask from a fresh random
initialisation (a new draw per level, from a seed no cell's θ0 uses), ``random_mask`` a random mask
with the ticket's per-layer sparsity from the ticket's starting point, with the same data order as
the ticket. Their epochs have phase ``<arm>-<level>``. With controls, level 0 is full density: the
ticket's row is the trained dense model, the reinit arm's a fresh initialisation trained dense (the
random mask has no row there: at 100 % there is no mask to draw).

Linear mode connectivity (Frankle et al. 2020; Paul et al. 2022): with ``lmc_points: n`` (≥ 3) every
level after the first records ``lmc_barrier``, the error barrier between the previous level's trained
network and this one's: the largest error along the straight line between them (n evenly spaced points,
ends included) minus the mean of the two end errors. With ``lmc_copies: true`` every level also trains a
copy from the same starting point and mask with a data order of its own (SGD noise, Frankle et al.'s
stability test; phase ``copy-<level>``, its epochs counted in ``train_epochs``) and records
``lmc_barrier_copies``, the barrier between the level's network and its copy. Barriers are measured on
the VALIDATION split (held out from training; test stays for the reported accuracy, so nothing is chosen
on it). Every floating-point entry of the state interpolates (BatchNorm running statistics too); the
worker has the networks, so nothing extra is stored.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from pydantic import Field, model_validator
from torch import nn

from harness.config import Recipe
from harness.masks import Masks, classifier_name
from harness.methods import METHODS, Method, PruningMethod, create_method, register_method
from harness.methods.dynamic import random_masks
from harness.training import ClassifierModule
from harness.validation import fail_at, validate_nested

if TYPE_CHECKING:
    from harness.methods.base import Job

HAN = "Han et al. 2015, Learning both Weights and Connections for Efficient Neural Networks"
FRANKLE_CARBIN = "Frankle & Carbin 2019, The Lottery Ticket Hypothesis"
RENDA = "Renda et al. 2020, Comparing Rewinding and Fine-tuning in Neural Network Pruning"

Control = Literal["reinit", "random_mask"]
RewindPoint = Annotated[str, Field(pattern=r"^(none|init|lr|lr:\d+|epoch:\d+|iter:\d+)$")]


def level_targets(sparsity: float, rate: float, rounds: int | None = None) -> list[float]:
    """Sparsity after each round, 1 − (1 − rate)^k, the last round clipped to exactly ``sparsity``.

    By default as many rounds as it takes: ceil(log(1 − s) / log(1 − rate)), at least one.
    """
    needed = math.ceil(math.log(1 - sparsity) / math.log(1 - rate) - 1e-9)
    rounds = rounds or max(needed, 1)
    return [min(1 - (1 - rate) ** k, sparsity) for k in range(1, rounds)] + [sparsity]


def schedule_lrs(recipe: Recipe) -> list[float]:
    """The learning rate of every epoch of ``recipe``, from the optimiser and scheduler training builds."""
    config = ClassifierModule(nn.Linear(1, 1), recipe).configure_optimizers()
    if not isinstance(config, dict):  # no scheduler: constant
        return [recipe.lr] * recipe.epochs
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(recipe.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: moves nothing, keeps the scheduler's step order valid
        scheduler.step()
    return lrs


class ReplaySchedule(Callback):
    """Gives epoch e of training the learning rate ``lrs[e]``, set before the epoch starts."""

    def __init__(self, lrs: list[float]) -> None:
        self.lrs = lrs

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._set(trainer, 0)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._set(trainer, trainer.current_epoch + 1)

    def _set(self, trainer: L.Trainer, epoch: int) -> None:
        if epoch < len(self.lrs):
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = self.lrs[epoch]


def replay_from(recipe: Recipe, epoch: int) -> tuple[Recipe, list[Callback]]:
    """``recipe`` from ``epoch`` on: its remaining epochs, each with the learning rate it had there."""
    if epoch == 0:
        return recipe, []
    if epoch > recipe.epochs:
        raise ValueError(f"cannot rewind to epoch {epoch}: the pretrain recipe has {recipe.epochs} epochs")
    remaining = recipe.model_copy(update={"epochs": recipe.epochs - epoch, "schedule": "constant"})
    return remaining, [ReplaySchedule(schedule_lrs(recipe)[epoch:])]


@register_method("iterative")
class Iterative(Method):
    """Prune ``rate`` of the remaining weights per round with any pruning method, retraining after each.

    ``score`` names any registered pruning method (its scope comes with it: global_magnitude or
    layer_magnitude), with ``score_params``. ``rounds`` defaults to enough to reach the cell's
    sparsity, the last round clipped to it; given explicitly, the rounds follow the same targets
    and the last one jumps to the cell's sparsity. With ``prune_classifier`` the classifier is
    pruned on its own, at ``classifier_rate`` per round (default: half of ``rate``, as Frankle &
    Carbin), reported as the ``classifier_sparsity`` column; ``sparsity`` then counts the other layers.
    """

    family = "schedule"
    resumable = True  # each round is a level: a rerun continues after the last finished one
    reference = f"{HAN}; {FRANKLE_CARBIN}; {RENDA}"
    tunable = {"rate": {"low": 0.1, "high": 0.5}}

    class Params(Method.Params):
        score: str = "global_magnitude"  # any registered pruning method
        score_params: dict[str, Any] = {}  # its parameters
        rate: float = Field(0.2, gt=0, lt=1)  # fraction of the remaining weights pruned per round
        rounds: int | None = Field(None, ge=1)  # default: enough to reach the cell's sparsity
        rewind: RewindPoint = "none"  # none | init | epoch:k | lr | lr:k
        controls: tuple[Control, ...] = ()  # arms trained beside the ticket, each level: reinit, random_mask
        prune_classifier: bool = False
        classifier_rate: float | None = Field(None, gt=0, lt=1)  # default: rate / 2
        lmc_points: int = Field(0, ge=0, le=101)  # 0: off; else points on the line between successive levels
        lmc_copies: bool = False  # also train a copy per level with another data order (needs lmc_points)

        @model_validator(mode="before")
        @classmethod
        def _renamed(cls, data: Any) -> Any:
            if isinstance(data, dict) and "control" in data:
                raise fail_at(
                    ("control",),
                    "`control` was replaced by `controls`, a list of arms trained beside the ticket in the same "
                    "cell: write controls: [reinit] (allowed: reinit, random_mask)",
                )
            return data

        @model_validator(mode="after")
        def _consistent(self) -> Iterative.Params:
            if self.score not in METHODS:
                raise fail_at(("score",), METHODS.unknown_message(self.score))
            method = METHODS.get(self.score)
            if self.lmc_points in (1, 2):
                raise fail_at(("lmc_points",), "lmc_points needs at least 3 points (0 turns it off); 11 is usual")
            if self.lmc_copies and not self.lmc_points:
                raise fail_at(
                    ("lmc_copies",), "lmc_copies needs lmc_points, the points of its barrier: add lmc_points: 11"
                )
            if not issubclass(method, PruningMethod):
                raise fail_at(
                    ("score",),
                    f"{self.score!r} is a {method.family} method, not a pruning method with masks(); "
                    "name one such as global_magnitude, snip or filter_l1",
                )
            validate_nested(method.Params, self.score_params, ("score_params",))
            if len(set(self.controls)) < len(self.controls):
                raise fail_at(("controls",), "an arm is named twice; list each of reinit, random_mask once")
            if "reinit" in self.controls and self.rewind.partition(":")[0] in ("none", "lr"):
                raise fail_at(
                    ("controls",),
                    f"the reinit arm trains from a fresh initialisation, so it needs a rewind point to replace "
                    f"(rewind: init, epoch:k or iter:k), not rewind {self.rewind!r}",
                )
            return self

    @classmethod
    def check_recipes(cls, params: Iterative.Params, pretrain: Recipe, finetune: Recipe) -> None:
        kind, _, epoch = params.rewind.partition(":")
        if kind == "epoch" and int(epoch) not in pretrain.save_epochs:
            raise ValueError(
                f"rewind {params.rewind!r} needs the weights after pretraining epoch {epoch}: "
                f"add save_epochs: [{epoch}] to the pretrain recipe"
            )
        if kind == "iter" and int(epoch) not in pretrain.save_iterations:
            raise ValueError(
                f"rewind {params.rewind!r} needs the weights after pretraining iteration {epoch}: "
                f"add save_iterations: [{epoch}] to the pretrain recipe"
            )

    def source_files(self) -> set[Path]:
        return super().source_files() | create_method(self.params.score, self.params.score_params).source_files()

    def apply(self, job: Job) -> None:
        p = self.params
        score: PruningMethod = create_method(p.score, p.score_params)
        kind, _, point = p.rewind.partition(":")
        rewind_epoch = int(point or 0)
        rewind_state = job.weights(rewind_epoch) if kind in ("init", "epoch") else None
        if kind == "iter":  # resume the schedule in the epoch the step falls in
            rewind_state = job.weights(p.rewind)
            rewind_epoch = int(point) // math.ceil(job.split_size("train") / job.pretrain_recipe.batch_size)
        if kind == "none":
            recipe, callbacks = job.finetune_recipe, []
        else:
            recipe, callbacks = replay_from(job.pretrain_recipe, rewind_epoch)
        classifier_rate = p.classifier_rate or p.rate / 2

        targets = level_targets(job.sparsity, p.rate, p.rounds)
        dense_levels = 1 if p.controls else 0  # with arms, level 0 is full density: the curves start at 100 %
        ticket: Masks = {}
        previous_level: dict[str, torch.Tensor] | None = None  # the last level's trained weights (lmc_points)
        first = 0
        if (resumed := job.resumed()) is not None and "iterative_round" in resumed:
            first, ticket = resumed["iterative_round"] + 1, resumed["ticket"]
            if p.lmc_points:  # the model is as the last finished level left it: its trained weights
                previous_level = copy.deepcopy(job.model.state_dict())
        for index, sparsity in enumerate([0.0] * dense_levels + targets):
            if index < first:
                continue
            rounds = index + 1 - dense_levels  # pruning rounds up to this level
            classifier_sparsity = 1 - (1 - classifier_rate) ** rounds if p.prune_classifier else None
            start = rewind_state if rewind_state is not None else copy.deepcopy(job.model.state_dict())
            if rounds:  # else the dense level: the ticket at 100 % is the trained dense model itself
                ticket = self.next_masks(job, score, ticket, sparsity, classifier_sparsity)
                if p.lmc_copies:  # the same start and mask as this level's training, another data order
                    trained_copy = self.train_copy(job, start, ticket, recipe, callbacks)
                job.load_weights(start)
                job.prune(ticket)
                job.finetune(recipe, callbacks, finish=False)
            extra = {} if classifier_sparsity is None else {"classifier_sparsity": classifier_sparsity}
            if p.lmc_points:
                trained = copy.deepcopy(job.model.state_dict())
                if previous_level is not None:
                    extra["lmc_barrier"] = error_barrier(job, previous_level, trained, p.lmc_points)
                if p.lmc_copies and rounds:
                    extra["lmc_barrier_copies"] = error_barrier(job, trained_copy, trained, p.lmc_points)
                previous_level = trained
            for arm in p.controls:
                self.train_arm(job, arm, index, ticket, start, recipe, callbacks, sparsity, classifier_sparsity)
            job.remember("iterative_round", index)
            job.remember("ticket", ticket)
            job.finish_level(sparsity=sparsity, **extra)

    def next_masks(
        self,
        job: Job,
        score: PruningMethod,
        previous: Masks,
        sparsity: float,
        classifier_sparsity: float | None,
    ) -> Masks:
        """The ticket one round on: ``score`` on the model as it is now, shrinking ``previous``; the score's
        own options (``exclude``, ``max_layer_sparsity``) apply, the classifier is this method's choice."""
        options = score.params
        ctx = job.context(self.params.prune_classifier, options.exclude, options.max_layer_sparsity)
        ctx.masks = previous
        if classifier_sparsity is None:
            return score.prune_masks(ctx, sparsity)
        classifier = classifier_name(job.model) + ".weight"
        body = [name for name in ctx.weights if name != classifier]
        return {
            **score.prune_masks(ctx.subset(body), sparsity),
            **score.prune_masks(ctx.subset([classifier]), classifier_sparsity),
        }

    @staticmethod
    def train_arm(
        job: Job,
        arm: Control,
        index: int,
        ticket: Masks,
        start: dict[str, torch.Tensor],
        recipe: Recipe,
        callbacks: list,
        sparsity: float,
        classifier_sparsity: float | None,
    ) -> None:
        """One control of level ``index``, in ``job.arm(arm)`` beside the ticket (which it leaves as it was):
        ``reinit``, the ticket's mask on this level's own fresh initialisation; ``random_mask``, a random mask
        with the ticket's per-layer density from the ticket's start (none at full density: no mask there)."""
        if arm == "random_mask" and not ticket:
            return
        with job.arm(arm):
            if arm == "reinit":
                start, masks = job.fresh_init(draw=index), ticket
            else:
                generator = torch.Generator().manual_seed(job.seed)  # same draw every level: nested masks
                density = {name: int(mask.sum()) / mask.numel() for name, mask in ticket.items()}
                masks = random_masks(ticket, density, generator)
            job.load_weights(start)
            job.prune(masks)
            job.finetune(recipe, callbacks, finish=False)
            extra = {} if classifier_sparsity is None else {"classifier_sparsity": classifier_sparsity}
            job.finish_level(sparsity=sparsity, **extra)

    @staticmethod
    def train_copy(
        job: Job, start: dict[str, torch.Tensor], masks: Masks, recipe: Recipe, callbacks: list
    ) -> dict[str, torch.Tensor]:
        """Train an LMC copy from ``start`` off the record (its epochs only, phase ``copy-<level>``) with a data
        order of its own, and return its weights."""
        job.load_weights(start)
        job.train(recipe, masks, callbacks, phase="copy", new_data_order=True)
        return copy.deepcopy(job.model.state_dict())


def error_barrier(job: Job, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], points: int) -> float:
    """Max validation error on the line start → end minus the mean of its end errors (Frankle et al. 2020's
    error barrier, on the split held out from training); leaves the model at ``end``."""
    errors = []
    for step in range(points):
        alpha = step / (points - 1)
        mixed = {
            name: torch.lerp(start[name], value, alpha) if value.is_floating_point() else value
            for name, value in end.items()
        }
        job.load_weights(mixed)
        errors.append(1 - job.evaluate("val")["top1"])
    job.load_weights(end)
    return max(errors) - (errors[0] + errors[-1]) / 2


@register_method("imp")
class IterativeMagnitudePruning(Iterative):
    """Lottery-ticket IMP: 20% of the remaining weights by global |w| per round, survivors rewound to θ0."""

    reference = FRANKLE_CARBIN

    class Params(Iterative.Params):
        rewind: RewindPoint = "init"


@register_method("weight_rewinding")
class WeightRewinding(Iterative):
    """IMP rewinding survivors to their weights after epoch 1 of pretraining (needs pretrain save_epochs: [1])."""

    reference = f"{RENDA}; Frankle et al. 2020, Linear Mode Connectivity and the Lottery Ticket Hypothesis"

    class Params(Iterative.Params):
        rewind: RewindPoint = "epoch:1"


@register_method("lr_rewinding")
class LearningRateRewinding(Iterative):
    """Iterative global |w| pruning that keeps the trained weights and replays the whole pretrain lr schedule."""

    reference = RENDA

    class Params(Iterative.Params):
        rewind: RewindPoint = "lr"


@register_method("han_iterative")
class HanIterative(Iterative):
    """Iterative per-layer |w| pruning, fine-tuning the trained survivors after each round (Han et al.)."""

    reference = HAN

    class Params(Iterative.Params):
        score: str = "layer_magnitude"
