"""`lb-remote`: on any host, the pipes and the worker of lb, fed from a JetStream stream.

    lb-remote --nats URL --stream S --partitions 0-15 WORKDIR EXE [ARGS...]

Creates one pipe per partition and runs `EXE ARGS... FD1..FDN` in WORKDIR exactly as lb does
(balancer/pipes.py and balancer/supervisor.py: PR_SET_PDEATHSIG, its own process group,
re-fork on the same pipes, EOF then SIGTERM at shutdown). Unlike lb, a re-forked worker gets
the message its predecessor had partly read again, whole (it is still unacknowledged), then
everything after it: `Remote.redeliver_partly_read`. Pipe *i* is the *i*-th partition of
`--partitions`.
Each partition is read through a durable pull consumer `<durable>-<k>` on `<prefix>.<k>`.

A JetStream message is acknowledged only once the worker has read all of it out of the pipe
(written minus FIONREAD; lb's accounting), in order. Inside the first unacknowledged message
the position the worker had reached is noted in a state file at every tick, so a restarted
lb-remote skips what the worker had read, to the next message boundary. Messages carry the
bridge's `Nats-Msg-Id` (`<epoch>.<k>.<offset>`), so a copy JetStream let through (a
republish after its duplicate window) or a redelivery is cut off by offset here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from balancer import jsfeed
from balancer.cli import split_argv
from balancer.pipes import PipeSet, unread_bytes
from balancer.router import Chunk
from balancer.supervisor import (
    WorkerSpec,
    WorkerStartError,
    become_subreaper,
    describe_status,
    group_alive,
    kill_group,
    reap_children,
    resolve_executable,
    spawn,
)
from common import jsapi, natsconn
from common.atomicfile import write_json_atomic
from common.jspull import OutstandingPull
from common.units import positive_duration, size, time_arg
from common.version import add_version_option

log = logging.getLogger("lb-remote")

EXIT_USAGE = 2
ACK = b"+ACK"
TICK = 0.005
ACK_INTERVAL = 0.05  # a partition's read messages are acked at most this often
GROUP_EXIT_WAIT = 5.0
QUICK_DEATH = 1.0
BACKOFF_MAX = 5.0
_SLOT = struct.Struct("<QQQ64s")  # seq, skip, origin offset of the read position, epoch
_SLOT_SIZE = 128


@dataclass(slots=True)
class Delivered:
    msg: Any
    seq: int
    pipe_start: int  # stream offsets in our pipe
    pipe_end: int
    skip: int  # bytes of msg.data not written (read before, or duplicates)
    epoch: str
    origin: int  # bridge's offset of msg.data[0]; -1 without a bridge id


@dataclass
class Partition:
    number: int
    pipe: int
    pending: deque[Delivered] = field(default_factory=deque)
    last_seq: int = 0  # highest stream sequence written
    epoch: str = ""
    origin_end: int = -1  # bridge offset just after the last byte written
    resume_seq: int = 0
    resume_skip: int = 0
    messages: int = 0
    bytes: int = 0
    acked: int = 0
    skipped_bytes: int = 0
    gaps: int = 0
    rewinds: int = 0
    rewound_at: int = -1
    rewind: bool = False
    noted: tuple[int, int, int, str] = (0, 0, -1, "")
    pull: OutstandingPull | None = None  # while its pull requests are outstanding
    unacked: list[Delivered] = field(default_factory=list)  # read by the worker, ack not sent
    acked_at: float = 0.0
    idle_note: tuple[int, int, int, str] | None = None  # the note taken once all was read


class ProgressFile:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)

    def write(self, slot: int, seq: int, skip: int, origin: int, epoch: str) -> None:
        os.pwrite(self.fd, _SLOT.pack(seq, skip, origin + 1, epoch.encode()[:64]), slot * _SLOT_SIZE)

    def read(self, slot: int) -> tuple[int, int, int, str] | None:
        data = os.pread(self.fd, _SLOT.size, slot * _SLOT_SIZE)
        if len(data) < _SLOT.size:
            return None
        seq, skip, origin, epoch = _SLOT.unpack(data)
        return seq, skip, origin - 1, epoch.rstrip(b"\0").decode(errors="replace")


class Remote:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.parts = [Partition(k, i) for i, k in enumerate(args.partitions)]
        self.pipes = PipeSet(len(self.parts), args.pipe_size)
        self.progress = ProgressFile(args.state)
        self.worker_pid = 0
        self.worker_started = 0.0
        self.worker_restarts = 0
        self.backoff = 0.0
        self.stopping = False
        self.nc: Any = None
        self.js: jsapi.JetStream | None = None
        self._watching: set[int] = set()
        self._worker_gone = asyncio.Event()
        self._restart: asyncio.Task[None] | None = None
        self.resent_messages = 0  # partly read messages a dead worker left, delivered again whole
        self.resent_bytes = 0  # the parts of them the dead worker had read

    # -- the consumers ---------------------------------------------------------------------

    def load_progress(self) -> None:
        if self.args.since is not None or self.args.from_seq is not None:
            self.progress.clear()
            return
        for part in self.parts:
            saved = self.progress.read(part.pipe)
            if saved is None:
                continue
            part.resume_seq, part.resume_skip, part.origin_end, part.epoch = saved
            log.info("partition %d: resuming inside seq %d at byte %d", part.number, part.resume_seq,
                     part.resume_skip)

    async def ensure_consumer(self, part: Partition) -> None:
        """(Re)create the partition's durable where delivery must resume."""
        assert self.js is not None
        a = self.args
        name = f"{a.durable}-{part.number}"
        config: dict[str, Any] = {
            "durable_name": name, "filter_subject": f"{a.prefix}.{part.number}", "ack_policy": "all",
            "ack_wait": int(a.ack_wait * jsapi.NS), "max_ack_pending": a.max_ack_pending,
            "deliver_policy": "all", "replay_policy": "instant",
        }
        existing = await self.js.consumer_info(a.stream, name)
        if part.last_seq > 0:
            # a rewind: everything after what is already in our pipe, again
            config["deliver_policy"], config["opt_start_seq"] = "by_start_sequence", part.last_seq + 1
        elif a.from_seq is not None:
            config["deliver_policy"], config["opt_start_seq"] = "by_start_sequence", a.from_seq
        elif a.since is not None:
            config["deliver_policy"], config["opt_start_time"] = "by_start_time", jsapi.rfc3339(a.since)
        elif part.resume_seq > 0:
            # the note says where the worker was: authoritative, even below the ack floor
            config["deliver_policy"], config["opt_start_seq"] = "by_start_sequence", part.resume_seq
        elif existing is not None:
            # Resume right after the last message the worker had read. Recreating the durable
            # at its ack floor redelivers the unacknowledged ones now, not after --ack-wait.
            floor = int((existing.get("ack_floor") or {}).get("stream_seq") or 0)
            if floor > 0:
                config["deliver_policy"], config["opt_start_seq"] = "by_start_sequence", floor + 1
            else:
                old = existing.get("config") or {}
                for key in ("deliver_policy", "opt_start_seq", "opt_start_time"):
                    if old.get(key):
                        config[key] = old[key]
        if existing is not None:
            await self.js.delete_consumer(a.stream, name)
        await self.js.add_consumer(a.stream, config)

    async def pull(self, part: Partition) -> None:
        while not self.stopping:
            await self._consumer_ready(part)
            part.rewind = False
            await self._stream(part)

    async def _consumer_ready(self, part: Partition) -> None:
        while True:
            try:
                await self.ensure_consumer(part)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("partition %d: consumer not ready (%s); retrying", part.number,
                            type(exc).__name__)
                await asyncio.sleep(0.5)

    def _room(self, part: Partition, consumed: int | None = None) -> bool:
        if consumed is None:
            consumed = self.pipes.consumed(part.pipe)
        return self.pipes.accepted[part.pipe] - consumed <= self.args.window

    async def _stream(self, part: Partition) -> None:
        """Deliver the partition's messages as they are stored, until a rewind or the end.

        About `--fetch` messages are always asked for (common.jspull): the server sends each
        as soon as it has it, with no round trip per message, and each is written to its pipe
        while the read is parsed; the credit is topped up only while the worker's unread
        bytes are within --window.
        """

        def on_message(msg: Any) -> bool:  # False (a rewind, the end): no more messages
            return not (part.rewind or self.stopping) and self.deliver(part, msg)

        pull = OutstandingPull(self.nc, self.args.stream, f"{self.args.durable}-{part.number}",
                               self.args.fetch, on_message, lambda: self._room(part),
                               label=f"partition {part.number}", log=log)
        part.pull = pull
        try:
            pull.start()
            await pull.done.wait()
        finally:
            pull.end()
            part.pull = None

    def rewind_all(self) -> None:
        """After a reconnect: deliveries in flight on the old connection are gone until
        --ack-wait; fetch everything after what is in our pipes again, now."""
        for part in self.parts:
            part.rewind = True
            if part.pull is not None:
                part.pull.end()

    def deliver(self, part: Partition, msg: Any) -> bool:
        """Write one JetStream message's new bytes to its pipe; False: a gap, rewind."""
        seq = jsfeed.stream_sequence(msg.reply)
        if seq <= part.last_seq:
            if seq <= part.acked:  # our ack was lost (a disconnect): the worker had read it
                self._ack(msg)
            return True  # else a redelivery of a message still in the pipe: acked in order later
        data = msg.data or b""
        headers = msg.headers
        origin = jsfeed.parse_origin((headers or {}).get(jsfeed.MSG_ID))
        skip = 0
        if seq < part.resume_seq:
            skip = len(data)
        elif seq == part.resume_seq:
            skip = jsfeed.boundary_before(data, part.resume_skip)  # a partly read message: whole again
        start = -1
        epoch = part.epoch
        if origin is not None:
            start = origin.offset
            if origin.epoch == part.epoch and part.origin_end >= 0:
                if start > part.origin_end and part.rewound_at == part.last_seq:
                    part.gaps += 1  # fetched again and still missing: gone from the stream
                    log.error("partition %d: seq %d starts %d bytes after the last one: those bytes "
                              "are not in the stream (retention?)", part.number, seq,
                              start - part.origin_end)
                elif start > part.origin_end:
                    # a delivery lost in flight (a reconnect, a cluster node lost): fetch again
                    part.rewound_at = part.last_seq
                    part.rewinds += 1
                    part.rewind = True
                    log.warning("partition %d: seq %d starts %d bytes after the last one; fetching "
                                "again from seq %d", part.number, seq, start - part.origin_end,
                                part.last_seq + 1)
                    return False
                elif start < part.origin_end:
                    skip = max(skip, min(len(data), jsfeed.boundary_from(data, part.origin_end - start)))
            epoch = origin.epoch
        if skip:
            part.skipped_bytes += skip
        body = data[skip:] if skip else data
        count = jsfeed.trusted_count(headers) if origin is not None and not skip else -1
        lens: Any
        if count >= 0:  # the bridge's: whole messages by construction, walked only for a resync
            lens = jsfeed.FramedLengths(body)
        else:
            lens = jsfeed.message_lengths(body, self.args.max_message)
            count = len(lens)
        pipe_start = self.pipes.accepted[part.pipe]
        if body:
            blocked = self.pipes.submit([(part.pipe, [Chunk(body, lens, jsfeed.OVERHEAD)])])
            for pipe in blocked:
                self._watch(pipe)
        part.last_seq = seq
        part.messages += count
        part.bytes += len(body)
        if origin is not None:
            part.epoch = epoch
            part.origin_end = start + len(data)
        part.pending.append(Delivered(msg, seq, pipe_start, self.pipes.accepted[part.pipe], skip, epoch,
                                      start))
        return True

    # -- writing and acknowledging ------------------------------------------------------------

    def _watch(self, pipe: int) -> None:
        if pipe in self._watching:
            return
        self._watching.add(pipe)
        asyncio.get_running_loop().add_writer(self.pipes.write_fds[pipe], self._flush, pipe)

    def _flush(self, pipe: int) -> None:
        if self.pipes.flush(pipe):
            asyncio.get_running_loop().remove_writer(self.pipes.write_fds[pipe])
            self._watching.discard(pipe)

    def redeliver_partly_read(self) -> None:
        """After the worker died, before the next one starts: on every pipe where the dead
        worker had read part of a message, write that message again, whole, then everything
        after it.

        The message is still unacknowledged, so its bytes are at hand (`Delivered.msg`). A pipe
        is FIFO, so what it still holds is taken out (with lb's backlog behind it) and written
        again after the message's start: the dead worker never got the message whole, so it
        cannot have handled it, and what it had read entirely is not sent again. Call only
        when no process but lb-remote holds the read ends. A pipe whose accounting does not
        match what is pending is left to lb's resync (the rest of the message dropped).
        """
        for part in self.parts:
            pipe = part.pipe
            consumed = self.pipes.consumed(pipe)
            pending = part.pending
            index = next((i for i, d in enumerate(pending) if d.pipe_end > consumed), None)
            if index is None:
                continue  # the worker had read all of it
            head = pending[index]
            body = (head.msg.data or b"")[head.skip:]
            inside = consumed - head.pipe_start
            start = jsfeed.boundary_before(body, inside)
            if start == inside:
                continue  # on a boundary: nothing partly read
            if pending[-1].pipe_end != self.pipes.accepted[pipe] or inside < 0:
                log.error("pipe %d: pending messages do not cover the pipe; leaving it to resync", pipe)
                continue
            _take_back_unread(self.pipes, pipe)
            head.skip += start  # the message's first byte: read before by a worker now dead
            offset = self.pipes.accepted[pipe]
            chunks = []
            for i in range(index, len(pending)):
                d = pending[i]
                data = (d.msg.data or b"")[d.skip:]
                d.pipe_start, d.pipe_end = offset, offset + len(data)
                offset = d.pipe_end
                if data:
                    chunks.append(Chunk(data, jsfeed.FramedLengths(data), jsfeed.OVERHEAD))
            if chunks and self.pipes.submit([(pipe, chunks)]):
                self._watch(pipe)
            self.resent_messages += 1
            self.resent_bytes += inside - start
            log.warning("pipe %d: the worker died %d bytes into a message (seq %d); writing it whole "
                        "again for the next worker, %d bytes from its start", pipe, inside - start,
                        head.seq, offset - head.pipe_start)

    def _ack(self, msg: Any) -> None:
        """AckPolicy.ALL: one ack covers every earlier message of the partition. Disconnected,
        it is not sent: the ack floor lags, the progress note holds."""
        if self.nc is None:
            return
        try:
            self.nc.publish(msg.reply, ACK)
        except ConnectionError as exc:
            log.debug("ack not sent: %s", exc)

    async def acknowledge(self, final: bool = False) -> None:
        """Note the worker's read position; ack, in order, what it has read entirely (at most
        every ACK_INTERVAL per partition, or when half of --max-ack-pending is waiting)."""
        now = time.monotonic()
        pipes = self.pipes
        for part in self.parts:
            if not part.pending and not part.unacked and part.noted == part.idle_note:
                # nothing written that the worker has not read, nothing to note or ack: no
                # system call (most partitions, most ticks, on a quiet feed)
                if part.pull is not None:
                    part.pull.tick(now, True)  # all read: room
                continue
            consumed = pipes.consumed(part.pipe)
            done = []
            while part.pending and part.pending[0].pipe_end <= consumed:
                done.append(part.pending.popleft())
            if part.pending:
                head = part.pending[0]
                inside = head.skip + max(0, consumed - head.pipe_start)
                origin = head.origin + inside if head.origin >= 0 else -1
                note = (head.seq, inside, origin, head.epoch)
            elif done:
                last = done[-1]
                end = last.origin + len(last.msg.data or b"") if last.origin >= 0 else -1
                note = (last.seq + 1, 0, end, last.epoch)
            else:
                note = part.noted
            if note != part.noted:
                self.progress.write(part.pipe, *note)
                part.noted = note
            part.unacked.extend(done)
            if not part.pending:
                part.idle_note = part.noted
            if part.unacked and (final or now - part.acked_at >= ACK_INTERVAL
                                 or len(part.unacked) >= self.args.max_ack_pending // 2):
                # AckPolicy.ALL: one ack covers every earlier message of the partition. Acks
                # only move the server's ack floor (what a new consumer starts from, what is
                # redelivered after --ack-wait); where the worker is, is the note above.
                last = part.unacked[-1]
                part.unacked.clear()
                part.acked_at = now
                part.acked = last.seq  # read by the worker, whether or not the ack gets through
                self._ack(last.msg)
            if part.pull is not None:
                # the worker may have made room: top the pull requests up; a silent server is
                # asked again
                part.pull.tick(now, self._room(part, consumed))

    async def ticker(self) -> None:
        last_stats = 0.0
        while True:
            await self.acknowledge()
            now = time.monotonic()
            if self.args.stats_file and now - last_stats >= self.args.stats_interval:
                write_json_atomic(self.args.stats_file, self.snapshot())
                last_stats = now
            await asyncio.sleep(TICK)

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "worker_pid": self.worker_pid, "worker_restarts": self.worker_restarts,
            "messages": sum(p.messages for p in self.parts),
            "bytes": sum(p.bytes for p in self.parts),
            "consumed": sum(self.pipes.consumed(p.pipe) for p in self.parts) if self.pipes.read_fds else None,
            "skipped_bytes": sum(p.skipped_bytes for p in self.parts),
            "gaps": sum(p.gaps for p in self.parts),
            "rewinds": sum(p.rewinds for p in self.parts),
            "discarded_bytes": self.pipes.discarded_bytes,
            "resent_messages": self.resent_messages,
            "resent_bytes": self.resent_bytes,
            "backlog_bytes": self.pipes.total_backlog,
            "partitions": {str(p.number): {"messages": p.messages, "bytes": p.bytes, "last_seq": p.last_seq,
                                           "acked_seq": p.acked} for p in self.parts},
        }

    # -- the worker (as lb: balancer/app.py) --------------------------------------------------

    def start_worker(self) -> None:
        a = self.args
        self.worker_pid = spawn(WorkerSpec(a.exe, a.args, a.workdir, self.pipes.read_fds))
        self.worker_started = time.monotonic()
        self._worker_gone.clear()
        log.info("worker %d started: %s (%d pipes)", self.worker_pid, a.exe, len(self.parts))
        if a.ready_file:
            write_json_atomic(a.ready_file, {"pid": os.getpid(), "worker_pid": self.worker_pid})

    def on_sigchld(self) -> None:
        for pid, status in reap_children():
            if pid != self.worker_pid:
                continue
            how = describe_status(status)
            self.worker_pid = 0
            self._worker_gone.set()
            if self.stopping:
                log.info("worker %d %s", pid, how)
                continue
            log.warning("worker %d %s; re-forking it on the same pipes", pid, how)
            self._restart = asyncio.ensure_future(self._restart_worker(pid))

    async def _restart_worker(self, pgid: int) -> None:
        lived = time.monotonic() - self.worker_started
        await self._end_group(pgid)
        self.redeliver_partly_read()
        for d in self.pipes.resync():
            log.warning("pipe %d: discarded %d bytes, the rest of the message the dead worker had "
                        "partly read", d.pipe, d.bytes)
        if lived < QUICK_DEATH:
            self.backoff = min(BACKOFF_MAX, max(0.5, self.backoff * 2))
            await asyncio.sleep(self.backoff)
        else:
            self.backoff = 0.0
        while not self.stopping:
            try:
                self.start_worker()
                self.worker_restarts += 1
                return
            except (WorkerStartError, OSError) as exc:
                self.backoff = min(BACKOFF_MAX, max(0.5, self.backoff * 2))
                log.error("%s; retrying in %.1f s", exc, self.backoff)
                await asyncio.sleep(self.backoff)

    async def _end_group(self, pgid: int) -> None:
        kill_group(pgid)
        deadline = time.monotonic() + GROUP_EXIT_WAIT
        while group_alive(pgid) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            self.on_sigchld()

    # -- the whole -------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        become_subreaper()
        loop.add_signal_handler(signal.SIGCHLD, self.on_sigchld)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.load_progress()
        try:
            self.start_worker()
        except WorkerStartError as exc:
            log.error("%s", exc)
            return EXIT_USAGE
        failed: list[BaseException] = []

        def broken(error: BaseException) -> None:
            # delivering a message failed: a bug, or a message no bridge writes; lb-remote must
            # not go on without it (nor take it again and again from a redelivery)
            if self.stopping:
                return
            log.error("internal error, stopping: %r", error, exc_info=error)
            failed.append(error)
            self.stopping = True
            stop.set()

        self.nc = natsconn.client(self.args.nats_options, f"lb-remote {self.args.durable}",
                                  on_reconnect=self.rewind_all, on_handler_error=broken)
        connecting = asyncio.ensure_future(self.nc.connect())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([connecting, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():  # stopped while the server could not be reached
            connecting.cancel()
            self.stopping = True
            await self.shutdown()
            return 0
        stopped.cancel()
        connecting.result()
        self.js = jsapi.JetStream(self.nc)
        tasks = [asyncio.ensure_future(self.pull(p)) for p in self.parts]
        tasks.append(asyncio.ensure_future(self.ticker()))

        def ended(task: asyncio.Future[None]) -> None:
            # a partition's loop or the ticker never ends by itself: one that does is a bug,
            # and lb-remote must not go on silently without that partition
            if task.cancelled() or self.stopping:
                return
            error = task.exception()
            log.error("internal error, stopping: %r", error, exc_info=error)
            failed.append(error or RuntimeError("a task ended"))
            stop.set()

        for task in tasks:
            task.add_done_callback(ended)
        await stop.wait()
        self.stopping = True
        tasks[-1].cancel()
        for task in tasks[:-1]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.shutdown()
        return 1 if failed else 0

    async def shutdown(self) -> None:
        deadline = time.monotonic() + self.args.shutdown_timeout
        while self.pipes.total_backlog and self.worker_pid and time.monotonic() < deadline:
            await self.acknowledge()
            await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        for pipe in self._watching:
            loop.remove_writer(self.pipes.write_fds[pipe])
        self._watching.clear()
        self.pipes.close_write_ends()
        pid = self.worker_pid
        if pid:
            try:
                await asyncio.wait_for(self._worker_gone.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.error("worker %d did not exit after EOF; terminating it", pid)
                kill_group(pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(self._worker_gone.wait(), 5.0)
                except TimeoutError:
                    kill_group(pid, signal.SIGKILL)
            await self._end_group(pid)
        if self._restart is not None:
            self._restart.cancel()
        await self.acknowledge(final=True)
        try:
            await self.nc.flush(timeout=2)
        except Exception:  # disconnected: the acks wait for the next lb-remote (the note holds)
            pass
        if self.args.stats_file:
            write_json_atomic(self.args.stats_file, self.snapshot())
        await self.nc.close()


def _take_back_unread(pipes: PipeSet, pipe: int) -> None:
    """Empty a pipe and its userspace backlog, as if the reader had consumed it all (the
    caller writes those bytes again). Only PipeSet's public counters are touched: afterwards
    written == accepted == consumed, and the recorded message sizes before that are moot."""
    unread = unread_bytes(pipes.read_fds[pipe])
    while unread:
        data = os.read(pipes.read_fds[pipe], min(unread, 1 << 20))
        if not data:
            raise OSError(f"pipe {pipe}: EOF while taking back {unread} unread bytes")
        unread -= len(data)
    pipes.written[pipe] += pipes.backlog_bytes[pipe]
    pipes.backlog[pipe].clear()
    pipes.backlog_bytes[pipe] = 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lb-remote", description=__doc__.split("\n\n")[0])
    add_version_option(p)
    natsconn.add_arguments(p)
    p.add_argument("--stream", required=True)
    p.add_argument("--prefix", default="trades", help="subject prefix (default trades)")
    p.add_argument("--partitions", required=True, type=jsfeed.parse_partitions, metavar="LIST",
                   help="partitions to read, e.g. 0-15 or 0-3,8; pipe i is the i-th")
    p.add_argument("--durable", default="lb-remote", help="durable consumer prefix (default lb-remote)")
    replay = p.add_mutually_exclusive_group()
    replay.add_argument("--since", type=time_arg, metavar="TIME",
                        help="replay from TIME (ISO 8601 or Unix seconds)")
    replay.add_argument("--from-seq", type=int, metavar="N", help="replay from stream sequence N")
    p.add_argument("--pipe-size", type=size, default=1 << 20, metavar="SIZE")
    p.add_argument("--window", type=size, default=4 << 20, metavar="SIZE",
                   help="per partition, bytes fetched and not yet read by the worker at most (default 4 MiB)")
    p.add_argument("--fetch", type=int, default=32, metavar="N",
                   help="messages asked for ahead, per partition (default 32)")
    p.add_argument("--ack-wait", type=positive_duration, default=300.0, metavar="DURATION")
    p.add_argument("--max-ack-pending", type=int, default=1024)
    p.add_argument("--max-message", type=size, default=16 << 20, metavar="SIZE")
    p.add_argument("--state", metavar="PATH",
                   help="progress file (default WORKDIR/.lb-remote-STREAM-DURABLE.state)")
    p.add_argument("--stats-file", metavar="PATH")
    p.add_argument("--stats-interval", type=positive_duration, default=0.5, metavar="DURATION")
    p.add_argument("--ready-file", metavar="PATH")
    p.add_argument("--shutdown-timeout", type=positive_duration, default=10.0, metavar="DURATION")
    p.add_argument("workdir", metavar="WORKDIR")
    p.add_argument("exe", metavar="EXE")
    p.add_argument("args", metavar="ARGS", nargs="*",
                   help="the worker's arguments, all passed as given (-- included)")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="lb-remote: %(message)s", stream=sys.stderr)
    try:
        p = parser()
        own, worker_args = split_argv(p, sys.argv[1:] if argv is None else argv, positionals=2)
        args = p.parse_args(own)
        args.args = worker_args
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    try:
        args.exe = resolve_executable(args.exe, args.workdir)
        args.nats_options = natsconn.options_from(args)
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    args.workdir = os.path.abspath(args.workdir)
    args.state = args.state or os.path.join(args.workdir, f".lb-remote-{args.stream}-{args.durable}.state")
    try:
        return asyncio.run(Remote(args).run())
    except OSError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
