"""CRC-32 (zlib's) combination: ``crc32(a + b)`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)``.

The ledger chains one CRC per symbol per connection on the hot path and derives the
run-wide chain from the connections' chains when it writes the ledger, so each batch pays
for one chain instead of two. This is zlib's ``crc32_combine`` (GF(2) matrix powers for
``2**k`` zero bytes), applied through per-power byte tables so that a combine costs a few
table look-ups per set bit of ``len(b)``.
"""

from __future__ import annotations

POLYNOMIAL = 0xEDB88320  # CRC-32, reflected
_Matrix = list[int]  # 32 columns, column i = image of bit i


def _times(matrix: _Matrix, vector: int) -> int:
    result, i = 0, 0
    while vector:
        if vector & 1:
            result ^= matrix[i]
        vector >>= 1
        i += 1
    return result


def _square(matrix: _Matrix) -> _Matrix:
    return [_times(matrix, column) for column in matrix]


def _byte_tables(matrix: _Matrix) -> tuple[list[int], ...]:
    """``tables[j][b]`` = matrix applied to byte ``b`` in position ``j`` of the CRC."""
    tables = []
    for j in range(4):
        table = [0] * 256
        for b in range(1, 256):
            low = b & -b
            table[b] = table[b ^ low] ^ matrix[8 * j + low.bit_length() - 1]
        tables.append(table)
    return tuple(tables)


class _ZeroOperators:
    """``tables[k]``: the effect on a CRC of appending ``2**k`` zero bytes, built on demand."""

    def __init__(self) -> None:
        one_bit = [POLYNOMIAL] + [1 << i for i in range(31)]
        matrix = _square(_square(_square(one_bit)))  # 1 -> 2 -> 4 -> 8 zero bits: one byte
        self._matrices = [matrix]
        self._tables: list[tuple[list[int], ...]] = [_byte_tables(matrix)]

    def tables(self, k: int) -> tuple[list[int], ...]:
        while len(self._tables) <= k:
            self._matrices.append(_square(self._matrices[-1]))
            self._tables.append(_byte_tables(self._matrices[-1]))
        return self._tables[k]


_OPERATORS = _ZeroOperators()


def crc32_shift(crc: int, length: int) -> int:
    """The CRC after appending ``length`` zero bytes, without its pre/post conditioning."""
    k = 0
    while length:
        if length & 1:
            t0, t1, t2, t3 = _OPERATORS.tables(k)
            crc = t0[crc & 0xFF] ^ t1[(crc >> 8) & 0xFF] ^ t2[(crc >> 16) & 0xFF] ^ t3[crc >> 24]
        length >>= 1
        k += 1
    return crc


def crc32_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """``zlib.crc32(a + b)`` given ``zlib.crc32(a)``, ``zlib.crc32(b)`` and ``len(b)``."""
    return crc32_shift(crc_a, length_b) ^ crc_b
