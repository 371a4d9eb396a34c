"""Encoding details: the Huffman codebook costs what its present symbols need (and a stream splits into count,
codebook and payload); every weight names its layout and bit width; the symmetric zero point; Deep
Compression's per-layer bits and classifier pruning; benchmarks/papers/encoding_breakdown.py's split by part."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness.encoding import SharedCodes, encode_model, formats, huffman
from harness.encoding.storage import LAYOUTS, OTHER_LAYOUT
from harness.methods.quantization import qparams, uniform_quantize
from harness.testing import run_method


def test_a_sixteen_bit_alphabet_with_few_symbols_gets_a_sparse_codebook() -> None:
    rng = np.random.default_rng(0)
    symbols = rng.choice([3, 70, 1000, 65535], size=500, p=[0.7, 0.1, 0.1, 0.1])
    data = huffman.encode(symbols, 1 << 16)
    assert np.array_equal(huffman.decode(data, 1 << 16), symbols)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=1 << 16))
    payload = -(-int(lengths[symbols].sum()) // 8)
    # count, k, 4 symbols as uint16, 4 lengths, payload: 4 + 4 + 8 + 4 — not 65,536 bytes of table
    assert len(data) == 4 + 4 + 4 * 2 + 4 + payload
    assert huffman.stream_sizes(data, 1 << 16) == (4, 4 + 4 * 2 + 4, payload)


@pytest.mark.parametrize("alphabet", [(1 << 16) + 1, 1 << 20])
def test_alphabets_past_sixteen_bits_store_symbols_as_uint32(alphabet: int) -> None:
    symbols = np.array([0, alphabet - 1, alphabet - 1, 5])
    data = huffman.encode(symbols, alphabet)
    assert huffman.decode(data, alphabet).tolist() == symbols.tolist()
    assert len(data) == 4 + 4 + 3 * 4 + 3 + 1  # payload: lengths 2, 1, 1, 2 → 6 bits → 1 byte


def test_a_dense_codebook_stays_where_it_is_smaller() -> None:
    symbols = np.arange(16).repeat(3)
    data = huffman.encode(symbols, 16)
    assert len(data) == 4 + 16 + 3 * 16 * 4 // 8  # one length byte per symbol
    assert huffman.stream_sizes(data, 16) == (4, 16, 3 * 16 * 4 // 8)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_the_symmetric_zero_point_is_two_to_the_bits_minus_one_minus_one(bits: int) -> None:
    scale, zero_point = qparams(torch.tensor([-1.0]), torch.tensor([0.5]), bits, symmetric=True)
    assert int(zero_point) == 2 ** (bits - 1) - 1  # (2**b − 1) // 2: codes 0 … 2**b − 2 are symmetric around it
    assert float(scale) == pytest.approx(1.0 / ((2**bits - 1) / 2))


def test_deep_compression_prunes_every_layer_and_shares_8_bits_in_conv_5_in_fc() -> None:
    job = run_method("deep_compression", {"rate": 0.5}, sparsity=0.5, model="lenet5")
    codes = job.storage.quantized
    assert {name: q.bits for name, q in codes.items()} == {
        "features.0.weight": 8,
        "features.3.weight": 8,
        "classifier.1.weight": 5,
        "classifier.3.weight": 5,
        "classifier.5.weight": 5,  # the classifier, pruned too
    }
    pruning = next(level for level in job.levels if level.row["stage"] == "iterative")
    classifier = pruning.masks["classifier.5.weight"]
    assert int((~classifier).sum()) == round(0.25 * classifier.numel())  # half the rate, as Han et al.
    for name in ("features.0.weight", "classifier.1.weight"):  # layer by layer, each at the cell's 50 %
        assert int((~pruning.masks[name]).sum()) == round(0.5 * pruning.masks[name].numel())
    assert job.levels[-1].row["storage_format"] == "huffman"


def test_every_stored_weight_names_its_layout_and_bit_width() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[:, :6] = 0.0  # 24 of 32 zero: the bitmask layout is smaller
    codes = {"2.weight": uniform_quantize(model[2].weight.detach(), bits=3, symmetric=True, per_channel=True)}
    encoded = encode_model(model, codes, formats.auto, "auto")
    assert encoded.payloads["0.weight"]["layout"] == bytes([LAYOUTS["bitmask"], 0])
    assert encoded.payloads["2.weight"]["layout"] == bytes([LAYOUTS["dense"], 3])
    assert "layout" not in encoded.payloads["0.bias"]  # float32 parameters have one layout
    huffman_coded = encode_model(model, codes, lambda w, q: formats.huffman_coded(w, q, 4), "huffman")
    assert huffman_coded.payloads["2.weight"]["layout"] == bytes([LAYOUTS["huffman"], 3])
    plugin = encode_model(model, {}, formats.dense, "zlib_float16")
    assert plugin.payloads["0.weight"]["layout"] == bytes([OTHER_LAYOUT, 0])


def load_breakdown():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "papers" / "encoding_breakdown.py"
    spec = importlib.util.spec_from_file_location("encoding_breakdown", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_encoding_breakdown_splits_a_huffman_coded_weight_into_its_parts() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 33.0).view(4, 8) * (torch.arange(32).view(4, 8) % 3 == 0))
    present = model[0].weight.detach() != 0  # positions 0, 3, 6, …, 30: 11 nonzeros, gaps 1 then 3s
    codes = torch.zeros(4, 8, dtype=torch.long)
    codes[present] = torch.arange(11) % 4
    shared = SharedCodes(codes, 2, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    encoded = encode_model(model, {"0.weight": shared}, lambda w, q: formats.huffman_coded(w, q, 3), "huffman")
    parts = load_breakdown().breakdown(encoded, {"0.weight"})
    gaps = huffman.code_lengths(np.bincount([0] + [2] * 10, minlength=8))  # gap codes: c = gap − 1
    values = huffman.code_lengths(np.bincount((np.arange(11) % 4), minlength=4))
    assert parts == {
        "values": -(-int(values[np.arange(11) % 4].sum()) // 8),
        "positions": -(-int(gaps[[0] + [2] * 10].sum()) // 8),
        "filter": 0,
        "codebooks": 4 * 4 + 8 + 4,  # four float32 centroids, dense codebooks of the 8 gap and 4 code symbols
        "headers": 2 + 1 + 4 + 4,  # layout, index width, the two streams' count words
        "other": 4 * 4,  # the float32 bias
    }
    assert sum(parts.values()) == encoded.size_bytes
