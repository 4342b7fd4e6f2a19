"""JetStream carriage of the pipe protocol, the bridge's side, pure (no I/O).

A JetStream message on subject `<prefix>.<k>` holds whole pipe messages of partition (pipe)
*k*, `[u32 LE len][payload]...`, unparsed. Its `Nats-Msg-Id` header is
`<epoch>.<k>.<offset>`: `epoch` names one run of lb (host, lb's pid and start time), `offset`
is the byte offset in pipe *k*'s stream of the message's first byte. The end offset is
`offset + len(data)`. `Lb-Messages: <n>` says how many pipe messages it holds. So a batch
republished after a crash has the id of the first publish, and JetStream drops the copy
inside the stream's duplicate window.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import NamedTuple

from common import native

HEADER = 4
MSG_ID = "Nats-Msg-Id"
COUNT = "Lb-Messages"  # how many pipe messages the JetStream message holds
_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_unpack_length = struct.Struct("<I").unpack_from


class MsgId(NamedTuple):
    epoch: str
    partition: int
    offset: int


def make_msg_id(epoch: str, partition: int, offset: int) -> str:
    if not _EPOCH.fullmatch(epoch):
        raise ValueError(f"bad epoch {epoch!r}: 1-64 of [A-Za-z0-9_-]")
    if partition < 0 or offset < 0:
        raise ValueError("partition and offset are non-negative")
    return f"{epoch}.{partition}.{offset}"


def parse_msg_id(text: str) -> MsgId:
    parts = text.split(".")
    if len(parts) != 3 or not _EPOCH.fullmatch(parts[0]) or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"not a bridge message id: {text[:80]!r}")
    return MsgId(parts[0], int(parts[1]), int(parts[2]))


# A delivery's ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
# seq>.<timestamp>.<pending>`, or with a domain and an account hash before the stream (and
# perhaps a token after): the stream sequence is the field after <delivered> in both forms.
_ACK_V1 = re.compile(r"\$JS\.ACK\.[^.]+\.[^.]+\.\d+\.(\d+)\.\d+\.\d+\.\d+", re.ASCII)
_ACK_V2 = re.compile(r"\$JS\.ACK\.[^.]+\.[^.]+\.[^.]+\.[^.]+\.\d+\.(\d+)\.\d+\.\d+\.\d+(?:\.[^.]+)*",
                     re.ASCII)


def stream_sequence(reply: str | None) -> int:
    """The stream sequence of a delivered message, from its ack (reply) subject."""
    match = _ACK_V1.fullmatch(reply or "") or _ACK_V2.fullmatch(reply or "")
    if match is None:
        raise ValueError(f"not a JetStream delivery (reply subject {(reply or '')[:80]!r})")
    return int(match.group(1))


def subject(prefix: str, partition: int) -> str:
    return f"{prefix}.{partition}"


def check_prefix(prefix: str) -> str:
    """A subject prefix: dot-separated tokens without wildcards or spaces."""
    if not prefix or not all(_SUBJECT_TOKEN.fullmatch(token) for token in prefix.split(".")):
        raise ValueError(f"bad subject prefix {prefix!r}: tokens of [A-Za-z0-9_-] separated by dots")
    return prefix


def parse_partitions(text: str, limit: int | None = None) -> list[int]:
    """`0-15`, `3`, `0-3,8,10-11` -> sorted partition numbers; each at most once."""
    result: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            raise ValueError(f"bad partition range {item!r} (expected N or N-M)")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise ValueError(f"bad partition range {item!r}: {high} < {low}")
        if limit is not None and high >= limit:
            raise ValueError(f"partition {high} out of range (there are {limit})")
        overlap = result.intersection(range(low, high + 1))
        if overlap:
            raise ValueError(f"partition {min(overlap)} given twice")
        result.update(range(low, high + 1))
    return sorted(result)


def complete_prefix(data: bytes | memoryview, max_message: int) -> int:
    """Bytes of `data` that are whole messages, from its start. Raises ValueError on a length
    over `max_message` at the first message (later ones stop the prefix before them)."""
    return cut_batch_counted(data, len(data), max_message)[0]


def cut_batch(data: bytes | memoryview, max_batch: int, max_message: int) -> int:
    """Length of the first batch to publish from `data` (which starts on a boundary): whole
    messages, at most `max_batch` bytes, or one message alone if it is bigger. 0: no whole
    message yet."""
    return cut_batch_counted(data, max_batch, max_message)[0]


def cut_batch_counted_py(data: bytes | memoryview, max_batch: int, max_message: int) -> tuple[int, int]:
    """`cut_batch`, and how many messages the batch holds. The reference: `cut_batch_counted` is
    workers/_jscut.c's compiled copy of it when that is built (tests/unit/test_jscut.py)."""
    # The bridge's hot loop (once per trade): one bound, `limit`, stands for "inside the data"
    # and "inside the batch"; the one case that tells them apart (a first message bigger than
    # a batch, which goes alone) is decided when the loop stops.
    end = len(data)
    limit = min(end, max_batch)
    unpack = _unpack_length
    pos = count = 0
    while pos + HEADER <= end:
        (length,) = unpack(data, pos)
        if length > max_message:
            if pos == 0:
                raise ValueError(f"message length {length} exceeds {max_message}")
            break
        stop = pos + HEADER + length
        if stop > limit:
            if pos == 0 and stop <= end:
                return stop, 1
            break
        pos = stop
        count += 1
    return pos, count


_jscut = native.load("workers._jscut", "LB_JSCUT")  # LB_JSCUT: the sanitizer build's path
NATIVE_CUT = _jscut is not None
cut_batch_counted: Callable[[bytes | bytearray | memoryview, int, int], tuple[int, int]] = (
    _jscut.cut_batch_counted if _jscut is not None else cut_batch_counted_py
)


def needed_for_first(data: bytes | memoryview) -> int:
    """Bytes the first message needs in all (header + payload), or HEADER if not known yet."""
    if len(data) < HEADER:
        return HEADER
    return HEADER + _unpack_length(data, 0)[0]
