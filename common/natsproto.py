"""The NATS client protocol, pure: bytes in, events out; commands out as bytes. No I/O.

What a server sends (docs.nats.io, "Client Protocol"): ``INFO {json}``, ``MSG <subject> <sid>
[reply] <#bytes>``, ``HMSG <subject> <sid> [reply] <#header bytes> <#total bytes>`` (each
followed by its payload and CRLF), ``PING``, ``PONG``, ``+OK`` and ``-ERR '<text>'``. What a
client sends: ``CONNECT {json}``, ``PUB``, ``HPUB``, ``SUB``, ``UNSUB``, ``PING``, ``PONG``.
A header block is ``NATS/1.0[ <status>[ <description>]]\\r\\n(<name>: <value>\\r\\n)*\\r\\n``.

`Parser` is strict where a misbehaving server could hurt us: a control line longer than
`MAX_CONTROL_LINE`, a payload over the parser's bound, a header block longer than its
message, an unknown operation or a malformed number is a `ProtocolError` (the connection is
then dropped and made again), never a buffer that grows without bound.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

CRLF = b"\r\n"
MAX_CONTROL_LINE = 64 * 1024  # an INFO naming every route of a big cluster still fits
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024  # the server's own maximum; INFO usually says 1 MiB
HEADER_VERSION = b"NATS/1.0"
BIG = 16 * 1024  # a message this long that a read ends inside is gathered from the reads (Parser)
_PIECE = 4096  # a gathered read shorter than this is copied, not kept by reference

# what a subject, reply or queue token may not contain: it would end the control line
_UNSAFE = re.compile(rb"[\s]")


class ProtocolError(ValueError):
    """The server sent something that is not the NATS protocol (or over a bound)."""


class Info(dict):  # type: ignore[type-arg]
    """The server's INFO: its JSON object."""


class Ping:
    __slots__ = ()


class Pong:
    __slots__ = ()


class Ok:
    __slots__ = ()


class Err(str):
    """A ``-ERR``: the server's text, unquoted."""


PING, PONG, OK = Ping(), Pong(), Ok()


class Msg:
    """A delivered message. ``hdr`` is the raw header block (b"" without headers)."""

    __slots__ = ("_headers", "data", "hdr", "reply", "sid", "subject")

    def __init__(self, subject: str, sid: int, reply: str, hdr: bytes, data: bytes) -> None:
        self.subject = subject
        self.sid = sid
        self.reply = reply
        self.hdr = hdr
        self.data = data
        self._headers: tuple[str, str, dict[str, str]] | None = None

    def _parsed(self) -> tuple[str, str, dict[str, str]]:
        if self._headers is None:
            self._headers = parse_headers(self.hdr) if self.hdr else ("", "", {})
        return self._headers

    @property
    def headers(self) -> dict[str, str]:
        """The headers by name; a status line's code and description as ``Status`` and
        ``Description`` too (as nats-py presents them)."""
        return self._parsed()[2]

    @property
    def status(self) -> str:
        """The status code of a status message (``503``, ``408``, ``100``...), "" for a message."""
        return self._parsed()[0]

    def __repr__(self) -> str:
        return (f"Msg({self.subject!r}, sid={self.sid}, reply={self.reply!r}, "
                f"{len(self.hdr)}+{len(self.data)} B)")


Event = Msg | Info | Ping | Pong | Ok | Err


def parse_headers(block: bytes) -> tuple[str, str, dict[str, str]]:
    """(status, description, headers) of a header block. The first value of a repeated name
    is kept. Raises ProtocolError on a block that does not start with NATS/1.0."""
    if not block.startswith(HEADER_VERSION):
        raise ProtocolError(f"header block without {HEADER_VERSION.decode()}: {bytes(block[:40])!r}")
    lines = block.split(CRLF)
    rest = lines[0][len(HEADER_VERSION):].strip()
    status = description = ""
    headers: dict[str, str] = {}
    if rest:
        code, _, text = rest.partition(b" ")
        status = code.decode("ascii", "replace")
        description = text.strip().decode("utf-8", "replace")
        headers["Status"] = status
        if description:
            headers["Description"] = description
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise ProtocolError(f"header line without a colon: {bytes(line[:80])!r}")
        key = name.strip().decode("utf-8", "replace")
        if key and key not in headers:
            headers[key] = value.strip().decode("utf-8", "replace")
    return status, description, headers


def encode_headers(headers: dict[str, str]) -> bytes:
    """A header block for HPUB. Names and values may not hold CR, LF or (names) a colon."""
    out = [HEADER_VERSION]
    for name, value in headers.items():
        key, val = name.encode(), str(value).encode()
        if not key or b":" in key or _UNSAFE.search(key) or b"\r" in val or b"\n" in val:
            raise ValueError(f"bad header {name!r}: {value!r}")
        out.append(key + b": " + val)
    return CRLF.join(out) + CRLF + CRLF


def check_subject(subject: str | bytes) -> bytes:
    """A subject (or reply, or queue group) as bytes; refuses what would break the line."""
    raw = subject.encode() if isinstance(subject, str) else bytes(subject)
    if not raw or _UNSAFE.search(raw):
        raise ValueError(f"bad NATS subject {subject!r}")
    return raw


def connect_command(options: dict[str, Any]) -> bytes:
    return b"CONNECT " + orjson.dumps(options) + CRLF


def pub_header(subject: bytes, reply: bytes, size: int) -> bytes:
    if reply:
        return b"PUB %s %s %d\r\n" % (subject, reply, size)
    return b"PUB %s %d\r\n" % (subject, size)


def hpub_header(subject: bytes, reply: bytes, hdr_size: int, size: int) -> bytes:
    if reply:
        return b"HPUB %s %s %d %d\r\n" % (subject, reply, hdr_size, hdr_size + size)
    return b"HPUB %s %d %d\r\n" % (subject, hdr_size, hdr_size + size)


def sub_command(subject: bytes, sid: int, queue: bytes = b"") -> bytes:
    if queue:
        return b"SUB %s %s %d\r\n" % (subject, queue, sid)
    return b"SUB %s %d\r\n" % (subject, sid)


def unsub_command(sid: int) -> bytes:
    return b"UNSUB %d\r\n" % sid


PING_COMMAND = b"PING\r\n"
PONG_COMMAND = b"PONG\r\n"


def _number(token: bytes) -> int:
    if not token.isdigit() or len(token) > 19:
        raise ProtocolError(f"not a size: {bytes(token[:40])!r}")
    return int(token)


class _Gathering:
    """A message of `BIG` bytes or more being gathered from the reads that carry it: ``parts``
    hold its bytes from the header block on (with the CRLF after it), ``have`` of them."""

    __slots__ = ("have", "hdr_size", "parts", "reply", "sid", "subject", "total")

    def __init__(self, subject: str, sid: int, reply: str, hdr_size: int, total: int,
                 parts: list[memoryview | bytearray]) -> None:
        self.subject, self.sid, self.reply = subject, sid, reply
        self.hdr_size, self.total = hdr_size, total
        self.parts = parts
        self.have = sum(len(part) for part in parts)


class Parser:
    """Server bytes in, events out. ``max_payload`` bounds one message (header + data).

    A protocol error raises `ProtocolError`; when events came before it in the same bytes,
    they are returned and the error is kept in ``error`` (and raised by the next feed): a
    PONG followed by garbage is still a PONG.

    Copies: a read is parsed where it lies when nothing is left over from the last one (only
    a tail that is not yet a whole event is kept, in ``_buf``). A message of `BIG` bytes or
    more that a read ends inside is not gathered in ``_buf``: the reads that carry it are kept
    as they came and joined once it is whole, so its payload is copied once, however many
    reads it spans (lb-remote's 256 KiB JetStream messages: three copies before, one now)."""

    __slots__ = ("_big", "_buf", "error", "max_payload")

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._big: _Gathering | None = None  # a big message being gathered
        self.max_payload = max_payload
        self.error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        big = self._big
        return len(self._buf) + (big.have if big is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """The events completed by ``data`` (in order); the rest is kept for the next feed."""
        if self.error is not None:
            raise self.error
        if type(data) is not bytes:
            data = bytes(data)  # kept by reference below: a caller's buffer may change
        events: list[Event] = []
        try:
            self._parse(data, events)
        except ProtocolError as exc:
            self._buf.clear()
            self._big = None
            self.error = exc
            if not events:
                raise
        return events

    def _gather(self, data: bytes, events: list[Event]) -> int:
        """Add the front of `data` to the big message; the bytes of `data` it took."""
        big = self._big
        assert big is not None
        parts, total = big.parts, big.total
        take = min(total + 2 - big.have, len(data))
        if take >= _PIECE:
            parts.append(memoryview(data)[:take])  # kept by reference
        elif type(parts[-1]) is bytearray:  # small pieces, copied together: a server
            parts[-1] += memoryview(data)[:take]  # trickling bytes costs no object a byte
        else:
            parts.append(bytearray(memoryview(data)[:take]))
        big.have += take
        if big.have < total + 2:
            return take
        self._big = None
        if _join(parts, total, total + 2) != CRLF:
            raise ProtocolError("message payload not followed by CRLF")
        events.append(Msg(big.subject, big.sid, big.reply, _join(parts, 0, big.hdr_size),
                          _join(parts, big.hdr_size, total)))
        return take

    def _parse(self, data: bytes, events: list[Event]) -> None:
        pos = 0
        if self._big is not None:
            pos = self._gather(data, events)
            if pos == len(data):
                return
        buf: bytes | bytearray
        if self._buf:
            self._buf += memoryview(data)[pos:]
            buf, pos = self._buf, 0
        else:
            buf = data  # nothing left over: parsed where it lies
        end = len(buf)
        view = memoryview(buf)  # payloads are copied once, out of the view (a slice of buf is a copy)
        try:
            while pos < end:
                eol = buf.find(CRLF, pos, pos + MAX_CONTROL_LINE + 2)
                if eol < 0:
                    if end - pos > MAX_CONTROL_LINE:
                        raise ProtocolError(f"control line longer than {MAX_CONTROL_LINE} bytes")
                    break
                first = buf[pos] | 0x20  # operation names are case-insensitive
                if first == 0x6D or first == 0x68:  # MSG, HMSG: the hot path
                    args = buf[pos:eol].split()
                    op = args[0].upper()
                    if op == b"MSG":
                        if len(args) == 4:
                            hdr_size, total = 0, _number(args[3])
                            reply = b""
                        elif len(args) == 5:
                            hdr_size, total = 0, _number(args[4])
                            reply = args[3]
                        else:
                            raise ProtocolError(f"bad MSG line {bytes(buf[pos:eol][:200])!r}")
                    elif op == b"HMSG":
                        if len(args) == 5:
                            hdr_size, total = _number(args[3]), _number(args[4])
                            reply = b""
                        elif len(args) == 6:
                            hdr_size, total = _number(args[4]), _number(args[5])
                            reply = args[3]
                        else:
                            raise ProtocolError(f"bad HMSG line {bytes(buf[pos:eol][:200])!r}")
                        if hdr_size > total:
                            raise ProtocolError(f"header of {hdr_size} bytes in a {total}-byte message")
                    else:
                        raise ProtocolError(f"unknown operation {bytes(op[:20])!r}")
                    if total > self.max_payload:
                        raise ProtocolError(f"a {total}-byte message is over the "
                                            f"{self.max_payload}-byte bound")
                    start = eol + 2
                    stop = start + total
                    if stop + 2 > end:  # the payload is not all here yet
                        if total < BIG:
                            break
                        # gathered from the reads as they come (this one's tail, kept by
                        # reference unless it is _buf, which is reused)
                        tail: memoryview | bytearray = (memoryview(data)[start:end] if buf is data
                                                        else bytearray(view[start:end]))
                        self._big = _Gathering(args[1].decode("utf-8", "surrogateescape"), _number(args[2]),
                                               reply.decode("utf-8", "surrogateescape"), hdr_size, total,
                                               [tail])
                        pos = end
                        break
                    if buf[stop:stop + 2] != CRLF:
                        raise ProtocolError("message payload not followed by CRLF")
                    events.append(Msg(args[1].decode("utf-8", "surrogateescape"), _number(args[2]),
                                      reply.decode("utf-8", "surrogateescape"),
                                      bytes(view[start:start + hdr_size]),
                                      bytes(view[start + hdr_size:stop])))
                    pos = stop + 2
                    continue
                line = bytes(buf[pos:eol])
                pos = eol + 2
                op, _, rest = line.partition(b" ")
                op = op.upper()
                if op == b"PING":
                    events.append(PING)
                elif op == b"PONG":
                    events.append(PONG)
                elif op == b"+OK":
                    events.append(OK)
                elif op == b"-ERR":
                    events.append(Err(rest.strip().strip(b"'").decode("utf-8", "replace")))
                elif op == b"INFO":
                    try:
                        info = orjson.loads(rest)
                    except orjson.JSONDecodeError as exc:
                        raise ProtocolError(f"unreadable INFO: {rest[:80]!r}") from exc
                    if not isinstance(info, dict):
                        raise ProtocolError("INFO is not a JSON object")
                    events.append(Info(info))
                else:
                    raise ProtocolError(f"unknown operation {line[:40]!r}")
        finally:
            view.release()  # buf cannot be resized while exported
            if buf is data:
                if pos < end:
                    self._buf += memoryview(data)[pos:]
            elif pos:
                del buf[:pos]


def _join(parts: list[memoryview | bytearray | bytes], lo: int, hi: int) -> bytes:
    """Bytes `lo` to `hi` of the concatenation of `parts`, copied once."""
    out = []
    at = 0
    for part in parts:
        size = len(part)
        if at + size > lo and at < hi:
            out.append(part[max(lo - at, 0):min(hi - at, size)])
        at += size
        if at >= hi:
            break
    return bytes(out[0]) if len(out) == 1 else b"".join(out)
