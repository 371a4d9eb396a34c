"""Quantisation: uniform post-training quantisation (PTQ), quantisation-aware training (QAT) and
Deep Compression's k-means weight sharing.

Every Conv/Linear weight is quantised, the classifier included; biases and BatchNorm stay float32.
The model keeps the *decoded* weights, which is what is evaluated (the accuracy a user gets after
loading), and the job's storage gets their integer codes, which is what is stored
(:mod:`harness.encoding`). Pruned weights stay exactly zero: uniform grids contain zero, and
weight sharing clusters only the nonzero weights.

Uniform quantisation follows PyTorch's observers on the unsigned grid ``q ∈ [0, 2**b − 1]``:
affine ``scale = (max − min) / (2**b − 1)``, ``zero_point = −round(min / scale)``; symmetric
``scale = max|w| / ((2**b − 1) / 2)``, ``zero_point = (2**b − 1) // 2``; ranges always include 0.
Rounding and clamping are ``torch.fake_quantize_per_channel_affine``.

``fold_batchnorm`` (PTQ) first folds each BatchNorm into the Conv/Linear layer whose output it reads, as
a deployed integer model does (Nagel et al. 2021, Sec. 2.3; Jacob et al. 2018): with
``s = γ / sqrt(running_var + ε)`` the layer's weight becomes ``s · W`` (per output channel) and its bias
``s · (b − running_mean) + β``, and an identity (:class:`FoldedNorm`, which an export records) takes
the norm's place. The folded weights are the ones quantised, evaluated and stored (the new biases as
float32); the row's parameter counts are the folded model's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from pydantic import Field
from torch import nn

from harness.encoding import QuantizedWeight, SharedCodes, UniformCodes
from harness.masks import PRUNABLE_LAYERS, channel_norms, prunable_weights
from harness.methods import register_method
from harness.methods.base import CompressionMethod, Method

if TYPE_CHECKING:
    from harness.methods.base import Job

NAGEL = "Nagel et al. 2021, A White Paper on Neural Network Quantization"
DEEP_COMPRESSION = "Han et al. 2016, Deep Compression: pruning, trained quantization and Huffman coding"
MSE_CLIP_RATIOS = torch.linspace(0.3, 1.0, 71)  # candidate fractions of the min-max range for the MSE search
ACTIVATION_SAMPLES = 1 << 18  # values per layer and calibration batch kept for range setting


# -- uniform quantisation ---------------------------------------------------------------------


def qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) of ranges ``[lo, hi]`` (per channel), as PyTorch's min-max observers compute them."""
    qmax = (1 << bits) - 1
    lo, hi = lo.clamp(max=0).float(), hi.clamp(min=0).float()
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = (torch.maximum(-lo, hi) / (qmax / 2)).clamp(min=eps)
        return scale, torch.full_like(scale, qmax // 2, dtype=torch.int32)
    scale = ((hi - lo) / qmax).clamp(min=eps)
    return scale, (-torch.round(lo / scale)).clamp(0, qmax).to(torch.int32)


def fake_quantize(rows: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Round each row of ``rows`` (``[channels, values]``) to its channel's grid and back."""
    return torch.fake_quantize_per_channel_affine(rows, scale, zero_point, 0, 0, (1 << bits) - 1)


def mse_ranges(rows: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row clip range ``α·[min, max]`` with the α of least squared rounding + clipping error."""
    lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
    best_lo, best_hi = lo, hi
    best_error = torch.full_like(lo, torch.inf)
    for ratio in MSE_CLIP_RATIOS.tolist():
        scale, zero_point = qparams(ratio * lo, ratio * hi, bits, symmetric)
        error = (fake_quantize(rows, scale, zero_point, bits) - rows).pow(2).mean(dim=1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_lo, best_hi = torch.where(better, ratio * lo, best_lo), torch.where(better, ratio * hi, best_hi)
    return best_lo, best_hi


def uniform_quantize(
    weight: torch.Tensor,
    bits: int,
    symmetric: bool,
    per_channel: bool,
    weight_range: Literal["minmax", "mse"] = "minmax",
) -> UniformCodes:
    """The ``bits``-bit codes of ``weight``; ``per_channel`` gives every output channel (dim 0) its grid."""
    weight = weight.detach().float()
    rows = weight.reshape(weight.shape[0] if per_channel else 1, -1)
    if weight_range == "mse":
        lo, hi = mse_ranges(rows, bits, symmetric)
    else:
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
    scale, zero_point = qparams(lo, hi, bits, symmetric)
    rounded = fake_quantize(rows, scale, zero_point, bits)
    codes = torch.round(rounded / scale[:, None]).long() + zero_point[:, None]
    return UniformCodes(codes.view_as(weight), bits, scale, zero_point.long(), symmetric)


def quantized_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights every quantiser quantises: all Conv/Linear weights, the classifier included."""
    return prunable_weights(model, include_classifier=True)


@torch.no_grad()
def load_decoded(model: nn.Module, codes: dict[str, QuantizedWeight]) -> None:
    """Write each weight's decoded values into the model, keeping its zeros at zero."""
    weights = quantized_weights(model)
    for name, quantized in codes.items():
        weight = weights[name]
        present = (weight != 0).cpu()
        weight.copy_(quantized.decode(quantized.codes, present).to(weight.device, weight.dtype))


class FoldedNorm(nn.Identity):
    """Where a BatchNorm was before :func:`fold_batchnorm` folded it into ``layer`` (an export records it)."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer


def folded_norms(model: nn.Module) -> dict[str, str]:
    """``{norm module name: layer name}`` of every BatchNorm folded into a layer of ``model``."""
    return {name: module.layer for name, module in model.named_modules() if isinstance(module, FoldedNorm)}


def folded_structure(model: nn.Module, folded: dict[str, str]) -> None:
    """Give ``model`` the shapes of its folded form (``folded``: norm name -> layer name): each norm
    replaced by a :class:`FoldedNorm`, each layer given a bias; the values are the caller's to set."""
    modules = dict(model.named_modules())
    for norm_name, layer_name in folded.items():
        layer = modules[layer_name]
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], device=layer.weight.device))
        parent, _, attribute = norm_name.rpartition(".")
        setattr(modules[parent] if parent else model, attribute, FoldedNorm(layer_name))


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Fold every BatchNorm that reads a Conv/Linear layer's output directly into that layer (in place,
    eval-mode statistics), leaving a :class:`FoldedNorm` where it was; returns the folded norms' names.

    The folded model's outputs are checked against the unfolded ones on ``example_input``: a layer whose
    output is also read elsewhere than by its norm would change, and is refused.
    """
    was_training = model.training
    model.eval()
    before = model(example_input)
    modules = dict(model.named_modules())
    pairs = {
        norm: layer
        for layer, norm in channel_norms(model, example_input).items()
        if isinstance(modules[norm], nn.modules.batchnorm._BatchNorm) and modules[norm].track_running_stats
    }
    folded = {}  # layer name -> (weight, bias) folded
    for norm_name, layer_name in pairs.items():
        layer, norm = modules[layer_name], modules[norm_name]
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(norm.running_mean)
        weight = layer.weight * scale.reshape(-1, *[1] * (layer.weight.dim() - 1))
        folded[layer_name] = (weight, scale * (bias - norm.running_mean) + norm.bias)
    folded_structure(model, pairs)
    for layer_name, (weight, bias) in folded.items():
        modules[layer_name].weight.copy_(weight)
        modules[layer_name].bias.copy_(bias)
    after = model(example_input)
    model.train(was_training)
    if not torch.allclose(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max())):
        difference = float((after - before).abs().max())
        raise ValueError(
            f"folding BatchNorm changed the model's outputs (largest difference {difference:.3g}): "
            "some layer's output is read by more than its norm"
        )
    return list(pairs)


class ActivationFakeQuant:
    """A forward pre-hook that rounds a layer's input to an affine per-tensor grid."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> None:
        self.scale, self.zero_point, self.bits = scale, zero_point, bits

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        scale, zero_point = self.scale.to(x.device), self.zero_point.to(x.device)
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, (1 << self.bits) - 1), *args[1:])


def activation_grid(
    samples: torch.Tensor, bits: int, method: Literal["minmax", "mse", "percentile"], percentile: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine per-tensor (scale, zero_point) of a layer's input from calibration ``samples``."""
    rows = samples.reshape(1, -1).float()
    if method == "mse":
        lo, hi = mse_ranges(rows, bits, symmetric=False)
    elif method == "percentile":
        lo = torch.quantile(rows, (100 - percentile) / 100, dim=1)
        hi = torch.quantile(rows, percentile / 100, dim=1)
    else:
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
    scale, zero_point = qparams(lo, hi, bits, symmetric=False)
    return scale[0], zero_point[0]


@torch.no_grad()
def layer_inputs(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """A strided sample of every Conv/Linear layer's inputs over ``batches`` (float model)."""
    samples: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYERS):

            def record(_: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                flat = args[0].detach().reshape(-1)
                samples.setdefault(name, []).append(flat[:: max(1, flat.numel() // ACTIVATION_SAMPLES)].cpu())

            handles.append(module.register_forward_pre_hook(record))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: torch.cat(values) for name, values in samples.items()}


class UniformParams(Method.Params):
    bits: int = Field(8, ge=2, le=8)
    scheme: Literal["symmetric", "affine"] = "symmetric"
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"


def quantize_model(
    model: nn.Module, params: UniformParams, weight_range: Literal["minmax", "mse"]
) -> dict[str, UniformCodes]:
    """Uniform codes of every quantised weight, decoded back into the model."""
    codes = {
        name: uniform_quantize(
            weight, params.bits, params.scheme == "symmetric", params.granularity == "per_channel", weight_range
        )
        for name, weight in quantized_weights(model).items()
    }
    load_decoded(model, codes)
    return codes


@register_method("ptq")
class PostTrainingQuantization(CompressionMethod):
    """Round weights (and optionally layer inputs) to b-bit uniform grids set from data; no retraining.

    ``float_finetune``: first fine-tune the float model with the FINETUNE recipe (masks fixed), the
    training QAT and k-means fine-tuning get: the equal-budget baseline they should be compared to
    (the rows' ``train_epochs`` then match). ``fold_batchnorm``: fold BatchNorm into the layers before
    it (:func:`fold_batchnorm`) before ranges are set, so the deployed model is the one quantised and
    evaluated.
    """

    family = "quantization"
    reference = NAGEL

    class Params(UniformParams):
        float_finetune: bool = False
        fold_batchnorm: bool = False
        weight_range: Literal["minmax", "mse"] = "minmax"
        activation_bits: int | None = Field(None, ge=2, le=16)  # None: activations stay float
        activation_range: Literal["minmax", "mse", "percentile"] = "minmax"
        percentile: float = Field(99.99, gt=50, le=100)
        calibration_batches: int = Field(4, ge=1)

    def compress(self, job: Job) -> None:
        p = self.params
        if p.float_finetune:
            job.finetune(finish=False)
        if p.fold_batchnorm:
            fold_batchnorm(job.model, job.train_batches(1)[0][0][:16])
        if p.activation_bits is not None:  # ranges come from the float model, as observers see it
            inputs = layer_inputs(job.model, [x for x, _ in job.train_batches(p.calibration_batches)])
        job.set_storage(quantized=quantize_model(job.model, p, p.weight_range))
        if p.activation_bits is not None:
            modules = dict(job.model.named_modules())
            for name, samples in inputs.items():
                grid = activation_grid(samples, p.activation_bits, p.activation_range, p.percentile)
                modules[name].register_forward_pre_hook(ActivationFakeQuant(*grid, p.activation_bits))
        job.finish_level()


class FakeQuantWeights(Callback):
    """Straight-through fake quantisation: each step's forward and backward see the quantised weights,
    and the optimiser applies that gradient to the float weights they came from."""

    def __init__(self, quantize: Callable[[nn.Module], Any]) -> None:
        self.quantize = quantize
        self._float: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _quantized(self, module: L.LightningModule) -> None:
        if not self._float:
            self._float = {name: w.detach().clone() for name, w in quantized_weights(module.model).items()}
            self.quantize(module.model)

    @torch.no_grad()
    def _restored(self, module: L.LightningModule) -> None:
        weights = quantized_weights(module.model)
        for name, value in self._float.items():
            weights[name].copy_(value)
        self._float = {}

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self._quantized(module)

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self._restored(module)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._quantized(module)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._restored(module)


@register_method("qat")
class QuantizationAwareTraining(CompressionMethod):
    """Fine-tune through b-bit fake-quantised weights (straight-through gradient), then store their codes."""

    family = "quantization"
    reference = NAGEL + "; Jacob et al. 2018"

    class Params(UniformParams):
        bits: int = Field(4, ge=2, le=8)

    def compress(self, job: Job) -> None:
        job.finetune(
            callbacks=[FakeQuantWeights(lambda model: quantize_model(model, self.params, "minmax"))], finish=False
        )
        job.set_storage(quantized=quantize_model(job.model, self.params, "minmax"))
        job.finish_level()


# -- weight sharing -----------------------------------------------------------------------------


def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's 1-D k-means with centroids initialised linearly over [min, max]: (centroids, codes)."""
    values = values.detach().double()
    centroids = torch.linspace(float(values.min()), float(values.max()), clusters, dtype=torch.float64)
    for _ in range(iterations):
        codes = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros_like(centroids).index_add_(0, codes, values)
        counts = torch.bincount(codes, minlength=clusters)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # empty clusters stay put
        if torch.equal(updated, centroids):
            break
        centroids = updated
    centroids = centroids.float()
    return centroids, torch.bucketize(values.float(), (centroids[1:] + centroids[:-1]) / 2)


def share_weights(weight: torch.Tensor, bits: int, iterations: int) -> SharedCodes:
    """Cluster the nonzero entries of ``weight`` into ``2**bits`` shared values."""
    weight = weight.detach().cpu()
    present = weight != 0
    codes = torch.zeros(weight.shape, dtype=torch.long)
    centroids = torch.zeros(1 << bits)
    if present.any():
        centroids, codes[present] = kmeans_1d(weight[present], 1 << bits, iterations)
    return SharedCodes(codes, bits, centroids)


class SharedGradients(Callback):
    """Keeps shared weights shared while training: every member of a cluster gets the cluster's summed
    (or mean) gradient, so any element-wise optimiser moves them all alike (Deep Compression, Fig. 3)."""

    def __init__(self, codes: dict[str, SharedCodes], reduce: Literal["sum", "mean"]) -> None:
        self.codes = codes
        self.reduce = reduce

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        weights = quantized_weights(module.model)
        for name, shared in self.codes.items():
            grad = weights[name].grad
            if grad is None:
                continue
            present = (weights[name] != 0).detach()
            codes = shared.codes.to(grad.device)[present]
            per_cluster = torch.zeros(len(shared.centroids), device=grad.device).index_add_(0, codes, grad[present])
            if self.reduce == "mean":
                per_cluster /= torch.bincount(codes, minlength=len(per_cluster)).clamp(min=1)
            grad.zero_()
            grad[present] = per_cluster[codes]


def refit_centroids(weight: torch.Tensor, shared: SharedCodes) -> SharedCodes:
    """The centroids the fine-tuned weights now hold: each cluster's mean (all members are equal)."""
    weight = weight.detach().cpu()
    present = weight != 0
    codes = shared.codes[present]
    sums = torch.zeros(len(shared.centroids), dtype=torch.float64).index_add_(0, codes, weight[present].double())
    counts = torch.bincount(codes, minlength=len(shared.centroids))
    centroids = torch.where(counts > 0, sums / counts.clamp(min=1), shared.centroids.double()).float()
    return SharedCodes(shared.codes, shared.bits, centroids)


@register_method("kmeans")
class KMeansWeightSharing(CompressionMethod):
    """Share 2^b values per layer (1-D k-means over the nonzero weights), then fine-tune the centroids.

    ``bits`` per layer, or ``conv_bits`` for Conv layers where given (Deep Compression: 8 conv, 5 FC).
    """

    family = "quantization"
    reference = DEEP_COMPRESSION

    class Params(Method.Params):
        bits: int = Field(5, ge=1, le=8)
        conv_bits: int | None = Field(None, ge=1, le=8)  # None: ``bits`` for every layer
        iterations: int = Field(100, ge=0)  # Lloyd iterations after the linear initialisation
        centroid_gradient: Literal["sum", "mean"] = "sum"  # the paper sums the members' gradients

    def layer_bits(self, model: nn.Module) -> dict[str, int]:
        """The code width of each quantised weight: ``conv_bits`` for Conv layers where given, else ``bits``."""
        modules = dict(model.named_modules())
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
        return {
            name: self.params.conv_bits
            if self.params.conv_bits is not None and isinstance(modules[name.removesuffix(".weight")], conv)
            else self.params.bits
            for name in quantized_weights(model)
        }

    def compress(self, job: Job) -> None:
        p = self.params
        bits = self.layer_bits(job.model)
        codes = {name: share_weights(w, bits[name], p.iterations) for name, w in quantized_weights(job.model).items()}
        load_decoded(job.model, codes)
        if job.finetune_recipe.epochs:
            job.finetune(callbacks=[SharedGradients(codes, p.centroid_gradient)], finish=False)
            weights = quantized_weights(job.model)
            codes = {name: refit_centroids(weights[name], shared) for name, shared in codes.items()}
            load_decoded(job.model, codes)
        job.set_storage(quantized=codes)
        job.finish_level()
