"""File helpers shared by the handlers and the pool: append-only logs and atomic JSON files."""

from __future__ import annotations

import os
from typing import Any

import orjson

from common.atomicfile import write_atomically


def open_log(path: str) -> int:
    """An append-only file descriptor, with a line cut by an earlier kill trimmed off."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    trim_partial_line(fd)
    return fd


def trim_partial_line(fd: int) -> None:
    """Cut a last line that has no newline: a write interrupted by a kill."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end != size:
        os.ftruncate(fd, end)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_json_atomically(path: str, document: Any) -> None:
    """JSON files other programs read: always replaced atomically (temp file + rename)."""
    write_atomically(path, orjson.dumps(document, option=orjson.OPT_INDENT_2))
