"""The sync and asyncio pipe readers over real pipes written by the test, byte by byte."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import termios
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from workers.aio import AsyncPipeReader
from workers.framing import FramingError, TruncatedMessage, frame, frame_all
from workers.progress import SharedProgress
from workers.reader import PipeReader

TRADES = [
    b'{"ev":"T","sym":"AAPL","i":"1","x":4,"p":187.5,"s":100,"c":[12],"t":1,"q":10,"z":3}',
    b'{"ev":"T","sym":"MSFT","p":2.25,"s":5,"q":7}',
    b'{"ev":"T","sym":"SPY","p":400.1,"s":1,"q":99999,"c":[14,41]}',
    b"{}",
]
STREAM = frame_all(TRADES)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass


def unread(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def write_in_two_parts(write_end: int, read_end: int, cut: int) -> threading.Thread:
    """Write STREAM[:cut], wait (bounded) until the reader took all of it, write the rest.

    A thread, because exact mode blocks inside a message until the rest of it arrives.
    """

    def run() -> None:
        os.write(write_end, STREAM[:cut])
        deadline = time.monotonic() + 5
        while unread(read_end) and time.monotonic() < deadline:
            time.sleep(0.0005)
        os.write(write_end, STREAM[cut:])
        os.close(write_end)

    writer = threading.Thread(target=run)
    writer.start()
    return writer


@pytest.mark.parametrize("mode", [{"chunk": 8}, {"chunk": 64}, {}, {"exact": True}])
def test_messages_split_at_every_byte_across_reads(mode: dict) -> None:
    for cut in range(1, len(STREAM)):
        read_end, write_end = os.pipe()
        reader = PipeReader(read_end, name="pipe 0", **mode)
        writer = write_in_two_parts(write_end, read_end, cut)
        got = [payload for batch in reader.batches() for payload in batch]
        writer.join()
        os.close(read_end)
        assert got == TRADES, cut
        assert reader.eof and reader.offset == len(STREAM) and reader.messages == len(TRADES)


def test_one_byte_writes_reassemble(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    reader = PipeReader(read_end, chunk=16)
    got: list[bytes] = []
    for i in range(len(STREAM)):
        os.write(write_end, STREAM[i : i + 1])
        got.extend(reader.read_batch())
    os.close(write_end)
    got.extend(reader)
    assert got == TRADES


def test_batched_form_returns_every_complete_message_of_one_read(
    pipe: tuple[int, int],
) -> None:
    read_end, write_end = pipe
    os.write(write_end, STREAM + frame(TRADES[0])[:10])
    reader = PipeReader(read_end)
    assert reader.read_batch() == TRADES
    assert reader.offset == len(STREAM) + 10


def test_clean_eof_on_a_boundary(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    os.write(write_end, STREAM)
    os.close(write_end)
    reader = PipeReader(read_end)
    assert list(reader) == TRADES
    assert reader.eof
    assert reader.read_batch() == []


@pytest.mark.parametrize("mode", [{}, {"exact": True}])
@pytest.mark.parametrize("cut", [1, 3, 4, 5, len(frame(TRADES[1])) - 1])
def test_eof_mid_message_names_the_pipe_and_offset(mode: dict, cut: int) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, frame(TRADES[0]) + frame(TRADES[1])[:cut])
    os.close(write_end)
    reader = PipeReader(read_end, name="pipe 7 (fd 12)", **mode)
    got: list[bytes] = []
    with pytest.raises(TruncatedMessage) as caught:
        for batch in reader.batches():
            got.extend(batch)
    os.close(read_end)
    assert got == TRADES[:1]
    start = len(frame(TRADES[0]))
    assert caught.value.offset == start + cut
    text = str(caught.value)
    assert "pipe 7 (fd 12)" in text and f"byte offset {start + cut}" in text
    assert f"starting at byte offset {start}" in text
    expected = f"of {len(frame(TRADES[1]))} bytes" if cut >= 4 else "of at least 4 bytes"
    assert expected in text


@pytest.mark.parametrize("mode", [{}, {"exact": True}])
def test_oversized_length_is_a_framing_error_without_allocating_it(mode: dict) -> None:
    read_end, write_end = os.pipe()
    bad = struct.pack("<I", 0xFFFFFFF0) + b'{"x":1}'
    os.write(write_end, frame_all(TRADES[:2]) + bad + frame(TRADES[2]))
    os.close(write_end)
    reader = PipeReader(read_end, name="pipe 3", max_message=1 << 16, **mode)
    got: list[bytes] = []
    tracemalloc.start()
    with pytest.raises(FramingError) as caught:
        for batch in reader.batches():
            got.extend(batch)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == TRADES[:2]
    assert peak < 4 << 20
    assert caught.value.offset == len(frame_all(TRADES[:2]))
    assert "pipe 3" in str(caught.value) and "4294967280" in str(caught.value)
    reader.resync()
    rest = [payload for batch in reader.batches() for payload in batch]
    os.close(read_end)
    assert rest == TRADES[2:3]
    assert reader.skipped == len(bad)


def test_message_bigger_than_the_chunk_grows_the_buffer_then_shrinks(
    pipe: tuple[int, int],
) -> None:
    read_end, write_end = pipe
    big = b'{"blob":"' + b"x" * 5000 + b'"}'
    reader = PipeReader(read_end, chunk=256)
    os.write(write_end, frame(big) + STREAM)
    os.close(write_end)
    assert list(reader) == [big, *TRADES]
    assert len(reader._buf) == 256


def test_exact_mode_never_reads_past_the_message(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    os.write(write_end, STREAM)
    reader = PipeReader(read_end, exact=True)
    for i, trade in enumerate(TRADES):
        assert reader.read_batch() == [trade]
        assert unread(read_end) == len(STREAM) - len(frame_all(TRADES[: i + 1]))


def test_chunked_reader_publishes_its_progress(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    shared = SharedProgress(2)
    reader = PipeReader(read_end, progress=shared[1])
    partial = frame(TRADES[2])[:6]
    os.write(write_end, frame_all(TRADES[:2]) + partial)
    assert reader.read_batch() == TRADES[:2]
    state = shared[1].state()
    assert not state.in_read
    assert state.bytes_read == len(frame_all(TRADES[:2])) + 6
    assert state.boundary == len(frame_all(TRADES[:2]))
    assert state.messages == 2 and state.header == partial[:4] and state.pid == os.getpid()
    assert shared[0].state().bytes_read == 0


def test_exact_reader_publishes_header_then_boundary(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    shared = SharedProgress(1)
    shared[0].reset(1000, 5)  # a previous reader's stream position carries over
    reader = PipeReader(read_end, exact=True, progress=shared[0])
    os.write(write_end, STREAM)
    assert reader.read_batch() == TRADES[:1]
    state = shared[0].state()
    assert (state.bytes_read, state.boundary, state.messages) == (
        1000 + len(frame(TRADES[0])),
        1000 + len(frame(TRADES[0])),
        6,
    )


def test_non_blocking_fd_returns_no_messages_instead_of_blocking(
    pipe: tuple[int, int],
) -> None:
    read_end, write_end = pipe
    os.set_blocking(read_end, False)
    reader = PipeReader(read_end)
    assert reader.read_batch() == []
    os.write(write_end, STREAM)
    assert reader.read_batch() == TRADES


async def test_async_reader_messages_batches_and_eof(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    reader = AsyncPipeReader(read_end, name="pipe 2", chunk=16)
    loop = asyncio.get_running_loop()

    def feed() -> None:
        for i in range(0, len(STREAM), 7):
            os.write(write_end, STREAM[i : i + 7])
        os.close(write_end)

    loop.call_soon(feed)
    first = await asyncio.wait_for(reader.read_message(), 5)
    rest = [payload async for payload in reader]
    assert [first, *rest] == TRADES
    assert reader.eof
    assert await reader.read_batch() == []


async def test_async_reader_eof_mid_message(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    os.write(write_end, STREAM[:-1])
    os.close(write_end)
    reader = AsyncPipeReader(read_end, name="pipe 5")
    with pytest.raises(TruncatedMessage, match="pipe 5"):
        async with asyncio.timeout(5):
            while await reader.read_batch():
                pass
