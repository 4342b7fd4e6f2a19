"""Incremental RFC 6455 frame decoder (server to client) and masked client frame encoder.

Pure: the decoder owns a receive buffer that the I/O layer fills in place
(``recv_buffer()`` then ``commit(n)``), so a read lands where frames are parsed
with no extra copy; ``events()`` returns complete data messages as ``bytes`` and
control frames as small objects. Text and binary messages are treated alike and
never UTF-8 validated (the payload is forwarded, not interpreted); a decoder made
with ``typed=True`` returns each data message as a ``Message`` carrying its opcode,
for peers that must tell text from binary (an echo client), at some cost per frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum

from balancer.config import DEFAULTS

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA



class CloseCode(IntEnum):
    """Websocket close status codes (RFC 6455 7.4.1 and the IANA registry). Members are ints,
    so they go on the wire (``encode_close``) and compare with a peer's code as they are."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    """Never on the wire: the close frame carried no code (``Close.code`` is None then)."""
    ABNORMAL = 1006
    """Never on the wire: the connection ended without a close frame."""
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015
    """Never on the wire: the TLS handshake failed."""


# Codes that only name a local condition (RFC 6455 7.4.1): a peer must never send them, and a
# close reply never echoes them.
NOT_ON_WIRE = frozenset((CloseCode.NO_STATUS, CloseCode.ABNORMAL, CloseCode.TLS_HANDSHAKE))

# The old names, kept as aliases.
CLOSE_NORMAL = CloseCode.NORMAL
CLOSE_GOING_AWAY = CloseCode.GOING_AWAY
CLOSE_PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR
CLOSE_INVALID_DATA = CloseCode.INVALID_DATA
CLOSE_TOO_BIG = CloseCode.TOO_BIG

# Codes a peer may send (RFC 6455 7.4.1 and the IANA registry); 1004 is reserved, and 1005, 1006
# and 1015 never go on the wire.
_VALID_CLOSE_CODES = frozenset(int(code) for code in CloseCode if code not in NOT_ON_WIRE)

DEFAULT_BUFFER = 8 * 1024 * 1024
# What each fragment of a fragmented message counts toward --max-message besides its payload:
# the smallest frame header, so that empty continuation frames are never free.
FRAGMENT_COST = 2
MIN_READ = 1024 * 1024


class ProtocolError(Exception):
    """The server broke RFC 6455; the connection must end. ``close_code`` is what we tell it."""

    def __init__(self, message: str, close_code: CloseCode = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


class AllocationFailed(ProtocolError):
    """No memory for a message the server announced (within --max-message): the connection ends
    like on any other error, the decoder stays usable for the next one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, CloseCode.TOO_BIG)


@dataclass(frozen=True, slots=True)
class Message:
    """A data message from a ``typed`` decoder."""

    opcode: int  # OP_TEXT or OP_BINARY: the opcode of the message's first frame
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int | None  # None: the close frame carried no status code
    reason: str


Event = bytes | Message | Ping | Pong | Close


class FrameDecoder:
    """Server-to-client frames in, events out. Raises ProtocolError on any violation."""

    def __init__(
        self, max_message: int = DEFAULTS.max_message, buffer_size: int = DEFAULT_BUFFER, typed: bool = False
    ):
        self.max_message = max_message
        self.typed = typed
        # Frame first bytes that _parse turns into a message on the spot; a typed decoder takes
        # every data frame through _slow_frame, which keeps the opcode.
        self._fast_frames = frozenset() if typed else _WHOLE_DATA_FRAME
        self._default_size = max(buffer_size, 2 * MIN_READ)
        self._buf = bytearray(self._default_size)
        self._view = memoryview(self._buf)
        self.reset()

    def reset(self) -> None:
        """Forget everything received: ready for a new connection, buffer kept."""
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received bytes
        self._need = 0  # bytes the frame at _start needs in all, when incomplete
        # The unfinished fragmented message: one growing buffer, never a list of fragments, so
        # its memory is its size (plus bytearray's slack) however small the fragments.
        self._fragments: bytearray | None = None
        self._fragments_size = 0  # what it counts toward --max-message: payload and fragment headers
        self._fragments_opcode = 0
        self.closed = False  # a close frame was seen; nothing after it is parsed
        self.error: ProtocolError | None = None  # set once; nothing after it is parsed
        self.frames = 0  # complete frames parsed, control frames included

    @property
    def buffered(self) -> int:
        """Received bytes not yet parsed into events (a partial frame)."""
        return self._end - self._start

    def recv_buffer(self) -> memoryview:
        """Free space to receive into; at least MIN_READ bytes and room for the pending frame."""
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._buf) > self._default_size and self._need <= self._default_size:
                self._replace_buffer(self._default_size)
        capacity = len(self._buf)
        need = max(self._need, self._end - self._start) + MIN_READ
        if capacity - self._end < MIN_READ or capacity - self._start < need:
            if need > capacity:
                size = max(need, min(2 * capacity, self.max_message + 14 + MIN_READ))  # not far past a frame
                try:
                    self._replace_buffer(size)
                except MemoryError:
                    raise AllocationFailed(
                        f"cannot allocate {size} bytes for a {self._need}-byte frame "
                        f"(--max-message {self.max_message})") from None
            else:
                self._compact()
        return self._view[self._end :]

    def reserve(self) -> None:
        """Make room now for a frame whose header announced more than the buffer holds, so that
        an allocation failure (AllocationFailed) shows at once, not when more bytes arrive."""
        if self._need + MIN_READ > len(self._buf) and self.error is None and not self.closed:
            self.recv_buffer()

    def commit(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last ``recv_buffer()``."""
        self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in (for tests and paths that do not read in place)."""
        data = memoryview(data)
        while len(data):
            target = self.recv_buffer()
            n = min(len(target), len(data))
            target[:n] = data[:n]
            self.commit(n)
            data = data[n:]

    def _compact(self) -> None:
        tail = bytes(self._view[self._start : self._end])
        self._buf[: len(tail)] = tail
        self._start, self._end = 0, len(tail)

    def _replace_buffer(self, size: int) -> None:
        # Allocate first: a MemoryError here leaves the decoder exactly as it was (buffer, view
        # and positions intact), so the session can end the connection and the next one reuse it.
        new = bytearray(size)
        n = self._end - self._start
        new[:n] = self._view[self._start : self._end]
        self._view.release()
        self._buf = new
        self._view = memoryview(new)
        self._start, self._end = 0, n

    def events(self) -> list[Event]:
        """Every complete event in the buffer, in order.

        A protocol violation ends parsing: the events before it are returned and
        ``error`` is set (and raised by ``check()``), so nothing already received whole is lost.
        """
        out: list[Event] = []
        if self.closed or self.error is not None:
            self._start = self._end
            return out
        try:
            self._parse(out)
        except ProtocolError as exc:
            self.error = exc
            self._start = self._end
        except MemoryError:  # a message's bytes or its reassembly: the events before it stand
            self.error = AllocationFailed(
                f"cannot allocate memory for a {self._fragments_size or self._need}-byte message "
                f"(--max-message {self.max_message})")
            self._fragments = None
            self._start = self._end
        return out

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _parse(self, out: list[Event]) -> None:
        buf = self._buf
        pos = self._start
        end = self._end
        fast_frames = self._fast_frames
        self._need = 0
        while True:
            avail = end - pos
            if avail < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                header = 2
            elif length == 126:
                if avail < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                header = 4
            else:
                if avail < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
            if b0 not in fast_frames or b1 & 0x80 or length > self.max_message:
                self._check_header(b0, b1, length)
            stop = pos + header + length
            if stop > end:
                self._need = header + length
                break
            self.frames += 1
            if b0 in fast_frames and self._fragments is None:
                out.append(bytes(self._view[pos + header : stop]))
            else:
                event = self._slow_frame(b0, bytes(self._view[pos + header : stop]))
                if event is not None:
                    out.append(event)
                    if type(event) is Close:
                        self.closed = True
                        pos = end
                        break
            pos = stop
        self._start = pos

    def _check_header(self, b0: int, b1: int, length: int) -> None:
        """Validate a frame header outside the fast path; raise ProtocolError naming the fault."""
        opcode = b0 & 0x0F
        fin = bool(b0 & 0x80)
        if b0 & 0x70:
            raise ProtocolError(f"reserved bits set (0x{b0 & 0x70:02x}) with no extension negotiated")
        if b1 & 0x80:
            raise ProtocolError("server frame is masked (RFC 6455 5.1 forbids it)")
        if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES and opcode != 0:
            raise ProtocolError(f"unknown opcode 0x{opcode:x}")
        if opcode in _CONTROL_OPCODES:
            if length > 125:
                raise ProtocolError(f"control frame 0x{opcode:x} with {length}-byte payload (max 125)")
            if not fin:
                raise ProtocolError(f"fragmented control frame 0x{opcode:x}")
            return
        if length >> 63:
            raise ProtocolError("64-bit frame length with the most significant bit set")
        # A fragment of a fragmented message costs its header too (FRAGMENT_COST), so an endless run
        # of empty continuation frames reaches --max-message like any other large message.
        total = length
        if opcode == OP_CONTINUATION:
            total += self._fragments_size + FRAGMENT_COST
        elif not fin:
            total += FRAGMENT_COST
        if total > self.max_message:
            raise ProtocolError(
                f"message of {total} bytes or more exceeds --max-message {self.max_message}",
                CloseCode.TOO_BIG,
            )

    def _slow_frame(self, b0: int, payload: bytes) -> Event | None:
        opcode = b0 & 0x0F
        fin = bool(b0 & 0x80)
        if opcode in _DATA_OPCODES:
            if self._fragments is not None:
                raise ProtocolError("new data frame while a fragmented message is unfinished")
            if fin:
                return self._message(opcode, payload)
            self._fragments = bytearray(payload)
            self._fragments_size = len(payload) + FRAGMENT_COST
            self._fragments_opcode = opcode
            return None
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise ProtocolError("continuation frame with no message to continue")
            self._fragments += payload
            self._fragments_size += len(payload) + FRAGMENT_COST
            if not fin:
                return None
            message = bytes(self._fragments)
            self._fragments = None
            self._fragments_size = 0
            return self._message(self._fragments_opcode, message)
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        return parse_close(payload)

    def _message(self, opcode: int, payload: bytes) -> bytes | Message:
        return Message(opcode, payload) if self.typed else payload


_DATA_OPCODES = frozenset((OP_TEXT, OP_BINARY))
_WHOLE_DATA_FRAME = frozenset((0x80 | OP_TEXT, 0x80 | OP_BINARY))  # FIN, no RSV bits
_CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))


def parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise ProtocolError("close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if code not in _VALID_CLOSE_CODES and not 3000 <= code <= 4999:
        raise ProtocolError(f"close frame with invalid status code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not valid UTF-8", CloseCode.INVALID_DATA) from None
    return Close(code, reason)


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` (RFC 6455 5.3)."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )


def encode_frame(opcode: int, payload: bytes = b"", fin: bool = True, key: bytes | None = None) -> bytes:
    """One client frame, masked as RFC 6455 5.3 requires (``key`` is random unless given)."""
    if key is None:
        key = os.urandom(4)
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        header = bytes((b0, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + key + mask(payload, key)


def encode_close(code: int | None = CloseCode.NORMAL, reason: str = "", key: bytes | None = None) -> bytes:
    """A client close frame; the reason is cut to fit a control frame's 125 bytes."""
    if code is None:
        return encode_frame(OP_CLOSE, key=key)
    body = code.to_bytes(2, "big") + reason.encode("utf-8")[:123]
    return encode_frame(OP_CLOSE, body, key=key)
