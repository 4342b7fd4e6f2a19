"""Signals as bytes on a pipe, so a poll() loop wakes up for them (signal.set_wakeup_fd)."""

from __future__ import annotations

import os
import signal
from types import FrameType


def _noted(signum: int, frame: FrameType | None) -> None:
    """The number already went down the wakeup pipe; the loop acts on it there."""


class SignalPipe:
    def __init__(self, signums: tuple[int, ...]) -> None:
        self._read_end, self._write_end = os.pipe()
        for fd in (self._read_end, self._write_end):
            os.set_blocking(fd, False)
        self._signums = signums
        signal.set_wakeup_fd(self._write_end, warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, _noted)

    def fileno(self) -> int:
        return self._read_end

    def fds(self) -> tuple[int, int]:
        return self._read_end, self._write_end

    def received(self) -> list[int]:
        numbers: list[int] = []
        while True:
            try:
                chunk = os.read(self._read_end, 256)
            except BlockingIOError:
                return numbers
            if not chunk:
                return numbers
            numbers.extend(chunk)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in self._signums:
            signal.signal(signum, signal.SIG_DFL)
        os.close(self._read_end)
        os.close(self._write_end)
