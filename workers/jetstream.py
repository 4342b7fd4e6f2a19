"""Reading the feed straight from JetStream, for workers that prefer to consume directly.

    async with JetStreamReader(NatsOptions(["nats://h:4222"]), "FEED", [0, 1, 2, 3]) as reader:
        while True:
            for partition, payloads in await reader.read_batch():
                ...

Each partition `k` is subject `<prefix>.<k>` (the bridge's), read through a pull consumer:
durable (`durable="name"`: consumer `name-<k>`, resuming after what was acknowledged) or
ephemeral (default; from the start, `from_seq` or `since`). Pull requests for about `batch`
messages are kept outstanding on every partition (common.jspull), so each message arrives
as soon as it is stored and `read_batch()` hands out what every partition has, waiting only
while none has anything. Payloads are the pipe
protocol's, byte-identical. A batch is acknowledged when the next `read_batch()` is called
(or at `close()`): after a crash the batch in hand comes again, nothing is lost. Copies of a
batch (a republish past the stream's duplicate window, a redelivery) are cut off by the
bridge's offsets in `Nats-Msg-Id`.

`python -m workers.jetstream --stream S --partitions 0-7 --handler verify --report r.json`
runs any named handler (or `module:name`) over the stream instead of pipes; `--idle N` ends
the run after N seconds without a message (a backtest over what the stream holds).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from common import jsapi, natsconn
from common.jspull import OutstandingPull
from common.units import duration, positive_duration, size, time_arg
from common.version import add_version_option
from workers import jsproto
from workers.framing import MAX_MESSAGE, split_frames
from workers.handler import HandlerContext
from workers.registry import HandlerNotFound, load_handler

log = logging.getLogger("workers.jetstream")


@dataclass
class _Partition:
    number: int
    pull: OutstandingPull | None = None
    arrived: list[Any] = field(default_factory=list)  # delivered, not yet handed out
    epoch: str = ""
    end: int = -1  # the bridge's offset after the last byte handed out
    last_seq: int = 0


class JetStreamReader:
    def __init__(self, options: natsconn.NatsOptions, stream: str, partitions: list[int], *,
                 prefix: str = "trades", durable: str | None = None, from_seq: int | None = None,
                 since: datetime.datetime | None = None, batch: int = 32,
                 max_message: int = MAX_MESSAGE) -> None:
        self.options = options
        self.stream = stream
        self.prefix = jsproto.check_prefix(prefix)
        self.parts = [_Partition(k) for k in partitions]
        self.durable = durable
        self.from_seq = from_seq
        self.since = since
        self.batch = batch
        self.max_message = max_message
        self.nc: Any = None
        self.js: jsapi.JetStream | None = None
        self._unacked: dict[int, tuple[int, Any]] = {}  # partition: (seq, msg) of its last handed out
        self._arrival = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self.messages = 0
        self.duplicates = 0

    async def __aenter__(self) -> JetStreamReader:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        self.nc = await natsconn.connect(self.options, "workers.jetstream")
        self.js = js = jsapi.JetStream(self.nc)
        for part in self.parts:
            config: dict[str, Any] = {
                "filter_subject": jsproto.subject(self.prefix, part.number), "ack_policy": "all",
                "ack_wait": 300 * jsapi.NS, "deliver_policy": "all", "replay_policy": "instant",
            }
            if self.from_seq is not None:
                config["deliver_policy"], config["opt_start_seq"] = "by_start_sequence", self.from_seq
            elif self.since is not None:
                config["deliver_policy"] = "by_start_time"
                config["opt_start_time"] = jsapi.rfc3339(self.since)
            if self.durable is None:
                config["inactive_threshold"] = 60 * jsapi.NS
                info = await js.add_consumer(self.stream, config)
                self._start(part, str(info["name"]))
                continue
            name = config["durable_name"] = f"{self.durable}-{part.number}"
            existing = await js.consumer_info(self.stream, name)
            if existing is not None:
                floor = int((existing.get("ack_floor") or {}).get("stream_seq") or 0)
                if self.from_seq is None and self.since is None and floor > 0:
                    config["deliver_policy"], config["opt_start_seq"] = "by_start_sequence", floor + 1
                await js.delete_consumer(self.stream, name)
            await js.add_consumer(self.stream, config)
            self._start(part, name)
        self._ticker = asyncio.ensure_future(self._tick())

    def _start(self, part: _Partition, consumer: str) -> None:
        """Pull requests for about a batch kept outstanding (common.jspull), while fewer than
        a batch wait to be handed out: each message arrives as soon as it is stored."""

        def arrived(msg: Any) -> bool:
            part.arrived.append(msg)
            self._arrival.set()
            return True

        part.pull = OutstandingPull(self.nc, self.stream, consumer, self.batch, arrived,
                                    lambda: len(part.arrived) < self.batch,
                                    label=f"partition {part.number}", log=log)
        part.pull.start()

    async def _tick(self) -> None:
        """A server silent past a pull request's life is asked again."""
        while True:
            await asyncio.sleep(0.25)
            for part in self.parts:
                if part.pull is not None:
                    part.pull.tick()

    async def ack(self) -> None:
        """Acknowledge every batch handed out so far (disconnected: they come again later): one
        ack a partition, its last message's, which acknowledges all before it (ack policy
        `all`; a partition is one consumer, delivering in stream order)."""
        unacked, self._unacked = self._unacked, {}
        try:
            for _, msg in unacked.values():
                self.nc.publish(msg.reply, b"+ACK")
        except ConnectionError as exc:
            log.debug("acks not sent: %s", exc)

    async def read_batch(self, timeout: float = 1.0) -> list[tuple[int, list[bytes]]]:
        """Acknowledge the previous batch, then what has arrived on every partition (waiting up
        to `timeout` for the first message if nothing has)."""
        await self.ack()
        if not any(p.arrived for p in self.parts):
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), timeout)
            except TimeoutError:
                return []
        out = []
        for part in self.parts:
            if not part.arrived:
                continue
            msgs, part.arrived = part.arrived, []
            if part.pull is not None:
                part.pull.poke()
            payloads = self._take(part, msgs)
            if payloads:
                out.append((part.number, payloads))
        return out

    def _take(self, part: _Partition, msgs: list[Any]) -> list[bytes]:
        out: list[bytes] = []
        for msg in msgs:
            seq = jsproto.stream_sequence(msg.reply)
            if seq > self._unacked.get(part.number, (0, None))[0]:
                self._unacked[part.number] = (seq, msg)
            if seq <= part.last_seq:
                continue
            part.last_seq = seq
            data = msg.data or b""
            start = 0
            try:
                origin = jsproto.parse_msg_id((msg.headers or {}).get(jsproto.MSG_ID, ""))
            except ValueError:
                origin = None
            if origin is not None:
                if origin.epoch == part.epoch and origin.offset < part.end:
                    start = self._boundary(data, part.end - origin.offset)
                    self.duplicates += start > 0
                part.epoch, part.end = origin.epoch, origin.offset + len(data)
            payloads, stop, _ = split_frames(data, start, len(data), self.max_message)
            if stop != len(data):
                raise ValueError(f"partition {part.number} seq {seq}: not whole pipe messages "
                                 f"(stops at byte {stop} of {len(data)})")
            out.extend(payloads)
        self.messages += len(out)
        return out

    @staticmethod
    def _boundary(data: bytes, skip: int) -> int:
        pos = 0
        while pos < skip and pos < len(data):
            pos += 4 + int.from_bytes(data[pos : pos + 4], "little")
        return min(pos, len(data))

    async def close(self) -> None:
        if self.nc is None:
            return
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for part in self.parts:
            if part.pull is not None:
                part.pull.end()
        try:
            await self.ack()
            await self.nc.flush(timeout=2)
        finally:
            await self.nc.close()
            self.nc = None


async def run_handler(args: argparse.Namespace, handler_class: Any, options: natsconn.NatsOptions) -> int:
    partitions = jsproto.parse_partitions(args.partitions)
    label = f"jetstream {handler_class.name}"
    pipes = list(range(len(partitions)))
    context = HandlerContext(len(pipes), pipes, args, label, dict(args.opt))
    handler = handler_class(context)
    aggregator = handler_class.aggregator(args, label)
    index = {k: i for i, k in enumerate(partitions)}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = JetStreamReader(options, args.stream, partitions, prefix=args.prefix, durable=args.durable,
                             from_seq=args.from_seq, since=args.since, max_message=args.max_message)
    async with reader:
        last = time.monotonic()
        while not stop.is_set():
            batches = await reader.read_batch(timeout=0.5)
            for partition, payloads in batches:
                handler.on_batch(index[partition], payloads)
            now = time.monotonic()
            if batches:
                last = now
            elif args.idle and now - last >= args.idle:
                break
    aggregator.finish(aggregator.merge([handler.snapshot()]), {"duplicates_cut": reader.duplicates})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.jetstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(parser)
    natsconn.add_arguments(parser)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--prefix", default="trades")
    parser.add_argument("--partitions", required=True, metavar="LIST", help="e.g. 0-31; pipe i is the i-th")
    parser.add_argument("--durable", metavar="NAME", help="durable consumers NAME-<k> (default: ephemeral)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--from-seq", type=int, metavar="N")
    group.add_argument("--since", type=time_arg, metavar="TIME")
    parser.add_argument("--idle", type=duration, default=0, metavar="DURATION",
                        help="end after this long without a message (default: run until SIGTERM)")
    parser.add_argument("--handler", default="stats", metavar="NAME|module:name")
    parser.add_argument("--max-message", type=size, default=MAX_MESSAGE, metavar="SIZE")
    parser.add_argument("--stats-interval", "--interval", dest="interval", type=positive_duration,
                        default=1.0, metavar="DURATION", help="handler snapshot interval (default 1s)")
    parser.add_argument("--opt", type=lambda s: tuple(s.split("=", 1)), action="append", default=[])
    known, _ = parser.parse_known_args(argv)
    try:
        handler_class = load_handler(known.handler)
    except HandlerNotFound as exc:
        parser.error(str(exc))
    handler_class.add_options(parser)
    args = parser.parse_args(argv)
    try:
        options = natsconn.options_from(args)
        jsproto.parse_partitions(args.partitions)
    except ValueError as exc:
        parser.error(str(exc))
    return asyncio.run(run_handler(args, handler_class, options))


if __name__ == "__main__":
    sys.exit(main())
