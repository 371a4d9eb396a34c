"""A Bloomier filter: a table that returns a stored t-bit value for each of n keys, and a random
value for any other key (Chazelle et al. 2004; the XOR construction of Weightless, Reagen et al. 2017).

``f(x) = M(x) ⊕ T[h1(x)] ⊕ T[h2(x)] ⊕ T[h3(x)]`` with k = 3 hashes, each into its own third of a
table of ``m = 3·ceil((1.23·n + 32) / 3)`` cells of ``t`` bits (the +32 keeps small tables
buildable) and a ``t``-bit mask ``M(x)``. The table is built by peeling the 3-uniform hypergraph of
the keys: repeatedly remove a key that is alone in one of its cells, then assign the cells in the
reverse order so that each key's lone cell makes its XOR come out right. If the hypergraph does not
peel, the hashes are re-seeded. An absent key reads ``M(x)`` XOR three table cells, uniformly
random, so the chance it reads one of ``v`` non-null values is ``v / 2**t``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from harness.encoding.bitpack import pack, unpack

HASHES = 3
CELLS_PER_KEY = 1.23
EXTRA_CELLS = 32
HEADER = struct.Struct("<IIB")  # seed, cells, bits per cell: what to_bytes writes before the cells
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(keys: np.ndarray, salt: int) -> np.ndarray:
    """The splitmix64 finaliser of ``key + salt·golden``: a well-spread 64-bit hash per key."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64((salt * _GOLDEN) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def table_cells(n: int) -> int:
    return HASHES * math.ceil((CELLS_PER_KEY * n + EXTRA_CELLS) / HASHES)


@dataclass(frozen=True)
class BloomierFilter:
    table: np.ndarray  # uint64, each cell < 2**cell_bits
    cell_bits: int
    seed: int

    @classmethod
    def build(cls, keys: np.ndarray, values: np.ndarray, cell_bits: int, seed: int = 0, attempts: int = 64):
        """A filter that returns ``values[i]`` (< ``2**cell_bits``) for ``keys[i]`` (distinct, ≥ 0)."""
        keys = np.asarray(keys, dtype=np.int64).ravel()
        values = np.asarray(values, dtype=np.uint64).ravel()
        if values.size and int(values.max()) >> cell_bits:
            raise ValueError(f"value {int(values.max())} does not fit in a {cell_bits}-bit cell")
        size = table_cells(len(keys))
        for attempt_seed in range(seed, seed + attempts):
            cells = _cells(keys, attempt_seed, size)
            rounds = _peel(cells, size)
            if rounds is None:
                continue
            table = np.zeros(size, dtype=np.uint64)
            target = values ^ _masks(keys, attempt_seed, cell_bits)
            for ids, lone in reversed(rounds):  # each key's lone cell is still 0 when it is assigned
                own = cells[ids]
                table[lone] = target[ids] ^ table[own[:, 0]] ^ table[own[:, 1]] ^ table[own[:, 2]]
            return cls(table, cell_bits, attempt_seed)
        raise RuntimeError(f"the key hypergraph did not peel in {attempts} seeds: are the {len(keys)} keys distinct?")

    def query(self, keys: np.ndarray) -> np.ndarray:
        """The stored value of each key in the set; a uniformly random ``cell_bits`` value otherwise."""
        keys = np.asarray(keys, dtype=np.int64).ravel()
        cells = _cells(keys, self.seed, len(self.table))
        t = self.table
        return _masks(keys, self.seed, self.cell_bits) ^ t[cells[:, 0]] ^ t[cells[:, 1]] ^ t[cells[:, 2]]

    def to_bytes(self) -> bytes:
        return HEADER.pack(self.seed, len(self.table), self.cell_bits) + pack(self.table, self.cell_bits)

    @classmethod
    def from_bytes(cls, data: bytes) -> BloomierFilter:
        seed, size, cell_bits = HEADER.unpack_from(data)
        return cls(unpack(data[HEADER.size :], cell_bits, size), cell_bits, seed)


def _cells(keys: np.ndarray, seed: int, size: int) -> np.ndarray:
    """``[n, 3]`` cell of each key for each hash; hash i lands in the i-th third of the table."""
    third = np.uint64(size // HASHES)
    columns = [
        i * (size // HASHES) + (((_mix(keys, HASHES * 2 * seed + i) >> np.uint64(32)) * third) >> np.uint64(32))
        for i in range(HASHES)
    ]
    return np.stack(columns, axis=1).astype(np.int64)


def _masks(keys: np.ndarray, seed: int, cell_bits: int) -> np.ndarray:
    return _mix(keys, HASHES * 2 * seed + HASHES) & np.uint64((1 << cell_bits) - 1)


def _peel(cells: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Rounds of (keys, their lone cells) removed in order, or None if the hypergraph has a 2-core.

    All keys alone in some cell at the start of a round are removed together: two such keys never
    share their lone cell, so their assignments are independent.
    """
    n = len(cells)
    count = np.bincount(cells.ravel(), minlength=size)
    members = np.zeros(size, dtype=np.int64)  # XOR of the ids of the keys still in each cell
    np.bitwise_xor.at(members, cells.ravel(), np.repeat(np.arange(n), HASHES))
    rounds, peeled = [], 0
    while peeled < n:
        lone_cells = np.flatnonzero(count == 1)
        if lone_cells.size == 0:
            return None
        ids, first = np.unique(members[lone_cells], return_index=True)
        rounds.append((ids, lone_cells[first]))
        np.subtract.at(count, cells[ids].ravel(), 1)
        np.bitwise_xor.at(members, cells[ids].ravel(), np.repeat(ids, HASHES))
        peeled += len(ids)
    return rounds
