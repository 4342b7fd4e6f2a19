"""`log`: append each pipe's messages to its own file, one JSON object per line.

Pipe i goes to `pipe-<i>.jsonl` in `--log-dir` (default: the working directory, which lb sets to
its WORKDIR): the C original's "only-log-from-pipes". One write() per batch, unbuffered, so
what a killed worker had handled is on disk; a line cut by a kill is trimmed off when the
file is opened again.

    python -m workers.log [--log-dir DIR] FD...
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from workers.cli import run_standalone
from workers.files import open_log, write_all
from workers.handler import Aggregator, Handler, HandlerContext


def log_path(directory: str, pipe: int) -> str:
    return os.path.join(directory, f"pipe-{pipe}.jsonl")


class LogHandler(Handler):
    name = "log"

    def __init__(self, context: HandlerContext) -> None:
        super().__init__(context)
        directory = context.options.dir
        os.makedirs(directory, exist_ok=True)
        self.files = {pipe: open_log(log_path(directory, pipe)) for pipe in context.pipes}
        self.counts = {pipe: 0 for pipe in context.pipes}

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("log handler")
        group.add_argument("--log-dir", dest="dir", default=".", metavar="DIR",
                           help="directory of the pipe-<i>.jsonl files (default: the working "
                                "directory)")
        group.add_argument("--dir", dest="dir", default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS)  # the old spelling

    @classmethod
    def aggregator(cls, options: argparse.Namespace, label: str) -> Aggregator:
        return LogSummary(options.dir, label)

    def on_batch(self, pipe: int, payloads: list[bytes]) -> None:
        lines = b"\n".join(payloads) + b"\n"
        if lines.count(b"\n") != len(payloads):
            # A raw newline in a JSON object is whitespace between tokens: a space is equal.
            lines = b"\n".join(p.replace(b"\n", b" ") for p in payloads) + b"\n"
        write_all(self.files[pipe], lines)
        self.counts[pipe] += len(payloads)

    def snapshot(self) -> dict[str, Any]:
        return {"messages": {str(pipe): count for pipe, count in self.counts.items()}}

    def restore(self, snapshot: dict[str, Any]) -> None:
        for pipe, count in snapshot["messages"].items():
            self.counts[int(pipe)] = count

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()


class LogSummary(Aggregator):
    def __init__(self, directory: str, label: str, noun: str = "messages") -> None:
        self.directory = directory
        self.label = label
        self.noun = noun

    def merge(self, snapshots: list[Any]) -> dict[str, Any]:
        messages: dict[str, int] = {}
        for snapshot in snapshots:
            if snapshot is not None:
                messages.update(snapshot["messages"])
        return {"messages": messages}

    def finish(self, merged: dict[str, Any], accounting: dict[str, Any]) -> None:
        total = sum(merged["messages"].values())
        print(f"{self.label}: wrote {total:,} {self.noun} into {len(merged['messages'])} files in "
              f"{os.path.abspath(self.directory)}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_standalone(LogHandler, argv, prog="python -m workers.log", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
