"""``lb``: the command line, compatible with the C original (settings and exit codes: ``config``)."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from typing import Any, NoReturn

from balancer.config import DEFAULTS as D
from balancer.config import EXIT_USAGE, Config, TlsRequest
from balancer.url import URLError, parse_url
from common.units import (
    duration,
    format_bytes,
    format_duration,
    format_size,
    parse_size,
    positive_duration,
    size,
)
from common.version import add_version_option

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


def _listen_address(text: str) -> tuple[str, int]:
    from balancer.metrics import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    bound = memory_limit() // MESSAGE_MEMORY_SHARE
    if size > bound:  # the value is not repeated: it could be a misplaced key
        raise argparse.ArgumentTypeError(
            f"more than this machine can hold: at most {format_bytes(bound)} "
            f"(a quarter of {format_bytes(memory_limit())} of memory)")
    return size




class _Parser(argparse.ArgumentParser):
    """Errors in one line, exit 2, and never the text of an argument: any of them could be the
    key (given in the wrong place), so an error names the argument, not what it holds."""

    redact: tuple[str, ...] = ()

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice (choose from {choices})")

    def error(self, message: str) -> NoReturn:
        head, sep, rest = message.partition("unrecognized arguments: ")
        if sep:  # name what looks like an option, not what could be a value
            message = head + sep + " ".join(t if t.startswith("-") else "<a value>" for t in rest.split())
        for text in sorted(self.redact, key=len, reverse=True):  # a safety net for key-sized text
            if len(text) >= 8 and text not in self._option_string_actions:
                message = message.replace(text, "<redacted>")
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
    p.add_argument("args", metavar="ARGS", nargs="*",
                   help="worker arguments, all of them passed as given (-- included); the pipes' "
                        "fd numbers are appended")
    feed = p.add_argument_group("feed")
    feed.add_argument("--subscribe", metavar="PARAMS", default=D.subscribe,
                      help="subscribe params, e.g. T.AAPL,T.MSFT (default: %(default)s)")
    feed.add_argument("--cafile", metavar="PATH",
                      help="extra CA certificates for wss:// (e.g. the simulator's CA); the server "
                           "certificate and host name are always verified")
    feed.add_argument("--tls", choices=[r.value for r in TlsRequest], default=TlsRequest.AUTO.value,
                      help="TLS path for wss://: ktls = handshake in userspace, then the kernel "
                           "encrypts and decrypts; userspace = OpenSSL; auto = ktls when the kernel "
                           "offers it, else userspace with a warning (default: %(default)s)")
    feed.add_argument("--ping-interval", metavar="DURATION", type=positive_duration,
                      default=D.ping_interval, help="after this long with nothing received, send a "
                      f"ping (default: {format_duration(D.ping_interval)})")
    feed.add_argument("--ping-timeout", metavar="DURATION", type=positive_duration,
                      default=D.ping_timeout,
                      help="drop the connection and reconnect if nothing arrives this long after a "
                           f"ping (default: {format_duration(D.ping_timeout)})")
    feed.add_argument("--connect-timeout", metavar="DURATION", type=positive_duration,
                      default=D.connect_timeout, help="limit for connect, TLS, upgrade and "
                      f"auth+subscribe (default: {format_duration(D.connect_timeout)})")
    feed.add_argument("--engine", choices=("auto", "native", "python"),
                      default=os.environ.get("LB_ENGINE", "auto"),
                      help="data path: native (compiled balancer._speedups), python, or auto: native when "
                           "built (default: $LB_ENGINE or auto)")
    feed.add_argument("--max-message", metavar="SIZE", type=parse_max_message,
                      default=D.max_message,
                      help="largest websocket message accepted, at most a quarter of the memory "
                           f"(RAM or RLIMIT_AS) (default: {format_size(D.max_message)})")
    pipes = p.add_argument_group("pipes")
    pipes.add_argument("--pipe-size", metavar="SIZE", type=size, default=D.pipe_size,
                       help="pipe buffer to ask for, halved until the kernel agrees (default: "
                            f"{format_size(D.pipe_size)}; "
                            "see fs.pipe-max-size)")
    pipes.add_argument("--max-backlog", metavar="SIZE", type=size, default=D.max_backlog,
                       help="per pipe: queued bytes above which lb stops reading the socket until "
                            f"the backlog halves; nothing is dropped (default: {format_size(D.max_backlog)})")
    pipes.add_argument("--max-backlog-total", metavar="SIZE", type=size, default=None,
                       help="all pipes together: queued bytes above which lb stops reading the "
                            "socket until the total halves (default: 1/8 of the machine's memory, "
                            f"at least {format_size(D.max_backlog_total_floor)})")
    pipes.add_argument("--shutdown-timeout", metavar="DURATION", type=positive_duration,
                       default=D.shutdown_timeout,
                       help="on SIGTERM/SIGINT/SIGHUP/SIGQUIT, the bound of the whole shutdown: "
                            "close handshake, flushing the pipes, the worker's exit (default: "
                            f"{format_duration(D.shutdown_timeout)})")
    out = p.add_argument_group("output")
    out.add_argument("--stats-interval", metavar="DURATION", type=duration, default=D.stats_interval,
                     help="one status line on stderr this often; 0 turns it off (default: "
                          f"{format_duration(D.stats_interval)})")
    out.add_argument("--stats-file", metavar="PATH",
                     help="rewrite PATH (atomically) with a JSON snapshot of lb's counters every "
                          "second and at exit")
    out.add_argument("--ready-file", metavar="PATH",
                     help="write JSON {pid, worker_pid} to PATH once the worker runs")
    out.add_argument("--record", metavar="FILE",
                     help="append every data message payload received, one per line (JSON lines; "
                          "gzip if FILE ends in .gz), for replay with simulate --replay")
    out.add_argument("--metrics", metavar="HOST:PORT", type=_listen_address,
                     help="serve Prometheus metrics at http://HOST:PORT/metrics (a bare PORT listens "
                          "on 127.0.0.1; off by default)")
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


_POSITIONALS = 5  # KEY URL NPIPES WORKDIR EXE


def split_argv(parser: argparse.ArgumentParser, argv: list[str],
               positionals: int = _POSITIONALS) -> tuple[list[str], list[str]]:
    """(lb's arguments up to and including EXE, the ``positionals``-th positional; the worker's after it).

    Done by hand, since argparse would take a ``--`` after EXE for itself: everything after
    EXE is the worker's, as given. Options may come before and between the positionals."""
    actions = parser._option_string_actions
    seen = 0
    i = 0
    only_positionals = False
    while i < len(argv) and seen < positionals:
        token = argv[i]
        i += 1
        if only_positionals or token == "-" or not token.startswith("-"):
            seen += 1
        elif token == "--":
            only_positionals = True
        elif token.startswith("--"):
            name = token.split("=", 1)[0]
            matches = [a for s, a in actions.items() if s == name] or \
                [a for s, a in actions.items() if s.startswith(name) and s.startswith("--")]
            if "=" not in token and len({id(a) for a in matches}) == 1 and matches[0].nargs != 0:
                i += 1  # the option's value
        else:  # short options: -v, -vq, -q
            action = actions.get(token[:2])
            if action is not None and action.nargs != 0 and len(token) == 2:
                i += 1
    return argv[:i], argv[i:]


def _check_output_path(option: str, path: str | None) -> None:
    """An output file's directory must exist and be writable now, before anything starts."""
    if path is None:
        return
    if not path or os.path.isdir(path):
        raise UsageError(f"{option}: not a file path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{option}: its directory does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: its directory is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{option}: the file is not writable")


def _check_cafile(path: str | None) -> None:
    if path is None:
        return
    if not os.path.isfile(path):
        raise UsageError("--cafile: not a file")
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise UsageError(f"--cafile: no usable CA certificate in the file ({exc.reason or exc})") from None
    except OSError as exc:
        raise UsageError(f"--cafile: cannot be read ({exc.strerror})") from None


def default_max_backlog_total() -> int:
    """1/8 of the machine's memory, at least 64M."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        memory = 0
    return max(D.max_backlog_total_floor, memory // 8)


def parse_config(argv: list[str]) -> Config:
    from balancer.supervisor import resolve_executable

    parser = build_parser()
    parser.redact = tuple(argv)
    head, worker_args = split_argv(parser, argv)
    ns = parser.parse_args(head)
    try:
        npipes = int(ns.npipes)
    except ValueError:
        raise UsageError("NPIPES must be a whole number") from None
    if not 1 <= npipes <= 4096:
        raise UsageError("NPIPES must be between 1 and 4096")
    try:
        url = parse_url(ns.url)
    except URLError as exc:
        raise UsageError(str(exc)) from None
    _check_cafile(ns.cafile)
    try:
        resolve_executable(ns.exe, ns.workdir)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_output_path("--ready-file", ns.ready_file)
    _check_output_path("--stats-file", ns.stats_file)
    _check_output_path("--record", ns.record)
    return Config(
        key=read_key(ns.key),
        url=url,
        npipes=npipes,
        workdir=os.path.abspath(ns.workdir),
        exe=ns.exe,
        args=[*ns.args, *worker_args],
        subscribe=ns.subscribe,
        cafile=ns.cafile,
        tls=TlsRequest(ns.tls),
        ping_interval=ns.ping_interval,
        ping_timeout=ns.ping_timeout,
        pipe_size=ns.pipe_size,
        max_backlog=ns.max_backlog,
        max_backlog_total=ns.max_backlog_total or default_max_backlog_total(),
        max_message=ns.max_message,
        stats_interval=ns.stats_interval,
        stats_file=ns.stats_file,
        ready_file=ns.ready_file,
        record=ns.record,
        shutdown_timeout=ns.shutdown_timeout,
        connect_timeout=ns.connect_timeout,
        verbosity=ns.verbose - ns.quiet,
        engine=ns.engine,
        metrics=ns.metrics,
    )


def setup_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lb: %(message)s"))
    root = logging.getLogger("lb")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _refuse_key_log() -> None:
    """SSLKEYLOGFILE would make OpenSSL write the session secrets: out of lb's environment
    (and so the worker's) before any TLS context exists, loudly."""
    if "SSLKEYLOGFILE" in os.environ:
        del os.environ["SSLKEYLOGFILE"]
        print("lb: WARNING: SSLKEYLOGFILE is set: ignored and removed from the environment (it would "
              "write the TLS session secrets, and so the API key on the wire, to a file)", file=sys.stderr)


def _arg_area() -> tuple[int, int]:
    """arg_start, arg_end of this process (fields 48, 49 of /proc/self/stat)."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[45]), int(fields[46])  # fields[0] is field 3


def scrub_key_from_argv(key: str) -> bool:
    """Overwrite the key where the kernel shows our command line (/proc/PID/cmdline, ps) and in
    sys.argv. Best effort: True when the key is no longer in /proc/self/cmdline."""
    secret = key.encode()
    if not secret:
        return True
    sys.argv[:] = ["-" if a == key else a for a in sys.argv]
    if hasattr(sys, "orig_argv"):
        sys.orig_argv[:] = ["-" if a == key else a for a in sys.orig_argv]
    try:
        start, end = _arg_area()
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            area = mem.read(end - start)
            args = area.split(b"\0")
            if secret in args:  # the argument that is the key, not text that contains it
                mem.seek(start)
                mem.write(b"\0".join(b"x" * len(a) if a == secret else a for a in args))
        with open("/proc/self/cmdline", "rb") as f:
            return secret not in f.read()
    except (OSError, ValueError, IndexError):
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _refuse_key_log()
    try:
        config = parse_config(argv)
    except UsageError as exc:
        print(f"lb: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.verbosity)
    if config.key in argv and not scrub_key_from_argv(config.key):
        logging.getLogger("lb").warning("could not remove the key from lb's command line "
                                        "(/proc/%d/cmdline); prefer KEY -", os.getpid())
    from balancer.app import run
    from balancer.supervisor import harden

    try:
        harden()
    except OSError as exc:
        logging.getLogger("lb").warning("cannot turn off core dumps (%s)", exc.strerror or exc)
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
