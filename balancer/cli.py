"""``lb``: the command line, compatible with the C original (settings and exit codes: ``config``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from balancer.config import EXIT_USAGE, Config
from balancer.url import URLError, parse_url

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

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


def parse_size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024): 1G, 256M, 65536."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        size = int(float(number) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return size


# A message can be held up to about four times while it is received and routed (the receive
# buffer, a fragmented message's reassembly, the message, the routed copies): --max-message may
# be at most this fraction of the memory lb can have (RAM, or RLIMIT_AS when lower).
MESSAGE_MEMORY_SHARE = 4


def memory_limit() -> int:
    """Bytes of memory lb can hold: physical RAM, or the address-space limit when it is lower."""
    try:
        limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        limit = 1 << 62
    import resource

    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY and soft > 0:
        limit = min(limit, soft)
    return limit


def parse_max_message(text: str) -> int:
    size = parse_size(text)
    bound = memory_limit() // MESSAGE_MEMORY_SHARE
    if size > bound:  # MESSAGE_MEMORY_SHARE is 4
        raise argparse.ArgumentTypeError(
            f"{text} is more than this machine can hold: at most {_human(bound)} "
            f"(a quarter of {_human(memory_limit())} of memory)")
    return size


def _human(n: int) -> str:
    for unit in ("G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f}{unit}"
    return str(n)


def _seconds(allow_zero: bool):
    def parse(text: str) -> float:
        try:
            value = float(text.removesuffix("s"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if value < 0 or (value == 0 and not allow_zero) or value != value:
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if allow_zero else '> 0'}: {text!r}")
        return value

    return parse


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
    feed.add_argument("--tls", choices=("auto", "ktls", "userspace"), default="auto",
                      help="TLS path for wss://: ktls = handshake in userspace, then the kernel "
                           "encrypts and decrypts; userspace = OpenSSL; auto = ktls when the kernel "
                           "offers it, else userspace with a warning (default: %(default)s)")
    feed.add_argument("--ping-interval", metavar="SECONDS", type=_seconds(False), default=20.0,
                      help="after this long with nothing received, send a ping (default: %(default)g)")
    feed.add_argument("--ping-timeout", metavar="SECONDS", type=_seconds(False), default=20.0,
                      help="drop the connection and reconnect if nothing arrives this long after a "
                           "ping (default: %(default)g)")
    feed.add_argument("--connect-timeout", metavar="SECONDS", type=_seconds(False), default=10.0,
                      help="limit for connect, TLS, upgrade and auth+subscribe (default: %(default)g)")
    feed.add_argument("--engine", choices=("auto", "native", "python"),
                      default=os.environ.get("LB_ENGINE", "auto"),
                      help="data path: native (compiled balancer._speedups), python, or auto: native when "
                           "built (default: $LB_ENGINE or auto)")
    feed.add_argument("--max-message", metavar="BYTES", type=parse_max_message, default=64 << 20,
                      help="largest websocket message accepted, at most a quarter of the memory "
                           "(RAM or RLIMIT_AS) (default: 64M)")
    pipes = p.add_argument_group("pipes")
    pipes.add_argument("--pipe-size", metavar="BYTES", type=parse_size, default=1 << 30,
                       help="pipe buffer to ask for, halved until the kernel agrees (default: 1G; "
                            "see fs.pipe-max-size)")
    pipes.add_argument("--max-backlog", metavar="BYTES", type=parse_size, default=256 << 20,
                       help="per pipe: queued bytes above which lb stops reading the socket until "
                            "the backlog halves; nothing is dropped (default: 256M)")
    pipes.add_argument("--shutdown-timeout", metavar="SECONDS", type=_seconds(False), default=30.0,
                       help="on SIGTERM/SIGINT, how long to wait for queued data to reach the "
                            "pipes and for the worker to exit (default: %(default)g)")
    out = p.add_argument_group("output")
    out.add_argument("--stats-interval", metavar="SECONDS", type=_seconds(True), default=5.0,
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
        tls=ns.tls,
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
