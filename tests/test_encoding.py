"""Storage formats: every codec decodes to what it encoded, and every size is a hand count of real bytes.

Hand-made model used below: Linear(8→4) whose 32 weights have 6 nonzeros at flat positions
[0, 1, 9, 20, 21, 31], then Linear(4→2) fully dense. 46 parameters, 184 bytes as float32.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from harness.encoding import SharedCodes, Storage, encode_model, formats, huffman, size_columns, sz
from harness.encoding.bitpack import pack, unpack
from harness.encoding.sparse import bitmask_decode, bitmask_encode, relative_index_decode, relative_index_encode
from harness.methods.quantization import uniform_quantize

POSITIONS = [0, 1, 9, 20, 21, 31]


def hand_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        keep = torch.zeros(32, dtype=torch.bool)
        keep[POSITIONS] = True
        model[0].weight.mul_(keep.view(4, 8))
    return model


def test_bitpack_writes_each_value_msb_first_and_pads_the_last_byte() -> None:
    assert pack(np.array([5, 0, 7]), 3) == bytes([0b10100011, 0b10000000])  # 101 000 111 + 7 padding zeros
    assert unpack(bytes([0b10100011, 0b10000000]), 3, 3).tolist() == [5, 0, 7]
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        pack(np.array([8]), 3)


def test_relative_index_uses_a_filler_code_when_a_gap_overflows() -> None:
    # 2-bit codes: 0..2 mean gaps 1..3, code 3 is a filler that advances 3 positions.
    assert relative_index_encode(np.array([0, 2, 9]), 2).tolist() == [0, 1, 3, 3, 0]  # gaps 1, 2, 7 = 3+3+1
    assert relative_index_decode(np.array([0, 1, 3, 3, 0]), 2).tolist() == [0, 2, 9]
    assert relative_index_encode(np.array([2, 6]), 2).tolist() == [2, 3, 0]  # gap 3 fits; gap 4 = filler + 1


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_relative_index_round_trips_any_positions(bits: int) -> None:
    rng = np.random.default_rng(bits)
    positions = np.sort(rng.choice(5000, size=300, replace=False))
    codes = relative_index_encode(positions, bits)
    assert codes.max() < 2**bits
    assert relative_index_decode(unpack(pack(codes, bits), bits, len(codes)), bits).tolist() == positions.tolist()


def test_bitmask_round_trips() -> None:
    present = np.random.default_rng(0).random(1001) < 0.3
    assert np.array_equal(bitmask_decode(bitmask_encode(present), 1001), present)


def test_huffman_lengths_match_a_hand_built_tree_and_decode_exactly() -> None:
    symbols = np.array([0] * 5 + [1] * 2 + [2] + [3])  # counts 5, 2, 1, 1: lengths 1, 2, 3, 3
    assert huffman.code_lengths(np.bincount(symbols, minlength=5)).tolist() == [1, 2, 3, 3, 0]
    data = huffman.encode(symbols, 5)
    assert len(data) == 4 + 5 + math.ceil((5 * 1 + 2 * 2 + 3 + 3) / 8)  # count, codebook byte per symbol, payload
    assert huffman.decode(data, 5).tolist() == symbols.tolist()


@pytest.mark.parametrize("alphabet", [2, 16, 32, 256])
def test_huffman_decodes_exactly_and_is_never_longer_than_fixed_length(alphabet: int) -> None:
    rng = np.random.default_rng(alphabet)
    symbols = rng.choice(alphabet, size=4000, p=rng.dirichlet(np.full(alphabet, 0.5)))
    data = huffman.encode(symbols, alphabet)
    assert np.array_equal(huffman.decode(data, alphabet), symbols)
    payload_bits = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))[symbols].sum()
    assert len(data) == 4 + alphabet + math.ceil(payload_bits / 8)
    assert payload_bits <= len(symbols) * math.log2(alphabet)


@pytest.mark.parametrize("symbols", [[], [3, 3, 3]])
def test_huffman_handles_streams_with_at_most_one_symbol(symbols: list[int]) -> None:
    data = huffman.encode(np.array(symbols), 4)
    assert len(data) == 4 + 4  # the count and the codebook say it all
    assert huffman.decode(data, 4).tolist() == symbols


@pytest.mark.parametrize("bound", [1e-3, 5e-3])
def test_sz_keeps_every_value_within_its_bound(bound: float) -> None:
    values = (np.random.default_rng(0).standard_normal(5000) * 0.05).astype(np.float32)
    data = sz.encode(values, bound)
    decoded = sz.decode(data, len(values))
    assert np.abs(decoded.astype(np.float64) - values).max() <= bound
    assert len(data) < values.nbytes / 2  # it does compress


def test_default_storage_of_a_hand_made_sparse_model_matches_a_hand_count() -> None:
    model = hand_model()
    encoded = Storage().encode(model)
    # layer 0: bitmask 32/8 = 4 bytes + 6 float32 = 28 (dense would be 128); its bias 4·4 = 16
    # layer 2: no zeros, dense 8·4 = 32 (bitmask would be 1 + 32); its bias 2·4 = 8
    # each weight: a 2-byte header (layout, bit width)
    assert encoded.module_bytes("0") == 2 + 28 + 16
    assert encoded.module_bytes("2") == 2 + 32 + 8
    assert encoded.payloads["0.weight"]["layout"] == bytes([1, 0])  # bitmask, float32
    assert encoded.payloads["2.weight"]["layout"] == bytes([0, 0])  # dense, float32
    columns = size_columns(encoded, params_total=46)
    assert columns["size_bytes"] == 88
    assert columns["size_bytes_dense"] == 184
    assert columns["bits_per_weight"] == pytest.approx(88 * 8 / 46)


def test_quantised_codes_are_stored_at_their_width_with_their_table() -> None:
    model = hand_model()
    weight = model[0].weight.detach()
    codes = uniform_quantize(weight, bits=4, symmetric=True, per_channel=False)
    # dense codes: 32·4 bits = 16 bytes + 1 scale = 20; bitmask: 4 + ceil(6·4/8) = 3, + 4 = 11
    assert sum(map(len, formats.auto(weight, codes).values())) == 11
    assert sum(map(len, formats.dense(weight, codes).values())) == 20
    shared = SharedCodes(torch.zeros(4, 8, dtype=torch.long), 2, torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert formats.dense(weight, shared) is None  # no code means zero: pruned entries need a sparse layout
    assert sum(map(len, formats.bitmask(weight, shared).values())) == 4 + math.ceil(6 * 2 / 8) + 16


def test_relative_index_size_counts_fillers_hand_computed() -> None:
    weight = hand_model()[0].weight.detach()
    # 3-bit codes, F = 7; gaps 1, 1, 8, 11, 1, 10 → codes 0, 0, 7+0, 7+3, 0, 7+2: nine codes
    assert relative_index_encode(np.array(POSITIONS), 3).tolist() == [0, 0, 7, 0, 7, 3, 0, 7, 2]
    parts = formats.relative_index(weight, None, index_bits=3)
    assert {k: len(v) for k, v in parts.items()} == {
        "index_bits": 1,  # a decoder needs the gap width: one byte
        "count": 4,
        "index": math.ceil(9 * 3 / 8),
        "values": 24,
    }


def test_huffman_format_decodes_to_the_positions_and_codes_it_stored() -> None:
    weight = hand_model()[0].weight.detach()
    codes = uniform_quantize(weight, bits=4, symmetric=False, per_channel=True)
    parts = formats.huffman_coded(weight, codes, index_bits=3)
    positions = relative_index_decode(huffman.decode(parts["index"], 8), 3)
    assert positions.tolist() == POSITIONS
    assert huffman.decode(parts["codes"], 16).tolist() == codes.codes.view(-1)[POSITIONS].tolist()


def test_every_parameter_is_encoded_once() -> None:
    model = hand_model()
    encoded = encode_model(model, {}, formats.bitmask, "bitmask")
    assert set(encoded.payloads) == {name for name, _ in model.named_parameters()}
    assert encoded.module_bytes("2") == 2 + 1 + 32 + 8  # bitmask forced even where dense would be smaller
