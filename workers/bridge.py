"""`lb-bridge`: lb's worker that publishes every pipe into a NATS JetStream stream.

    lb KEY URL 32 DIR lb-bridge --nats URL --stream S [options] FD1 ... FD32

Pipe *k*'s bytes go, cut at message boundaries and unparsed, to subject `<prefix>.<k>` in
messages of up to `--max-batch` bytes (or what `--linger` collected). Nothing is taken out of
a pipe before JetStream has acknowledged it: the bridge looks at a pipe's bytes with tee(2)
(a copy that leaves them in the pipe), publishes, and reads them out only after the ack.
So a bridge killed at any moment leaves lb's pipe on a message boundary with every
unacknowledged byte still in it; lb re-forks it, and the new bridge starts where the pipe
starts. On a NATS outage it waits and retries the same batch (never drops one); meanwhile
the pipes fill, then lb's backlog, then lb's backpressure holds the socket.

One publish per partition is in flight at a time, so a partition's messages reach the
stream in order even across reconnects; partitions publish concurrently.

Exactly-once into the stream: each message carries `Nats-Msg-Id = <epoch>.<k>.<offset>`
(see workers/jsproto.py). Before reading an acknowledged batch out of the pipe the bridge
notes (offset, end, first bytes) in its state file; a bridge restarted by lb compares the
pipe's first bytes with that note to learn the pipe's stream offset, and republishes from
there with the same ids. JetStream answers a republish inside the stream's duplicate window
with `duplicate` and the stored message's sequence; the bridge then reads the stored copy's
length and continues from its end, so a batch cut differently the second time neither
repeats nor skips a byte.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import re
import signal
import socket
import struct
import sys
import termios
import time
from dataclasses import dataclass, field
from typing import Any

from common import natsconn
from common.atomicfile import write_json_atomic
from common.units import duration, positive_duration, size
from common.version import add_version_option
from workers import jsproto, jspub
from workers.framing import MAX_MESSAGE

log = logging.getLogger("lb-bridge")

SPLICE_F_NONBLOCK = 2
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
HEAD_BYTES = 128
_SLOT = struct.Struct("<16sQQI128s")
_SLOT_SIZE = 192

_libc = ctypes.CDLL(None, use_errno=True)
_libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
_libc.tee.restype = ctypes.c_ssize_t


def tee(fd_in: int, fd_out: int, length: int) -> int:
    """Copy up to `length` bytes from the head of pipe `fd_in` to pipe `fd_out`, consuming nothing."""
    n = _libc.tee(fd_in, fd_out, length, SPLICE_F_NONBLOCK)
    if n < 0:
        err = ctypes.get_errno()
        if err == errno.EAGAIN:
            return -1
        raise OSError(err, os.strerror(err))
    return n


def unread(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def lb_epoch() -> str:
    """Names this run of lb (our parent): host, pid and start time. A new lb starts new offsets."""
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/stat", "rb") as f:
            stat = f.read()
        start = stat[stat.rindex(b")") + 2 :].split()[19].decode()
    except (OSError, IndexError, ValueError):
        start = "0"
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:32] or "host"
    return f"{host}-{ppid}-{start}"


class StateFile:
    """One slot per partition: what the bridge is about to read out of the pipe."""

    def __init__(self, path: str, npipes: int, epoch: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.npipes = npipes
        self.tag = hashlib.blake2b(epoch.encode(), digest_size=16).digest()

    def note(self, pipe: int, start: int, end: int, head: bytes) -> None:
        slot = _SLOT.pack(self.tag, start, end, len(head), head)
        os.pwrite(self.fd, slot, pipe * _SLOT_SIZE)

    def recall(self, pipe: int) -> tuple[int, int, bytes] | None:
        data = os.pread(self.fd, _SLOT.size, pipe * _SLOT_SIZE)
        if len(data) < _SLOT.size:
            return None
        tag, start, end, head_len, head = _SLOT.unpack(data)
        if tag != self.tag:
            return None
        return start, end, head[:head_len]


@dataclass
class Partition:
    index: int
    fd: int
    scratch_r: int
    scratch_w: int
    scratch_size: int
    offset: int = 0  # stream offset of the pipe's first unread byte
    messages: int = 0
    trades: int = 0  # pipe messages (a duplicate's count is the republished batch's, an estimate)
    published: int = 0
    duplicates: int = 0
    retries: int = 0
    eof: bool = False
    readable: asyncio.Event = field(default_factory=asyncio.Event)


class Bridge:
    def __init__(self, args: argparse.Namespace, nats: natsconn.NatsOptions) -> None:
        self.args = args
        self.nats = nats
        self.epoch = lb_epoch()
        self.stopping = False
        self.state = StateFile(args.state or f".lb-bridge-{args.stream}.state", len(args.fds), self.epoch)
        self.parts = [self._partition(i, fd) for i, fd in enumerate(args.fds)]
        self._sink = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self.nc: Any = None
        self.js: Any = None
        self.acks: jspub.AckInbox | None = None
        self.started = time.monotonic()

    def _partition(self, index: int, fd: int) -> Partition:
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            want = max(fcntl.fcntl(fd, F_GETPIPE_SZ), 2 * self.args.max_batch)
            size = fcntl.fcntl(w, F_SETPIPE_SZ, want)
        except OSError:
            size = fcntl.fcntl(w, F_GETPIPE_SZ)
        return Partition(index, fd, r, w, size)

    # -- start ------------------------------------------------------------------------

    def locate(self, part: Partition) -> None:
        """Where the pipe starts in its stream, from the note left before the last read-out."""
        recalled = self.state.recall(part.index)
        if recalled is None:
            return  # a fresh lb: its pipes start at offset 0
        start, end, head = recalled
        peeked = self._peek(part, len(head)) if head else b""
        part.offset = start if head and peeked == head else end
        log.info("pipe %d: resuming at stream offset %d", part.index, part.offset)

    async def ensure_stream(self) -> None:
        """The stream, created if missing; asked again (with backoff, logged the first time and
        then every 20th) while the server cannot answer yet, as a cluster being formed or
        electing a leader cannot; a refusal that asking again cannot change is a usage error."""
        delay, tries = 0.1, 0
        while True:
            try:
                return await self._ensure_stream()
            except ValueError:
                raise
            except Exception as exc:
                refused = natsconn.refusal(exc)
                if refused is not None:
                    raise ValueError(f"stream {self.args.stream}: {refused}") from exc
                tries += 1
                if tries == 1 or tries % 20 == 0:
                    log.warning("stream %s: no answer yet (%s: %s); asking again (%d tries)",
                                self.args.stream, type(exc).__name__, str(exc)[:200] or "-", tries)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _ensure_stream(self) -> None:
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        a = self.args
        wanted = f"{a.prefix}.*"
        try:
            info = await self.js.stream_info(a.stream)
        except NotFoundError:
            config = StreamConfig(
                name=a.stream, subjects=[wanted], storage=StorageType.FILE, max_age=a.max_age or None,
                max_bytes=a.max_bytes or None, num_replicas=a.replicas, duplicate_window=a.dup_window,
                discard=DiscardPolicy.OLD,
            )
            await self.js.add_stream(config)
            log.info("created stream %s (subjects %s, file storage, %d replicas)", a.stream, wanted,
                     a.replicas)
            return
        config = info.config
        if wanted not in (config.subjects or []):
            raise ValueError(f"stream {a.stream} exists with subjects {config.subjects}, not {wanted}")
        if config.storage != StorageType.FILE:
            raise ValueError(f"stream {a.stream} exists with {config.storage} storage, not file")
        log.info("stream %s exists (subjects %s)", a.stream, config.subjects)

    # -- the per-partition loop -----------------------------------------------------------

    async def run_partition(self, part: Partition) -> None:
        loop = asyncio.get_running_loop()
        subject = jsproto.subject(self.args.prefix, part.index)
        while not self.stopping:
            available = unread(part.fd)
            if available == 0:
                part.readable.clear()
                loop.add_reader(part.fd, part.readable.set)
                try:
                    await part.readable.wait()
                finally:
                    loop.remove_reader(part.fd)
                if unread(part.fd) == 0:  # readable and empty: every writer closed
                    part.eof = True
                    return
                if self.args.linger > 0 and unread(part.fd) < self.args.max_batch:
                    await asyncio.sleep(self.args.linger)
                continue
            data = self._peek(part, min(available, part.scratch_size))
            size, count = jsproto.cut_batch_counted(data, self.args.max_batch, self.args.max_message)
            if size == 0:
                needed = jsproto.needed_for_first(data)
                if needed > part.scratch_size:
                    raise RuntimeError(f"pipe {part.index}: a {needed}-byte message does not fit the "
                                       f"{part.scratch_size}-byte look-ahead pipe")
                await asyncio.sleep(0.001)  # lb has written part of a message
                continue
            await self._publish(part, subject, data[:size], count)

    def _peek(self, part: Partition, want: int) -> bytes:
        n = tee(part.fd, part.scratch_w, want)
        if n <= 0:
            return b""
        chunks = []
        got = 0
        while got < n:
            chunk = os.read(part.scratch_r, n - got)
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    async def _publish(self, part: Partition, subject: str, payload: bytes, count: int) -> None:
        headers = {jsproto.MSG_ID: jsproto.make_msg_id(self.epoch, part.index, part.offset),
                   jsproto.COUNT: str(count)}
        acks = self.acks
        assert acks is not None, "run() starts the ack inbox before any partition"
        ack = await self._retry(part, lambda: acks.publish(subject, payload, headers, self.args.ack_timeout))
        size = len(payload)
        if ack.duplicate:
            part.duplicates += 1
            stored = await self._retry(part, lambda: self.js.get_msg(self.args.stream, ack.seq))
            stored_id = (stored.headers or {}).get(jsproto.MSG_ID)
            if stored_id != headers[jsproto.MSG_ID]:
                raise RuntimeError(f"pipe {part.index}: duplicate ack names message {ack.seq} with id "
                                   f"{stored_id!r}, not {headers[jsproto.MSG_ID]!r}")
            size = len(stored.data or b"")
            log.info("pipe %d: offset %d was already in the stream (%d bytes, seq %d)",
                     part.index, part.offset, size, ack.seq)
        self.state.note(part.index, part.offset, part.offset + size, payload[:HEAD_BYTES])
        self._read_out(part, size)
        part.offset += size
        part.published += size
        part.messages += 1
        part.trades += count

    async def _retry(self, part: Partition, call: Any) -> Any:
        delay = 0.05
        while True:
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                part.retries += 1
                if part.retries == 1 or part.retries % 20 == 0:
                    detail = str(exc)[:200]
                    log.warning("pipe %d: publish not acknowledged (%s%s); retrying, nothing is dropped "
                                "(%d retries)", part.index, type(exc).__name__,
                                f": {detail}" if detail else "", part.retries)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    def _read_out(self, part: Partition, size: int) -> None:
        """Take `size` acknowledged bytes out of the pipe: spliced to /dev/null (no copy to
        userspace, which was 15% of the bridge's CPU sustained), or read where splice fails."""
        left = size
        while left:
            if self._sink >= 0:
                try:
                    moved = os.splice(part.fd, self._sink, min(left, 1 << 20))
                except OSError:
                    os.close(self._sink)
                    self._sink = -1  # read from now on
                    continue
            else:
                moved = len(os.read(part.fd, min(left, 1 << 20)))
            if not moved:
                raise RuntimeError(f"pipe {part.index}: EOF with {left} acknowledged bytes not in the pipe")
            left -= moved

    # -- the whole --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "stream": self.args.stream, "pid": os.getpid(),
            "published_bytes": sum(p.published for p in self.parts),
            "stream_offset": sum(p.offset for p in self.parts),  # over every bridge of this lb
            "published_messages": sum(p.messages for p in self.parts),
            "duplicates": sum(p.duplicates for p in self.parts),
            "retries": sum(p.retries for p in self.parts),
            "connected": bool(self.nc and self.nc.is_connected),
            "pipes": {str(p.index): {"offset": p.offset, "messages": p.messages} for p in self.parts},
        }

    async def _stats(self) -> None:
        while True:
            if self.args.stats_file:
                write_json_atomic(self.args.stats_file, self.snapshot())
            await asyncio.sleep(self.args.stats_interval)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []

        def stop() -> None:
            self.stopping = True
            for task in tasks:
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        for part in self.parts:
            self.locate(part)
        self.nc = await natsconn.connect(self.nats, f"lb-bridge {self.epoch}")
        self.js = self.nc.jetstream()
        setup = asyncio.ensure_future(self.ensure_stream())
        tasks.append(setup)  # a stop while the stream is being asked for cancels it
        try:
            if self.stopping:  # stopped while connecting
                setup.cancel()
            await setup
        except asyncio.CancelledError:
            await self.nc.close()
            return 0
        tasks.clear()
        self.acks = jspub.AckInbox(self.nc)
        await self.acks.start()
        log.info("publishing %d pipes to %s.<pipe> (epoch %s)", len(self.parts), self.args.prefix, self.epoch)
        stats = asyncio.ensure_future(self._stats())
        tasks.extend(asyncio.ensure_future(self.run_partition(p)) for p in self.parts)
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            stats.cancel()
            if self.args.stats_file:
                write_json_atomic(self.args.stats_file, self.snapshot())
            if self.acks is not None:
                await self.acks.close()
            await self.nc.close()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("%s", result)
                return 1
        return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lb-bridge", description=__doc__.split("\n\n")[0])
    add_version_option(p)
    natsconn.add_arguments(p)
    g = p.add_argument_group("stream")
    g.add_argument("--stream", required=True, help="JetStream stream name (created if missing)")
    g.add_argument("--prefix", default="trades",
                   help="subject prefix: pipe k goes to PREFIX.k (default trades)")
    g.add_argument("--max-age", type=duration, default=0, metavar="DURATION",
                   help="stream retention (0: none)")
    g.add_argument("--max-bytes", type=size, default=0, metavar="SIZE", help="stream size bound (0: none)")
    g.add_argument("--replicas", type=int, default=1, help="stream replicas (default 1; 3 in a cluster)")
    g.add_argument("--dup-window", type=positive_duration, default=120.0, metavar="DURATION",
                   help="the stream's duplicate window for new streams (default 120)")
    g = p.add_argument_group("publishing")
    g.add_argument("--max-batch", type=size, default=256 * 1024, metavar="SIZE",
                   help="bytes per JetStream message at most (default 262144; NATS's own bound "
                        "is the server's max_payload, 1 MiB by default)")
    g.add_argument("--linger", type=duration, default=0.002, metavar="DURATION",
                   help="wait this long for a batch to fill once a pipe has bytes (default 0.002)")
    g.add_argument("--ack-timeout", type=positive_duration, default=2.0, metavar="DURATION",
                   help="republish a batch not acknowledged within this (default 2)")
    g.add_argument("--max-message", type=size, default=MAX_MESSAGE, metavar="SIZE")
    g.add_argument("--state", metavar="PATH", help="state file (default .lb-bridge-STREAM.state in WORKDIR)")
    g.add_argument("--stats-file", metavar="PATH", help="JSON counters, rewritten every --stats-interval")
    g.add_argument("--stats-interval", type=positive_duration, default=1.0, metavar="DURATION")
    p.add_argument("fds", type=int, nargs="+", metavar="FD", help="the pipes' read ends, as lb passes them")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="lb-bridge: %(message)s", stream=sys.stderr)
    args = parser().parse_args(argv)
    try:
        jsproto.check_prefix(args.prefix)
        options = natsconn.options_from(args)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.max_batch < 64:
        log.error("--max-batch must be at least 64 bytes")
        return 2
    try:
        return asyncio.run(Bridge(args, options).run())
    except ValueError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
