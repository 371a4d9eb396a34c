"""Huffman coding of a stream of integer symbols, with its codebook, as real bytes.

The codebook is canonical in spirit: one byte per alphabet symbol holding its code length (0 for
absent symbols), as DEFLATE does. Encoder and decoder both rebuild the same tree with
``constriction`` from the probabilities ``2**-length``: for these dyadic probabilities the Huffman
lengths are unique, so the tree is exactly the one the lengths describe.

Stream layout: ``uint32 count | uint8 length × alphabet | payload`` where the payload is
``constriction``'s little-endian 32-bit words cut to the bytes that carry bits.
"""

from __future__ import annotations

import heapq
import struct

import constriction
import numpy as np

_COUNT = struct.Struct("<I")


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of every symbol (0 for symbols that never occur; 1 for a lone symbol)."""
    counts = np.asarray(counts)
    lengths = np.zeros(len(counts), dtype=np.int64)
    present = np.flatnonzero(counts)
    if len(present) == 1:
        lengths[present] = 1
    heap = [(int(counts[s]), int(s), [int(s)]) for s in present]
    heapq.heapify(heap)
    while len(heap) > 1:
        count_a, key_a, symbols_a = heapq.heappop(heap)
        count_b, key_b, symbols_b = heapq.heappop(heap)
        lengths[symbols_a + symbols_b] += 1
        heapq.heappush(heap, (count_a + count_b, min(key_a, key_b), symbols_a + symbols_b))
    if lengths.max(initial=0) > 255:
        raise ValueError("a Huffman code longer than 255 bits cannot be stored in the one-byte codebook")
    return lengths


def _probabilities(lengths: np.ndarray) -> np.ndarray:
    """``2**-length`` of the present symbols only, in symbol order: constriction gives even a
    zero-probability symbol a leaf, which would lengthen the codes of the rarest real symbols."""
    return np.exp2(-lengths[lengths > 0].astype(np.float64))


def encode(symbols: np.ndarray, alphabet_size: int) -> bytes:
    """Count, codebook and Huffman-coded payload of ``symbols`` (integers in ``[0, alphabet_size)``)."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet_size):
        raise ValueError(f"symbols must be in [0, {alphabet_size}), got [{symbols.min()}, {symbols.max()}]")
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet_size))
    header = _COUNT.pack(symbols.size) + lengths.astype(np.uint8).tobytes()
    if np.count_nonzero(lengths) <= 1:  # zero or one distinct symbol: the codebook says it all
        return header
    encoder = constriction.symbol.QueueEncoder()
    codebook = constriction.symbol.huffman.EncoderHuffmanTree(_probabilities(lengths))
    rank = np.cumsum(lengths > 0) - 1  # symbol -> its index among the present symbols
    for symbol in rank[symbols].tolist():
        encoder.encode_symbol(symbol, codebook)
    words, bits = encoder.get_compressed_and_bitrate()
    return header + words.astype("<u4").tobytes()[: -(-bits // 8)]


def decode(data: bytes, alphabet_size: int) -> np.ndarray:
    """The symbols that :func:`encode` coded into ``data``."""
    (count,) = _COUNT.unpack_from(data)
    lengths = np.frombuffer(data, dtype=np.uint8, count=alphabet_size, offset=_COUNT.size).astype(np.int64)
    present = np.flatnonzero(lengths)
    if len(present) <= 1:
        return np.full(count, present[0] if len(present) else 0, dtype=np.int64)
    payload = data[_COUNT.size + alphabet_size :]
    payload += bytes(-len(payload) % 4)
    decoder = constriction.symbol.QueueDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    codebook = constriction.symbol.huffman.DecoderHuffmanTree(_probabilities(lengths))
    return present[np.array([decoder.decode_symbol(codebook) for _ in range(count)], dtype=np.int64)]
