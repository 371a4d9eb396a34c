"""Sparsity that changes while training, as Lightning callbacks: gradual magnitude pruning (Zhu &
Gupta 2017) and dynamic sparse training from scratch, SET (Mocanu et al. 2018) and RigL (Evci et
al. 2020). Plus the pieces other methods reuse: per-layer densities (uniform or ERK), random masks,
sparse-aware initialisation, and a gradient-flow probe (Evci et al. 2020, "Gradient flow").

Every callback changes masks only through :meth:`MaskingCallback.set_masks`, so the module enforces
the new masks at once and the cell adopts them when training ends.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from pydantic import Field, model_validator
from torch import nn

from harness.masks import Masks, masks_from_scores, prunable_weights
from harness.methods import Method, register_method
from harness.methods.base import PruningOptions, excluded, options_context
from harness.training import ClassifierModule, MaskingCallback

if TYPE_CHECKING:
    from harness.methods.base import Job

ZHU_GUPTA = "Zhu & Gupta 2017, To prune, or not to prune: exploring the efficacy of pruning for model compression"
SET_PAPER = "Mocanu et al. 2018, Scalable training of artificial neural networks with adaptive sparse connectivity"
RIGL = "Evci et al. 2020, Rigging the Lottery: Making All Tickets Winners"
GRADIENT_FLOW = "Evci et al. 2020, Gradient Flow in Sparse Neural Networks and How Lottery Tickets Win"

Distribution = Literal["uniform", "erk"]
SparseInit = Literal["dense", "layer_scaled", "fanin_scaled"]


# -- sparse starting points -----------------------------------------------------------------------


def layer_densities(shapes: dict[str, torch.Size], sparsity: float, distribution: Distribution) -> dict[str, float]:
    """Fraction of each layer's weights kept, for ``sparsity`` overall.

    uniform: the same density everywhere. erk (Erdős–Rényi-Kernel, RigL): density ∝ sum of the
    weight's dimensions / their product, so small layers stay denser; a layer that would exceed 1
    is kept dense and the rest is rescaled.
    """
    if distribution == "uniform":
        return {name: 1.0 - sparsity for name in shapes}
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    dense: set[str] = set()
    while len(dense) < len(shapes):
        budget = (1.0 - sparsity) * sum(sizes.values()) - sum(sizes[n] for n in dense)
        scale = budget / sum(raw[n] * sizes[n] for n in shapes if n not in dense)
        too_dense = {n for n in shapes if n not in dense and scale * raw[n] > 1.0}
        if not too_dense:
            return {n: 1.0 if n in dense else scale * raw[n] for n in shapes}
        dense |= too_dense
    return {n: 1.0 for n in shapes}  # only at sparsity 0


def random_masks(weights: dict[str, torch.Tensor], densities: dict[str, float], generator: torch.Generator) -> Masks:
    """Each layer keeps exactly ``round(density · n)`` weights, chosen uniformly at random."""
    masks = {}
    for name, w in weights.items():
        keep = torch.zeros(w.numel(), dtype=torch.bool)
        keep[torch.randperm(w.numel(), generator=generator)[: round(densities[name] * w.numel())]] = True
        masks[name] = keep.view(w.shape).to(w.device)
    return masks


@torch.no_grad()
def sparse_initialisation(weights: dict[str, torch.Tensor], masks: Masks, init: SparseInit) -> None:
    """Rescale freshly initialised weights in place for their mask, so activations keep their scale.

    dense: unchanged. layer_scaled: each layer × 1/√density. fanin_scaled (Evci et al. 2020): each
    output unit × √(fan-in / unmasked fan-in), i.e. initialised for the inputs it really has.
    """
    if init == "dense":
        return
    for name, w in weights.items():
        mask = masks[name].to(w.dtype)
        if init == "layer_scaled":
            density = float(mask.mean())
            w.mul_(1.0 / math.sqrt(density) if density > 0 else 1.0)
        else:
            fan_in = mask[0].numel()
            unmasked = mask.reshape(mask.shape[0], -1).sum(dim=1).clamp(min=1)
            w.mul_((fan_in / unmasked).sqrt().view(-1, *([1] * (w.dim() - 1))))


# -- schedules ------------------------------------------------------------------------------------


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta: s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³ for t0 ≤ t ≤ t0 + nΔt = ``end``."""
    if step < start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


def cosine_drop_fraction(step: int, initial: float, end: int) -> float:
    """RigL: the fraction of active weights replaced decays as α/2 · (1 + cos(πt/T_end)), 0 after."""
    return 0.5 * initial * (1.0 + math.cos(math.pi * step / end)) if step < end else 0.0


def drop_and_grow(weight: torch.Tensor, mask: torch.Tensor, count: int, grow_score: torch.Tensor) -> torch.Tensor:
    """The new mask: drop the ``count`` active weights of smallest |w|, then activate the ``count``
    inactive positions (a just-dropped one included) of largest ``grow_score``. Ties go by position."""
    active = mask.flatten().clone()
    drop_key = torch.where(active, weight.detach().abs().flatten(), torch.inf)
    active[torch.argsort(drop_key, stable=True)[:count]] = False
    grow_key = torch.where(active, -torch.inf, grow_score.flatten().to(torch.float64))
    active[torch.argsort(grow_key, descending=True, stable=True)[:count]] = True
    return active.view_as(mask)


# -- callbacks ------------------------------------------------------------------------------------


def _steps(trainer: L.Trainer, fraction: float) -> int:
    return round(fraction * trainer.estimated_stepping_batches)


class GradualMagnitudePruning(MaskingCallback):
    """Prune by |w| every ``frequency`` steps from ``initial_sparsity`` to ``final_sparsity``,
    following Zhu & Gupta's cubic schedule between ``start_fraction`` and ``end_fraction`` of training.

    Masks only shrink. The final sparsity is reached at the end step (at the latest on the last
    step). Weights matching ``exclude`` are never pruned; with ``max_layer_sparsity`` no layer loses
    more than that fraction (:func:`~harness.masks.cap_layer_sparsity`). ``history`` holds (step,
    target sparsity) of every pruning.
    """

    def __init__(
        self,
        final_sparsity: float,
        initial_sparsity: float = 0.0,
        start_fraction: float = 0.0,
        end_fraction: float = 0.75,
        frequency: int = 100,
        scope: Literal["global", "layer"] = "layer",
        include_classifier: bool = False,
        exclude: tuple[str, ...] = (),
        max_layer_sparsity: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= initial_sparsity <= final_sparsity < 1.0:
            raise ValueError(
                f"GradualMagnitudePruning: need 0 <= initial_sparsity <= final_sparsity < 1, got "
                f"initial_sparsity={initial_sparsity}, final_sparsity={final_sparsity}; lower initial_sparsity"
            )
        if not 0.0 <= start_fraction <= end_fraction <= 1.0:
            raise ValueError(
                f"GradualMagnitudePruning: need 0 <= start_fraction <= end_fraction <= 1, got "
                f"start_fraction={start_fraction}, end_fraction={end_fraction}"
            )
        if frequency < 1:
            raise ValueError(f"GradualMagnitudePruning: frequency is in steps and must be >= 1, got {frequency}")
        self.final_sparsity = final_sparsity
        self.initial_sparsity = initial_sparsity
        self.start_fraction = start_fraction
        self.end_fraction = end_fraction
        self.frequency = frequency
        self.scope = scope
        self.include_classifier = include_classifier
        self.exclude = exclude
        self.max_layer_sparsity = max_layer_sparsity
        self.history: list[tuple[int, float]] = []

    def schedule(self, trainer: L.Trainer) -> tuple[int, int]:
        """(first, last) pruning step; the last is clamped to the last step of training."""
        last_step = max(int(trainer.estimated_stepping_batches) - 1, 0)
        start = min(_steps(trainer, self.start_fraction), last_step)
        return start, min(max(_steps(trainer, self.end_fraction), start), last_step)

    def on_train_batch_start(self, trainer: L.Trainer, module: ClassifierModule, *args: Any) -> None:
        step = trainer.global_step
        start, end = self.schedule(trainer)
        if not (start <= step <= end and ((step - start) % self.frequency == 0 or step == end)):
            return
        target = cubic_sparsity(step, self.initial_sparsity, self.final_sparsity, start, end)
        weights = prunable_weights(module.model, self.include_classifier)
        scores = {name: w.detach().abs() for name, w in weights.items() if not excluded(name, self.exclude)}
        masks = masks_from_scores(scores, target, self.scope, self.masks, self.max_layer_sparsity)
        self.set_masks(module, masks)
        self.history.append((step, target))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = list(state["history"])


class DynamicSparseTraining(MaskingCallback):
    """Every ``update_every`` steps, each masked layer drops its smallest-|w| active weights and
    regrows as many elsewhere: at random (SET) or where the dense gradient is largest (RigL).

    The replaced fraction decays from ``drop_fraction`` to 0 at ``end_fraction`` of training on a
    cosine; the mask is then fixed. Sparsity stays constant per layer. Grown weights start at zero,
    with their optimiser state (momentum, Adam moments) reset. The dense gradient is the one of the
    batch just before the update (taken before the module masks it). Starts from the masks training
    begins with. ``history`` holds one entry per layer and update.
    """

    def __init__(
        self,
        regrow: Literal["random", "gradient"],
        update_every: int = 100,
        drop_fraction: float = 0.3,
        end_fraction: float = 0.75,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if regrow not in ("random", "gradient"):
            raise ValueError(
                f"DynamicSparseTraining: regrow must be 'random' (SET) or 'gradient' (RigL), got {regrow!r}"
            )
        if update_every < 1:
            raise ValueError(f"DynamicSparseTraining: update_every is in steps and must be >= 1, got {update_every}")
        if not 0.0 < drop_fraction < 1.0:
            raise ValueError(f"DynamicSparseTraining: drop_fraction must be in (0, 1), got {drop_fraction}")
        if not 0.0 < end_fraction <= 1.0:
            raise ValueError(f"DynamicSparseTraining: end_fraction must be in (0, 1], got {end_fraction}")
        self.regrow = regrow
        self.update_every = update_every
        self.drop_fraction = drop_fraction
        self.end_fraction = end_fraction
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[dict[str, Any]] = []
        self._gradients: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: L.Trainer, module: ClassifierModule) -> None:
        super().on_fit_start(trainer, module)
        if not self.masks:
            raise ValueError(
                "DynamicSparseTraining needs masks to start from: prune first (e.g. job.prune(random_masks(...))) "
                "or pass masks= to train()"
            )

    def _is_update(self, trainer: L.Trainer, step: int) -> bool:
        return step > 0 and step % self.update_every == 0 and step < _steps(trainer, self.end_fraction)

    def on_after_backward(self, trainer: L.Trainer, module: ClassifierModule) -> None:
        if self.regrow == "gradient" and self._is_update(trainer, trainer.global_step + 1):
            params = dict(module.model.named_parameters())
            self._gradients = {name: params[name].grad.detach().clone() for name in self.masks}

    def on_train_batch_end(self, trainer: L.Trainer, module: ClassifierModule, *args: Any) -> None:
        step = trainer.global_step
        if not self._is_update(trainer, step):
            return
        fraction = cosine_drop_fraction(step, self.drop_fraction, _steps(trainer, self.end_fraction))
        params = dict(module.model.named_parameters())
        new_masks = {}
        for name, mask in self.masks.items():
            count = round(fraction * int(mask.sum()))
            if self.regrow == "gradient":
                score = self._gradients[name].abs()
            else:
                score = torch.rand(mask.shape, generator=self.generator).to(mask.device)
            new_masks[name] = drop_and_grow(params[name], mask, count, score)
            grown = new_masks[name] & ~mask
            self._start_at_zero(trainer, params[name], new_masks[name] != mask, grown)
            self.history.append(
                {
                    "step": step,
                    "layer": name,
                    "drop_fraction": fraction,
                    "replaced": count,
                    "active": int(new_masks[name].sum()),
                }
            )
        self._gradients = {}
        self.set_masks(module, new_masks)

    @staticmethod
    @torch.no_grad()
    def _start_at_zero(trainer: L.Trainer, param: nn.Parameter, changed: torch.Tensor, grown: torch.Tensor) -> None:
        param.masked_fill_(grown, 0.0)
        for optimizer in trainer.optimizers:
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.masked_fill_(changed, 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": self.history, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = list(state["history"])
        self.generator.set_state(state["generator"])


class GradientFlow(Callback):
    """Evci et al.'s gradient flow: the norm of the masked loss gradient on one fixed held-out batch.

    Measured before the first step (the value at initialisation: ``gradient_flow_init``, a column
    of epoch 0's row) and after the last step of every epoch (``gradient_flow``), overall and per
    layer (``gradient_flow/<weight name>``, ``gradient_flow_init/<weight name>``; the overall norm
    is the root of their summed squares).
    The probe runs the model in eval mode, so BatchNorm uses its running statistics and the
    held-out data never updates them; the training mode is restored after. ``masks`` says which
    entries count (default: the module's masks at that time).
    """

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], masks: Masks | None = None) -> None:
        self.batch = batch
        self.masks = dict(masks or {})

    def on_fit_start(self, trainer: L.Trainer, module: ClassifierModule) -> None:
        if not (self.masks or module.masks):
            raise ValueError("GradientFlow measures masked weights but there are none: pass masks= or prune first")

    def measure(self, module: ClassifierModule) -> dict[str, torch.Tensor]:
        """``{weight name: masked gradient norm}`` on the held-out batch, the model in eval mode."""
        masks = self.masks or module.masks
        params = dict(module.model.named_parameters())
        x, y = (t.to(module.device) for t in self.batch)
        was_training = module.model.training
        module.model.eval()
        try:
            loss = nn.functional.cross_entropy(module.model(x), y)
            grads = torch.autograd.grad(loss, [params[name] for name in masks])
        finally:
            module.model.train(was_training)
        return {
            name: (g * m.to(g.device)).norm().detach() for (name, m), g in zip(masks.items(), grads, strict=True)
        }

    def _log(self, module: ClassifierModule, key: str, norms: dict[str, torch.Tensor]) -> None:
        module.log(key, torch.sqrt(sum(n**2 for n in norms.values())), on_step=True, on_epoch=False)
        for name, norm in norms.items():
            module.log(f"{key}/{name}", norm, on_step=True, on_epoch=False)

    def on_train_batch_start(self, trainer: L.Trainer, module: ClassifierModule, batch: Any, index: int) -> None:
        if trainer.global_step == 0 and index == 0:
            self._log(module, "gradient_flow_init", self.measure(module))

    def on_train_batch_end(
        self, trainer: L.Trainer, module: ClassifierModule, outputs: Any, batch: Any, index: int
    ) -> None:
        if index == trainer.num_training_batches - 1:
            self._log(module, "gradient_flow", self.measure(module))


# -- methods --------------------------------------------------------------------------------------


@register_method("gmp")
class GradualMagnitude(Method):
    """Prune the trained model gradually while fine-tuning, on Zhu & Gupta's cubic sparsity schedule.

    Fine-tunes with the FINETUNE recipe from the dense trained model, pruning by |w| every
    ``frequency`` steps from ``initial_sparsity`` to the cell's sparsity between ``start_fraction``
    and ``end_fraction`` of the fine-tuning steps; the rest of fine-tuning recovers with the final mask.
    Takes the common options ``prune_classifier``, ``exclude`` and ``max_layer_sparsity``.
    """

    family = "gradual"
    reference = ZHU_GUPTA

    class Params(PruningOptions):
        initial_sparsity: float = Field(0.0, ge=0, lt=1)
        start_fraction: float = Field(0.0, ge=0, le=1)
        end_fraction: float = Field(0.75, ge=0, le=1)
        frequency: int = Field(100, ge=1)  # steps between prunings (Zhu & Gupta: 100 to 1000)
        scope: Literal["global", "layer"] = "layer"  # Zhu & Gupta prune every layer to the same sparsity

        @model_validator(mode="after")
        def _starts_before_it_ends(self) -> GradualMagnitude.Params:
            if self.start_fraction > self.end_fraction:
                raise ValueError(
                    f"start_fraction {self.start_fraction} is after end_fraction {self.end_fraction}; "
                    "allowed: 0 <= start_fraction <= end_fraction <= 1"
                )
            return self

    def apply(self, job: Job) -> None:
        p = self.params
        options_context(job, p)  # records the options in the layers table
        pruning = GradualMagnitudePruning(
            job.sparsity,
            p.initial_sparsity,
            p.start_fraction,
            p.end_fraction,
            p.frequency,
            p.scope,
            p.prune_classifier,
            p.exclude,
            p.max_layer_sparsity,
        )
        job.finetune(callbacks=[pruning])


class SparseFromScratch(Method):
    """Sparse training from the initialisation θ0 with a mask that moves (base of SET and RigL).

    A random mask at the cell's sparsity, distributed over layers by ``distribution``, is put on θ0,
    rescaled by ``init``, then trained with the PRETRAIN recipe while :class:`DynamicSparseTraining`
    replaces connections (each layer keeps its sparsity). Layers matching ``exclude`` stay dense; with
    ``max_layer_sparsity`` no layer's density falls below 1 − that fraction (the overall sparsity
    then falls short of the target, as the cap does for every pruning method). Not registered itself.
    """

    family = "dynamic-sparse"
    regrow: ClassVar[Literal["random", "gradient"]]
    tunable = {"drop_fraction": {"low": 0.1, "high": 0.5}}

    class Params(PruningOptions):
        update_every: int = Field(100, ge=1)  # ΔT, in steps
        drop_fraction: float = Field(0.3, gt=0, lt=1)  # at the start; decays on a cosine
        end_fraction: float = Field(0.75, gt=0, le=1)  # of training, after which the mask is fixed
        distribution: Distribution = "erk"
        init: SparseInit = "dense"
        gradient_flow: bool = False  # log GradientFlow into the epoch rows

    def apply(self, job: Job) -> None:
        p = self.params
        job.load_weights(job.weights("init"))
        names = options_context(job, p).weights
        weights = {n: w for n, w in prunable_weights(job.model, p.prune_classifier).items() if n in names}
        densities = layer_densities({n: w.shape for n, w in weights.items()}, job.sparsity, p.distribution)
        if p.max_layer_sparsity is not None:  # at most floor(cap · n) of a layer's n weights pruned
            cap = p.max_layer_sparsity
            densities = {
                n: max(d, 1 - math.floor(cap * weights[n].numel() + 1e-9) / weights[n].numel())
                for n, d in densities.items()
            }
        masks = random_masks(weights, densities, torch.Generator().manual_seed(job.seed))
        sparse_initialisation(weights, masks, p.init)
        job.prune(masks)
        callbacks = [DynamicSparseTraining(self.regrow, p.update_every, p.drop_fraction, p.end_fraction, job.seed)]
        if p.gradient_flow:
            callbacks.append(GradientFlow(job.val_batch()))
        job.finetune(recipe=job.pretrain_recipe, callbacks=callbacks)


@register_method("set")
class SparseEvolutionaryTraining(SparseFromScratch):
    """Sparse training from scratch that drops the smallest |w| and regrows at random (SET)."""

    reference = SET_PAPER + "; schedule and ERK from " + RIGL
    regrow = "random"


@register_method("rigl")
class RigL(SparseFromScratch):
    """Sparse training from scratch that drops the smallest |w| and regrows where |gradient| is largest."""

    reference = RIGL
    regrow = "gradient"
