"""PipeSet with real pipes: one write per pipe per batch, backlog, resync after a reader died."""

import os
import struct

from balancer.pipes import PipeSet
from balancer.router import Chunk, Router, RouteResult


def framed(payloads):
    return b"".join(struct.pack("<I", len(p)) + p for p in payloads)


def slow_chunk(payloads):
    return Chunk(framed(payloads), [len(p) for p in payloads], 4)


def test_submit_writes_once_per_pipe_and_reports_size():
    pipes = PipeSet(3, 1 << 20)
    try:
        assert pipes.pipe_size >= 64 * 1024
        pipes.submit([(0, [slow_chunk([b"a", b"bb"])]), (2, [slow_chunk([b"c"]), slow_chunk([b"d"])])])
        assert pipes.writes == 2
        assert os.read(pipes.read_fds[0], 100) == framed([b"a", b"bb"])
        assert os.read(pipes.read_fds[2], 100) == framed([b"c", b"d"])
    finally:
        pipes.close()


def test_full_pipe_queues_then_flushes_in_order():
    pipes = PipeSet(1, 64 * 1024)
    try:
        size = pipes.pipe_size
        big = [os.urandom(1000) for _ in range(size // 1000 + 50)]
        blocked = pipes.submit([(0, [slow_chunk(big)])])
        assert blocked == [0] and pipes.backlog_bytes[0] > 0
        pipes.submit([(0, [slow_chunk([b"tail"])])])  # behind the backlog, never before it
        out = bytearray()
        while pipes.backlog_bytes[0] or len(out) < len(framed(big)):
            out += os.read(pipes.read_fds[0], 1 << 16)
            pipes.flush(0)
        while len(out) < len(framed([*big, b"tail"])):
            out += os.read(pipes.read_fds[0], 1 << 16)
        assert bytes(out) == framed([*big, b"tail"])
    finally:
        pipes.close()


def route_all(router, payloads):
    result = RouteResult()
    for p in payloads:
        router.route(p, result)
    return router.take()


def trades(n, start=0):
    objs = [b'{"ev":"T","sym":"AAPL","q":%d,"pad":"%s"}' % (start + i, b"x" * (i % 37)) for i in range(n)]
    return b"[" + b",".join(objs) + b"]"


def read_messages(data):
    out = []
    while data:
        n = struct.unpack("<I", data[:4])[0]
        out.append(data[4 : 4 + n])
        data = data[4 + n :]
    return out


def test_resync_after_a_reader_died_mid_message():
    router = Router(1)
    pipes = PipeSet(1, 1 << 20)
    try:
        pipes.submit(route_all(router, [trades(50), trades(50, 50)]))
        total = pipes.written[0]
        # a dead reader took 3 whole messages and part of the 4th
        first = read_messages(os.read(pipes.read_fds[0], total))  # read all to learn sizes
        pipes2 = PipeSet(1, 1 << 20)
        pipes2.submit(route_all(Router(1), [trades(50), trades(50, 50)]))
        cut = sum(len(m) + 4 for m in first[:3]) + 7
        os.read(pipes2.read_fds[0], cut)
        report = pipes2.resync()
        assert [(d.pipe, d.bytes) for d in report] == [(0, len(first[3]) + 4 - 7)]
        rest = os.read(pipes2.read_fds[0], total)
        assert read_messages(rest) == first[4:]  # starts exactly on the next boundary
        assert pipes2.discarded_messages == 1
        pipes2.close()
    finally:
        pipes.close()


def test_resync_on_a_boundary_discards_nothing():
    pipes = PipeSet(2, 1 << 20)
    try:
        pipes.submit(route_all(Router(2), [trades(10)]))
        assert pipes.written[1] and not pipes.written[0]  # AAPL hashes to pipe 1 of 2
        os.read(pipes.read_fds[1], pipes.written[1])  # exactly everything: ends on a boundary
        assert pipes.resync() == []
    finally:
        pipes.close()


def test_resync_when_the_rest_of_the_message_is_still_queued():
    pipes = PipeSet(1, 64 * 1024)
    try:
        size = pipes.pipe_size
        payloads = [b'{"sym":"X","pad":"%s"}' % (b"y" * 3000) for _ in range(size // 3000 + 10)]
        pipes.submit([(0, [slow_chunk(payloads)])])
        assert pipes.backlog_bytes[0]
        # drain the pipe completely: the reader ends inside a message whose tail is still queued
        taken = 0
        while taken < pipes.written[0]:
            taken += len(os.read(pipes.read_fds[0], 1 << 20))
        message = len(payloads[0]) + 4
        into = taken % message
        report = pipes.resync()
        assert into and report and report[0].bytes == message - into
        rest = bytearray()
        while pipes.backlog_bytes[0] or pipes.written[0] - pipes.consumed(0):
            pipes.flush(0)
            rest += os.read(pipes.read_fds[0], 1 << 20)
        assert read_messages(bytes(rest)) == payloads[: len(rest) // message]
        assert len(rest) % message == 0
    finally:
        pipes.close()


def test_prune_forgets_consumed_messages():
    pipes = PipeSet(1, 1 << 20)
    try:
        pipes.submit(route_all(Router(1), [trades(20)]))
        os.read(pipes.read_fds[0], pipes.written[0])
        pipes.prune()
        assert not pipes._records[0]
    finally:
        pipes.close()
