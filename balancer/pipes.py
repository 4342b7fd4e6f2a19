"""The per-symbol pipes: creation and sizing, non-blocking writes, per-pipe backlog, resync.

lb keeps every pipe's read end open for the life of the process. That is what
lets a dead worker's unread trades survive until the next worker starts, and why
a write can never fail with EPIPE.

Every byte accepted for a pipe has a stream offset. For the messages still in
the pipe (or queued behind it) lb remembers their sizes, per written chunk, so
that after a worker dies it can tell exactly where the next message boundary is:
consumed = written - FIONREAD(read end), and the remainder of a message the dead
worker had started reading is discarded (and counted) before a new worker
starts.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import time
from array import array
from collections import deque
from dataclasses import dataclass

from balancer.router import Chunk
from balancer.stats import WriteTimes
from common.pipesize import set_pipe_size

PRUNE_EVERY = 64  # records added to a pipe between two looks at what its reader consumed


@dataclass(slots=True)
class _Record:
    """Sizes of the messages of one chunk, located in the pipe's byte stream."""

    start: int
    end: int
    lens: bytes | array[int] | list[int]
    overhead: int


@dataclass(slots=True)
class Discarded:
    """The rest of the one message a dead worker had partly read, skipped on its pipe."""

    pipe: int
    bytes: int


def unread_bytes(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


class PipeSet:
    def __init__(self, npipes: int, pipe_size: int) -> None:
        self.npipes = npipes
        self.read_fds: list[int] = []
        self.write_fds: list[int] = []
        for _ in range(npipes):
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(write_fd, False)  # the read end stays blocking: the worker shares it
            self.read_fds.append(read_fd)
            self.write_fds.append(write_fd)
        self.pipe_size = min(set_pipe_size(fd, pipe_size) for fd in self.write_fds)
        self.accepted = [0] * npipes  # stream bytes accepted (written + queued)
        self.written = [0] * npipes  # stream bytes the kernel took
        self.backlog: list[deque[memoryview]] = [deque() for _ in range(npipes)]
        self.backlog_bytes = [0] * npipes
        self._records: list[deque[_Record]] = [deque() for _ in range(npipes)]
        self._prune_at = [PRUNE_EVERY] * npipes
        self.writes = 0
        self.write_times = WriteTimes()  # the duration of every write, for lb --metrics
        self.discarded_bytes = 0
        self.discarded_messages = 0
        self.closed = False

    # -- writing ---------------------------------------------------------------------

    def submit(self, batches: list[tuple[int, list[Chunk]]]) -> list[int]:
        """Write each pipe's chunks with one write; return the pipes that now hold a backlog."""
        blocked = []
        clock = time.perf_counter_ns
        times = self.write_times
        for pipe, chunks in batches:
            records = self._records[pipe]
            offset = self.accepted[pipe]
            for chunk in chunks:
                end = offset + len(chunk.data)
                records.append(_Record(offset, end, chunk.lens, chunk.overhead))
                offset = end
            self.accepted[pipe] = offset
            if len(records) > self._prune_at[pipe]:
                # Forget what the reader has consumed a little at a time, not in one burst that
                # would stall the feed (every write adds a record).
                self._prune(pipe)
                self._prune_at[pipe] = len(records) + PRUNE_EVERY
            data = chunks[0].data if len(chunks) == 1 else b"".join([c.data for c in chunks])
            if self.backlog_bytes[pipe]:
                self.backlog[pipe].append(memoryview(data))
                self.backlog_bytes[pipe] += len(data)
                continue
            started = clock()
            try:
                n = os.write(self.write_fds[pipe], data)
            except BlockingIOError:
                n = 0
            took = clock() - started
            times.counts[(took - 1).bit_length()] += 1  # le 2**k ns: see WriteTimes
            times.sum_ns += took
            self.writes += 1
            self.written[pipe] += n
            if n < len(data):
                self.backlog[pipe].append(memoryview(data)[n:])
                self.backlog_bytes[pipe] += len(data) - n
                blocked.append(pipe)
        return blocked

    def flush(self, pipe: int) -> bool:
        """Write as much of the pipe's backlog as the pipe takes; True once it is empty."""
        queue = self.backlog[pipe]
        fd = self.write_fds[pipe]
        while queue:
            head = queue[0]
            started = time.perf_counter_ns()
            try:
                n = os.write(fd, head)
            except BlockingIOError:
                return False
            finally:
                self.write_times.observe(time.perf_counter_ns() - started)
            self.writes += 1
            self.written[pipe] += n
            self.backlog_bytes[pipe] -= n
            if n < len(head):
                queue[0] = head[n:]
                return False
            queue.popleft()
        return True

    @property
    def largest_backlog(self) -> int:
        return max(self.backlog_bytes)

    @property
    def total_backlog(self) -> int:
        return sum(self.backlog_bytes)

    def close_write_ends(self) -> None:
        """The worker sees EOF once it has read everything (lb keeps no other write end)."""
        if self.closed:
            return
        self.closed = True
        for fd in self.write_fds:
            os.close(fd)

    def close(self) -> None:
        self.close_write_ends()
        for fd in self.read_fds:
            os.close(fd)
        self.read_fds = []

    # -- accounting for resync -----------------------------------------------------------

    def consumed(self, pipe: int) -> int:
        """Stream bytes the reader side has taken out of the pipe."""
        return self.written[pipe] - unread_bytes(self.read_fds[pipe])

    def prune(self) -> None:
        """Forget the sizes of messages the worker has read entirely."""
        for pipe in range(self.npipes):
            self._prune(pipe)

    def _prune(self, pipe: int) -> None:
        records = self._records[pipe]
        if not records:
            return
        consumed = self.consumed(pipe)
        while records and records[0].end <= consumed:
            records.popleft()

    def next_boundary(self, pipe: int, offset: int) -> int:
        """The first message boundary at or after stream ``offset``."""
        for record in self._records[pipe]:
            if record.end <= offset:
                continue
            position = record.start
            if position >= offset:
                return position
            overhead = record.overhead
            for length in record.lens:
                position += length + overhead
                if position >= offset:
                    return position
        return max(offset, self.accepted[pipe])

    def resync(self) -> list[Discarded]:
        """After the reader died: drop the rest of any message it had started, so the next
        reader starts on a boundary. Call only when no process but lb holds the read ends."""
        report = []
        for pipe in range(self.npipes):
            consumed = self.consumed(pipe)
            boundary = self.next_boundary(pipe, consumed)
            remainder = boundary - consumed
            if remainder <= 0:
                continue
            from_pipe = min(remainder, self.written[pipe] - consumed)
            _read_exactly(self.read_fds[pipe], from_pipe)
            self._drop_backlog_head(pipe, remainder - from_pipe)
            self.discarded_bytes += remainder
            self.discarded_messages += 1
            report.append(Discarded(pipe, remainder))
        self.prune()
        return report

    def _drop_backlog_head(self, pipe: int, nbytes: int) -> None:
        """The rest of a partly read message may still be queued in userspace: skip it."""
        queue = self.backlog[pipe]
        while nbytes:
            head = queue[0]
            take = min(nbytes, len(head))
            if take == len(head):
                queue.popleft()
            else:
                queue[0] = head[take:]
            self.backlog_bytes[pipe] -= take
            self.written[pipe] += take  # counted as if written, then consumed
            nbytes -= take


def _read_exactly(fd: int, nbytes: int) -> None:
    while nbytes:
        data = os.read(fd, min(nbytes, 1 << 20))
        if not data:
            raise OSError(f"pipe read end {fd}: EOF while discarding {nbytes} more bytes")
        nbytes -= len(data)
