"""The remote side of JetStream carriage, pure: message ids, partition lists, framing checks.

Written independently of workers/jsproto.py (the bridge's side), as the contracts ask: a
JetStream message holds whole pipe messages `[u32 LE len][payload]...` of one partition,
with `Nats-Msg-Id: <epoch>.<partition>.<offset>`, offset being the stream offset of its first
byte in that partition's pipe on lb's host.
"""

from __future__ import annotations

import re
import struct
from array import array
from collections.abc import Iterator
from typing import NamedTuple

MSG_ID = "Nats-Msg-Id"
COUNT = "Lb-Messages"
OVERHEAD = 4
_ID = re.compile(r"([A-Za-z0-9_-]{1,64})\.(\d+)\.(\d+)")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_length = struct.Struct("<I").unpack_from


class Origin(NamedTuple):
    epoch: str
    partition: int
    offset: int


class BadMessage(ValueError):
    """A JetStream message that is not whole pipe messages."""


def parse_origin(msg_id: str | None) -> Origin | None:
    if not msg_id:
        return None
    match = _ID.fullmatch(msg_id)
    if not match:
        return None
    return Origin(match.group(1), int(match.group(2)), int(match.group(3)))


def stream_sequence(reply: str | None) -> int:
    """A delivered JetStream message's stream sequence, from its ack subject:
    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (9 tokens) or, from
    servers that add a domain and an account hash, `$JS.ACK.<domain>.<hash>.<stream>.
    <consumer>.<delivered>.<sseq>...` (11 tokens or more). What nats-py's `Msg.metadata`
    reads, without building its dataclasses and timestamp (~5% of lb-remote at 200k/s)."""
    tokens = (reply or "").split(".")
    if tokens[:2] == ["$JS", "ACK"] and (len(tokens) == 9 or len(tokens) >= 11):
        field = tokens[5] if len(tokens) == 9 else tokens[7]
        if field.isdigit() and field.isascii():
            return int(field)
    raise BadMessage(f"not a JetStream delivery (reply subject {(reply or '')[:80]!r})")


def parse_partitions(text: str) -> list[int]:
    """`0-15` or `0-3,8,10-11`: sorted, no repeats."""
    out: list[int] = []
    for item in text.split(","):
        match = _RANGE.fullmatch(item.strip())
        if not match:
            raise ValueError(f"bad partition list {text!r}: use N, N-M, comma-separated")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low:
            raise ValueError(f"bad partition range {item.strip()!r}")
        out.extend(range(low, high + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"partition list {text!r} names a partition twice")
    return sorted(out)


def message_lengths(data: bytes | memoryview, max_message: int) -> array[int]:
    """Payload lengths of the pipe messages in `data`, which must end on a boundary."""
    lens = array("I")
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < OVERHEAD:
            raise BadMessage(f"{end - pos} stray bytes after the last whole message")
        (length,) = _length(data, pos)
        if length > max_message:
            raise BadMessage(f"message length {length} at byte {pos} exceeds {max_message}")
        pos += OVERHEAD + length
        if pos > end:
            raise BadMessage("the last message is cut short")
        lens.append(length)
    return lens


def boundary_from(data: bytes | memoryview, skip: int) -> int:
    """The first message boundary at or after byte `skip` of `data` (which starts on one)."""
    pos, end = 0, len(data)
    while pos < skip and pos < end:
        pos += OVERHEAD + _length(data, pos)[0]
    return min(pos, end)


def boundary_before(data: bytes | memoryview, offset: int) -> int:
    """The last message boundary at or before byte `offset` of `data` (which starts on one):
    the start of the message that byte `offset` is in."""
    pos, end = 0, min(offset, len(data))
    while True:
        if end - pos < OVERHEAD:
            return pos
        following = pos + OVERHEAD + _length(data, pos)[0]
        if following > end:
            return pos
        pos = following


class FramedLengths:
    """The payload lengths of `data`'s messages, walked only if they are asked for.

    PipeSet keeps a chunk's lengths to find the next boundary after a worker died; that is
    rare, so for the bridge's messages (whole messages by construction) the walk is skipped
    on the hot path and done on demand from the data itself.
    """

    __slots__ = ("count", "data")

    def __init__(self, data: bytes, count: int = -1) -> None:
        self.data = data
        self.count = count

    def __iter__(self) -> Iterator[int]:
        data, pos, end = self.data, 0, len(self.data)
        while end - pos >= OVERHEAD:
            (length,) = _length(data, pos)
            yield length
            pos += OVERHEAD + length



def trusted_count(headers: dict[str, str] | None) -> int:
    """The bridge's `Lb-Messages` count, or -1 if absent or malformed."""
    text = (headers or {}).get(COUNT, "")
    return int(text) if text.isdigit() else -1
