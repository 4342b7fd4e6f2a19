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


# -- pull requests kept outstanding ------------------------------------------------------------
#
# A JetStream pull request (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`, JSON `{"batch": N,
# "expires": ns}`, reply subject = our inbox) asks the server for up to N messages; it hands
# each one over as soon as it is stored, until N went out or `expires` passed. Then it sends
# a status message: 408 Request Timeout, with `Nats-Pending-Messages` (how many of the N were
# never sent). Keeping requests for about a batch always outstanding makes a pull consumer
# deliver like a push one, without a round trip per fetch, while the credit still bounds what
# is in flight. Several requests may be outstanding and the server may fill them in any
# order, so only the total is counted: requested - delivered - (the pending of every ended
# request). The consumer itself delivers in stream order whichever request a message fills.

STATUS = "Status"
PENDING_MESSAGES = "Nats-Pending-Messages"
HEARTBEAT, NO_MESSAGES, REQUEST_TIMEOUT, CONFLICT = "100", "404", "408", "409"


def pull_status(headers: dict[str, str] | None) -> tuple[str, int | None] | None:
    """(status code, pending messages or None) of a status message, None for a message."""
    if not headers:
        return None
    code = headers.get(STATUS)
    if not code:
        return None
    pending = headers.get(PENDING_MESSAGES, "")
    return code, int(pending) if pending.isdigit() else None


class PullCredit:
    """How many messages the outstanding pull requests of one consumer may still bring."""

    __slots__ = ("batch", "expires", "heard", "outstanding")

    def __init__(self, batch: int, expires: float) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.batch = batch
        self.expires = expires
        self.outstanding = 0
        self.heard = 0.0  # when the server last answered (a message or a status), or we asked

    def wanted(self, room: bool) -> int:
        """Messages to ask for now: topped up to a batch once half of it has arrived."""
        if not room or self.outstanding > self.batch // 2:
            return 0
        return self.batch - self.outstanding

    def requested(self, count: int, now: float) -> None:
        self.outstanding += count
        self.heard = now

    def delivered(self, now: float) -> None:
        self.outstanding = max(0, self.outstanding - 1)
        self.heard = now

    def status(self, code: str, pending: int | None, now: float) -> None:
        """A status message: an ended request gives back what it did not bring."""
        self.heard = now
        if code == HEARTBEAT:
            return
        if pending is None:
            # a request ended without saying what it owed (an old server, a conflict): forget
            # all of them; a late message of a forgotten one is delivered all the same
            self.outstanding = 0
        else:
            self.outstanding = max(0, self.outstanding - pending)

    def lost(self, now: float) -> bool:
        """Requests outstanding and nothing heard for longer than one could live: the server
        forgot them (a restart, a leader change). The caller asks again."""
        if self.outstanding and now - self.heard > self.expires + 1.0:
            self.outstanding = 0
            return True
        return False
