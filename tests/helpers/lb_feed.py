"""What a dump worker wrote per pipe, and waiting until lb has delivered a whole feed.
"""

from __future__ import annotations

import os

from harness.wait import async_wait_for
from tests.integration.feedgen import Feed


def pipe_bytes(workdir: str, npipes: int) -> list[bytes]:
    out = []
    for i in range(npipes):
        try:
            with open(os.path.join(workdir, f"pipe_{i}.bin"), "rb") as f:
                out.append(f.read())
        except FileNotFoundError:
            out.append(b"")
    return out


async def wait_delivered(workdir: str, feed: Feed, timeout: float = 20.0) -> None:
    def complete() -> bool:
        return pipe_bytes(workdir, feed.npipes) == [bytes(e) for e in feed.expected]
    try:
        await async_wait_for(complete, timeout, "every trade in its pipe")
    except AssertionError:
        got = pipe_bytes(workdir, feed.npipes)
        for i, (g, e) in enumerate(zip(got, feed.expected, strict=True)):
            if g != e:
                raise AssertionError(f"pipe {i}: got {len(g)} bytes, expected {len(e)}; "
                                     f"first difference at {_first_diff(g, bytes(e))}") from None
        raise


def _first_diff(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
