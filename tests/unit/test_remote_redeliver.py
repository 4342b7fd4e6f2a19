"""lb-remote after its worker died: the partly read message again, whole, then the rest.

Real pipes (lb's PipeSet, 64 KiB, so most of what is delivered waits in the userspace
backlog); the "worker" is this test reading the read end; JetStream messages are stand-ins
carrying only what `Remote.deliver` looks at.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from types import SimpleNamespace

from balancer import jsfeed
from balancer.remote import Remote
from workers.framing import frame_all


def js_message(seq: int, data: bytes) -> SimpleNamespace:
    """What lb-remote reads of a delivery: data, headers, and the ack subject (the sequence)."""
    return SimpleNamespace(data=data, headers=None, hdr=b"",
                           reply=f"$JS.ACK.FEED.lb-remote-0.1.{seq}.{seq}.1733280000000000000.0")


def make_remote(tmp_path, npartitions: int = 2) -> Remote:
    args = argparse.Namespace(partitions=list(range(npartitions)), pipe_size=65536,
                              state=str(tmp_path / "state"), max_message=1 << 20,
                              max_ack_pending=1024)
    return Remote(args)


def bodies(count: int, per: int, tag: bytes) -> list[bytes]:
    n = 0
    out = []
    for _ in range(count):
        payloads = [b'{"sym":"%s","q":%d,"pad":"%s"}' % (tag, q, b"x" * (q % 37)) for q in range(n, n + per)]
        n += per
        out.append(frame_all(payloads))
    return out


def read(remote: Remote, pipe: int, nbytes: int) -> bytes:
    """What a worker would read: exactly nbytes, flushing lb-remote's backlog as it goes."""
    out = b""
    while len(out) < nbytes:
        remote._flush(pipe)
        out += os.read(remote.pipes.read_fds[pipe], min(nbytes - len(out), 65536))
    return out


def read_all(remote: Remote, pipe: int) -> bytes:
    return read(remote, pipe, remote.pipes.accepted[pipe] - remote.pipes.consumed(pipe))


def test_partly_read_message_comes_again_whole(tmp_path):
    async def scenario() -> None:
        remote = make_remote(tmp_path)
        part = remote.parts[0]
        data = bodies(4, 800, b"AAPL")  # about 4 x 40 KB: most of it backlogged behind a 64 KiB pipe
        for seq, body in enumerate(data, 1):
            assert remote.deliver(part, js_message(seq, body))
        stream = b"".join(data)
        assert remote.pipes.backlog_bytes[0] > 0
        # the worker reads 1.5 JetStream messages and 7 bytes into a pipe message, then dies
        cut = len(data[0]) + len(data[1]) // 2 + 7
        first = read(remote, 0, cut)
        await remote.acknowledge()
        assert part.acked == 1  # the first JetStream message was read entirely
        start = len(data[0]) + jsfeed.boundary_before(data[1], cut - len(data[0]))
        assert start < cut

        remote.redeliver_partly_read()
        assert remote.pipes.resync() == []  # every pipe on a boundary already: nothing dropped
        assert remote.pipes.discarded_bytes == 0
        assert (remote.resent_messages, remote.resent_bytes) == (1, cut - start)
        # the next worker gets the message from its first byte, then everything after it
        second = read_all(remote, 0)
        assert first[:start] + second == stream
        assert remote.pipes.total_backlog == 0
        await remote.acknowledge()
        assert not part.pending
        assert remote.progress.read(0)[:2] == (5, 0)  # resume after the last JetStream message
        assert part.acked == 1  # the ack itself waits out ACK_INTERVAL after the last one...
        await remote.acknowledge(final=True)
        assert part.acked == 4  # ...and then one ack (AckPolicy.ALL) covers messages 2-4
        remote.pipes.close()

    asyncio.run(scenario())


def test_death_on_a_boundary_or_twice_inside_the_same_message(tmp_path):
    async def scenario() -> None:
        remote = make_remote(tmp_path)
        a, b = remote.parts
        data_a = bodies(3, 500, b"MSFT")
        data_b = bodies(3, 500, b"NVDA")
        for seq, (x, y) in enumerate(zip(data_a, data_b, strict=True), 1):
            assert remote.deliver(a, js_message(seq, x))
            assert remote.deliver(b, js_message(seq, y))
        stream_a, stream_b = b"".join(data_a), b"".join(data_b)
        # pipe 0: read exactly to a message boundary; pipe 1: inside a header
        got_a = read(remote, 0, jsfeed.boundary_before(stream_a, 30_000))
        got_b = read(remote, 1, 40_000)
        start_b = jsfeed.boundary_before(stream_b, 40_000)
        if start_b == 40_000:
            start_b = jsfeed.boundary_before(stream_b, 40_001)
            got_b += read(remote, 1, 1)
        remote.redeliver_partly_read()
        assert remote.resent_messages == 1  # pipe 1 only
        # the next worker dies too, 2 bytes into the same message (inside its header)
        got_b = got_b[:start_b] + read(remote, 1, 2)
        remote.redeliver_partly_read()
        assert remote.resent_messages == 2
        assert remote.pipes.resync() == []
        got_a += read_all(remote, 0)
        got_b = got_b[:start_b] + read_all(remote, 1)
        assert (got_a, got_b) == (stream_a, stream_b)
        await remote.acknowledge()
        assert (a.acked, b.acked) == (3, 3)
        remote.pipes.close()

    asyncio.run(scenario())


def test_a_restart_resumes_at_the_start_of_a_partly_read_message(tmp_path):
    """lb-remote restarted from a note taken while its worker was inside a message: that
    message comes again whole (the worker never had it whole); one on a boundary does not."""
    async def scenario() -> None:
        body = bodies(1, 50, b"MSFT")[0]
        cut = jsfeed.boundary_from(body, len(body) // 2)  # a boundary in the middle
        second_len = int.from_bytes(body[cut:cut + 4], "little") + 4
        for resume_skip, expected in ((cut + 3, body[cut:]), (cut, body[cut:]),
                                      (cut + second_len, body[cut + second_len:])):
            remote = make_remote(tmp_path)
            part = remote.parts[0]
            part.resume_seq, part.resume_skip = 1, resume_skip
            assert remote.deliver(part, js_message(1, body))
            assert read_all(remote, 0) == expected, resume_skip
            remote.pipes.close()

    asyncio.run(scenario())


def run_remote(tmp_path, monkeypatch, pull, connected=lambda hooks: None) -> int:
    """Remote.run() with no NATS, no worker and no shutdown: `pull` stands for each partition's
    loop, `connected(hooks)` runs when the fake client connects, with the hooks lb-remote gave it."""
    import balancer.remote as remote_module

    remote = make_remote(tmp_path)
    remote.args.since = remote.args.from_seq = None
    remote.args.durable = "test"
    remote.args.nats_options = None
    hooks = {}

    class FakeClient:
        async def connect(self):
            connected(hooks)
            return self

    def fake_client(*_args, **kwargs):
        hooks.update(kwargs)
        return FakeClient()

    async def no_shutdown():
        remote.pipes.close()

    monkeypatch.setattr(remote_module.natsconn, "client", fake_client)
    monkeypatch.setattr(remote, "start_worker", lambda: None)
    monkeypatch.setattr(remote, "pull", pull)
    monkeypatch.setattr(remote, "shutdown", no_shutdown)
    return asyncio.run(asyncio.wait_for(remote.run(), 10))


def test_a_partition_loop_that_dies_stops_lb_remote_loudly(tmp_path, monkeypatch, caplog):
    """A pull loop never ends by itself; if one raises, lb-remote must not go on silently
    without that partition (it did: the task's exception was only seen at shutdown)."""

    async def broken_pull(part):
        raise RuntimeError(f"partition {part.number} broke")

    assert run_remote(tmp_path, monkeypatch, broken_pull) == 1
    assert "internal error, stopping" in caplog.text and "broke" in caplog.text


def test_a_delivery_that_fails_stops_lb_remote_loudly(tmp_path, monkeypatch, caplog):
    """A message whose delivery raises (a bug, or a message no bridge writes) must not be
    dropped quietly nor taken again and again: lb-remote stops with exit 1 and the error."""

    async def idle_pull(part):
        await asyncio.sleep(60)

    def fail_a_delivery(hooks):
        hooks["on_handler_error"](ValueError("a delivery that cannot be written"))

    assert run_remote(tmp_path, monkeypatch, idle_pull, fail_a_delivery) == 1
    assert "internal error, stopping" in caplog.text and "cannot be written" in caplog.text
