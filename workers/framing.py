"""The pipe protocol, pure: `[u32 little-endian length][payload]`, bytes in, payloads out.

Nothing here touches a file descriptor; the readers and the pool drive these functions.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

HEADER = 4
MAX_MESSAGE = 16 * 1024 * 1024

_unpack_length = struct.Struct("<I").unpack_from
_pack_length = struct.Struct("<I").pack


class FramingError(Exception):
    """The byte stream of a pipe is not `[u32 LE length][payload]`."""

    def __init__(self, pipe: str, offset: int, detail: str) -> None:
        super().__init__(f"{pipe}: framing error at byte offset {offset}: {detail}")
        self.pipe = pipe
        self.offset = offset
        self.detail = detail


class TruncatedMessage(FramingError):
    """The writer closed the pipe in the middle of a message."""


class Split(NamedTuple):
    payloads: list[bytes]
    stop: int
    """Offset of the first byte not consumed: the start of a partial message, or of a bad header."""
    bad_length: int
    """The oversized length found at `stop`, or -1 when the data ended cleanly or mid-message."""


def split_frames(data: bytes, start: int, end: int, max_message: int = MAX_MESSAGE) -> Split:
    """Cut the complete messages out of `data[start:end]`.

    Stops at the first incomplete message or at a header whose length exceeds `max_message`;
    the messages before a bad header are returned, so nothing already framed is lost.
    """
    payloads: list[bytes] = []
    append = payloads.append
    unpack = _unpack_length
    pos = start
    while end - pos >= HEADER:
        (length,) = unpack(data, pos)
        if length > max_message:
            return Split(payloads, pos, length)
        stop = pos + HEADER + length
        if stop > end:
            break
        append(data[pos + HEADER : stop])
        pos = stop
    return Split(payloads, pos, -1)


def frame(payload: bytes) -> bytes:
    """One message on the wire."""
    return _pack_length(len(payload)) + payload


def frame_all(payloads: list[bytes]) -> bytes:
    return b"".join(_pack_length(len(p)) + p for p in payloads)


def message_length(header: bytes) -> int:
    (length,) = _unpack_length(header, 0)
    return length


class ChainStart(NamedTuple):
    offset: int
    complete: int
    """Complete records from `offset` to the end of the data; 0: the start is only plausible."""


def find_chain_start(data: bytes, max_message: int = MAX_MESSAGE) -> ChainStart | None:
    """The first offset from which `data` parses as records `[len][{...}]` up to its end.

    Used where a reader's position in a stream was lost (a reader killed inside read(), a
    framing error): JSON text never has a zero byte, and a length's top byte is zero for any
    message under 16 MiB, so a false start would need a run of impossible bytes. The last
    record may be cut by the end of the data; it only has to be consistent so far.
    """
    size = len(data)
    for offset in range(size):
        complete = _chain_from(data, offset, size, max_message)
        if complete >= 0:
            return ChainStart(offset, complete)
    return None


def _chain_from(data: bytes, pos: int, size: int, max_message: int) -> int:
    """Complete records from `pos` on if the chain is consistent to the end, else -1."""
    complete = 0
    while size - pos >= HEADER:
        (length,) = _unpack_length(data, pos)
        if length < 2 or length > max_message:
            return -1
        body = pos + HEADER
        if body < size and data[body] != 0x7B:  # b"{"
            return -1
        stop = body + length
        if stop > size:
            return complete
        if data[stop - 1] != 0x7D:  # b"}"
            return -1
        complete += 1
        pos = stop
    return complete
