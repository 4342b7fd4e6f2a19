"""The synchronous pipe reader: `[u32 LE length][payload]` messages out of a pipe fd.

Two modes, chosen per reader:

- chunked (default): one read() of up to `chunk` bytes (1 MiB) into a preallocated buffer,
  then every complete message in it is cut out at once. Fast (well over 1M messages/s on
  one core), but a reader killed by SIGKILL loses what it had read and not yet handled: up
  to one chunk.
- exact (`exact=True`): read the 4-byte header, then exactly the payload, never past the
  message being worked on. Two read() calls per message (about ten times slower), but a
  killed reader loses at most the message it was handling, plus, on a pipe where the
  writer had written only part of a message, that message (its bytes are held, not
  waited for, so one slow pipe never stalls the others).

Both leave the fd's flags alone (the pool and lb share the pipe's open file description);
on a non-blocking fd a read that would block simply returns no messages.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

from workers.framing import (
    HEADER,
    MAX_MESSAGE,
    FramingError,
    TruncatedMessage,
    find_chain_start,
    message_length,
    split_frames,
)
from workers.progress import ProgressSlot

DEFAULT_CHUNK = 1 << 20
MIN_CHUNK = 8


class PipeReader:
    """Reads one pipe. `offset` is the pipe's stream offset of the next unread byte."""

    def __init__(
        self,
        fd: int,
        *,
        name: str | None = None,
        max_message: int = MAX_MESSAGE,
        chunk: int = DEFAULT_CHUNK,
        exact: bool = False,
        progress: ProgressSlot | None = None,
    ) -> None:
        if chunk < MIN_CHUNK:
            raise ValueError(f"chunk must be at least {MIN_CHUNK} bytes")
        self.fd = fd
        self.name = name or f"fd {fd}"
        self.max_message = max_message
        self.chunk = chunk
        self.exact = exact
        self.eof = False
        self.skipped = 0
        """Bytes dropped by resync() after framing errors."""
        self._progress = progress
        self._pid = os.getpid()
        start = progress.state() if progress is not None else None
        self.offset = start.bytes_read if start else 0
        self.messages = start.messages if start else 0
        self._buf = bytearray(0 if exact else chunk)
        self._have = 0
        """Bytes at the front of `_buf` not yet framed: the start of a partial message."""
        self._pending: FramingError | None = None
        self._resyncing = False
        self._rescan = False
        self._bad_header_read = False
        # exact mode: the message being read
        self._header = b""
        self._length = -1
        self._parts: list[bytes] = []
        self._got = 0
        self._poller: select.poll | None = None
        self._nowait = False
        self._window = b""
        self._resync_consumed = 0

    @property
    def pending(self) -> bool:
        """Work is waiting without new data: an error to raise or buffered bytes to rescan."""
        return self._pending is not None or self._rescan

    # -- reading -----------------------------------------------------------------------

    def read_batch(self) -> list[bytes]:
        """One read(); the messages it completed, possibly none. At EOF: [] and `eof` set.

        Raises TruncatedMessage at EOF inside a message, FramingError at a length over
        `max_message` (after returning the messages before it, on the next call).
        """
        if self._pending is not None:
            error, self._pending = self._pending, None
            raise error
        if self.eof:
            return []
        if self.exact:
            return self._read_exact()
        return self._read_chunk()

    def batches(self) -> Iterator[list[bytes]]:
        """Non-empty lists of payloads until a clean EOF."""
        while True:
            batch = self.read_batch()
            if batch:
                yield batch
            elif self.eof:
                return
            else:
                self.wait_readable()

    def __iter__(self) -> Iterator[bytes]:
        for batch in self.batches():
            yield from batch

    def wait_readable(self, timeout: float | None = None) -> bool:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else timeout * 1000))

    # -- chunked mode ------------------------------------------------------------------

    def _read_chunk(self) -> list[bytes]:
        if self._rescan:
            self._rescan = False
            return self._frame(self._have)
        self._make_room()
        progress = self._progress
        if progress is not None:
            progress.begin_read()
        try:
            n = os.readv(self.fd, (memoryview(self._buf)[self._have :],))
        except BlockingIOError:
            self._publish_chunk(b"")
            return []
        if n == 0:
            return self._end_of_chunks()
        self.offset += n
        return self._frame(self._have + n)

    def _frame(self, end: int) -> list[bytes]:
        """Cut the messages out of the first `end` buffered bytes; keep the partial one."""
        data = bytes(memoryview(self._buf)[:end])
        start = self._resync_start(data) if self._resyncing else 0
        payloads, stop, bad_length = split_frames(data, start, end, self.max_message)
        rest = end - stop
        self._buf[:rest] = data[stop:end]
        self._have = rest
        self.messages += len(payloads)
        if bad_length >= 0:
            self._pending = self._too_long(bad_length, self.offset - rest)
        self._publish_chunk(data[stop : stop + HEADER])
        return payloads

    def _too_long(self, length: int, offset: int) -> FramingError:
        detail = f"message length {length} exceeds the bound of {self.max_message} bytes"
        return FramingError(self.name, offset, detail)

    def _publish_chunk(self, header: bytes) -> None:
        if self._progress is not None:
            boundary = self.offset - self._have
            self._progress.publish(self.offset, boundary, self.messages, header, self._pid)

    def _make_room(self) -> None:
        """Keep free space after the partial message: grow for a big one, shrink after it."""
        size = len(self._buf)
        if self._have == size:
            length = message_length(self._buf)
            if length > self.max_message:
                raise self._too_long(length, self.offset - self._have)
            needed = HEADER + length
            self._buf.extend(bytes(max(needed, size + 1) - size))
        elif size > self.chunk and self._have < self.chunk:
            del self._buf[max(self._have, self.chunk) :]

    def _end_of_chunks(self) -> list[bytes]:
        self.eof = True
        have, self._have = self._have, 0
        self._publish_chunk(b"")
        if self._resyncing:
            self.skipped += have
        elif have:
            self._raise_truncated(have, bytes(self._buf[:HEADER]) if have >= HEADER else b"")
        return []

    def _raise_truncated(self, have: int, header: bytes) -> None:
        start = self.offset - have
        expected = f"{HEADER + message_length(header)}" if header else "at least 4"
        raise TruncatedMessage(
            self.name,
            self.offset,
            f"end of pipe inside a message: the message starting at byte offset {start} "
            f"has {have} of {expected} bytes",
        )

    # -- resynchronising after a framing error ----------------------------------------

    def resync(self) -> None:
        """After a FramingError: skip to the next position where valid messages follow.

        Drops the bad header's first byte, then scans for a chain of `[len][{...}]` records;
        until one is confirmed by a complete record, further reads keep scanning.
        """
        self._pending = None
        if self.exact:
            if self._bad_header_read:
                self.skipped += HEADER
                self._bad_header_read = False
            self._resyncing = True
            return
        if self._have:
            del self._buf[:1]
            self._buf.append(0)
            self._have -= 1
            self.skipped += 1
        self._resyncing = True
        self._rescan = self._have > 0

    def _resync_start(self, data: bytes) -> int:
        chain = find_chain_start(data, self.max_message)
        if chain is None:
            start = max(0, len(data) - (HEADER - 1))
        else:
            start = chain.offset
            self._resyncing = chain.complete == 0
        self.skipped += start
        return start

    # -- exact mode ---------------------------------------------------------------------

    def _read_exact(self) -> list[bytes]:
        """Header, then payload, never a byte past the message; at most one message per call.

        After the first read(), reads again only while the pipe has bytes now, so a message
        the writer has only partly written never blocks the caller (a pool child serving
        other pipes): its bytes are held until the next call.
        """
        if self._resyncing and not self._resync_exact():
            return []
        while True:
            length = self._length
            want = HEADER - len(self._header) if length < 0 else length - self._got
            part = self._read_once(want)  # want > 0: a complete message returned already
            if part is None:
                return []
            if not part:
                return self._end_exact()
            self._take(part)
            if self._length >= 0 and self._got == self._length:
                return [self._complete()]
            self._publish_exact()
            self._nowait = True

    def _take(self, part: bytes) -> None:
        self.offset += len(part)
        if self._length >= 0:
            self._parts.append(part)
            self._got += len(part)
            return
        self._header += part
        if len(self._header) == HEADER:
            length = message_length(self._header)
            if length > self.max_message:
                self._bad_header_read = True
                self._header = b""
                self._publish_exact()
                raise self._too_long(length, self.offset - HEADER)
            self._length = length

    def _complete(self) -> bytes:
        parts = self._parts
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        self._header, self._parts, self._got, self._length = b"", [], 0, -1
        self.messages += 1
        self._publish_exact()
        return payload

    def _read_once(self, want: int) -> bytes | None:
        """One read() of at most `want` bytes; None if it would block.

        The first read of a call may block (the caller polled, or iterates a blocking fd);
        later ones must not, as the writer may have written only part of the message.
        """
        nowait, self._nowait = self._nowait, False
        if nowait and not self._readable_now():
            return None
        if self._progress is not None:
            self._progress.begin_read()
        try:
            return os.read(self.fd, want)
        except BlockingIOError:
            self._publish_exact()
            return None

    def _readable_now(self) -> bool:
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.fd, select.POLLIN)
        return bool(self._poller.poll(0))

    def _held(self) -> int:
        return len(self._header) + self._got

    def _end_exact(self) -> list[bytes]:
        self.eof = True
        held = self._held()
        self._publish_exact()
        if self._resyncing:
            self.skipped += len(self._window)
        elif held:
            self._raise_truncated(held, self._header if len(self._header) == HEADER else b"")
        return []

    def _publish_exact(self) -> None:
        if self._progress is not None:
            boundary = self.offset - self._held()
            self._progress.publish(self.offset, boundary, self.messages, self._header, self._pid)

    def _resync_exact(self) -> bool:
        """Exact mode cannot look ahead without consuming: slide to a plausible `[len]{`.

        True once found (the message's first 5 bytes are then held), False when the pipe
        has nothing more right now or ended.
        """
        while True:
            byte = self._read_once(1)
            if byte is None:
                return False
            if not byte:
                self._end_exact()
                return False
            self.offset += 1
            window = self._window = (self._window + byte)[-(HEADER + 1) :]
            if len(window) == HEADER + 1 and window[HEADER] == 0x7B:
                length = message_length(window)
                if 2 <= length <= self.max_message:
                    self.skipped += self._resync_consumed
                    self._resyncing = False
                    self._window = b""
                    self._resync_consumed = 0
                    self._header, self._length, self._parts, self._got = window[:4], length, [b"{"], 1
                    return True
            if len(window) == HEADER + 1:
                self._resync_consumed += 1
            self._nowait = True
