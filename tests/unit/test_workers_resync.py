"""Resynchronising a pipe after its reader died mid-message: the plan, and both paths on
real pipes (the dead child is played by a reader in this process, or by faked slot state)."""

from __future__ import annotations

import os
import select
import time

import pytest

from workers.framing import frame, frame_all
from workers.progress import SharedProgress, SlotState
from workers.reader import PipeReader
from workers.resync import PipeResync, peek, plan_resync

# all the same length (two-digit q), so message boundaries are multiples of 72
TRADES = [b'{"ev":"T","sym":"AAPL","p":187.5,"s":100,"q":%d,"c":[12,37],"z":3}' % q
          for q in range(10, 50)]
STREAM = frame_all(TRADES)
MAX = 1 << 20


def state(bytes_read: int, boundary: int, header: bytes = b"", in_read: bool = False) -> SlotState:
    return SlotState(bytes_read, boundary, 0, 0, header, in_read, 1)


def test_plan_nothing_at_a_boundary() -> None:
    plan = plan_resync(state(500, 500), MAX)
    assert plan.certain and plan.nothing and plan.payload_left == 0


def test_plan_payload_left_when_the_header_was_read() -> None:
    header = (100).to_bytes(4, "little")
    plan = plan_resync(state(510, 500, header), MAX)
    assert plan.certain and plan.header == header and plan.payload_left == 94


def test_plan_header_incomplete() -> None:
    plan = plan_resync(state(502, 500, b"\x64\x00"), MAX)
    assert plan.certain and plan.header == b"\x64\x00" and plan.payload_left is None


def test_plan_uncertain_inside_read_or_after_a_bad_length() -> None:
    assert not plan_resync(state(502, 500, in_read=True), MAX).certain
    bad = (MAX + 1).to_bytes(4, "little")
    assert not plan_resync(state(520, 500, bad), MAX).certain


def run_resync(resync: PipeResync, fd: int) -> None:
    """Drive it as the pool does: step on readable, or on its timer; bounded."""
    deadline = time.monotonic() + 5
    while not resync.done:
        assert time.monotonic() < deadline, "resync did not finish"
        if resync.wants_readable:
            select.select([fd], [], [], 0.05)
        else:
            time.sleep(0.005)
        resync.step(time.monotonic())


def rest_of_pipe(read_end: int, write_end: int, slot) -> list[bytes]:
    os.close(write_end)
    return list(PipeReader(read_end, progress=slot))


@pytest.mark.parametrize("chunk", [8, 9, 11, 50, 69, 70, 71, 72, 140, 333, 1000])
def test_certain_path_drops_exactly_the_partly_read_message(chunk: int) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, STREAM)
    shared = SharedProgress(1)
    dead = PipeReader(read_end, chunk=chunk, progress=shared[0])
    handled = dead.read_batch()
    assert chunk < 72 or handled  # messages are 72 bytes framed
    resync = PipeResync(0, read_end, shared[0], MAX, time.monotonic())
    assert resync.certain
    run_resync(resync, read_end)
    partial = chunk % len(frame(TRADES[0]))
    expected_drop = len(frame(TRADES[0])) - partial if partial else 0
    assert resync.discarded == expected_drop
    assert resync.messages == (1 if partial else 0)
    after = rest_of_pipe(read_end, write_end, shared[0])
    os.close(read_end)
    lost = len(TRADES) - len(handled) - len(after)
    assert lost == resync.messages
    assert after == TRADES[len(handled) + lost :]
    assert shared[0].state().bytes_read == len(STREAM)


def test_certain_path_with_a_header_cut_in_two() -> None:
    read_end, write_end = os.pipe()
    first = len(frame(TRADES[0]))
    os.write(write_end, STREAM)
    os.read(read_end, first + 2)
    shared = SharedProgress(1)
    slot = shared[0]
    slot.publish(first + 2, first, 1, STREAM[first : first + 2], 1)
    resync = PipeResync(0, read_end, slot, MAX, time.monotonic())
    run_resync(resync, read_end)
    assert resync.discarded == first - 2 and resync.messages == 1
    assert rest_of_pipe(read_end, write_end, slot) == TRADES[2:]
    os.close(read_end)


def test_certain_path_waits_for_the_rest_of_the_message_then_hits_eof() -> None:
    read_end, write_end = os.pipe()
    message = frame(TRADES[0])
    os.write(write_end, message[:30])
    os.read(read_end, 10)
    shared = SharedProgress(1)
    shared[0].publish(10, 0, 0, message[:4], 1)
    resync = PipeResync(0, read_end, shared[0], MAX, time.monotonic())
    select.select([read_end], [], [], 1)
    resync.step(time.monotonic())
    assert not resync.done and resync.discarded == 20
    os.close(write_end)  # the writer dies before sending the rest
    run_resync(resync, read_end)
    assert resync.at_eof and resync.discarded == 20
    os.close(read_end)


@pytest.mark.parametrize("consumed", [0, 1, 3, 4, 5, 40, 71, 72, 73, 150])
def test_uncertain_path_finds_the_boundary_by_peeking(consumed: int) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, STREAM)
    shared = SharedProgress(1)
    slot = shared[0]
    slot.publish(0, 0, 0, b"", 1)
    if consumed:
        os.read(read_end, consumed)  # the read the counters never saw
    slot.begin_read()
    resync = PipeResync(0, read_end, slot, MAX, time.monotonic())
    assert not resync.certain
    run_resync(resync, read_end)
    size = len(frame(TRADES[0]))
    partial = consumed % size
    assert resync.discarded == (size - partial if partial else 0)
    after = rest_of_pipe(read_end, write_end, slot)
    os.close(read_end)
    assert after == TRADES[-(len(after)) :]
    assert len(after) == len(TRADES) - -(-consumed // size)


def test_uncertain_path_on_an_empty_pipe_takes_a_boundary_after_the_grace() -> None:
    read_end, write_end = os.pipe()
    shared = SharedProgress(1)
    shared[0].begin_read()
    started = time.monotonic()
    resync = PipeResync(0, read_end, shared[0], MAX, started)
    resync.step(started)
    assert not resync.done and resync.wants_readable
    resync.step(started + PipeResync.UNCERTAIN_GRACE)
    assert resync.done and resync.discarded == 0 and "empty" in resync.note
    os.close(read_end)
    os.close(write_end)


def test_uncertain_path_waits_for_a_confirming_record() -> None:
    read_end, write_end = os.pipe()
    message = frame(TRADES[0])
    os.write(write_end, b'5,"z":3}' + message[:20])  # tail of a cut message, then a start
    shared = SharedProgress(1)
    shared[0].begin_read()
    now = time.monotonic()
    resync = PipeResync(0, read_end, shared[0], MAX, now)
    resync.step(now)
    assert not resync.done and resync.retry_at is not None
    os.write(write_end, message[20:] + message)
    resync.step(now + 0.02)
    assert resync.done and resync.discarded == 8
    assert rest_of_pipe(read_end, write_end, shared[0]) == [TRADES[0], TRADES[0]]
    os.close(read_end)


def test_peek_leaves_the_bytes_in_the_pipe() -> None:
    read_end, write_end = os.pipe()
    assert peek(read_end) is None
    os.write(write_end, STREAM[:100])
    assert peek(read_end) == STREAM[:100]
    assert os.read(read_end, 1000) == STREAM[:100]
    os.close(write_end)
    assert peek(read_end) == b""
    os.close(read_end)


def test_a_refused_scratch_size_peeks_the_largest_granted(monkeypatch: pytest.MonkeyPatch) -> None:
    # an unprivileged process over pipe-max-size is refused (EPERM); played here by refusing
    # anything over 256 KiB: the peek then sees 256 KiB, not the default pipe's 64 KiB
    import errno
    import fcntl

    from common import pipesize

    real = fcntl.fcntl

    def refusing(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == pipesize.F_SETPIPE_SZ and arg > 256 * 1024:
            raise OSError(errno.EPERM, "refused")
        return real(fd, cmd, arg)

    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, pipesize.F_SETPIPE_SZ, 1 << 20)
        data = (STREAM * 300)[:600_000]
        os.set_blocking(write_end, False)
        assert os.write(write_end, data) == len(data)
        monkeypatch.setattr(pipesize.fcntl, "fcntl", refusing)
        assert peek(read_end) == data[:256 * 1024]
    finally:
        os.close(read_end)
        os.close(write_end)
