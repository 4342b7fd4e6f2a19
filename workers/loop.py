"""The worker loop: poll the pipes, one read per ready pipe, hand batches to the handler.

One loop serves a standalone worker (all pipes) and each pool child (its subset). It ends
when every pipe reached EOF, or on SIGTERM/SIGINT (after the current batch).
"""

from __future__ import annotations

import select
import signal
import time
from collections.abc import Callable

from workers.framing import FramingError, TruncatedMessage
from workers.handler import Handler
from workers.progress import ProgressSlot
from workers.reader import PipeReader
from workers.signals import SignalPipe

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class WorkerLoop:
    def __init__(
        self,
        readers: dict[int, PipeReader],
        handler: Handler,
        *,
        interval: float,
        emit: Callable[[bool], None],
        handled: dict[int, int] | None = None,
        progress: dict[int, ProgressSlot] | None = None,
    ) -> None:
        """`readers` maps global pipe index to reader; `emit(final)` publishes a snapshot."""
        self.readers = readers
        self.handler = handler
        self.interval = interval
        self.emit = emit
        self.handled = handled if handled is not None else dict.fromkeys(readers, 0)
        """Messages per pipe that the handler has returned from, across restarts."""
        self.stopped_by: int | None = None
        self.progress = progress or {}
        self._settled = {pipe: slot.state().handled for pipe, slot in self.progress.items()}

    def run(self) -> None:
        signals = SignalPipe(STOP_SIGNALS)
        try:
            self._poll_until_done(signals)
        finally:
            signals.close()
        self.handler.close()
        self.emit(True)

    def _poll_until_done(self, signals: SignalPipe) -> None:
        poller = select.poll()
        pipe_of_fd = {reader.fd: pipe for pipe, reader in self.readers.items() if not reader.eof}
        for fd in pipe_of_fd:
            poller.register(fd, select.POLLIN)
        poller.register(signals.fileno(), select.POLLIN)
        next_tick = time.monotonic() + self.interval
        while pipe_of_fd and self.stopped_by is None:
            timeout = max(0.0, next_tick - time.monotonic())
            for fd, _events in poller.poll(timeout * 1000):
                if fd == signals.fileno():
                    self._on_signals(signals.received())
                elif fd in pipe_of_fd and self._read(pipe_of_fd[fd]):
                    poller.unregister(fd)
                    del pipe_of_fd[fd]
            now = time.monotonic()
            if now >= next_tick:
                self.handler.on_tick(now)
                self.emit(False)
                next_tick = now + self.interval

    def _on_signals(self, numbers: list[int]) -> None:
        for number in numbers:
            if number in STOP_SIGNALS:
                self.stopped_by = number

    def _read(self, pipe: int) -> bool:
        """One read (and what it left pending) into the handler; True once the pipe ended."""
        reader = self.readers[pipe]
        while True:
            try:
                batch = reader.read_batch()
            except TruncatedMessage as error:
                self.handler.on_framing_error(pipe, error)
                return True
            except FramingError as error:
                self.handler.on_framing_error(pipe, error)
                reader.resync()
                batch = []
            if batch:
                self.handler.on_batch(pipe, batch)
                self.handled[pipe] += len(batch)
                slot = self.progress.get(pipe)
                if slot is not None:
                    self._settled[pipe] += len(batch)
                    slot.set_handled(self._settled[pipe])
            if not reader.pending:
                return reader.eof
