"""Which data path runs: the optional native one (balancer/_speedups.c) or pure Python.

The native engine takes, from the decoder's receive buffer, the leading run of whole data frames
whose payloads have Polygon's exact compact layout, and routes them in one C call per read into
framed chunks appended to the router (the same ``Chunk``s the pure path makes, so delivery,
backpressure and resync after a worker death are unchanged). It stops at the first frame it does
not take; the Python decoder and router handle that frame and the rest of the read, and stay the
authority for every rule (control frames, fragmentation, violations, odd layouts, escapes,
statuses, --max-message).
"""

from __future__ import annotations

from array import array
from typing import Any

from balancer.frames import FrameDecoder
from balancer.router import SLOW_OVERHEAD, Chunk, Router
from common import native

_speedups = native.load("balancer._speedups", "LB_SPEEDUPS")  # LB_SPEEDUPS: the sanitizer build's path

ENGINES = ("auto", "native", "python")


class EngineUnavailable(Exception):
    pass


def native_available() -> bool:
    return _speedups is not None


def choose(requested: str) -> str:
    """'native' or 'python' for an --engine value; EngineUnavailable for native without the build."""
    if requested == "python":
        return "python"
    if requested == "native" and _speedups is None:
        raise EngineUnavailable("--engine native: the compiled extension balancer._speedups is not built")
    return "native" if _speedups is not None else "python"


class NativeEngine:
    """One per balancer: the C object holds per-pipe scratch buffers, reused across reads."""

    def __init__(self, npipes: int) -> None:
        assert _speedups is not None
        self._engine: Any = _speedups.Engine(npipes)

    def run(self, decoder: FrameDecoder, router: Router) -> tuple[int, int]:
        """Route the leading fast-path frames of the decoder's buffer; returns (messages, trades)."""
        d: Any = decoder
        if d.closed or d.error is not None or d._fragments is not None or d._end - d._start < 2:
            return 0, 0
        pos, nframes, trades, batches = self._engine.scan(d._buf, d._start, d._end, d.max_message)
        if not nframes:
            return 0, 0
        d._start = pos
        d.frames += nframes
        router.trades += trades
        chunks = router._chunks
        for pipe, data, lens, wide in batches:
            router._seal(pipe)  # pending pieces (none between reads) stay ahead of these
            if wide:
                wide_lens = array("I")
                wide_lens.frombytes(lens)
                chunks[pipe].append(Chunk(data, wide_lens, SLOW_OVERHEAD))
            else:
                chunks[pipe].append(Chunk(data, lens, SLOW_OVERHEAD))
        return nframes, trades
