"""lb-pool: spread lb's pipes over forked worker processes that each run a handler.

    lb KEY URL 32 DIR lb-pool --procs 4 --handler stats      (lb appends the 32 fds)
    lb-pool [--procs N] [--handler NAME|module:name] [options] FD...

Child k of N reads pipes k, k+N, k+2N, ... (pipe i = the i-th fd argument) and runs the
handler on them. Children die with the pool (PR_SET_PDEATHSIG) and stay in its process
group. A child that exits non-zero or dies by a signal is re-forked on the same pipes,
with exponential backoff while it keeps crashing; first the pool, which holds every read
end, drops the rest of any message the dead child had partly read, so the new child
starts on a message boundary (see workers/resync.py), and counts what was lost. A child
whose pipes all reached EOF exits 0 and is not re-forked; the pool exits when every child
has finished. SIGTERM/SIGINT: forwarded to the children, which finish their batch and
report; the pool merges the reports, and exits 0.

Children send the pool a snapshot every --stats-interval over a pipe of their own; the pool
merges them (stats: one table; verify: one report) and gives a re-forked child its
predecessor's last snapshot to continue from.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import orjson

from common.version import add_version_option
from workers.cli import (
    FDS_HELP,
    add_reader_options,
    check_fds,
    make_readers,
    positive_float,
)
from workers.files import write_all, write_json_atomically
from workers.framing import frame, split_frames
from workers.handler import Handler, HandlerContext
from workers.loop import WorkerLoop
from workers.observe import MetricsSocket, parse_listen, snapshot
from workers.progress import SharedProgress
from workers.registry import HandlerNotFound, load_handler, named_handlers
from workers.resync import PipeResync
from workers.signals import SignalPipe

PROG = "lb-pool"
PR_SET_PDEATHSIG = 1
CHANNEL_MAX = 1 << 30
LOSS_KEYS = ("discarded_bytes", "discarded_messages", "uncertain_resyncs", "unhandled_messages")


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def die_with_parent(parent: int) -> bool:
    """PR_SET_PDEATHSIG, then check the parent did not die before it took effect."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    return os.getppid() == parent


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


@dataclass
class Child:
    index: int
    pipes: list[int]
    pid: int = 0
    channel: int = -1
    inbox: bytearray = field(default_factory=bytearray)
    latest: dict[str, Any] | None = None
    """The last envelope received from this child's current or earlier incarnations."""
    started: float = 0.0
    crashes: int = 0
    """Crashes in a row, each within --healthy-after of its start."""
    restarts: int = 0
    restart_at: float | None = None
    resyncs: list[PipeResync] = field(default_factory=list)
    finished: bool = False

    @property
    def state(self) -> str:
        if self.finished:
            return "finished"
        return "running" if self.pid else "restarting"


class Pool:
    def __init__(self, options: argparse.Namespace, handler_class: type[Handler]) -> None:
        self.options = options
        self.handler_class = handler_class
        self.fds: list[int] = options.fds
        self.npipes = len(self.fds)
        procs = max(1, min(options.procs, self.npipes))
        self.children = [Child(k, list(range(k, self.npipes, procs))) for k in range(procs)]
        self.progress = SharedProgress(self.npipes)
        self.aggregator = handler_class.aggregator(options, PROG)
        self.losses = {pipe: dict.fromkeys(LOSS_KEYS, 0) for pipe in range(self.npipes)}
        self.pid = os.getpid()
        self.stopping = False
        self.stop_deadline: float | None = None
        self.signals: SignalPipe | None = None
        self.metrics: MetricsSocket | None = None

    # -- the pool's loop ---------------------------------------------------------------

    def run(self) -> int:
        if self.options.metrics is not None:
            try:
                self.metrics = MetricsSocket(*self.options.metrics,
                                             take=lambda: snapshot(self, self._merged()))
            except OSError as exc:
                log(f"--metrics {self.options.metrics[0]}:{self.options.metrics[1]}: {exc}")
                return 2
            log(f"metrics at http://{self.metrics.address[0]}:{self.metrics.address[1]}/metrics")
        self.signals = SignalPipe((signal.SIGTERM, signal.SIGINT, signal.SIGCHLD))
        try:
            for child in self.children:
                self._fork(child)
            self._loop()
        finally:
            self.signals.close()
        self._finish()
        if self.metrics is not None:
            self.metrics.close()
        return 0

    def _loop(self) -> None:
        assert self.signals is not None
        next_tick = time.monotonic() + self.options.interval
        while not all(child.finished for child in self.children):
            poller, handlers = self._poller()
            now = time.monotonic()
            timeout = max(0.0, min([next_tick, *self._timers()]) - now)
            for fd, _events in poller.poll(timeout * 1000):
                handlers[fd]()
            now = time.monotonic()
            self._on_timers(now)
            if now >= next_tick:
                merged = self._merged()
                self.aggregator.on_interval(merged, now)
                self._write_stats(merged)
                next_tick = now + self.options.interval

    def _poller(self) -> tuple[select.poll, dict[int, Any]]:
        assert self.signals is not None
        poller = select.poll()
        handlers: dict[int, Any] = {self.signals.fileno(): self._on_signals}
        if self.metrics is not None:
            handlers[self.metrics.fileno()] = self.metrics.serve_one
        for child in self.children:
            if child.channel >= 0:
                handlers[child.channel] = lambda child=child: self._drain(child)
            for resync in child.resyncs:
                if resync.wants_readable:
                    handlers[resync.fd] = lambda child=child, r=resync: self._step(child, r)
        for fd in handlers:
            poller.register(fd, select.POLLIN)
        return poller, handlers

    def _timers(self) -> list[float]:
        timers = [self.stop_deadline] if self.stop_deadline is not None else []
        for child in self.children:
            if child.restart_at is not None:
                timers.append(child.restart_at)
            for resync in child.resyncs:
                if not resync.done and not resync.certain:
                    timers.append(resync.retry_at or resync.deadline)
        return timers

    def _on_timers(self, now: float) -> None:
        for child in self.children:
            for resync in child.resyncs:
                due = resync.retry_at if resync.retry_at is not None else resync.deadline
                if not resync.done and not resync.certain and now >= due:
                    self._step(child, resync)
            due = child.restart_at is not None and now >= child.restart_at
            if due and all(resync.done for resync in child.resyncs):
                self._fork(child)
        if self.stop_deadline is not None and now >= self.stop_deadline:
            self.stop_deadline = None
            for child in self.children:
                if child.pid:
                    log(f"child {child.index} (pid {child.pid}) did not stop in time: SIGKILL")
                    os.kill(child.pid, signal.SIGKILL)

    # -- signals and children's exits ---------------------------------------------------

    def _on_signals(self) -> None:
        assert self.signals is not None
        for number in self.signals.received():
            if number == signal.SIGCHLD:
                self._reap()
            elif not self.stopping:
                self._stop(number)

    def _stop(self, number: int) -> None:
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.options.term_timeout
        log(f"{signal.Signals(number).name}: stopping the children")
        for child in self.children:
            if child.pid:
                os.kill(child.pid, signal.SIGTERM)
            elif not child.finished:
                child.finished = True
                child.restart_at = None
        self._write_status()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for child in self.children:
                if child.pid == pid:
                    self._drain(child)
                    self._on_exit(child, os.waitstatus_to_exitcode(status))

    def _on_exit(self, child: Child, code: int) -> None:
        pid, child.pid = child.pid, 0
        if child.channel >= 0:
            os.close(child.channel)
            child.channel = -1
        if code == 0 or self.stopping:
            child.finished = True
            if code != 0:
                log(f"child {child.index} (pid {pid}) {describe_exit(code)} while stopping")
            self._write_status()
            return
        now = time.monotonic()
        unhandled = self._count_unhandled(child)
        child.resyncs = [
            PipeResync(pipe, self.fds[pipe], self.progress[pipe], self.options.max_message, now)
            for pipe in child.pipes
        ]
        delay = self._backoff(child, now)
        child.restart_at = now + delay
        log(
            f"child {child.index} (pid {pid}, pipes {_pipes(child.pipes)}) {describe_exit(code)} "
            f"after {now - child.started:.1f}s; {unhandled} messages it had read were never "
            f"handled; re-forking in {delay:.2f}s"
            + (f" ({child.crashes} quick crashes in a row)" if child.crashes > 1 else "")
        )
        for resync in child.resyncs:
            if resync.done:
                self._resynced(resync)
        self._write_status()

    def _count_unhandled(self, child: Child) -> int:
        total = 0
        for pipe in child.pipes:
            state = self.progress[pipe].state()
            total += state.messages - state.handled
            self.losses[pipe]["unhandled_messages"] += state.messages - state.handled
        return total

    def _backoff(self, child: Child, now: float) -> float:
        if now - child.started >= self.options.healthy_after:
            child.crashes = 0
        child.crashes += 1
        if child.crashes == 1:
            return 0.0
        return min(self.options.backoff_min * 2 ** (child.crashes - 2), self.options.backoff_max)

    def _step(self, child: Child, resync: PipeResync) -> None:
        resync.step(time.monotonic())
        if resync.done:
            self._resynced(resync)

    def _resynced(self, resync: PipeResync) -> None:
        losses = self.losses[resync.pipe]
        losses["discarded_bytes"] += resync.discarded
        losses["discarded_messages"] += resync.messages
        where = f"pipe {resync.pipe} (fd {resync.fd})"
        if not resync.certain:
            losses["uncertain_resyncs"] += 1
            log(f"WARNING {where}: the child died inside read(), so where it stopped is not "
                f"known; resynchronised by scanning: dropped {resync.discarded} bytes "
                f"{resync.note}".rstrip())
        elif resync.discarded:
            log(f"{where}: dropped the {resync.discarded} unread bytes of a partly read message")
        if resync.at_eof:
            log(f"{where}: reached EOF while resynchronising")

    # -- forking -----------------------------------------------------------------------

    def _fork(self, child: Child) -> None:
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read_end)
                code = self._child_main(child, write_end)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(code)
        os.close(write_end)
        os.set_blocking(read_end, False)
        if child.restart_at is not None:
            child.restarts += 1
        child.pid, child.channel, child.started = pid, read_end, time.monotonic()
        child.inbox.clear()
        child.restart_at = None
        child.resyncs = []
        log(f"child {child.index} pid {pid} reads pipes {_pipes(child.pipes)}")
        self._write_status()

    def _child_main(self, child: Child, channel: int) -> int:
        assert self.signals is not None
        self.signals.close()
        if self.metrics is not None:
            self.metrics.close()
        self._close_others(child)
        if not die_with_parent(self.pid):
            return 1
        options = self.options
        label = f"{PROG}[{child.index}]"
        context = HandlerContext(self.npipes, child.pipes, options, label, dict(options.opt))
        handler = self.handler_class(context)
        handled = dict.fromkeys(child.pipes, 0)
        skipped_before = dict.fromkeys(child.pipes, 0)
        if child.latest is not None:
            if child.latest["state"] is not None:
                handler.restore(child.latest["state"])
            handled.update({int(p): n for p, n in child.latest["handled"].items()})
            skipped_before.update({int(p): n for p, n in child.latest["skipped"].items()})
        readers = make_readers(self.fds, child.pipes, options, self.progress)

        def emit(final: bool) -> None:
            envelope = {
                "final": final,
                "handled": {str(p): n for p, n in handled.items()},
                "skipped": {str(p): skipped_before[p] + r.skipped for p, r in readers.items()},
                "state": handler.snapshot(),
            }
            write_all(channel, frame(orjson.dumps(envelope)))

        progress = {pipe: self.progress[pipe] for pipe in child.pipes}
        WorkerLoop(readers, handler, interval=options.interval, emit=emit, handled=handled,
                   progress=progress).run()
        return 0

    def _close_others(self, child: Child) -> None:
        for other in self.children:
            if other is not child and other.channel >= 0:
                os.close(other.channel)
        for pipe, fd in enumerate(self.fds):
            if pipe not in child.pipes:
                os.close(fd)

    # -- what the children send --------------------------------------------------------

    def _drain(self, child: Child) -> None:
        while child.channel >= 0:
            try:
                data = os.read(child.channel, 1 << 20)
            except BlockingIOError:
                break
            if not data:
                os.close(child.channel)
                child.channel = -1
                break
            child.inbox += data
        payloads, stop, bad_length = split_frames(bytes(child.inbox), 0, len(child.inbox),
                                                  CHANNEL_MAX)
        del child.inbox[:stop]
        if bad_length >= 0:
            raise RuntimeError(f"child {child.index} sent a message of {bad_length} bytes")
        for payload in payloads:
            child.latest = orjson.loads(payload)

    def _merged(self) -> Any:
        return self.aggregator.merge(
            [child.latest["state"] for child in self.children if child.latest is not None]
        )

    # -- the end -----------------------------------------------------------------------

    def _finish(self) -> None:
        merged = self._merged()
        self.aggregator.finish(merged, self.accounting())
        self._write_status(done=True)
        self._write_stats(merged)

    def _write_stats(self, merged: Any) -> None:
        if self.options.stats_file:
            write_json_atomically(self.options.stats_file, snapshot(self, merged))

    def accounting(self) -> dict[str, Any]:
        """What was lost on the way: by dead children, by resync, to the merged report."""
        totals: dict[str, Any] = dict.fromkeys(
            (*LOSS_KEYS, "unreported_messages", "skipped_bytes"), 0
        )
        pipes: dict[str, dict[str, int]] = {}
        for child in self.children:
            envelope = child.latest or {"handled": {}, "skipped": {}}
            for pipe in child.pipes:
                losses = dict(self.losses[pipe])
                reported = envelope["handled"].get(str(pipe), 0)
                read = self.progress[pipe].state().messages
                losses["unreported_messages"] = read - reported - losses["unhandled_messages"]
                losses["skipped_bytes"] = envelope["skipped"].get(str(pipe), 0)
                for key, value in losses.items():
                    totals[key] += value
                if any(losses.values()):
                    pipes[str(pipe)] = losses
        totals["restarts"] = sum(child.restarts for child in self.children)
        totals["pipes"] = pipes
        return totals

    def _write_status(self, done: bool = False) -> None:
        if not self.options.status_file:
            return
        status = {
            "pid": self.pid,
            "npipes": self.npipes,
            "handler": self.options.handler,
            "done": done,
            "stopping": self.stopping,
            "children": [
                {"index": c.index, "pid": c.pid, "pipes": c.pipes, "state": c.state,
                 "restarts": c.restarts}
                for c in self.children
            ],
            "accounting": self.accounting(),
        }
        write_json_atomically(self.options.status_file, status)


def _pipes(pipes: list[int]) -> str:
    return ",".join(map(str, pipes))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(parser)
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="worker processes to fork (default: the CPU count, at most one "
                             "per pipe)")
    parser.add_argument("--handler", default="stats", metavar="NAME|module:name",
                        help=f"what each child runs: {', '.join(named_handlers())}, or "
                             "module:name for a Handler class or a function(pipe, payload) "
                             "of your own (default stats)")
    group = parser.add_argument_group("supervision")
    group.add_argument("--status-file", metavar="PATH",
                       help="rewrite PATH (JSON: children's pids, pipes, restarts, losses) "
                            "whenever a child starts or ends, and at exit")
    group.add_argument("--stats-file", metavar="PATH",
                       help="rewrite PATH (JSON) every --stats-interval with the live figures: "
                            "messages handled, children, restarts, top symbols (for lb-top)")
    group.add_argument("--metrics", metavar="HOST:PORT", type=parse_listen,
                       help="serve Prometheus metrics at http://HOST:PORT/metrics (bare PORT: "
                            "127.0.0.1; off by default)")
    group.add_argument("--backoff-min", type=positive_float, default=0.1, metavar="DURATION",
                       help="delay before the 2nd quick re-fork in a row, doubling for each "
                            "further one (the 1st is immediate; default 100ms)")
    group.add_argument("--backoff-max", type=positive_float, default=5.0, metavar="DURATION",
                       help="longest re-fork delay (default 5s)")
    group.add_argument("--healthy-after", type=positive_float, default=10.0, metavar="DURATION",
                       help="a child that ran this long before dying starts a new crash count "
                            "(default 10s)")
    group.add_argument("--shutdown-timeout", type=positive_float, default=5.0, metavar="DURATION",
                       dest="term_timeout",
                       help="on SIGTERM/SIGINT, how long children get to report before "
                            "SIGKILL (default 5s)")
    group.add_argument("--term-timeout", type=positive_float, dest="term_timeout",
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the old spelling
    add_reader_options(parser)
    for handler_class in named_handlers().values():
        handler_class.add_options(parser)
    parser.add_argument("fds", type=int, nargs="+", metavar="FD", help=FDS_HELP)
    return parser


def close_inherited_fds(keep: list[int]) -> None:
    """Whatever the pool inherited besides 0-2 and its pipes is closed before anything is
    opened or forked, so that no child gets it (a file or socket passed to lb, say)."""
    keep_set = {0, 1, 2, *keep}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep_set:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own fd, already closed


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.procs < 1:
        parser.error("--procs must be at least 1")
    check_fds(parser, options.fds)
    close_inherited_fds(options.fds)
    try:
        handler_class = load_handler(options.handler)
    except HandlerNotFound as error:
        parser.error(str(error))
    if handler_class not in named_handlers().values():
        handler_class.add_options(parser)  # a user class's own options, if it declares any
        options = parser.parse_args(argv)
    return Pool(options, handler_class).run()


if __name__ == "__main__":
    raise SystemExit(main())
