"""Waiting for events with deadlines (never "sleep long enough")."""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_for(predicate: Callable[[], T], timeout: float, what: str | Callable[[], str],
             interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; raise Timeout naming ``what`` (a
    callable is asked only then, so a message can carry the logs as they are at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def read_json(path: str) -> dict[str, Any] | None:
    """The JSON in ``path`` if it exists and is complete (writers replace files atomically)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_text(path: str) -> str:
    """A log file's text so far ("" before it exists); undecodable bytes replaced."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def wait_json(path: str, timeout: float, what: str | None = None) -> dict[str, Any]:
    return wait_for(lambda: read_json(path), timeout, what or f"{os.path.basename(path)}")


async def async_wait_for(predicate: Callable[[], T], timeout: float, what: str | Callable[[], str],
                         interval: float = 0.02) -> T:
    """``wait_for`` for asyncio tests: polls without blocking the event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        await asyncio.sleep(interval)


class FifoSignal:
    """The read end of a FIFO another process writes one line to when something happened.

    Blocks in select() until then (no polling: a benchmark's own CPU must stay out of the
    figures). It holds a write end too, so the read end never sees EOF before the writer
    comes and after it has gone.
    """

    def __init__(self, path: str) -> None:
        self.read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.write_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)

    def wait(self, timeout: float, what: str) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"timed out after {timeout:g} s waiting for {what}")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                try:
                    return os.read(self.read_fd, 4096)
                except BlockingIOError:
                    continue

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)
