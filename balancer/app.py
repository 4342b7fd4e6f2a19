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
from collections.abc import Callable
from typing import IO, Any

import orjson

from balancer import engine, polygon
from balancer.causes import Cause
from balancer.config import EXIT_AUTH, EXIT_OK, EXIT_USAGE, Config, TlsMode, TlsRequest
from balancer.frames import FrameDecoder
from balancer.pipes import PipeSet
from balancer.router import Router
from balancer.session import Session, SessionConfig, SessionEnded
from balancer.stats import Stats, StatusLine
from balancer.supervisor import (
    WorkerSpec,
    WorkerStartError,
    alive,
    become_subreaper,
    descendants,
    describe_status,
    dumpable,
    group_alive,
    holding,
    kill_group,
    kill_pids,
    pipe_inodes,
    reap_children,
    spawn,
)
from common.atomicfile import write_json_atomic
from common.units import format_bytes

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
WORKER_BACKOFF_FIRST = 0.5  # a worker dying within WORKER_QUICK_DEATH: the first wait, doubled up to
WORKER_BACKOFF_MAX = 30.0
GROUP_EXIT_WAIT = 5.0
HOUSEKEEPING = 1.0
TRIM_AFTER_BACKLOG = 32 * 1024 * 1024
ABANDONED_PIPES_LIMIT = 10.0  # a worker that holds none of the pipes this long is restarted
CERT_ERROR_EVERY = 60.0  # a certificate failure that persists: one error line this often
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return 0


def release_free_memory() -> None:
    """malloc_trim(0): hand the heap's free pages back to the system (glibc keeps them)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class RepeatedFailure:
    """A failure that will not fix itself (a certificate that fails verification): the first one
    is a warning, then one error line every ``every`` seconds with the count; those between are
    DEBUG. Pure: the clock is a parameter."""

    def __init__(self, what: str, every: float = CERT_ERROR_EVERY, clock: Any = time.monotonic) -> None:
        self.what, self.every, self.clock = what, every, clock
        self._logged_at = 0.0

    def failed(self, count: int) -> tuple[int, str | None]:
        """(the level for this failure's own line, an error line to log too or None)."""
        now = self.clock()
        if count <= 1:
            self._logged_at = now
            return logging.WARNING, None
        if now - self._logged_at >= self.every:
            self._logged_at = now
            return logging.DEBUG, f"{self.what} failed {count} times in a row; still retrying"
        return logging.DEBUG, None


class TLSUnavailable(Exception):
    pass


def choose_tls(config: Config) -> TlsMode:
    """The TLS path for this run, decided once before connecting."""
    if not config.url.tls:
        return TlsMode.NONE
    if config.tls is TlsRequest.USERSPACE:
        return TlsMode.USERSPACE
    try:
        from balancer import ktls

        reason = ktls.probe()
    except ImportError as exc:  # pragma: no cover - the module ships with lb
        reason = f"kernel TLS support is not available ({exc})"
    if reason is None:
        return TlsMode.KTLS
    if config.tls is TlsRequest.KTLS:
        raise TLSUnavailable(f"--tls ktls: {reason}")
    log.warning("kernel TLS unavailable, using userspace TLS: %s", reason)
    return TlsMode.USERSPACE


class Recorder:
    """--record: every data payload, one per line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[bytes] = self._open()

    def _open(self) -> IO[bytes]:
        return gzip.open(self.path, "ab") if self.path.endswith(".gz") else open(self.path, "ab")

    def reopen(self) -> None:
        """SIGUSR2: close the file and open PATH anew (after log rotation moved it away)."""
        self._file.close()
        self._file = self._open()

    def write(self, payload: bytes) -> None:
        if b"\n" in payload or b"\r" in payload:  # pretty-printed JSON: one line per message
            payload = orjson.dumps(orjson.loads(payload))
        self._file.write(payload + b"\n")

    def close(self) -> None:
        self._file.close()


class PipeOutput:
    """Routed batches into the pipes; backlogs drained as pipes become writable; backpressure."""

    def __init__(self, pipes: PipeSet, stats: Stats, max_backlog: int, max_total: int,
                 session: Callable[[], Session | None]) -> None:
        """``session`` returns the live session (or None between connections) to pause."""
        self.pipes = pipes
        self.stats = stats
        self.session = session
        self.max_backlog = max_backlog
        self.max_total = max_total
        self.loop = asyncio.get_running_loop()
        self._watching: set[int] = set()
        self.paused = False

    def deliver(self, batches: list[Any]) -> None:
        for pipe in self.pipes.submit(batches):
            self._watch(pipe)
        if self._watching:
            stats = self.stats
            total = self.pipes.total_backlog
            stats.backlog_peak = max(stats.backlog_peak, total)
            if not self.paused and (total > self.max_total or self.pipes.largest_backlog > self.max_backlog):
                self._pause()

    def _watch(self, pipe: int) -> None:
        if pipe not in self._watching and not self.pipes.closed:
            self._watching.add(pipe)
            self.loop.add_writer(self.pipes.write_fds[pipe], self._flush, pipe)

    def _flush(self, pipe: int) -> None:
        if self.pipes.flush(pipe):
            self._watching.discard(pipe)
            self.loop.remove_writer(self.pipes.write_fds[pipe])
        if (self.paused and self.pipes.largest_backlog <= self.max_backlog // 2
                and self.pipes.total_backlog <= self.max_total // 2):
            self._resume()

    def _pause(self) -> None:
        self.paused = True
        self.stats.paused = True
        self.stats.backpressure_pauses += 1
        pipe = max(range(self.pipes.npipes), key=self.pipes.backlog_bytes.__getitem__)
        if self.pipes.largest_backlog > self.max_backlog:
            log.warning("backpressure: pipe %d holds %s unwritten (--max-backlog %s); pausing the "
                        "socket until it drains", pipe, format_bytes(self.pipes.backlog_bytes[pipe]),
                        format_bytes(self.max_backlog))
        else:
            log.warning("backpressure: the pipes hold %s unwritten (--max-backlog-total %s; pipe %d "
                        "the most, %s); pausing the socket until it drains",
                        format_bytes(self.pipes.total_backlog), format_bytes(self.max_total), pipe,
                        format_bytes(self.pipes.backlog_bytes[pipe]))
        session = self.session()
        if session is not None:
            session.pause_reading()

    def _resume(self) -> None:
        self.paused = False
        self.stats.paused = False
        log.warning("backpressure released: largest backlog %s, total %s; reading again",
                    format_bytes(self.pipes.largest_backlog), format_bytes(self.pipes.total_backlog))
        session = self.session()
        if session is not None:
            session.resume_reading()

    def unwatch_all(self) -> None:
        for pipe in self._watching:
            self.loop.remove_writer(self.pipes.write_fds[pipe])
        self._watching.clear()

    def resync(self) -> None:
        """The worker is gone: skip the rest of any message it had started reading."""
        for d in self.pipes.resync():
            log.warning("pipe %d: discarded %d bytes, the rest of a message the dead worker had "
                        "partly read", d.pipe, d.bytes)


class Balancer:
    def __init__(self, config: Config, tls_mode: TlsMode, recorder: Recorder | None = None) -> None:
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
        self.recorder = recorder
        self._backlog_since_trim = 0
        self._stop_event: asyncio.Event
        self._worker_gone: asyncio.Event
        self._restart_task: asyncio.Task[None] | None = None
        self.output: PipeOutput
        self.metrics: Any = None  # balancer.metrics.MetricsServer with --metrics
        self.stop_deadline = 0.0  # set by request_stop: the bound of the whole shutdown
        self._inodes = pipe_inodes(self.pipes.read_fds)
        self._abandoned_since: float | None = None
        self._stats_file_failing = False
        self._cert_log = RepeatedFailure("certificate verification (check the host name and --cafile)")

    # -- the worker ----------------------------------------------------------------------

    def start_worker(self) -> None:
        c = self.config
        self.worker_pid = spawn(WorkerSpec(c.exe, c.args, c.workdir, self.pipes.read_fds))
        self.worker_started_at = time.monotonic()
        self._worker_gone.clear()
        self.stats.worker_pid = self.worker_pid
        self.stats.worker_starts += 1
        self._abandoned_since = None
        log.info("worker %d started: %s (%d pipes)", self.worker_pid, c.exe, c.npipes)
        if c.ready_file:  # a side write: it never decides whether a worker runs
            try:
                write_json_atomic(c.ready_file, {"pid": os.getpid(), "worker_pid": self.worker_pid})
            except OSError as exc:
                log.warning("--ready-file: cannot write it (%s); the worker runs", exc.strerror or exc)

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
            self.worker_backoff = min(WORKER_BACKOFF_MAX, max(WORKER_BACKOFF_FIRST, self.worker_backoff * 2))
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
                self.worker_backoff = min(WORKER_BACKOFF_MAX,
                                          max(WORKER_BACKOFF_FIRST, self.worker_backoff * 2))
                log.error("%s; retrying in %.1f s", exc, self.worker_backoff)
                await self._sleep(self.worker_backoff)

    async def _end_group(self, pgid: int, deadline: float | None = None, everything: bool = False) -> None:
        """Kill what the worker forked and wait until nothing of it can still read the pipes:
        its process group, and any descendant of lb's (one that left the group with setsid()
        is lb's child now, lb being subreaper) holding a pipe; ``everything``: every descendant."""
        if deadline is None:
            deadline = time.monotonic() + GROUP_EXIT_WAIT
        kill_group(pgid)
        escaped = [pid for pid in self._stray_processes(everything) if _pgid(pid) != pgid]
        if escaped:
            log.warning("killing %d process(es) outside the worker's group that %s: %s", len(escaped),
                        "lb leaves behind" if everything else "still hold the pipes",
                        " ".join(map(str, escaped)))
            kill_pids(escaped)
        while (group_alive(pgid) or any(map(alive, escaped))) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            self.on_sigchld()
        if group_alive(pgid) or any(map(alive, escaped)):
            log.error("processes of the dead worker (group %d) survive SIGKILL; going on anyway", pgid)

    def _stray_processes(self, everything: bool) -> list[int]:
        pids = [pid for pid in descendants(os.getpid()) if alive(pid)]
        if everything or self.pipes.closed:
            return pids
        return holding(pids, self._inodes)

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
                level = logging.INFO if exc.cause is Cause.SHUTDOWN else logging.WARNING
                if exc.cause is Cause.TLS and str(exc).startswith("certificate verification failed"):
                    level = self._certificate_failure()
                else:
                    self.stats.cert_failures = 0
                log.log(level, "disconnected (%s): %s", exc.cause, exc)
                if exc.retry_after is not None:
                    delay = min(RETRY_AFTER_MAX, exc.retry_after) * random.uniform(1.0, 1.1)
                    log.info("the server asked to retry after %g s (Retry-After, honoured up to %g s)",
                             exc.retry_after, RETRY_AFTER_MAX)
            except polygon.AuthFailed as exc:
                self._count_end(Cause.AUTH_FAILED)
                auth_failures += 1
                if auth_failures > 1:
                    log.error("authentication failed: the server rejected the API key (%s)", exc)
                    return EXIT_AUTH
                log.warning("authentication failed (%s); retrying once in %.0f s", exc, AUTH_RETRY_WAIT)
                delay = AUTH_RETRY_WAIT
            except polygon.Evicted as exc:
                self._count_end(Cause.EVICTED)
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
        self.stats.cert_failures = 0

    def _certificate_failure(self) -> int:
        self.stats.cert_failures += 1
        level, summary = self._cert_log.failed(self.stats.cert_failures)
        if summary:
            log.error("%s", summary)
        return level

    def _count_end(self, cause: Cause) -> None:
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
        snapshot["dumpable"] = dumpable()
        return snapshot

    def housekeeping(self) -> None:
        if not self.pipes.closed and self.worker_pid:
            self.pipes.prune()
            self._check_pipes_held()
        self._return_memory_after_backlog()
        if self.config.stats_file:
            self._write_stats_file()

    def _write_stats_file(self) -> None:
        assert self.config.stats_file is not None
        try:
            write_json_atomic(self.config.stats_file, self.refresh_stats())
        except OSError as exc:  # a side write: log it (once until it works again), never stop for it
            if not self._stats_file_failing:
                log.warning("--stats-file: cannot write it (%s); lb goes on", exc.strerror or exc)
            self._stats_file_failing = True
        else:
            if self._stats_file_failing:
                log.warning("--stats-file: written again")
            self._stats_file_failing = False

    def _check_pipes_held(self) -> None:
        """A worker that closed its pipes but keeps running would leave lb paused forever: only
        lb holds the read ends then. Checked while data waits; restarted after a bound."""
        if not self.pipes.total_backlog and not self.output.paused:
            self._abandoned_since = None
            return
        # the worker itself first (a few readlinks); all of lb's descendants only when it holds none
        holders = holding([self.worker_pid], self._inodes) or \
            holding([p for p in descendants(os.getpid()) if alive(p)], self._inodes)
        now = time.monotonic()
        if holders:
            self._abandoned_since = None
        elif self._abandoned_since is None:
            self._abandoned_since = now
            log.error("worker %d holds none of the pipes but still runs (%s waiting); restarting it "
                      "in %.0f s unless it opens them again", self.worker_pid,
                      format_bytes(self.pipes.total_backlog), ABANDONED_PIPES_LIMIT)
        elif now - self._abandoned_since >= ABANDONED_PIPES_LIMIT:
            log.error("worker %d closed its pipes %.0f s ago and still runs: killing it (and its "
                      "group) to restart it", self.worker_pid, now - self._abandoned_since)
            self._abandoned_since = None
            self.stats.abandoned_pipes += 1
            kill_group(self.worker_pid)

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
        log.info("%s: shutting down (at most %g s)", signame, self.config.shutdown_timeout)
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.shutdown_timeout
        self._stop_event.set()
        if self.session is not None:
            # the close handshake takes at most a third of the shutdown bound
            self.session.close(wait=min(self.session.close_wait, self.config.shutdown_timeout / 3))

    def dump_stats(self) -> None:
        """SIGUSR1: the status line and every counter (one JSON line) on stderr, and the stats file."""
        snapshot = self.refresh_stats()
        log.warning("SIGUSR1: %s", self.status_line.render())
        log.warning("SIGUSR1 stats: %s", orjson.dumps(snapshot).decode())
        if self.config.stats_file:
            self._write_stats_file()

    def reopen_record(self) -> None:
        """SIGUSR2: reopen --record (after log rotation moved it)."""
        if self.recorder is None:
            log.info("SIGUSR2: no --record file to reopen")
            return
        try:
            self.recorder.reopen()
        except OSError as exc:
            log.error("SIGUSR2: cannot reopen --record (%s); recording stops", exc.strerror or exc)
            self.recorder = None
            return
        log.info("SIGUSR2: reopened --record")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._worker_gone = asyncio.Event()
        self.output = PipeOutput(self.pipes, self.stats, self.config.max_backlog,
                                 self.config.max_backlog_total, lambda: self.session)
        become_subreaper()
        loop.add_signal_handler(signal.SIGCHLD, self.on_sigchld)
        for sig in STOP_SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # started under nohup: a hangup is not a stop
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGUSR1, self.dump_stats)
        loop.add_signal_handler(signal.SIGUSR2, self.reopen_record)
        log.info("%d pipes of %d bytes each", self.config.npipes, self.pipes.pipe_size)
        if self.config.metrics is not None:
            from balancer import metrics

            try:
                self.metrics = await metrics.start(self, *self.config.metrics)
            except OSError as exc:
                log.error("--metrics %s:%d: %s", *self.config.metrics, exc)
                return EXIT_USAGE
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
            if not self.stopping:  # the feed ended by itself (exit 3): the same bound applies
                self.stop_deadline = time.monotonic() + self.config.shutdown_timeout
            self.stopping = True
            self._stop_event.set()
            for task in tasks:
                task.cancel()
        await self.shutdown()
        return code

    async def shutdown(self) -> None:
        """Flush queued data, close the write ends so the worker sees EOF, wait for it, then
        SIGTERM, then SIGKILL its group: all of it within --shutdown-timeout of the signal."""
        deadline = self.stop_deadline
        timeout = self.config.shutdown_timeout
        reserve = min(2.0, timeout * 0.2)  # for SIGTERM, then SIGKILL and reaping
        term_at, kill_at = deadline - reserve, deadline - reserve / 2
        if self._restart_task is not None:
            self._restart_task.cancel()
        while self.pipes.total_backlog and self.worker_pid and time.monotonic() < term_at:
            await asyncio.sleep(0.02)
        if self.pipes.total_backlog:
            log.error("shutdown: %d bytes could not be written to the pipes in time",
                      self.pipes.total_backlog)
        self.output.unwatch_all()
        self.pipes.close_write_ends()
        pid = self.worker_pid
        if pid and not await self._worker_exit(term_at):
            log.error("worker %d did not exit after EOF; terminating it", pid)
            kill_group(pid, signal.SIGTERM)
            if not await self._worker_exit(kill_at):
                log.error("worker %d ignored SIGTERM; killing it", pid)
                kill_group(pid, signal.SIGKILL)
        # none of lb's descendants outlives it: the worker's group, and any that left it
        await self._end_group(pid or -1, max(deadline, time.monotonic() + 0.2), everything=True)
        if self.recorder is not None:
            self.recorder.close()
        if self.config.stats_file:
            self._write_stats_file()
        if self.config.stats_interval > 0:
            log.info("final: %s", self.status_line.render())
        if self.metrics is not None:
            self.metrics.close()

    async def _worker_exit(self, until: float) -> bool:
        try:
            await asyncio.wait_for(self._worker_gone.wait(), max(0.0, until - time.monotonic()))
        except TimeoutError:
            return False
        return True


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
        recorder = Recorder(config.record) if config.record else None
    except OSError as exc:
        log.error("--record: cannot open it (%s)", exc.strerror or exc)
        return EXIT_USAGE
    try:
        balancer = Balancer(config, tls_mode, recorder)
        balancer.stats.engine = engine_name
    except OSError as exc:
        log.error("cannot set up the pipes: %s", exc)
        return EXIT_USAGE
    try:
        return asyncio.run(balancer.run())
    finally:
        balancer.pipes.close()
