"""The asyncio pipe reader: the C README's `readWithHeader`, done right.

The original awaited `read(4)` and then looped over `read(n)` into a BytesIO for every
message: two awaits per trade at least, no bound on the length, and a short header at EOF
taken for a length. Here each readiness of the fd costs one read() of up to a chunk,
every complete message in it is framed at once by the same code as the sync reader, and
EOF inside a message is an error naming the pipe and byte offset.
"""

from __future__ import annotations

import asyncio
from collections import deque

from workers.framing import MAX_MESSAGE
from workers.reader import DEFAULT_CHUNK, PipeReader


class AsyncPipeReader:
    """`await read_message()`, `await read_batch()` or `async for payload in reader`."""

    def __init__(
        self,
        fd: int,
        *,
        name: str | None = None,
        max_message: int = MAX_MESSAGE,
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        self._reader = PipeReader(fd, name=name, max_message=max_message, chunk=chunk)
        self._ready: deque[bytes] = deque()

    @property
    def name(self) -> str:
        return self._reader.name

    @property
    def offset(self) -> int:
        return self._reader.offset

    @property
    def eof(self) -> bool:
        return self._reader.eof and not self._ready

    async def read_batch(self) -> list[bytes]:
        """The next non-empty list of payloads, or [] at a clean EOF."""
        if self._ready:
            batch = list(self._ready)
            self._ready.clear()
            return batch
        while not self._reader.eof:
            await self._readable()
            batch = self._reader.read_batch()
            if batch:
                return batch
        return []

    async def read_message(self) -> bytes | None:
        """The next payload, or None at a clean EOF."""
        if not self._ready:
            self._ready.extend(await self.read_batch())
        return self._ready.popleft() if self._ready else None

    def __aiter__(self) -> AsyncPipeReader:
        return self

    async def __anext__(self) -> bytes:
        payload = await self.read_message()
        if payload is None:
            raise StopAsyncIteration
        return payload

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self._reader.fd
        loop.add_reader(fd, _settle, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


def _settle(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
