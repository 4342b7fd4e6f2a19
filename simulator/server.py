"""The simulator process: listener, connection handler, feed, faults, stats, shutdown."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import ssl
import sys
import time
from typing import Any

import orjson
from websockets.asyncio.server import Server, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from common.atomicfile import write_atomically
from simulator import observe, protocol
from simulator.config import Settings
from simulator.connection import Client, SimConnection
from simulator.faults import FaultInjector
from simulator.feed import Feed
from simulator.ledger import RunLedger
from simulator.market import SyntheticMarket
from simulator.pacing import ConstantRate, FrameClock, OpenProfile, Schedule
from simulator.replay import ReplaySource
from simulator.symbols import universe
from simulator.units import format_rate

PATH = "/stocks"
PROGRAM = "simulate"


def url_host(host: str) -> str:
    if host in ("127.0.0.1", "localhost", "0.0.0.0", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def schedule_for(settings: Settings) -> Schedule | None:
    if settings.rate is None:
        return None
    if settings.profile == "open":
        return OpenProfile(settings.rate, settings.profile_period)
    return ConstantRate(settings.rate)


class Listener:
    """The listening socket; ``refuse`` closes it for a while (an outage), same port after."""

    def __init__(self, app: Simulator) -> None:
        self.app = app
        self.port = app.settings.port
        self.server: Server | None = None
        self.servers: list[Server] = []  # every one ever opened: they own their handler tasks
        self.closed_until = 0.0
        self.reopener: asyncio.Task[None] | None = None

    async def open(self) -> None:
        host = self.app.settings.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, self.port), family=family, backlog=128)
        self.port = sock.getsockname()[1]
        self.server = await serve(
            self.app.handle, sock=sock, ssl=self.app.ssl_context, compression=None,
            process_request=self.app.check_path, ping_interval=None,
            close_timeout=self.app.settings.close_timeout, max_size=2**20,
            write_limit=self.app.settings.write_limit, create_connection=SimConnection,
            server_header=None)
        self.servers.append(self.server)

    def close(self) -> None:
        if self.server is not None:
            self.server.server.close()  # stop accepting; open connections live on
            self.server = None

    def refuse(self, seconds: float) -> None:
        """Close the port now and reopen it ``seconds`` after the last call (outages merge)."""
        loop = asyncio.get_running_loop()
        self.closed_until = max(self.closed_until, loop.time() + seconds)
        self.close()
        if self.reopener is None or self.reopener.done():
            self.reopener = loop.create_task(self._reopen())

    async def _reopen(self) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < self.closed_until:
            await asyncio.sleep(self.closed_until - loop.time())
        while not self.app.stopping.is_set():
            try:
                await self.open()
                self.app.log(f"port {self.port} open again")
                return
            except OSError as exc:
                self.app.log(f"cannot reopen port {self.port} yet: {exc}")
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.close()
        if self.reopener is not None:
            self.reopener.cancel()


class Simulator:
    def __init__(self, settings: Settings, ssl_context: ssl.SSLContext | None,
                 cafile: str | None) -> None:
        self.settings = settings
        self.ssl_context = ssl_context
        self.cafile = cafile
        self.ledger = RunLedger(settings.seed, settings.summary(), per_symbol=bool(settings.ledger))
        self.clients: dict[int, Client] = {}
        self.rng = random.Random(settings.seed ^ 0x5EED)
        self.exit_code = 0
        self.end_reason = ""
        self.source = self._source()

    def _source(self) -> SyntheticMarket | ReplaySource:
        s = self.settings
        if s.replay is not None:
            return ReplaySource(s.replay, loop=s.loop, stamped=s.stamp_ids,
                                file_format=s.replay_format)
        return SyntheticMarket(universe(s.symbols), s.seed, s.batch, s.tape_size, s.stamp_ids)

    # -- logging -----------------------------------------------------------------------

    def log(self, message: str, always: bool = False) -> None:
        if always or not self.settings.quiet:
            print(f"{PROGRAM}: {message}", file=sys.stderr, flush=True)

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.listener = Listener(self)
        clock = None
        if not (self.settings.replay is not None and self.settings.speed is not None):
            clock = FrameClock(schedule_for(self.settings), self.settings.batch,
                               self.settings.clock_start_ms)
        self.feed = Feed(self.source, clock, self.settings.batch, self.settings.trades,
                         self.settings.stamp_ids, self.settings.max_lag, self.settings.speed,
                         self.request_stop)
        metrics = None
        if self.settings.metrics is not None:
            try:
                metrics = await observe.serve_metrics(self, *self.settings.metrics)
            except OSError as exc:
                self.log(f"--metrics {self.settings.metrics[0]}:{self.settings.metrics[1]}: {exc}",
                         always=True)
                return 2
        await self.listener.open()
        self.announce()
        self.started = loop.time()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        tasks = [loop.create_task(self.feed.run())]
        injector = None
        if self.settings.drop_every:
            injector = FaultInjector(self.settings, self.rng, clients=self.clients, feed=self.feed,
                                     ledger=self.ledger, refuse=self.listener.refuse, log=self.log)
            tasks.append(loop.create_task(injector.run()))
        if self.settings.stats_interval > 0:
            tasks.append(loop.create_task(self.stats_loop()))
        if self.settings.stats_file:
            tasks.append(loop.create_task(observe.write_stats(self, self.settings.stats_file)))
        if self.settings.duration is not None:
            loop.call_later(self.settings.duration, self.request_stop, "duration")
        await self.stopping.wait()
        self.feed.stop()
        if injector is not None:
            await injector.stop()
        for task in tasks:
            task.cancel()
        await self.shutdown()
        if self.settings.stats_file:
            write_atomically(self.settings.stats_file, orjson.dumps(observe.snapshot(self)))
        if metrics is not None:
            metrics.close()
        return self.exit_code

    def announce(self) -> None:
        scheme = "wss" if self.ssl_context is not None else "ws"
        self.url = f"{scheme}://{url_host(self.settings.host)}:{self.listener.port}{PATH}"
        if self.settings.ready_file:
            ready = {"url": self.url, "cafile": self.cafile, "pid": os.getpid()}
            write_atomically(self.settings.ready_file, orjson.dumps(ready))
        print(f"{PROGRAM}: serving {self.url}", flush=True)
        if self.cafile:
            print(f"{PROGRAM}: CA file {self.cafile} (for lb --cafile)", flush=True)
        s = self.settings
        if s.replay is not None:
            pace = f"{s.speed:g}x recorded pace" if s.speed else format_rate(s.rate)
            self.log(f"replaying {s.replay} at {pace}, up to {s.batch} trades/frame")
        else:
            profile = f" ({s.profile} profile)" if s.profile != "flat" else ""
            self.log(f"market: {s.symbols} symbols, seed {s.seed}, {format_rate(s.rate)}{profile}, "
                     f"{s.batch} trades/frame")

    def request_stop(self, why: str) -> None:
        if not self.stopping.is_set():
            self.end_reason = why
            if why.startswith("error:"):
                self.log(why[len("error:"):], always=True)
                self.exit_code = 2
            self.stopping.set()

    def _on_signal(self, sig: int) -> None:
        if self.stopping.is_set():
            self.log(f"{signal.Signals(sig).name} again: exiting now", always=True)
            self.ledger.ended = time.time()
            self.write_ledger()
            os._exit(128 + sig)
        self.request_stop(signal.Signals(sig).name)

    async def shutdown(self) -> None:
        self.listener.stop()
        handlers = [c.handler for c in self.clients.values() if c.handler is not None]
        await asyncio.gather(*(self.close_for_shutdown(c) for c in list(self.clients.values())),
                             return_exceptions=True)
        if handlers:
            bound = self.settings.drain_timeout + self.settings.close_timeout + 1
            await asyncio.wait(handlers, timeout=bound)
        self.ledger.ended = time.time()
        self.write_ledger()
        self.log(self.summary(), always=True)

    async def close_for_shutdown(self, client: Client) -> None:
        if client.faulted or client.closing:  # nothing more for it: no need to wait on its peer
            client.transport.abort()
            return
        client.end_reason = client.end_reason or "server_shutdown"
        await self.close_client(client, 1001, "server shutdown")

    def summary(self) -> str:
        totals = self.ledger.totals()
        seconds = time.time() - self.ledger.started
        stats = self.feed.stats
        rate = stats.rate()
        faults = ", ".join(f"{k}={n}" for k, n in sorted(totals["faults"].items())) or "none"
        ledger = f"; ledger {self.settings.ledger}" if self.settings.ledger else ""
        return (f"done ({self.end_reason}) after {seconds:.1f}s: {stats.trades} trades in "
                f"{stats.frames} frames ({format_rate(rate)} from the first to the last), "
                f"{totals['trades_sent']} sent whole "
                f"and {totals['trades_partial']} partial over {totals['connections']} "
                f"connection(s); faults: {faults}{ledger}")

    def write_ledger(self) -> None:
        if self.settings.ledger:
            self.ledger.feed = self.feed.stats.to_json()
            self.ledger.write(self.settings.ledger)

    async def stats_loop(self) -> None:
        interval = self.settings.stats_interval
        last = self.feed.stats.trades, self.feed.stats.frames, self.feed.stats.bytes
        last_cpu = os.times()
        while True:
            await asyncio.sleep(interval)
            s = self.feed.stats
            trades, frames, nbytes = s.trades - last[0], s.frames - last[1], s.bytes - last[2]
            last = s.trades, s.frames, s.bytes
            cpu = os.times()
            busy = (cpu.user - last_cpu.user + cpu.system - last_cpu.system) / interval
            last_cpu = cpu
            rate = trades / interval
            target = f" (target {format_rate(self.settings.rate)})" if self.settings.rate else ""
            behind = ""
            if s.lag > 0.05 or s.lag_resets:
                behind = (f", behind {s.lag * 1000:.0f}ms, gave up {s.dropped_lag:.1f}s of "
                          f"backlog {s.lag_resets} time(s): not keeping up")
            totals = self.ledger.totals()
            elapsed = asyncio.get_running_loop().time() - self.started
            self.log(f"{elapsed:.0f}s clients={len(self.clients)} "
                     f"receiving={len(self.feed.clients)} {format_rate(rate)}{target} "
                     f"frames/s={frames / interval:.0f} "
                     f"MB/s={nbytes / interval / 1e6:.1f} cpu={busy * 100:.0f}% "
                     f"sent={s.trades} partial={totals['trades_partial']}{behind}")

    # -- connections -------------------------------------------------------------------

    def check_path(self, connection: Any, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] != PATH:
            return connection.respond(404, f"Not Found: the feed is at {PATH}\n")
        return None

    async def handle(self, ws: SimConnection) -> None:
        record = self.ledger.open_connection(format_peer(ws.remote_address))
        ssl_object = ws.transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            record.tls = {"version": ssl_object.version(), "cipher": ssl_object.cipher()[0]}
        client = Client(ws, record, self.ledger, protocol.PolygonSession(self.settings.keys))
        client.handler = asyncio.current_task()
        ws.on_resume = self.feed.wake
        self.clients[client.id] = client
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.settings.auth_timeout, self._spawn_auth_timeout, client)
        reader = loop.create_task(self.read_loop(client))
        if self.settings.ping_interval:
            client.pinger = loop.create_task(self.ping_loop(client))
        try:
            await client.send_statuses(client.session.opened())
            await ws.wait_closed()
        except ConnectionClosed:
            await ws.wait_closed()
        finally:
            timer.cancel()
            reader.cancel()
            if client.pinger is not None:
                client.pinger.cancel()
            self.feed.remove(client)
            client.finish()
            del self.clients[client.id]
            self.write_ledger()
            r = client.record
            self.log(f"connection {r.id} from {r.peer} ended ({r.end_reason}): {r.trades_sent} "
                     f"trades sent whole in {r.frames_sent} frames, {r.trades_partial} partial")

    async def read_loop(self, client: Client) -> None:
        try:
            async for message in client.ws:
                await self.apply(client, client.session.receive(message))
        except ConnectionClosed:
            pass

    async def apply(self, client: Client, reply: protocol.Reply) -> None:
        if reply.authenticated_key is not None:
            client.record.key = reply.authenticated_key
            self.enforce_limit(client)
        await client.send_statuses(reply.frames)
        if reply.close is not None:
            client.end_reason = reply.close.end_reason
            await self.close_client(client, reply.close.code, reply.close.reason)
        if reply.subscriptions_changed:
            self.feed.update(client)

    def enforce_limit(self, newcomer: Client) -> None:
        """Evict the oldest connections with the newcomer's key beyond --max-connections."""
        same = [c for c in self.clients.values() if c is not newcomer and not c.closing
                and not c.faulted and c.session.key == newcomer.session.key]
        excess = len(same) + 1 - self.settings.max_connections
        for old in same[:max(0, excess)]:
            old.end_reason = "evicted"
            old.closing = True  # marked at once, so that a second newcomer does not pick it
            self.feed.remove(old)
            asyncio.get_running_loop().create_task(self.evict(old))

    async def evict(self, client: Client) -> None:
        await client.drain(self.settings.drain_timeout)
        try:
            await client.send_statuses([protocol.MAX_CONNECTIONS])
            await client.ws.close(protocol.POLICY_VIOLATION, "max connections")
        except ConnectionClosed:
            pass

    async def close_client(self, client: Client, code: int, reason: str) -> None:
        client.closing = True
        self.feed.remove(client)
        await client.drain(self.settings.drain_timeout)
        try:
            await client.ws.close(code, reason)
        except ConnectionClosed:
            pass

    def _spawn_auth_timeout(self, client: Client) -> None:
        reply = client.session.auth_timed_out()
        if reply.close is not None:
            asyncio.get_running_loop().create_task(self.apply(client, reply))

    async def ping_loop(self, client: Client) -> None:
        interval, timeout = self.settings.ping_interval, self.settings.ping_timeout
        assert interval is not None
        try:
            while True:
                await asyncio.sleep(interval)
                pong = await client.ws.ping()
                try:
                    await asyncio.wait_for(pong, timeout)
                except TimeoutError:
                    client.end_reason = client.end_reason or "error:keepalive ping timeout"
                    await self.close_client(client, 1011, "keepalive ping timeout")
                    return
        except ConnectionClosed:
            pass


def format_peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def run(settings: Settings, ssl_context: ssl.SSLContext | None, cafile: str | None) -> int:
    simulator = Simulator(settings, ssl_context, cafile)
    return asyncio.run(simulator.run())
