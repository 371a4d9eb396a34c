"""Huffman coding of a stream of integer symbols, with its codebook, as real bytes.

The codebook is canonical in spirit: each present symbol's code length, as DEFLATE keeps it.
Encoder and decoder both rebuild the same tree with ``constriction`` from the probabilities
``2**-length``: for these dyadic probabilities the Huffman lengths are unique, so the tree is
exactly the one the lengths describe. The codebook takes whichever layout is smaller:

- dense: ``uint8 length × alphabet`` (0 for absent symbols): small alphabets, most symbols present;
- sparse: ``uint32 k | symbol × k | uint8 length × k`` over the k present symbols (symbols as
  uint16, or uint32 past 65,536): large alphabets with few symbols, e.g. 16-bit index gaps, where
  the dense table alone would cost 64 KiB per stream.

Stream layout: ``uint32 count (top bit set: sparse codebook) | codebook | payload`` where the
payload is ``constriction``'s little-endian 32-bit words cut to the bytes that carry bits.
"""

from __future__ import annotations

import heapq
import struct

import constriction
import numpy as np

_COUNT = struct.Struct("<I")
_SPARSE = 1 << 31  # flag in the count word: the codebook lists the present symbols


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


def _symbol_dtype(alphabet_size: int) -> str:
    return "<u2" if alphabet_size <= 1 << 16 else "<u4"


def _codebook(lengths: np.ndarray) -> tuple[bool, bytes]:
    """(sparse?, bytes) of the smaller codebook layout for these code lengths."""
    present = np.flatnonzero(lengths)
    dtype = _symbol_dtype(len(lengths))
    sparse = _COUNT.pack(len(present)) + present.astype(dtype).tobytes() + lengths[present].astype(np.uint8).tobytes()
    dense = lengths.astype(np.uint8).tobytes()
    return (True, sparse) if len(sparse) < len(dense) else (False, dense)


def encode(symbols: np.ndarray, alphabet_size: int) -> bytes:
    """Count, codebook and Huffman-coded payload of ``symbols`` (integers in ``[0, alphabet_size)``)."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet_size):
        raise ValueError(f"symbols must be in [0, {alphabet_size}), got [{symbols.min()}, {symbols.max()}]")
    if symbols.size >= _SPARSE:
        raise ValueError(f"a stream holds fewer than {_SPARSE} symbols, got {symbols.size}")
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet_size))
    sparse, codebook = _codebook(lengths)
    header = _COUNT.pack(symbols.size | (_SPARSE if sparse else 0)) + codebook
    if np.count_nonzero(lengths) <= 1:  # zero or one distinct symbol: the codebook says it all
        return header
    encoder = constriction.symbol.QueueEncoder()
    codebook = constriction.symbol.huffman.EncoderHuffmanTree(_probabilities(lengths))
    rank = np.cumsum(lengths > 0) - 1  # symbol -> its index among the present symbols
    for symbol in rank[symbols].tolist():
        encoder.encode_symbol(symbol, codebook)
    words, bits = encoder.get_compressed_and_bitrate()
    return header + words.astype("<u4").tobytes()[: -(-bits // 8)]


def _read_codebook(data: bytes, alphabet_size: int) -> tuple[int, np.ndarray, np.ndarray, int]:
    """(symbol count, code length per symbol, present symbols, offset of the payload) of a stream."""
    (word,) = _COUNT.unpack_from(data)
    count, offset = word & ~_SPARSE, _COUNT.size
    if word & _SPARSE:
        (k,) = _COUNT.unpack_from(data, offset)
        dtype = np.dtype(_symbol_dtype(alphabet_size))
        present = np.frombuffer(data, dtype=dtype, count=k, offset=offset + _COUNT.size).astype(np.int64)
        offset += _COUNT.size + k * dtype.itemsize
        lengths = np.zeros(alphabet_size, dtype=np.int64)
        lengths[present] = np.frombuffer(data, dtype=np.uint8, count=k, offset=offset)
        offset += k
    else:
        lengths = np.frombuffer(data, dtype=np.uint8, count=alphabet_size, offset=offset).astype(np.int64)
        present = np.flatnonzero(lengths)
        offset += alphabet_size
    return count, lengths, present, offset


def stream_sizes(data: bytes, alphabet_size: int) -> tuple[int, int, int]:
    """Bytes of a stream's count word, its codebook and its coded payload (they sum to ``len(data)``)."""
    offset = _read_codebook(data, alphabet_size)[3]
    return _COUNT.size, offset - _COUNT.size, len(data) - offset


def decode(data: bytes, alphabet_size: int) -> np.ndarray:
    """The symbols that :func:`encode` coded into ``data``."""
    count, lengths, present, offset = _read_codebook(data, alphabet_size)
    if len(present) <= 1:
        return np.full(count, present[0] if len(present) else 0, dtype=np.int64)
    payload = data[offset:]
    payload += bytes(-len(payload) % 4)
    decoder = constriction.symbol.QueueDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    codebook = constriction.symbol.huffman.DecoderHuffmanTree(_probabilities(lengths))
    return present[np.array([decoder.decode_symbol(codebook) for _ in range(count)], dtype=np.int64)]
