"""Training and evaluation: one LightningModule for every classifier, masks enforced throughout.

Training-time methods (gradual pruning, RigL, QAT, ...) are Lightning callbacks handed to
:func:`train`; they may replace ``module.masks`` while training.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset

from harness.config import Recipe
from harness.masks import Masks, apply_masks, mask_gradients
from harness.metrics import topk_correct

for _logger in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_logger).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*number of training batches.*is smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")


def device_for_cell() -> torch.device:
    """The GPU Ray (or the user) made visible, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of ``model`` with ``recipe``; pruned weights stay exactly zero."""

    def __init__(self, model: nn.Module, recipe: Recipe, masks: Masks | None = None) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.masks: Masks = dict(masks or {})
        self._epoch_sums: list[torch.Tensor] = []  # loss · n and correct per batch of the epoch, on the device
        self._batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        # summed on the device and read once per epoch (train_metrics): no logging call, no sync per step
        sums = torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum().to(loss.dtype)])
        self._epoch_sums.append(sums)
        self._batch_sizes.append(len(y))
        return loss

    def train_metrics(self) -> dict[str, float]:
        """The epoch's mean training loss and top-1 (weighted by example); starts the next epoch's sums."""
        if not self._epoch_sums:
            return {}
        loss_sum, correct = (float(v) for v in torch.stack(self._epoch_sums).sum(0))
        seen = sum(self._batch_sizes)
        self._epoch_sums, self._batch_sizes = [], []
        return {"train_loss": loss_sum / seen, "train_top1": correct / seen}

    def on_after_backward(self) -> None:
        if self.masks:  # dense training (pretraining) has none: nothing to do per step
            mask_gradients(self.model, self.masks)

    def on_train_batch_end(self, *args: Any) -> None:
        if self.masks:
            apply_masks(self.model, self.masks)

    def configure_optimizers(self) -> Any:
        r = self.recipe
        params = self.model.parameters()
        if r.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                params,
                lr=r.lr,
                momentum=r.momentum,
                nesterov=r.nesterov and r.momentum > 0,
                weight_decay=r.weight_decay,
            )
        elif r.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
        if r.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(r.epochs, 1))
        elif r.schedule == "step":
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(r.milestones), gamma=r.gamma)
        else:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class MaskingCallback(Callback):
    """Base of the callbacks that change the masks while training (gradual pruning, SET, RigL, ...).

    :meth:`set_masks` is the one way to change them: it updates ``module.masks`` (which the module
    enforces after every step), zeroes the newly pruned weights and keeps ``self.masks``, which the
    cell adopts when training ends.
    """

    def __init__(self) -> None:
        self.masks: Masks = {}

    def on_fit_start(self, trainer: L.Trainer, module: ClassifierModule) -> None:
        params = dict(module.model.named_parameters())  # masks beside their weights, where updates compare them
        module.masks = {name: mask.to(params[name].device) for name, mask in module.masks.items()}
        self.masks = dict(module.masks)

    def set_masks(self, module: ClassifierModule, masks: Masks) -> None:
        """Replace the masks of the named weights (others keep theirs) and zero what they prune."""
        module.masks = {**module.masks, **{name: mask.detach().bool() for name, mask in masks.items()}}
        self.masks = dict(module.masks)
        apply_masks(module.model, module.masks)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = dict(state["masks"])


class FreezeWeights(Callback):
    """Holds chosen entries of weights at given values while training; the rest trains normally.

    ``frozen`` maps a parameter name (as in ``model.named_parameters()``) to ``(where, values)``:
    entries where ``where`` is True stay at ``values``. Their gradients are zeroed after backward and
    their values written back after every step, so neither momentum nor weight decay moves them.
    A mask still wins: an entry both frozen and pruned is zero.
    """

    def __init__(self, frozen: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for name, (where, values) in frozen.items():
            if where.dtype != torch.bool or where.shape != values.shape:
                raise ValueError(
                    f"FreezeWeights[{name!r}]: give (where, values) with a bool 'where' of the values' shape; "
                    f"got {where.dtype} {tuple(where.shape)} and {tuple(values.shape)}"
                )
        self.frozen = {name: (where.detach(), values.detach()) for name, (where, values) in frozen.items()}

    def on_fit_start(self, trainer: L.Trainer, module: ClassifierModule) -> None:
        params = dict(module.model.named_parameters())
        unknown = sorted(set(self.frozen) - set(params))
        if unknown:
            raise KeyError(f"FreezeWeights: the model has no parameters {unknown}; its parameters are {list(params)}")
        self.frozen = {
            name: (where.to(params[name].device), values.to(params[name].device, params[name].dtype))
            for name, (where, values) in self.frozen.items()
        }
        self._restore(module)

    def on_after_backward(self, trainer: L.Trainer, module: ClassifierModule) -> None:
        params = dict(module.model.named_parameters())
        for name, (where, _) in self.frozen.items():
            if params[name].grad is not None:
                params[name].grad.masked_fill_(where, 0.0)

    def on_train_batch_end(self, trainer: L.Trainer, module: ClassifierModule, *args: Any) -> None:
        self._restore(module)

    @torch.no_grad()
    def _restore(self, module: ClassifierModule) -> None:
        params = dict(module.model.named_parameters())
        for name, (where, values) in self.frozen.items():
            params[name].copy_(torch.where(where, values, params[name]))

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": self.frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = dict(state["frozen"])


class EpochHistory(Callback):
    """Keeps each epoch's logged metrics (the ``epochs`` results view).

    The row is written at the end of the training epoch, with the epoch's training metrics and a
    validation pass made here with :func:`evaluate` (Lightning's validation loop costs more per epoch
    than a small model's whole validation); the lr is read at the epoch's start, since an
    epoch-interval scheduler has already stepped by its end.
    """

    def __init__(self, phase: str, val_set: Dataset | None = None, batch_size: int = 256) -> None:
        self.phase = phase
        self.val_set = val_set
        self.batch_size = batch_size
        self.rows: list[dict[str, Any]] = []
        self._lr: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if isinstance(module, ClassifierModule):
            metrics.update(module.train_metrics())
        if self.val_set is not None and len(self.val_set):
            val = evaluate(module.model, self.val_set, self.batch_size)
            metrics.update(val_loss=val["loss"], val_top1=val["top1"])
        self.rows.append({"phase": self.phase, "epoch": trainer.current_epoch, "lr": self._lr, **metrics})


def loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def train(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    recipe: Recipe,
    *,
    seed: int,
    phase: str,
    masks: Masks | None = None,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
    logger: Any = None,
) -> list[dict[str, Any]]:
    """Train in place for ``recipe.epochs``; returns one row per epoch (train and validation)."""
    history = EpochHistory(phase, val_set, max(recipe.batch_size, 256))
    if recipe.epochs == 0:
        return history.rows
    device = device_for_cell()
    trainer = L.Trainer(
        max_epochs=recipe.epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=logger if logger is not None else False,
        callbacks=[history, *callbacks],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,  # validation is the epoch history's (see EpochHistory)
        deterministic=True,
        log_every_n_steps=1,
    )
    module = ClassifierModule(model, recipe, masks)
    apply_masks(model, module.masks)
    trainer.fit(module, loader(train_set, recipe.batch_size, shuffle=True, seed=seed))
    model.to(device)
    return history.rows


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> dict[str, float]:
    """Top-1, top-5 and mean loss over the whole split, weighted by example (not by batch)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = top1 = top5 = 0
    loss_sum = 0.0
    for x, y in loader(dataset, batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        c1, c5 = topk_correct(logits, y)
        top1, top5, n = top1 + c1, top5 + c5, n + len(y)
    model.train(was_training)
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss_sum / n}


class Stopwatch:
    """Wall seconds of a phase: ``with Stopwatch() as t: ...; t.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
