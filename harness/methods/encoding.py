"""Encoders: the last stage of a compression pipeline, deciding how the weights are written to disk.

Each sets the job's stored form to real byte strings (:mod:`harness.encoding`) and records a level.
Lossless encoders (``bitmask``, ``relative_index``, ``huffman``) leave the weights as they are; lossy
ones (``sz``, ``bloomier``) write the *decoded* weights back into the model, so the row's accuracy is
the accuracy of what a user would load.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator

from harness.encoding import Encoded, encode_model, formats
from harness.encoding import sz as sz_codec
from harness.encoding.bloomier import BloomierFilter
from harness.encoding.sparse import bitmask_encode
from harness.methods import register_method
from harness.methods.base import CompressionMethod, Method
from harness.methods.quantization import DEEP_COMPRESSION, quantized_weights, share_weights

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

LOSSLESS = 0.0  # the bound of the always-available fallback: float32 values, no accuracy cost


@register_method("sz")
class DeepSZ(Encoder):
    """SZ3-code each layer's nonzero values at the error bound that minimises bytes within an accuracy budget.

    Each layer alone is decoded at every candidate bound and scored on the validation split; one
    bound per layer is then chosen so that the summed validation top-1 drop stays within
    ``accuracy_budget`` (float32 values, drop 0, are always a choice). Positions are stored
    losslessly as a zlib-compressed bitmask.
    """

    reference = (
        "Jin et al. 2019, DeepSZ: a novel framework to compress deep neural networks by error-bounded lossy compression"
    )

    class Params(Method.Params):
        bounds: tuple[float, ...] = tuple(round(k * 1e-3, 3) for k in range(1, 10))  # absolute error bounds tried
        accuracy_budget: float = Field(0.005, ge=0, lt=1)  # allowed summed drop of validation top-1 (fraction)

    def encode(self, job: Job) -> Encoded:
        n_val = job.split_size("val")
        base = job.evaluate("val")["top1"]
        options: dict[str, list[tuple[float, int, int]]] = {}  # layer -> (bound, bytes, examples lost)
        for name, weight in quantized_weights(job.model).items():
            options[name] = [(LOSSLESS, len(self._parts(weight, LOSSLESS)[0]["values"]), 0)]
            original = weight.detach().clone()
            for bound in self.params.bounds:
                parts, decoded = self._parts(original, bound)
                with torch.no_grad():
                    weight.copy_(decoded)
                lost = round((base - job.evaluate("val")["top1"]) * n_val)
                options[name].append((bound, len(parts["values"]), max(lost, 0)))
            with torch.no_grad():
                weight.copy_(original)
        chosen = _least_bytes_within(options, int(self.params.accuracy_budget * n_val + 1e-9))
        payloads = {}
        for name, weight in quantized_weights(job.model).items():
            payloads[name], decoded = self._parts(weight.detach().clone(), chosen[name][0])
            with torch.no_grad():
                weight.copy_(decoded)
        encoded = encode_model(job.model, {}, formats.auto, "sz", payloads)
        encoded.columns = {
            "sz_bounds": json.dumps({name: bound for name, (bound, _, _) in chosen.items()}),
            "sz_validation_drop": sum(lost for _, _, lost in chosen.values()) / n_val,
        }
        return encoded

    @staticmethod
    def _parts(weight: torch.Tensor, bound: float) -> tuple[dict[str, bytes], torch.Tensor]:
        """(mask and SZ stream of the nonzero values at ``bound``, the weight as decoded from them)."""
        flat = weight.detach().cpu().reshape(-1)
        present = (flat != 0).numpy()
        values = flat.numpy()[present]
        if bound == LOSSLESS:
            data, decoded = formats.float32_bytes(values), values
        else:
            data = sz_codec.encode(values, bound)
            decoded = sz_codec.decode(data, len(values))
        restored = np.zeros(flat.numel(), dtype=np.float32)
        restored[present] = decoded
        parts = {"mask": zlib.compress(bitmask_encode(present), 9), "values": data}
        return parts, torch.from_numpy(restored).view_as(weight).to(weight.device, weight.dtype)


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
    """Store each pruned layer's clustered weights in a Bloomier filter; false positives stay in the model.

    A layer's nonzero weights use its codes if a quantiser set them, else ``2**cluster_bits``
    k-means clusters; each position's key maps to its code + 1 in ``cell_bits``-bit cells (k = 3).
    Every position is read back: a pruned one that reads a valid code becomes a false-positive
    weight. Weightless's retraining of later layers to absorb them is not done here.
    """

    reference = "Reagen et al. 2017, Weightless; Chazelle et al. 2004, The Bloomier filter"

    class Params(Method.Params):
        cluster_bits: int = Field(4, ge=1, le=8)  # 2^b shared values when the layer has no codes yet
        cell_bits: int = Field(10, ge=2, le=32)  # t: a false positive has probability ≈ 2^b / 2^t
        iterations: int = Field(100, ge=0)

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
        weights = quantized_weights(job.model)
        payloads, false_positives, absent, expected = {}, 0, 0, 0.0
        for name in job.masks:
            weight = weights[name]
            if not bool(weight.any()):  # nothing to store: a filter would only add false positives
                continue
            codes = job.quantized.get(name) or share_weights(weight, p.cluster_bits, p.iterations)
            if codes.bits >= p.cell_bits:
                raise ValueError(
                    f"{name} is already quantised to {codes.bits} bits, which a {p.cell_bits}-bit Bloomier cell "
                    f"cannot hold with room for false-positive protection; use cell_bits > {codes.bits}"
                )
            present = (weight != 0).cpu().reshape(-1)
            keys = torch.nonzero(present).view(-1).numpy()
            filt = BloomierFilter.build(keys, codes.codes.reshape(-1)[present].numpy() + 1, p.cell_bits, job.seed)
            read = torch.from_numpy(filt.query(np.arange(present.numel())).astype(np.int64))
            valid = (read >= 1) & (read <= 1 << codes.bits)  # 0 and codes beyond the clusters read as "pruned"
            decoded = codes.decode(torch.where(valid, read - 1, 0).view_as(weight), valid.view_as(weight))
            with torch.no_grad():
                weight.copy_(decoded.to(weight.device, weight.dtype))
            payloads[name] = {"filter": filt.to_bytes(), "table": codes.table_bytes()}
            false_positives += int((valid & ~present).sum())
            absent += int((~present).sum())
            expected += int((~present).sum()) * (1 << codes.bits) / (1 << p.cell_bits)
        encoded = encode_model(job.model, job.quantized, formats.auto, "bloomier", payloads)
        encoded.columns = {
            "bloomier_false_positives": false_positives,
            "bloomier_false_positive_rate": false_positives / absent if absent else 0.0,
            "bloomier_expected_rate": expected / absent if absent else 0.0,
        }
        return encoded
