"""Bringing a pipe back to a message boundary after the child reading it died.

The pool holds every pipe's read end, so whatever the dead child had not consumed is still
in the pipe, but the child may have consumed part of a message. Its progress slot says how
much (see progress.py):

- `in_read` clear: the slot is exact. The rest of the partial message (header bytes still
  missing, then the payload) is read from the pipe and dropped: exactly one message lost,
  counted. Nothing else has to be guessed.
- `in_read` set: the child died inside its read window, the counters may miss the last
  read. The pipe is peeked without consuming (tee(2) into a scratch pipe) and the first
  offset from which valid `[len][{...}]` records run to the end of the peeked bytes is
  taken as the boundary. Logged loudly and counted as uncertain.

`ResyncPlan` is the pure decision; `PipeResync` carries it out, one non-blocking step at a
time, from the pool's poll loop.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from common.pipesize import set_pipe_size
from workers.framing import HEADER, find_chain_start, message_length
from workers.progress import ProgressSlot, SlotState

SPLICE_F_NONBLOCK = 2
PEEK_BYTES = 1 << 20
READ_STEP = 1 << 20


@dataclass(frozen=True)
class ResyncPlan:
    certain: bool
    header: bytes
    """Header bytes of the partial message the child had read (certain plans only)."""
    payload_left: int | None
    """Payload bytes still in the pipe; None until the header is complete."""

    @property
    def nothing(self) -> bool:
        return self.certain and not self.header


def plan_resync(state: SlotState, max_message: int) -> ResyncPlan:
    if state.in_read:
        return ResyncPlan(False, b"", None)
    partial = state.partial
    if partial == 0:
        return ResyncPlan(True, b"", 0)
    if partial < HEADER:
        return ResyncPlan(True, state.header, None)
    length = message_length(state.header)
    if length > max_message:  # the child stopped at a bad header: find the next boundary
        return ResyncPlan(False, b"", None)
    return ResyncPlan(True, state.header, HEADER + length - partial)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
_libc.tee.restype = ctypes.c_ssize_t


def peek_through(fd: int, scratch_read: int, scratch_write: int, limit: int) -> bytes | None:
    """Up to `limit` bytes from the head of pipe `fd`, left in it: copied into the (empty)
    scratch pipe with tee(2), then read out of that. b"" at EOF, None if `fd` is empty. Also
    lb-bridge's look-ahead, over a scratch pipe of its own per partition."""
    copied = _libc.tee(fd, scratch_write, limit, SPLICE_F_NONBLOCK)
    if copied < 0:
        code = ctypes.get_errno()
        if code == errno.EAGAIN:
            return None
        raise OSError(code, f"tee: {os.strerror(code)}")
    parts = []
    while copied > 0:
        part = os.read(scratch_read, copied)
        parts.append(part)
        copied -= len(part)
    return b"".join(parts)  # one part: itself, not a copy


def peek(fd: int, limit: int = PEEK_BYTES) -> bytes | None:
    """Up to `limit` bytes waiting in pipe `fd`, left in place; b"" at EOF, None if empty."""
    scratch_read, scratch_write = os.pipe()
    try:
        set_pipe_size(scratch_write, limit)  # as large as granted: a smaller one only peeks less
        return peek_through(fd, scratch_read, scratch_write, limit)
    finally:
        os.close(scratch_read)
        os.close(scratch_write)


class PipeResync:
    """Drops the dead reader's partial message from one pipe; `done` when at a boundary."""

    UNCERTAIN_GRACE = 0.25
    """How long to wait for bytes that confirm a boundary when the pipe is empty or short."""
    RETRY = 0.01

    def __init__(self, pipe: int, fd: int, slot: ProgressSlot, max_message: int, now: float):
        self.pipe = pipe
        self.fd = fd
        self.slot = slot
        self.max_message = max_message
        self.state = slot.state()
        plan = plan_resync(self.state, max_message)
        self.certain = plan.certain
        self.header = plan.header
        self.payload_left = plan.payload_left
        self.discarded = 0
        self.messages = 1 if plan.header else 0
        self.at_eof = False
        self.done = plan.nothing
        self.deadline = now + self.UNCERTAIN_GRACE
        self.retry_at: float | None = None if self.certain else now
        self.note = ""
        if self.done:
            self._settle()

    @property
    def wants_readable(self) -> bool:
        """Waiting for the pipe to have bytes (else waiting on a timer, or done)."""
        return not self.done and self.retry_at is None

    def step(self, now: float) -> None:
        if self.done:
            return
        if self.certain:
            self._discard_rest()
        else:
            self._find_boundary(now)
        if self.done:
            self._settle()

    def _discard_rest(self) -> None:
        left = self.payload_left
        want = HEADER - len(self.header) if left is None else min(left, READ_STEP)
        chunk = self._read(want)
        if chunk is None:
            return
        if not chunk:
            self.at_eof = self.done = True
            return
        self.discarded += len(chunk)
        if self.payload_left is None:
            self.header += chunk
            if len(self.header) == HEADER:
                self.payload_left = message_length(self.header)
                if self.payload_left > self.max_message:
                    self._become_uncertain()
                    return
        else:
            self.payload_left -= len(chunk)
        self.done = self.payload_left == 0

    def _become_uncertain(self) -> None:
        self.certain = False
        self.retry_at = 0.0
        self.note = "a bad length in the partial message's header"

    def _find_boundary(self, now: float) -> None:
        data = peek(self.fd)
        if data == b"":
            self.at_eof = self.done = True
            return
        chain = find_chain_start(data, self.max_message) if data else None
        confirmed = chain is not None and (chain.complete > 0 or len(data) >= PEEK_BYTES)
        if not confirmed and now < self.deadline:
            self.retry_at = None if data is None else now + self.RETRY
            return
        offset = chain.offset if chain is not None else 0
        if data and chain is None:
            self.note = f"no message boundary in the {len(data)} bytes waiting; left to the reader"
        elif data is None:
            self.note = "pipe empty: taken as a boundary"
        self._drop(offset)
        self.messages = 1 if offset else 0
        self.done = True

    def _drop(self, count: int) -> None:
        while count:
            chunk = os.read(self.fd, min(count, READ_STEP))
            if not chunk:
                self.at_eof = True
                return
            count -= len(chunk)
            self.discarded += len(chunk)

    def _read(self, want: int) -> bytes | None:
        try:
            return os.read(self.fd, want)
        except BlockingIOError:
            return None

    def _settle(self) -> None:
        state = self.state
        self.slot.reset(state.bytes_read + self.discarded, state.messages)
