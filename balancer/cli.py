"""``lb``: the command line, compatible with the C original (settings and exit codes: ``config``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from balancer.config import EXIT_USAGE, Config, TlsRequest
from balancer.units import duration, parse_size, positive_duration, size
from balancer.url import URLError, parse_url
from balancer.version import add_version_option

__all__ = ["build_parser", "main", "parse_config", "parse_size"]  # parse_size: its old home

DESCRIPTION = """\
Read Polygon's (Massive's) trade feed from one websocket and fan every trade out,
byte for byte, to a worker process over NPIPES pipes chosen by symbol:
pipe = (fnv1a_64(symbol) >> 32) % NPIPES, each message [u32 LE length][trade JSON].

The worker runs in WORKDIR as: EXE ARGS... FD1 ... FDN (the pipes' read ends, pipe i
being the i-th fd). lb re-forks it if it exits, reconnects forever on a healthy key,
and exits 3 if the key is rejected, 2 on bad arguments, 0 after SIGTERM/SIGINT.

KEY is your API key, or - to read it from $POLYGON_API_KEY (else $MASSIVE_API_KEY).
A key given on the command line is visible to other local users (ps, /proc); prefer -.
The key never reaches the worker's environment and is never logged."""

EPILOG = """\
examples:
  lb - wss://socket.polygon.io/stocks 32 ~/work lb-pool --procs 4 --handler stats
  lb --cafile ca.pem - wss://localhost:8765/stocks 8 /tmp python3 analyze.py
  lb --subscribe T.AAPL,T.MSFT - wss://delayed.polygon.io/stocks 4 . ./only-log-from-pipes"""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_USAGE, f"lb: error: {message} (see lb --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="lb",
        usage="lb [OPTIONS] KEY URL NPIPES WORKDIR EXE [ARGS...]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version_option(p)
    p.add_argument("key", metavar="KEY", help="API key, or - to read $POLYGON_API_KEY / $MASSIVE_API_KEY")
    p.add_argument("url", metavar="URL", help="ws:// or wss:// feed URL, e.g. wss://socket.polygon.io/stocks")
    p.add_argument("npipes", metavar="NPIPES", help="number of pipes (>= 1)")
    p.add_argument("workdir", metavar="WORKDIR", help="working directory of the worker")
    p.add_argument("exe", metavar="EXE", help="worker executable (PATH is searched for bare names)")
    p.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER,
                   help="worker arguments; the pipes' fd numbers are appended")
    feed = p.add_argument_group("feed")
    feed.add_argument("--subscribe", metavar="PARAMS", default="T.*",
                      help="subscribe params, e.g. T.AAPL,T.MSFT (default: %(default)s)")
    feed.add_argument("--cafile", metavar="PATH",
                      help="extra CA certificates for wss:// (e.g. the simulator's CA); the server "
                           "certificate and host name are always verified")
    feed.add_argument("--tls", choices=[r.value for r in TlsRequest], default=TlsRequest.AUTO.value,
                      help="TLS path for wss://: ktls = handshake in userspace, then the kernel "
                           "encrypts and decrypts; userspace = OpenSSL; auto = ktls when the kernel "
                           "offers it, else userspace with a warning (default: %(default)s)")
    feed.add_argument("--ping-interval", metavar="DURATION", type=positive_duration, default=20.0,
                      help="after this long with nothing received, send a ping (default: %(default)g)")
    feed.add_argument("--ping-timeout", metavar="DURATION", type=positive_duration, default=20.0,
                      help="drop the connection and reconnect if nothing arrives this long after a "
                           "ping (default: %(default)g)")
    feed.add_argument("--connect-timeout", metavar="DURATION", type=positive_duration, default=10.0,
                      help="limit for connect, TLS, upgrade and auth+subscribe (default: %(default)g)")
    feed.add_argument("--engine", choices=("auto", "native", "python"),
                      default=os.environ.get("LB_ENGINE", "auto"),
                      help="data path: native (compiled balancer._speedups), python, or auto: native when "
                           "built (default: $LB_ENGINE or auto)")
    feed.add_argument("--max-message", metavar="SIZE", type=size, default=64 << 20,
                      help="largest websocket message accepted (default: 64M)")
    pipes = p.add_argument_group("pipes")
    pipes.add_argument("--pipe-size", metavar="SIZE", type=size, default=1 << 30,
                       help="pipe buffer to ask for, halved until the kernel agrees (default: 1G; "
                            "see fs.pipe-max-size)")
    pipes.add_argument("--max-backlog", metavar="SIZE", type=size, default=256 << 20,
                       help="per pipe: queued bytes above which lb stops reading the socket until "
                            "the backlog halves; nothing is dropped (default: 256M)")
    pipes.add_argument("--shutdown-timeout", metavar="DURATION", type=positive_duration, default=30.0,
                       help="on SIGTERM/SIGINT, how long to wait for queued data to reach the "
                            "pipes and for the worker to exit (default: %(default)g)")
    out = p.add_argument_group("output")
    out.add_argument("--stats-interval", metavar="DURATION", type=duration, default=5.0,
                     help="one status line on stderr this often; 0 turns it off (default: %(default)g)")
    out.add_argument("--stats-file", metavar="PATH",
                     help="rewrite PATH (atomically) with a JSON snapshot of lb's counters every "
                          "second and at exit")
    out.add_argument("--ready-file", metavar="PATH",
                     help="write JSON {pid, worker_pid} to PATH once the worker runs")
    out.add_argument("--record", metavar="FILE",
                     help="append every data message payload received, one per line (JSON lines; "
                          "gzip if FILE ends in .gz), for replay with simulate --replay")
    out.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    out.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only")
    return p


def read_key(arg: str) -> str:
    if arg != "-":
        key = arg
    else:
        key = os.environ.get("POLYGON_API_KEY") or os.environ.get("MASSIVE_API_KEY") or ""
        if not key:
            raise UsageError("KEY is - but neither POLYGON_API_KEY nor MASSIVE_API_KEY is set")
    if not key.strip():
        raise UsageError("the API key is empty")
    return key


def parse_config(argv: list[str]) -> Config:
    from balancer.supervisor import resolve_executable

    ns = build_parser().parse_args(argv)
    try:
        npipes = int(ns.npipes)
    except ValueError:
        raise UsageError(f"NPIPES must be a whole number, not {ns.npipes!r}") from None
    if not 1 <= npipes <= 4096:
        raise UsageError(f"NPIPES must be between 1 and 4096, not {npipes}")
    try:
        url = parse_url(ns.url)
    except URLError as exc:
        raise UsageError(str(exc)) from None
    if ns.cafile and not os.path.isfile(ns.cafile):
        raise UsageError(f"--cafile {ns.cafile!r} is not a file")
    try:
        resolve_executable(ns.exe, ns.workdir)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return Config(
        key=read_key(ns.key),
        url=url,
        npipes=npipes,
        workdir=os.path.abspath(ns.workdir),
        exe=ns.exe,
        args=list(ns.args),
        subscribe=ns.subscribe,
        cafile=ns.cafile,
        tls=TlsRequest(ns.tls),
        ping_interval=ns.ping_interval,
        ping_timeout=ns.ping_timeout,
        pipe_size=ns.pipe_size,
        max_backlog=ns.max_backlog,
        max_message=ns.max_message,
        stats_interval=ns.stats_interval,
        stats_file=ns.stats_file,
        ready_file=ns.ready_file,
        record=ns.record,
        shutdown_timeout=ns.shutdown_timeout,
        connect_timeout=ns.connect_timeout,
        verbosity=ns.verbose - ns.quiet,
        engine=ns.engine,
    )


def setup_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lb: %(message)s"))
    root = logging.getLogger("lb")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = parse_config(argv)
    except UsageError as exc:
        print(f"lb: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.verbosity)
    from balancer.app import run

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
