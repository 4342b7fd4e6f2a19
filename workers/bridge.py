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

Publishing goes in rounds: once a partition has bytes (its pipe became readable, or bytes
were left when its last publish was acknowledged), the round waits `--linger` for the others
(at once when one holds a whole `--max-batch`), then publishes every partition that has
bytes and no publish in flight, all in one write. One publish per partition is in flight at
a time, so a partition's messages reach the stream in order even across reconnects. The
acks of a round come back together and the next round starts `--linger` later: a partition
publishes at most once per round trip plus linger, whatever the trade rate, which bounds
the messages nats-server handles a second (its CPU goes by messages, and a round's publishes
arriving in one read cost it about half of the same publishes spread out).

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
import fcntl
import hashlib
import logging
import os
import re
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

from common import jsapi, natsconn
from common.atomicfile import write_json_atomic
from common.natsclient import NotConnected
from common.pipesize import F_GETPIPE_SZ, set_pipe_size
from common.units import duration, positive_duration, size
from common.version import add_version_option
from workers import jsproto, jspub
from workers.framing import MAX_MESSAGE
from workers.resync import peek_through

log = logging.getLogger("lb-bridge")

HEAD_BYTES = 128
_SLOT = struct.Struct("<16sQQI128s")
_SLOT_SIZE = 192
LINGER = 0.002  # see --linger
_COUNT = b"%s: %%d\r\n\r\n" % jsproto.COUNT.encode()
WATCHDOG = 0.1  # how often publishes are checked against --ack-timeout

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
    """One slot per partition: what the bridge is about to read out of the pipe.

    `note()` changes a slot in memory; `write()` puts every slot changed since in the file with
    one pwrite (the acks of a round come together: one system call for all their notes).
    """

    def __init__(self, path: str, npipes: int, epoch: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.npipes = npipes
        self.tag = hashlib.blake2b(epoch.encode(), digest_size=16).digest()
        self.table = bytearray(npipes * _SLOT_SIZE)
        old = os.pread(self.fd, len(self.table), 0)
        self.table[: len(old)] = old
        self._low, self._high = npipes, -1

    def note(self, pipe: int, start: int, end: int, head: bytes) -> None:
        _SLOT.pack_into(self.table, pipe * _SLOT_SIZE, self.tag, start, end, len(head), head)
        self._low = min(self._low, pipe)
        self._high = max(self._high, pipe)

    def write(self) -> None:
        if self._high < 0:
            return
        low, high = self._low * _SLOT_SIZE, (self._high + 1) * _SLOT_SIZE
        os.pwrite(self.fd, self.table[low:high], low)
        self._low, self._high = self.npipes, -1

    def recall(self, pipe: int) -> tuple[int, int, bytes] | None:
        tag, start, end, head_len, head = _SLOT.unpack_from(self.table, pipe * _SLOT_SIZE)
        if tag != self.tag:
            return None
        return start, end, head[:head_len]


@dataclass(slots=True)
class Flight:
    """One batch on its way into the stream: published, or to be published again."""

    payload: bytes
    count: int
    headers: bytes  # Nats-Msg-Id and Lb-Messages, encoded once for every attempt
    token: str = ""  # the attempt waiting for its answer ("" if none: to be sent)
    sent: float = 0.0


@dataclass(slots=True)
class Partition:
    index: int
    fd: int
    scratch_r: int
    scratch_w: int
    scratch_size: int
    subject: str = ""
    id_prefix: bytes = b""  # the headers up to the offset of Nats-Msg-Id
    offset: int = 0  # stream offset of the pipe's first unread byte
    messages: int = 0
    trades: int = 0  # pipe messages (a duplicate's count is the republished batch's, an estimate)
    published: int = 0
    duplicates: int = 0
    retries: int = 0
    eof: bool = False
    ready: bool = False  # has bytes to publish (or may: the next round looks)
    armed: bool = False  # the loop watches its pipe for bytes
    full: bool = False  # its last batch was big (half --max-batch or more): rounds go at once
    flight: Flight | None = None
    delay: float = 0.05  # the next retry's pause (doubles to 1 s; back to 0.05 after an ack)
    retry: asyncio.TimerHandle | None = None


class Bridge:
    def __init__(self, args: argparse.Namespace, nats: natsconn.NatsOptions) -> None:
        self.args = args
        self.nats = nats
        self.epoch = lb_epoch()
        self.stopping = False
        self.state = StateFile(args.state or f".lb-bridge-{args.stream}.state", len(args.fds), self.epoch)
        self.parts = [self._partition(i, fd) for i, fd in enumerate(args.fds)]
        smallest = min(part.scratch_size for part in self.parts)
        if smallest < args.max_batch:  # the kernel granted less (pipe-max-size, per-user budget)
            log.warning("look-ahead pipes of %d bytes: batches of at most that, not --max-batch %d",
                        smallest, args.max_batch)
        self._sink = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self.nc: Any = None
        self.js: jsapi.JetStream | None = None
        self.acks: jspub.AckInbox | None = None
        self.started = time.monotonic()
        self._round: asyncio.TimerHandle | asyncio.Handle | None = None
        self._round_at = 0.0
        self._done: asyncio.Future[int] | None = None
        self._lookups: set[asyncio.Task[None]] = set()
        self._stored_now: list[tuple[Partition, Flight, int]] = []  # acked, to be read out
        self.loop: asyncio.AbstractEventLoop | None = None

    def _partition(self, index: int, fd: int) -> Partition:
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            # the largest the kernel grants up to the request: a refused F_SETPIPE_SZ (a request
            # over pipe-max-size) used to leave the look-ahead at 64 KiB, and every batch with it
            size = set_pipe_size(w, max(fcntl.fcntl(fd, F_GETPIPE_SZ), 2 * self.args.max_batch))
        except OSError:
            os.close(r)
            os.close(w)
            raise
        msg_id = jsproto.make_msg_id(self.epoch, index, 0)[:-1]  # checks the epoch once
        prefix = b"NATS/1.0\r\n%s: %s" % (jsproto.MSG_ID.encode(), msg_id.encode())
        return Partition(index, fd, r, w, size, jsproto.subject(self.args.prefix, index), prefix)

    # -- start ------------------------------------------------------------------------

    def locate(self, part: Partition) -> None:
        """Where the pipe starts in its stream, from the note left before the last read-out."""
        recalled = self.state.recall(part.index)
        if recalled is None:
            return  # a fresh lb: its pipes start at offset 0
        start, end, head = recalled
        peeked = self._peek(part, len(head)) if head else None
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
        a = self.args
        assert self.js is not None
        wanted = f"{a.prefix}.*"
        try:
            info = await self.js.stream_info(a.stream)
        except jsapi.APIError as exc:
            if exc.err_code != jsapi.STREAM_NOT_FOUND:
                raise
            config: dict[str, Any] = {
                "name": a.stream, "subjects": [wanted], "storage": "file", "retention": "limits",
                "discard": "old", "num_replicas": a.replicas,
                "duplicate_window": int(a.dup_window * jsapi.NS),
                "max_age": int(a.max_age * jsapi.NS), "max_bytes": a.max_bytes or -1,
                "max_msgs": -1, "max_consumers": -1,
            }
            await self.js.add_stream(config)
            log.info("created stream %s (subjects %s, file storage, %d replicas)", a.stream, wanted,
                     a.replicas)
            return
        config = info.get("config") or {}
        subjects = config.get("subjects") or []
        if wanted not in subjects:
            raise ValueError(f"stream {a.stream} exists with subjects {subjects}, not {wanted}")
        if config.get("storage") != "file":
            raise ValueError(f"stream {a.stream} exists with {config.get('storage')} storage, not file")
        log.info("stream %s exists (subjects %s)", a.stream, subjects)

    # -- rounds ---------------------------------------------------------------------------

    def _arm(self, part: Partition) -> None:
        if not part.armed and not part.eof:
            part.armed = True
            assert self.loop is not None
            self.loop.add_reader(part.fd, self._readable, part)

    def _disarm(self, part: Partition) -> None:
        if part.armed:
            part.armed = False
            assert self.loop is not None
            self.loop.remove_reader(part.fd)

    def _readable(self, part: Partition) -> None:
        self._disarm(part)
        part.ready = True
        self._schedule_round(0.0 if part.full else self.args.linger)

    def _schedule_round(self, delay: float) -> None:
        """The next round at the latest `delay` from now (an earlier one stands)."""
        loop = self.loop
        assert loop is not None
        due = loop.time() + delay
        if self._round is not None:
            if self._round_at <= due:
                return
            self._round.cancel()
        self._round_at = due
        if delay <= 0:
            self._round = loop.call_soon(self._run_round)
        else:
            self._round = loop.call_later(delay, self._run_round)

    def _run_round(self) -> None:
        self._round = None
        if self.stopping or not self.nc.is_connected:
            return  # reconnected() starts a round
        try:
            for part in self.parts:
                if part.ready and part.flight is None:
                    self._take(part)
        except Exception as exc:
            self._fail(exc)
            return
        if all(p.eof for p in self.parts):
            self._finish(0)

    def _take(self, part: Partition) -> None:
        """Cut the pipe's next batch and publish it."""
        # a batch's worth is all a cut can take (the look-ahead of the whole pipe was copied out
        # whole each round, 4 times a 256 KiB batch in a full 1 MiB pipe), unless the first
        # message alone is longer: then all of it
        want = min(part.scratch_size, self.args.max_batch)
        data = self._peek(part, want)
        if not data:
            part.ready = False
            if data is None:  # empty: watch it
                self._arm(part)
            else:  # empty and every writer closed
                part.eof = True
            return
        size, count = jsproto.cut_batch_counted(data, self.args.max_batch, self.args.max_message)
        if size == 0:
            needed = jsproto.needed_for_first(data)
            if needed > part.scratch_size:
                raise RuntimeError(f"pipe {part.index}: a {needed}-byte message does not fit the "
                                   f"{part.scratch_size}-byte look-ahead pipe")
            if len(data) >= want and needed > len(data):  # longer than a batch: it goes alone
                data = self._peek(part, needed) or b""
                size, count = jsproto.cut_batch_counted(data, self.args.max_batch, self.args.max_message)
            if size == 0:
                self._schedule_round(0.001)  # lb has written part of a message
                return
        part.ready = False
        part.full = size >= self.args.max_batch // 2
        payload = data if size == len(data) else data[:size]
        headers = b"%s%d\r\n" % (part.id_prefix, part.offset) + _COUNT % count
        part.flight = Flight(payload, count, headers)
        self._send(part)

    def _send(self, part: Partition) -> None:
        flight = part.flight
        assert flight is not None and self.acks is not None
        try:
            flight.token = self.acks.publish(part.subject, flight.payload, flight.headers,
                                             lambda answer: self._answered(part, flight, answer))
        except NotConnected:
            flight.token = ""  # sent again once connected
            return
        flight.sent = time.monotonic()

    def _answered(self, part: Partition, flight: Flight, answer: jspub.PubAck | jspub.PublishError) -> None:
        if part.flight is not flight:
            return
        flight.token = ""
        try:
            if isinstance(answer, jspub.PublishError):
                self._retry_later(part, answer)
            elif answer.duplicate:
                part.duplicates += 1
                task = asyncio.ensure_future(self._stored_copy(part, flight, answer.seq))
                self._lookups.add(task)
                task.add_done_callback(self._lookups.discard)
            else:
                self._stored(part, flight, len(flight.payload))
        except Exception as exc:
            self._fail(exc)

    def _retry_later(self, part: Partition, error: BaseException) -> None:
        """Publish the same batch (same id) again after a pause: nothing is ever dropped."""
        part.retries += 1
        if part.retries == 1 or part.retries % 20 == 0:
            detail = str(error)[:200]
            log.warning("pipe %d: publish not acknowledged (%s%s); retrying, nothing is dropped "
                        "(%d retries)", part.index, type(error).__name__, f": {detail}" if detail else "",
                        part.retries)
        delay = part.delay
        part.delay = min(1.0, delay * 2)
        assert self.loop is not None
        part.retry = self.loop.call_later(delay, self._resend, part)

    def _resend(self, part: Partition) -> None:
        part.retry = None
        if part.flight is not None and not part.flight.token and not self.stopping:
            self._send(part)

    async def _stored_copy(self, part: Partition, flight: Flight, seq: int) -> None:
        """A duplicate: the stored copy (perhaps cut differently) says where the batch ends."""
        assert self.js is not None
        expected = jsproto.make_msg_id(self.epoch, part.index, part.offset)
        delay = 0.05
        while True:
            try:
                _, headers, data = await self.js.get_msg(self.args.stream, seq)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                part.retries += 1
                if part.retries == 1 or part.retries % 20 == 0:
                    log.warning("pipe %d: the stored copy of seq %d not read yet (%s); asking again "
                                "(%d retries)", part.index, seq, str(exc)[:200] or type(exc).__name__,
                                part.retries)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
        try:
            stored_id = headers.get(jsproto.MSG_ID)
            if stored_id != expected:
                raise RuntimeError(f"pipe {part.index}: duplicate ack names message {seq} with id "
                                   f"{stored_id!r}, not {expected!r}")
            log.info("pipe %d: offset %d was already in the stream (%d bytes, seq %d)", part.index,
                     part.offset, len(data), seq)
            if part.flight is flight:
                self._stored(part, flight, len(data))
        except Exception as exc:
            self._fail(exc)

    def _stored(self, part: Partition, flight: Flight, size: int) -> None:
        """JetStream holds the batch; its bytes leave the pipe once this turn's answers are in."""
        if not self._stored_now:
            assert self.loop is not None
            self.loop.call_soon(self._read_out_stored)
        self._stored_now.append((part, flight, size))

    def _read_out_stored(self) -> None:
        """Note every batch stored in this turn (one write of the notes), then take their bytes
        out of the pipes. A crash in between leaves notes whose batches are still in the
        pipes: the next bridge finds each pipe starting with its note's first bytes and
        republishes from there (answered `duplicate`)."""
        stored, self._stored_now = self._stored_now, []
        try:
            for part, flight, size in stored:
                self.state.note(part.index, part.offset, part.offset + size, flight.payload[:HEAD_BYTES])
            self.state.write()
            soon = False
            for part, flight, size in stored:
                self._read_out(part, size)
                part.offset += size
                part.published += size
                part.messages += 1
                part.trades += flight.count
                part.flight = None
                part.delay = 0.05
                part.ready = True  # bytes may have come meanwhile: the next round looks
                soon = soon or part.full
            self._schedule_round(0.0 if soon else self.args.linger)
        except Exception as exc:
            self._fail(exc)

    def _watchdog(self) -> None:
        """Attempts unanswered for --ack-timeout are given up and made again (same id)."""
        if self.acks is None or self.stopping:
            return
        limit = time.monotonic() - self.args.ack_timeout
        for part in self.parts:
            flight = part.flight
            if flight is not None and flight.token and flight.sent < limit:
                self.acks.forget(flight.token)
                flight.token = ""
                self._retry_later(part, TimeoutError("no pub ack in time"))

    def disconnected(self) -> None:
        """The connection is gone, and with it every answer still to come."""
        if self.acks is not None:
            self.acks.forget_all()
        for part in self.parts:
            if part.flight is not None and part.flight.token:
                part.flight.token = ""
                part.retries += 1

    def reconnected(self) -> None:
        """Publish what was in flight again (same ids: JetStream drops what it already has),
        then carry on."""
        for part in self.parts:
            if part.flight is not None and not part.flight.token and part.retry is None:
                self._send(part)
        self._schedule_round(0.0)

    def _peek(self, part: Partition, want: int) -> bytes | None:
        """Up to `want` bytes from the head of the pipe, left in it; b"" at EOF (empty and no
        writer), None if it is empty."""
        return peek_through(part.fd, part.scratch_r, part.scratch_w, want)

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

    async def _ticker(self) -> None:
        last_stats = 0.0
        while True:
            await asyncio.sleep(WATCHDOG)
            self._watchdog()
            now = time.monotonic()
            if self.args.stats_file and now - last_stats >= self.args.stats_interval:
                write_json_atomic(self.args.stats_file, self.snapshot())
                last_stats = now

    def _fail(self, exc: BaseException) -> None:
        log.error("%s", exc)
        self._finish(1)

    def _finish(self, code: int) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(code)

    async def run(self) -> int:
        self.loop = loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        setup: asyncio.Future[None] | None = None

        def stop() -> None:
            self.stopping = True
            if setup is not None:
                setup.cancel()
            self._finish(0)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        for part in self.parts:
            self.locate(part)
        self.nc = natsconn.client(self.nats, f"lb-bridge {self.epoch}", on_disconnect=self.disconnected,
                                  on_reconnect=self.reconnected)
        self.js = jsapi.JetStream(self.nc)
        setup = asyncio.ensure_future(self._start())
        try:
            await setup
        except asyncio.CancelledError:
            await self.nc.close()
            return 0
        ticker = asyncio.ensure_future(self._ticker())
        try:
            code = await self._done
        finally:
            self.stopping = True
            ticker.cancel()
            for task in self._lookups:
                task.cancel()
            for part in self.parts:
                self._disarm(part)
                if part.retry is not None:
                    part.retry.cancel()
            if self._round is not None:
                self._round.cancel()
            if self.args.stats_file:
                write_json_atomic(self.args.stats_file, self.snapshot())
            if self.acks is not None:
                self.acks.close()
            await self.nc.close()
        return code

    async def _start(self) -> None:
        await self.nc.connect()
        await self.ensure_stream()
        self.acks = jspub.AckInbox(self.nc)
        self.acks.start()
        cut = "compiled" if jsproto.NATIVE_CUT else "Python, workers._jscut not built"
        log.info("publishing %d pipes to %s.<pipe> (epoch %s; batch cut: %s)", len(self.parts),
                 self.args.prefix, self.epoch, cut)
        for part in self.parts:
            self._arm(part)


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
    g.add_argument("--linger", type=duration, default=LINGER, metavar="DURATION",
                   help="once a pipe has bytes, wait this long for the others before a round of "
                        f"publishes (default {LINGER})")
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
    except ConnectionError as exc:  # refused credentials
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
