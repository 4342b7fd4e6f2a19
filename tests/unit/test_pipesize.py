"""common.pipesize: a request the kernel refuses is halved until granted, never left at the
default 64 KiB when more was to be had."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

import pytest

from common.pipesize import F_GETPIPE_SZ, MIN_PIPE_SIZE, set_pipe_size


@pytest.fixture
def write_end() -> Iterator[int]:
    r, w = os.pipe()
    try:
        yield w
    finally:
        os.close(r)
        os.close(w)


def _pipe_max() -> int:
    with open("/proc/sys/fs/pipe-max-size") as f:
        return int(f.read())


def test_a_request_over_pipe_max_size_gets_the_largest_granted(write_end: int) -> None:
    top = _pipe_max()
    asked = 3 * top + 12345  # refused unless privileged (CAP_SYS_RESOURCE), then halved
    got = set_pipe_size(write_end, asked)
    assert got == fcntl.fcntl(write_end, F_GETPIPE_SZ)
    assert got >= min(asked, top) // 2 and got > MIN_PIPE_SIZE, (got, top)


def test_a_granted_request_is_rounded_up_by_the_kernel(write_end: int) -> None:
    assert set_pipe_size(write_end, 200 * 1024) == 256 * 1024  # a power of two of pages


def test_below_the_floor_the_pipe_keeps_its_size(write_end: int) -> None:
    before = fcntl.fcntl(write_end, F_GETPIPE_SZ)
    assert set_pipe_size(write_end, MIN_PIPE_SIZE // 2) == before
