"""Encoders: the last stage of a compression pipeline, deciding how the weights are written to disk.

Each sets the job's stored form to real byte strings (:mod:`harness.encoding`) and records a level.
Lossless encoders (``bitmask``, ``relative_index``, ``huffman``) leave the weights as they are; lossy
ones (``sz``, ``bloomier``) write the *decoded* weights back into the model, so the row's accuracy is
the accuracy of what a user would load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import Field, model_validator

from harness.encoding import Encoded, QuantizedWeight, encode_model, formats
from harness.encoding.decoding import decode_weight
from harness.encoding.lossy import LOSSLESS, bloomier_coded, sz_coded
from harness.encoding.storage import layout_header
from harness.methods import register_method
from harness.methods.base import CompressionMethod, Method
from harness.methods.quantization import DEEP_COMPRESSION, quantized_weights, share_weights
from harness.training import FreezeWeights

if TYPE_CHECKING:
    from harness.methods.base import Job


class Encoder(CompressionMethod):
    """An encoder's level: the model stored by :meth:`encode`, evaluated as it is then."""

    family = "encoding"

    def encode(self, job: Job) -> Encoded:
        """Required hook, called once on the model as it is: return its :class:`~harness.encoding.Encoded`
        form (real byte strings; ``job.quantized`` holds a quantiser's codes). A lossy encoder writes the
        decoded weights back into ``job.model`` so the level's accuracy is what a user would load."""
        raise NotImplementedError

    def compress(self, job: Job) -> None:
        job.set_storage(encoded=self.encode(job))
        job.finish_level()

    @classmethod
    def missing_hooks(cls) -> list[str]:
        return [] if cls.encode is not Encoder.encode else ["encode(self, job)"]


@register_method("bitmask")
class Bitmask(Encoder):
    """Store each weight as a one-bit-per-entry mask plus its nonzero values (or codes)."""

    reference = "Mishra et al. 2020, A survey on deep neural network compression (sparse representation)"

    def encode(self, job: Job) -> Encoded:
        return encode_model(job.model, job.quantized, formats.bitmask, "bitmask")


class IndexParams(Method.Params):
    index_bits: int = Field(5, ge=1, le=16)  # Deep Compression: 5 for fully connected, 8 for conv layers


class IndexGapEncoder(Encoder):
    """Encoders that store each weight's nonzeros as b-bit index gaps: each names its weight format."""

    Params = IndexParams
    storage_format: ClassVar[str]
    weight_format: ClassVar[Callable[..., dict[str, bytes]]]

    def encode(self, job: Job) -> Encoded:
        weight_format = partial(self.weight_format, index_bits=self.params.index_bits)
        return encode_model(job.model, job.quantized, weight_format, self.storage_format)


@register_method("relative_index")
class RelativeIndex(IndexGapEncoder):
    """Store each weight's nonzeros as b-bit gaps to the previous one (filler codes on overflow) plus values."""

    reference = DEEP_COMPRESSION
    storage_format = "relative_index"
    weight_format = staticmethod(formats.relative_index)


@register_method("huffman")
class Huffman(IndexGapEncoder):
    """Huffman-code the relative-index gaps and the quantisation codes of every weight (codebooks counted)."""

    reference = DEEP_COMPRESSION
    storage_format = "huffman"
    weight_format = staticmethod(formats.huffman_coded)


# -- DeepSZ -------------------------------------------------------------------------------------


@register_method("sz")
class DeepSZ(Encoder):
    """SZ3-code each layer's nonzero values at the error bound that minimises bytes within an accuracy budget.

    Each layer alone is decoded at every candidate bound and its top-1 drop measured on a probe set:
    the validation split, topped up with training examples (in the seed's order) to
    ``probe_examples`` — the validation split alone is often too small for the budget to bind (0.5 %
    of digits' 144 examples is less than one). One bound per layer is then chosen so that the summed
    drop, counted in probe examples, stays within ``accuracy_budget`` (float32 values, drop 0, are
    always a choice); a budget worth less than one probe example is refused. Positions are stored
    losslessly as a zlib-compressed bitmask.
    """

    reference = (
        "Jin et al. 2019, DeepSZ: a novel framework to compress deep neural networks by error-bounded lossy compression"
    )
    version = "2"  # the drop is measured on a probe set, not the validation split alone

    class Params(Method.Params):
        bounds: tuple[float, ...] = tuple(round(k * 1e-3, 3) for k in range(1, 10))  # absolute error bounds tried
        accuracy_budget: float = Field(0.005, ge=0, lt=1)  # allowed summed drop of probe top-1 (fraction)
        probe_examples: int = Field(2000, ge=1)  # validation examples, then training ones, the drop is measured on

    def encode(self, job: Job) -> Encoded:
        probe = self._probe(job)
        n_probe = len(probe[1])
        allowed = self.params.accuracy_budget * n_probe
        if 0 < allowed < 1 - 1e-9:
            raise ValueError(
                f"sz: accuracy_budget {self.params.accuracy_budget} of {n_probe} probe examples is {allowed:.2f} "
                f"examples, less than one, so it could never admit a lossy bound; raise probe_examples (this data "
                f"set has {job.split_size('val') + job.split_size('train')} validation and training examples) "
                f"or the budget to at least {1 / n_probe:.4g}"
            )
        base = _correct(job.model, probe)
        options: dict[str, list[tuple[float, int, int]]] = {}  # layer -> (bound, bytes, probe examples lost)
        for name, weight in quantized_weights(job.model).items():
            original = weight.detach().clone()
            options[name] = []
            for bound in (LOSSLESS, *self.params.bounds):
                parts, decoded = _sz_layer(original, bound)
                with torch.no_grad():
                    weight.copy_(decoded)
                lost = 0 if bound == LOSSLESS else max(base - _correct(job.model, probe), 0)
                options[name].append((bound, len(parts["mask"]) + len(parts.get("sz", parts.get("values"))), lost))
            with torch.no_grad():
                weight.copy_(original)
        chosen = _least_bytes_within(options, int(allowed + 1e-9))
        payloads = {}
        for name, weight in quantized_weights(job.model).items():
            payloads[name], decoded = _sz_layer(weight.detach().clone(), chosen[name][0])
            with torch.no_grad():
                weight.copy_(decoded)
        encoded = encode_model(job.model, {}, formats.auto, "sz", payloads)
        encoded.columns = {
            "sz_bounds": json.dumps({name: bound for name, (bound, _, _) in chosen.items()}),
            "sz_probe_examples": n_probe,
            "sz_probe_drop": sum(lost for _, _, lost in chosen.values()) / n_probe,
        }
        return encoded

    def _probe(self, job: Job) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation split, then training examples in the seed's order, ``probe_examples`` in all."""
        x, y = job.val_batch(min(job.split_size("val"), self.params.probe_examples))
        missing = self.params.probe_examples - len(y)
        if missing > 0:
            batches = job.train_batches(-(-missing // job.finetune_recipe.batch_size))
            x_train = torch.cat([b[0].cpu() for b in batches])[:missing]
            y_train = torch.cat([b[1].cpu() for b in batches])[:missing]
            x, y = torch.cat([x, x_train]), torch.cat([y, y_train])
        return x, y


def _sz_layer(weight: torch.Tensor, bound: float) -> tuple[dict[str, bytes], torch.Tensor]:
    """(the weight's parts in DeepSZ's layout at ``bound``, the weight as decoded from them)."""
    parts = sz_coded(weight, bound)
    decoded = decode_weight({"layout": layout_header("sz", parts, None), **parts}, weight.shape)
    return parts, decoded.to(weight.device, weight.dtype)


@torch.no_grad()
def _correct(model: torch.nn.Module, probe: tuple[torch.Tensor, torch.Tensor], batch_size: int = 512) -> int:
    """How many probe examples the model (in eval mode) classifies right."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x, y = probe
    right = sum(
        int((model(x[i : i + batch_size].to(device)).argmax(dim=1) == y[i : i + batch_size].to(device)).sum())
        for i in range(0, len(y), batch_size)
    )
    model.train(was_training)
    return right


def _least_bytes_within(
    options: dict[str, list[tuple[float, int, int]]], budget: int
) -> dict[str, tuple[float, int, int]]:
    """One option per layer minimising total bytes with total examples lost ≤ ``budget``
    (a multiple-choice knapsack, solved exactly by dynamic programming over the lost examples)."""
    best = {0: (0, {})}  # examples lost so far -> (bytes, choice per layer), the cheapest way
    for name, choices in options.items():
        extended: dict[int, tuple[int, dict]] = {}
        for lost, (size, picked) in best.items():
            for option in choices:
                total = lost + option[2]
                if total <= budget and (total not in extended or size + option[1] < extended[total][0]):
                    extended[total] = (size + option[1], {**picked, name: option})
        best = extended
    return min(best.values(), key=lambda entry: entry[0])[1]


# -- Weightless --------------------------------------------------------------------------------


@register_method("bloomier")
class Weightless(Encoder):
    """Store each pruned layer's clustered weights in a Bloomier filter, retraining the rest to absorb false positives.

    Layer by layer, in model order: a layer's nonzero weights use its codes if a quantiser set them,
    else ``2**cluster_bits`` k-means clusters; each position's key maps to its code + 1 in
    ``cell_bits``-bit cells (k = 3). Every position is read back: a pruned one that reads a valid
    code becomes a false-positive weight, and the model keeps the weight as decoded. Then, as
    Weightless does, the network is retrained for ``retrain_epochs`` (the fine-tune recipe) with
    every layer encoded so far frozen at its decoded values, false positives included: the later
    layers (under their masks) and every parameter that is not an encoded weight (biases,
    normalisation) learn to absorb the errors. Weights a quantiser coded stay frozen too, so their
    codes still hold. ``retrain_epochs: 0`` stores without retraining.
    """

    reference = (
        "Reagen et al. 2018, Weightless: lossy weight encoding for deep neural network compression; "
        "Chazelle et al. 2004, The Bloomier filter"
    )
    version = "2"  # retraining after each encoded layer

    class Params(Method.Params):
        cluster_bits: int = Field(4, ge=1, le=8)  # 2^b shared values when the layer has no codes yet
        cell_bits: int = Field(10, ge=2, le=32)  # t: a false positive has probability ≈ 2^b / 2^t
        iterations: int = Field(100, ge=0)
        retrain_epochs: int = Field(1, ge=0)  # after each encoded layer; counted in the row's train_epochs

        @model_validator(mode="after")
        def _cells_wider_than_codes(self):
            if self.cell_bits <= self.cluster_bits:
                raise ValueError(
                    f"cell_bits ({self.cell_bits}) must exceed cluster_bits ({self.cluster_bits}): a t-bit cell "
                    "holds the cluster index plus the bits that make false positives rare"
                )
            return self

    def encode(self, job: Job) -> Encoded:
        p = self.params
        quantized = dict(job.quantized)  # training resets the job's storage; these codes stay frozen, so they hold
        payloads: dict[str, dict[str, bytes]] = {}
        used: dict[str, QuantizedWeight] = {}
        false_positives, absent, expected = 0, 0, 0.0
        for name in [n for n in quantized_weights(job.model) if n in job.masks]:  # a structured mask covers biases too
            weight = quantized_weights(job.model)[name]
            if not bool(weight.any()):  # nothing to store: a filter would only add false positives
                continue
            codes = quantized.get(name) or share_weights(weight, p.cluster_bits, p.iterations)
            if codes.bits >= p.cell_bits:
                raise ValueError(
                    f"{name} is already quantised to {codes.bits} bits, which a {p.cell_bits}-bit Bloomier cell "
                    f"cannot hold with room for false-positive protection; use cell_bits > {codes.bits}"
                )
            present = (weight != 0).cpu()
            parts = bloomier_coded(weight, codes, p.cell_bits, job.seed)
            decoded = decode_weight({"layout": layout_header("bloomier", parts, codes), **parts}, weight.shape)
            with torch.no_grad():
                weight.copy_(decoded.to(weight.device, weight.dtype))
            payloads[name], used[name] = parts, codes
            pruned = int((~present).sum())
            false_positives += int(((decoded != 0) & ~present).sum())
            absent += pruned
            expected += pruned * (1 << codes.bits) / (1 << p.cell_bits)
            if p.retrain_epochs:
                self._retrain(job, frozen=set(payloads) | set(quantized))
        job.set_storage(quantized=quantized)
        encoded = encode_model(job.model, {**quantized, **used}, formats.auto, "bloomier", payloads)
        encoded.columns = {
            "bloomier_false_positives": false_positives,
            "bloomier_false_positive_rate": false_positives / absent if absent else 0.0,
            "bloomier_expected_rate": expected / absent if absent else 0.0,
        }
        return encoded

    def _retrain(self, job: Job, frozen: set[str]) -> None:
        """Fine-tune for ``retrain_epochs`` with the ``frozen`` weights held as they are (no mask on them:
        their false positives must stay) and every other mask enforced."""
        params = dict(job.model.named_parameters())
        held = {name: params[name].detach().clone() for name in frozen}
        hold = FreezeWeights({name: (torch.ones_like(value, dtype=torch.bool), value) for name, value in held.items()})
        masks = {name: mask for name, mask in job.masks.items() if name not in frozen}
        recipe = job.finetune_recipe.model_copy(update={"epochs": self.params.retrain_epochs})
        job.train(recipe, masks, callbacks=[hold], phase="weightless-retrain")
