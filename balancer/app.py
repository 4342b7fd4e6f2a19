"""The life of one ``lb`` process: pipes and worker first, then the reconnect loop,
status output, and an orderly shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gzip
import logging
import os
import random
import signal
import time
from typing import IO, Any

import orjson

from balancer import engine, polygon
from balancer.config import EXIT_AUTH, EXIT_OK, EXIT_USAGE, Config
from balancer.frames import FrameDecoder
from balancer.pipes import PipeSet
from balancer.router import Router
from balancer.session import Session, SessionConfig, SessionEnded
from balancer.stats import Stats, StatusLine, write_json_atomic
from balancer.supervisor import (
    WorkerSpec,
    WorkerStartError,
    become_subreaper,
    describe_status,
    group_alive,
    kill_group,
    reap_children,
    spawn,
)

log = logging.getLogger("lb")

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 5.0
# Seconds a connection must stream, from the subscription to its last whole frame, before the
# reconnect backoff resets; $LB_HEALTHY_AFTER overrides it (a test reconnecting 100 times sets 0).
HEALTHY_AFTER = float(os.environ.get("LB_HEALTHY_AFTER", "0.5"))
SHORT_LIVED_STEP = 2  # a connection that delivered but did not last: the backoff restarts at 0.5 s
RETRY_AFTER_MAX = 60.0  # the longest HTTP 429/503 Retry-After lb honours
EVICTED_WAIT = 30.0
AUTH_RETRY_WAIT = 2.0
WORKER_QUICK_DEATH = 10.0
WORKER_BACKOFF_MAX = 30.0
GROUP_EXIT_WAIT = 5.0
HOUSEKEEPING = 1.0
TRIM_AFTER_BACKLOG = 32 * 1024 * 1024


def release_free_memory() -> None:
    """malloc_trim(0): hand the heap's free pages back to the system (glibc keeps them)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class TLSUnavailable(Exception):
    pass


def choose_tls(config: Config) -> str:
    """The TLS path for this run, decided once before connecting."""
    if not config.url.tls:
        return "none"
    if config.tls == "userspace":
        return "userspace"
    try:
        from balancer import ktls

        reason = ktls.probe()
    except ImportError as exc:  # pragma: no cover - the module ships with lb
        reason = f"kernel TLS support is not available ({exc})"
    if reason is None:
        return "ktls"
    if config.tls == "ktls":
        raise TLSUnavailable(f"--tls ktls: {reason}")
    log.warning("kernel TLS unavailable, using userspace TLS: %s", reason)
    return "userspace"


class Recorder:
    """--record: every data payload, one per line."""

    def __init__(self, path: str) -> None:
        self._file: IO[bytes] = gzip.open(path, "ab") if path.endswith(".gz") else open(path, "ab")  # noqa: SIM115

    def write(self, payload: bytes) -> None:
        if b"\n" in payload or b"\r" in payload:  # pretty-printed JSON: one line per message
            payload = orjson.dumps(orjson.loads(payload))
        self._file.write(payload + b"\n")

    def close(self) -> None:
        self._file.close()


class PipeOutput:
    """Routed batches into the pipes; backlogs drained as pipes become writable; backpressure."""

    def __init__(self, app: Balancer) -> None:
        self.app = app
        self.pipes = app.pipes
        self.max_backlog = app.config.max_backlog
        self.loop = asyncio.get_running_loop()
        self._watching: set[int] = set()
        self.paused = False

    def deliver(self, batches: list[Any]) -> None:
        for pipe in self.pipes.submit(batches):
            self._watch(pipe)
        if self._watching:
            stats = self.app.stats
            stats.backlog_peak = max(stats.backlog_peak, self.pipes.total_backlog)
            if not self.paused and self.pipes.largest_backlog > self.max_backlog:
                self._pause()

    def _watch(self, pipe: int) -> None:
        if pipe not in self._watching and not self.pipes.closed:
            self._watching.add(pipe)
            self.loop.add_writer(self.pipes.write_fds[pipe], self._flush, pipe)

    def _flush(self, pipe: int) -> None:
        if self.pipes.flush(pipe):
            self._watching.discard(pipe)
            self.loop.remove_writer(self.pipes.write_fds[pipe])
        if self.paused and self.pipes.largest_backlog <= self.max_backlog // 2:
            self._resume()

    def _pause(self) -> None:
        self.paused = True
        self.app.stats.paused = True
        self.app.stats.backpressure_pauses += 1
        pipe = max(range(self.pipes.npipes), key=self.pipes.backlog_bytes.__getitem__)
        log.warning("backpressure: pipe %d holds %.1f MB unwritten (--max-backlog %.1f MB); "
                    "pausing the socket until it drains", pipe, self.pipes.backlog_bytes[pipe] / 1e6,
                    self.max_backlog / 1e6)
        if self.app.session is not None:
            self.app.session.pause_reading()

    def _resume(self) -> None:
        self.paused = False
        self.app.stats.paused = False
        log.warning("backpressure released: largest backlog %.1f MB; reading again",
                    self.pipes.largest_backlog / 1e6)
        if self.app.session is not None:
            self.app.session.resume_reading()

    def unwatch_all(self) -> None:
        for pipe in self._watching:
            self.loop.remove_writer(self.pipes.write_fds[pipe])
        self._watching.clear()

    def resync(self) -> None:
        """The worker is gone: skip the rest of any message it had started reading."""
        for d in self.pipes.resync():
            log.warning("pipe %d: discarded %d bytes, the rest of %d message the dead worker had "
                        "partly read", d.pipe, d.bytes, d.messages)


class Balancer:
    def __init__(self, config: Config, tls_mode: str) -> None:
        self.config = config
        self.tls_mode = tls_mode
        self.stats = Stats()
        self.status_line = StatusLine(self.stats)
        self.router = Router(config.npipes)
        self.decoder = FrameDecoder(max_message=config.max_message)
        self.pipes = PipeSet(config.npipes, config.pipe_size)
        self.session: Session | None = None
        self.worker_pid = 0
        self.worker_started_at = 0.0
        self.worker_backoff = 0.0
        self.stopping = False
        self.recorder = Recorder(config.record) if config.record else None
        self._backlog_since_trim = 0
        self._stop_event: asyncio.Event
        self._worker_gone: asyncio.Event
        self._restart_task: asyncio.Task[None] | None = None
        self.output: PipeOutput

    # -- the worker ----------------------------------------------------------------------

    def start_worker(self) -> None:
        c = self.config
        self.worker_pid = spawn(WorkerSpec(c.exe, c.args, c.workdir, self.pipes.read_fds))
        self.worker_started_at = time.monotonic()
        self._worker_gone.clear()
        self.stats.worker_pid = self.worker_pid
        self.stats.worker_starts += 1
        log.info("worker %d started: %s (%d pipes)", self.worker_pid, c.exe, c.npipes)
        if c.ready_file:
            write_json_atomic(c.ready_file, {"pid": os.getpid(), "worker_pid": self.worker_pid})

    def on_sigchld(self) -> None:
        for pid, status in reap_children():
            if pid != self.worker_pid:
                continue  # an orphan of the worker's, adopted by us as subreaper
            how = describe_status(status)
            self.stats.worker_exits = [*self.stats.worker_exits[-19:], how]  # the last 20
            self.worker_pid = 0
            self.stats.worker_pid = 0
            self._worker_gone.set()
            if self.stopping:
                log.info("worker %d %s", pid, how)
                continue
            log.warning("worker %d %s; re-forking it on the same pipes", pid, how)
            self._restart_task = asyncio.ensure_future(self._restart_worker(pid))

    async def _restart_worker(self, pgid: int) -> None:
        lived = time.monotonic() - self.worker_started_at
        await self._end_group(pgid)
        self.output.resync()
        if lived < WORKER_QUICK_DEATH:
            self.worker_backoff = min(WORKER_BACKOFF_MAX, max(0.5, self.worker_backoff * 2))
            log.warning("worker crash loop (it lived %.1f s): waiting %.1f s", lived, self.worker_backoff)
            await self._sleep(self.worker_backoff)
        else:
            self.worker_backoff = 0.0
        while not self.stopping:
            try:
                self.start_worker()
                self.stats.worker_restarts += 1
                return
            except (WorkerStartError, OSError) as exc:
                self.worker_backoff = min(WORKER_BACKOFF_MAX, max(0.5, self.worker_backoff * 2))
                log.error("%s; retrying in %.1f s", exc, self.worker_backoff)
                await self._sleep(self.worker_backoff)

    async def _end_group(self, pgid: int) -> None:
        """Kill what the worker forked and wait until nothing of it can still read the pipes."""
        kill_group(pgid)
        deadline = time.monotonic() + GROUP_EXIT_WAIT
        while group_alive(pgid) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            self.on_sigchld()
        if group_alive(pgid):
            log.error("processes of the dead worker's group %d survive SIGKILL; resyncing anyway", pgid)

    # -- the feed ---------------------------------------------------------------------------

    async def feed(self) -> int:
        c = self.config
        session_config = SessionConfig(
            url=c.url, key=c.key, subscribe=c.subscribe, tls_mode=self.tls_mode, cafile=c.cafile,
            ping_interval=c.ping_interval, ping_timeout=c.ping_timeout, max_message=c.max_message,
            connect_timeout=c.connect_timeout,
        )
        failures = 0  # consecutive attempts that delivered nothing
        auth_failures = 0
        # one engine for every connection, as the decoder: its scratch buffers are reused
        native = engine.NativeEngine(c.npipes) if self.stats.engine == "native" else None
        while not self.stopping:
            session = Session(session_config, self.router, self.output, self.stats, self.recorder,
                              self.decoder, native)
            self.session = session
            if self.output.paused:
                session.pause_reading()
            self.stats.connects += 1
            delay = None
            try:
                await session.run(on_streaming=self._on_streaming)
            except SessionEnded as exc:
                self._count_end(exc.cause)
                level = logging.INFO if exc.cause == "shutdown" else logging.WARNING
                log.log(level, "disconnected (%s): %s", exc.cause, exc)
                if exc.retry_after is not None:
                    delay = min(RETRY_AFTER_MAX, exc.retry_after) * random.uniform(1.0, 1.1)
                    log.info("the server asked to retry after %g s (Retry-After, honoured up to %g s)",
                             exc.retry_after, RETRY_AFTER_MAX)
            except polygon.AuthFailed as exc:
                self._count_end("auth_failed")
                auth_failures += 1
                if auth_failures > 1:
                    log.error("authentication failed: the server rejected the API key (%s)", exc)
                    return EXIT_AUTH
                log.warning("authentication failed (%s); retrying once in %.0f s", exc, AUTH_RETRY_WAIT)
                delay = AUTH_RETRY_WAIT
            except polygon.Evicted as exc:
                self._count_end("evicted")
                delay = EVICTED_WAIT + random.uniform(0, 5)
                log.error("EVICTED: another connection is using this API key (%s). Waiting %.0f s "
                          "before reconnecting, so two balancers never evict each other in a loop",
                          exc, delay)
            finally:
                self.session = None
                self.stats.connected = False
            if self.stopping:
                break
            # A connection that delivered a trade and then died at once is no proof the server is
            # healthy: the backoff resets only once it streamed HEALTHY_AFTER seconds.
            if session.delivered:
                auth_failures = 0  # the key worked
                # healthy: reconnect at once; delivered but short-lived: no more than SHORT_LIVED_STEP
                healthy = session.streamed_for() >= HEALTHY_AFTER
                failures = 0 if healthy else min(failures, SHORT_LIVED_STEP)
            if delay is None:
                delay = 0.0 if failures == 0 else min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1))
                delay *= random.uniform(0.8, 1.2)
            failures += 1
            self.stats.reconnects += 1
            if delay:
                log.info("reconnecting in %.2f s", delay)
            await self._sleep(delay)
        return EXIT_OK

    def _on_streaming(self, session: Session) -> None:
        self.stats.connected = True

    def _count_end(self, cause: str) -> None:
        self.stats.disconnects[cause] += 1

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    # -- status -------------------------------------------------------------------------------

    def refresh_stats(self) -> dict[str, Any]:
        s, r, p = self.stats, self.router, self.pipes
        s.slow_messages, s.slow_objects, s.unroutable = r.slow_messages, r.slow_objects, r.unroutable
        s.largest_backlog, s.total_backlog = p.largest_backlog, p.total_backlog
        s.pipe_size, s.pipe_writes = p.pipe_size, p.writes
        s.discarded_bytes, s.discarded_messages = p.discarded_bytes, p.discarded_messages
        snapshot = s.snapshot()
        snapshot["pipes"] = {"accepted": p.accepted, "written": p.written, "backlog": p.backlog_bytes}
        return snapshot

    def housekeeping(self) -> None:
        if not self.pipes.closed and self.worker_pid:
            self.pipes.prune()
        self._return_memory_after_backlog()
        if self.config.stats_file:
            write_json_atomic(self.config.stats_file, self.refresh_stats())

    def _return_memory_after_backlog(self) -> None:
        """A slow worker's backlog can grow to hundreds of MB (at the open, say); once it has
        drained, give the memory back to the system instead of keeping it in malloc's heap."""
        backlog = self.pipes.total_backlog
        self._backlog_since_trim = max(self._backlog_since_trim, backlog)
        if backlog == 0 and self._backlog_since_trim >= TRIM_AFTER_BACKLOG:
            self._backlog_since_trim = 0
            release_free_memory()

    async def _ticker(self, period: float, action: Any) -> None:
        while not self.stopping:
            await self._sleep(period)
            action()

    def print_status(self) -> None:
        self.refresh_stats()
        log.info("%s", self.status_line.render())

    # -- start and stop ---------------------------------------------------------------------------

    def request_stop(self, signame: str) -> None:
        if self.stopping:
            return
        log.info("%s: shutting down", signame)
        self.stopping = True
        self._stop_event.set()
        if self.session is not None:
            self.session.close()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._worker_gone = asyncio.Event()
        self.output = PipeOutput(self)
        become_subreaper()
        loop.add_signal_handler(signal.SIGCHLD, self.on_sigchld)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        log.info("%d pipes of %d bytes each", self.config.npipes, self.pipes.pipe_size)
        try:
            self.start_worker()
        except WorkerStartError as exc:
            log.error("%s", exc)
            return EXIT_USAGE
        tasks = [asyncio.ensure_future(self._ticker(HOUSEKEEPING, self.housekeeping))]
        if self.config.stats_interval > 0:
            tasks.append(asyncio.ensure_future(self._ticker(self.config.stats_interval, self.print_status)))
        try:
            code = await self.feed()
        finally:
            self.stopping = True
            self._stop_event.set()
            for task in tasks:
                task.cancel()
        await self.shutdown()
        return code

    async def shutdown(self) -> None:
        """Flush queued data (bounded), close the write ends so the worker sees EOF, wait for it."""
        deadline = time.monotonic() + self.config.shutdown_timeout
        while self.pipes.total_backlog and self.worker_pid and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.pipes.total_backlog:
            log.error("shutdown: %d bytes could not be written to the pipes in time",
                      self.pipes.total_backlog)
        self.output.unwatch_all()
        self.pipes.close_write_ends()
        pid = self.worker_pid
        if pid:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(self._worker_gone.wait(), remaining)
            except TimeoutError:
                log.error("worker %d did not exit after EOF; terminating it", pid)
                kill_group(pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(self._worker_gone.wait(), 5.0)
                except TimeoutError:
                    kill_group(pid, signal.SIGKILL)
            await self._end_group(pid)
        if self._restart_task is not None:
            self._restart_task.cancel()
        if self.recorder is not None:
            self.recorder.close()
        if self.config.stats_file:
            write_json_atomic(self.config.stats_file, self.refresh_stats())
        if self.config.stats_interval > 0:
            log.info("final: %s", self.status_line.render())


def run(config: Config) -> int:
    try:
        tls_mode = choose_tls(config)
    except TLSUnavailable as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    try:
        engine_name = engine.choose(config.engine)
    except engine.EngineUnavailable as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    log.info("data path: %s engine", engine_name)
    try:
        balancer = Balancer(config, tls_mode)
        balancer.stats.engine = engine_name
    except OSError as exc:
        log.error("cannot set up the pipes: %s", exc)
        return EXIT_USAGE
    try:
        return asyncio.run(balancer.run())
    finally:
        balancer.pipes.close()
