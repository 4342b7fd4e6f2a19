"""Command-line pieces shared by lb-pool and the standalone workers (`python -m workers.X`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from common.units import argtype, format_duration, format_size, parse_size, positive_duration, size
from common.version import add_version_option
from workers.framing import MAX_MESSAGE
from workers.handler import Handler, HandlerContext
from workers.loop import WorkerLoop
from workers.reader import DEFAULT_CHUNK, MIN_CHUNK, PipeReader

DEFAULT_STATS_INTERVAL = 1.0  # seconds: --stats-interval of lb-pool and the handlers

FDS_HELP = ("the pipes' read-end fd numbers, as lb appends them; pipe i is the i-th fd "
            "(its index decides which symbols belong on it)")


positive_float = positive_duration
"""The old name of ``--stats-interval``'s and lb-pool's duration type: now any duration."""


def _chunk(text: str) -> int:
    value = parse_size(text)
    if value < MIN_CHUNK:
        raise ValueError(f"must be at least {MIN_CHUNK}: {text}")
    return value


chunk_size = argtype(_chunk)


def user_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE: {text}")
    return key, value


def add_reader_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading")
    group.add_argument(
        "--exact", action="store_true",
        help="read each message exactly (4-byte header, then the payload) instead of big "
             "chunks: about ten times slower, but a worker killed by SIGKILL loses at most the "
             "message it was handling (plus, per pipe, a message the writer had only partly "
             "written), instead of everything it had read ahead: up to a chunk per pipe")
    group.add_argument("--chunk", type=chunk_size, default=DEFAULT_CHUNK, metavar="SIZE",
                       help=f"bytes per read in chunked mode (default {format_size(DEFAULT_CHUNK)})")
    group.add_argument("--max-message", type=size, default=MAX_MESSAGE, metavar="SIZE",
                       help=f"longest message accepted; a longer length is a framing error "
                            f"(default {format_size(MAX_MESSAGE)})")
    group.add_argument("--stats-interval", type=positive_duration, default=DEFAULT_STATS_INTERVAL,
                       metavar="DURATION", dest="interval",
                       help=f"tick, snapshot and display interval "
                            f"(default {format_duration(DEFAULT_STATS_INTERVAL)})")
    group.add_argument("--interval", type=positive_duration, dest="interval", default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)  # the old spelling
    group.add_argument("--opt", type=user_option, action="append", default=[],
                       metavar="KEY=VALUE",
                       help="an option for a module:function handler (repeatable); it reads "
                            "them as context.user_options")


def check_fds(parser: argparse.ArgumentParser, fds: list[int]) -> None:
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            parser.error(f"fd {fd} is not open")
    if len(set(fds)) != len(fds):
        parser.error("the same fd is given twice")


def make_readers(
    fds: list[int], pipes: list[int], options: argparse.Namespace, progress: Any = None
) -> dict[int, PipeReader]:
    return {
        pipe: PipeReader(
            fds[pipe],
            name=f"pipe {pipe} (fd {fds[pipe]})",
            max_message=options.max_message,
            chunk=options.chunk,
            exact=options.exact,
            progress=progress[pipe] if progress is not None else None,
        )
        for pipe in pipes
    }


def reader_accounting(readers: dict[int, PipeReader]) -> dict[str, Any]:
    return {
        "skipped_bytes": sum(reader.skipped for reader in readers.values()),
        "pipes_at_eof": sum(reader.eof for reader in readers.values()),
    }


def run_standalone(handler_class: type[Handler], argv: list[str] | None, *, prog: str,
                   doc: str | None) -> int:
    """One process reading every pipe: `python -m workers.NAME [options] FD...`."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(parser)
    add_reader_options(parser)
    handler_class.add_options(parser)
    parser.add_argument("fds", type=int, nargs="+", metavar="FD", help=FDS_HELP)
    options = parser.parse_args(argv)
    check_fds(parser, options.fds)
    label = handler_class.name
    pipes = list(range(len(options.fds)))
    context = HandlerContext(len(pipes), pipes, options, label, dict(options.opt))
    handler = handler_class(context)
    aggregator = handler_class.aggregator(options, label)
    readers = make_readers(options.fds, pipes, options)

    def emit(final: bool) -> None:
        if not final:
            aggregator.on_interval(aggregator.merge([handler.snapshot()]), time.monotonic())

    loop = WorkerLoop(readers, handler, interval=options.interval, emit=emit)
    loop.run()
    aggregator.finish(aggregator.merge([handler.snapshot()]), reader_accounting(readers))
    if loop.stopped_by is not None:
        print(f"{label}: stopped by signal {loop.stopped_by}", file=sys.stderr, flush=True)
    return 0
