"""Which pipe a symbol belongs on (docs/CONTRACTS.md section 3), implemented here on its own."""

from __future__ import annotations

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def fnv1a_64(data: bytes) -> int:
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & _MASK
    return h


def pipe_for_symbol(symbol: str, npipes: int) -> int:
    return (fnv1a_64(symbol.encode()) >> 32) % npipes


class PipeOfSymbol(dict[str, int]):
    """A cache of `pipe_for_symbol` for one pipe count: the hash is paid once per symbol."""

    def __init__(self, npipes: int) -> None:
        super().__init__()
        self.npipes = npipes

    def __missing__(self, symbol: str) -> int:
        pipe = self[symbol] = pipe_for_symbol(symbol, self.npipes)
        return pipe
