"""Per-pipe read progress in memory shared between the pool and its children.

A child's reader publishes, after every read(), how far it has consumed each pipe and where
the last complete message ended. When the child dies the pool reads this to learn exactly how
much of a partly read message is still waiting in the pipe (see resync.py). An `in_read` flag
brackets each read(): if the child died with it set, the counters may miss the last read.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

# bytes_read, boundary, messages, handled, partial header (4 bytes), in_read, owner pid
_SLOT = struct.Struct("<QQQQ4sII")
_SLOT_SIZE = 64
_HANDLED = 3 * 8
_IN_READ = 4 * 8 + 4
_handled = struct.Struct("<Q")


@dataclass(frozen=True)
class SlotState:
    bytes_read: int
    """Bytes consumed from the pipe since the pool started (its stream offset)."""
    boundary: int
    """Stream offset where the last complete message ended (= start of the partial one)."""
    messages: int
    """Complete messages framed since the pool started."""
    handled: int
    """Messages the handler returned from (the rest of `messages` died with a child)."""
    header: bytes
    """The partial message's header bytes read so far (up to 4)."""
    in_read: bool
    pid: int

    @property
    def partial(self) -> int:
        """Bytes of the current message already consumed."""
        return self.bytes_read - self.boundary


class ProgressSlot:
    """One pipe's slot; the reader calls `begin_read` before read() and `publish` after."""

    __slots__ = ("_memory", "_offset")

    def __init__(self, memory: mmap.mmap, offset: int) -> None:
        self._memory = memory
        self._offset = offset

    def begin_read(self) -> None:
        self._memory[self._offset + _IN_READ] = 1

    def publish(
        self, bytes_read: int, boundary: int, messages: int, header: bytes, pid: int
    ) -> None:
        """Store the counters, then clear `in_read`.

        Two stores, in this order: a SIGKILL can land inside the first (a torn copy), and the
        flag, still set, then tells the pool not to trust the counters.
        """
        memory, offset = self._memory, self._offset
        handled = _handled.unpack_from(memory, offset + _HANDLED)[0]
        _SLOT.pack_into(memory, offset, bytes_read, boundary, messages, handled, header, 1, pid)
        memory[offset + _IN_READ] = 0

    def set_handled(self, handled: int) -> None:
        _handled.pack_into(self._memory, self._offset + _HANDLED, handled)

    def state(self) -> SlotState:
        bytes_read, boundary, messages, handled, header, in_read, pid = _SLOT.unpack_from(
            self._memory, self._offset
        )
        partial = min(bytes_read - boundary, 4)
        return SlotState(
            bytes_read, boundary, messages, handled, header[:partial], bool(in_read), pid
        )

    def reset(self, bytes_read: int, messages: int) -> None:
        """Mark the pipe as resynchronised at a message boundary, every message settled."""
        _SLOT.pack_into(
            self._memory, self._offset, bytes_read, bytes_read, messages, messages, b"", 0, 0
        )


class SharedProgress:
    """Slots for `npipes` pipes in one anonymous shared mapping, inherited across fork()."""

    def __init__(self, npipes: int) -> None:
        self._memory = mmap.mmap(-1, max(1, npipes) * _SLOT_SIZE, flags=mmap.MAP_SHARED)
        self.slots = [ProgressSlot(self._memory, i * _SLOT_SIZE) for i in range(npipes)]

    def __getitem__(self, pipe: int) -> ProgressSlot:
        return self.slots[pipe]
